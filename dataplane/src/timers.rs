//! The timer worker: about every tenth of a second it asks each peer what
//! its clock calls for ([`Peer::tick`]: the core's timers, recovery,
//! persistent keepalives) and sends it, resets the handshake rate limiters'
//! counts, and follows the TUN's MTU.

use crate::outbound::send_message;
use crate::peer::Peer;
use crate::shared::Shared;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often timers are checked. WireGuard's timers are in seconds; 100 ms
/// keeps retries and keepalives within a tenth of a second of due.
const TICK: Duration = Duration::from_millis(100);

pub(crate) fn run(shared: Arc<Shared>) {
    let mut last_mtu_read = Instant::now();
    while !shared.is_stopping() {
        let mut pfd = libc::pollfd {
            fd: shared.stop_fd.raw(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        unsafe { libc::poll(&mut pfd, 1, TICK.as_millis() as i32) };
        if shared.is_stopping() {
            return;
        }
        let (peers, sockets): (Vec<Arc<Peer>>, _) = {
            let st = shared.state.read();
            // Each limiter forgets its per-source counts once a second (the
            // peers' timers do it too, but a device without peers has none).
            st.rate_limiter.try_reset_count();
            st.strict_limiter.try_reset_count();
            (st.peers.values().cloned().collect(), st.sockets.clone())
        };
        let udp = sockets.sender(0);
        if last_mtu_read.elapsed() >= Duration::from_secs(1) {
            shared.refresh_tun_mtu();
            last_mtu_read = Instant::now();
        }
        let now_ms = shared.now_ms();
        for peer in peers {
            let tick = peer.tick(now_ms);
            if let Some(endpoint) = tick.endpoint {
                for message in tick.messages {
                    send_message(&shared, udp, &peer, endpoint, &message);
                }
            }
        }
    }
}
