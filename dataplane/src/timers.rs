//! The timer worker: about every tenth of a second it asks each peer what
//! its clock calls for ([`Peer::tick`]: the core's timers, recovery,
//! persistent keepalives) and sends it, resets the handshake rate limiters'
//! counts, and follows the TUN's MTU (at once when a link changes, and
//! once a second in case a notification was missed).

use crate::link_events::LinkEvents;
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
    // Without the notifications (no netlink here), the periodic look alone.
    let links = match LinkEvents::open() {
        Ok(l) => Some(l),
        Err(e) => {
            tracing::warn!("no link notifications ({e}): the TUN's MTU is read once a second");
            None
        }
    };
    while !shared.is_stopping() {
        let mut pfds = [
            libc::pollfd {
                fd: shared.stop_fd.raw(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: links.as_ref().map_or(-1, LinkEvents::raw),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: two valid pollfds (poll ignores a negative fd).
        unsafe { libc::poll(pfds.as_mut_ptr(), 2, TICK.as_millis() as i32) };
        if shared.is_stopping() {
            return;
        }
        if pfds[1].revents != 0 && links.as_ref().is_some_and(LinkEvents::drain) {
            shared.refresh_tun_mtu();
            last_mtu_read = Instant::now();
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
