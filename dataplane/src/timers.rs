//! The timer worker: drives the core's protocol timers (handshake retries,
//! rekeying, session expiry, passive keepalives), resets the handshake rate
//! limiters' counts, sends persistent keepalives, and follows the TUN's MTU.

use crate::outbound::{send_keepalive, send_message};
use crate::peer::Peer;
use crate::reachability::UNREACHABLE_AFTER_MS;
use crate::shared::Shared;
use gotatun::packet::Packet;
use std::sync::atomic::Ordering;
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
            let endpoint = peer.endpoint();
            {
                let mut tunnel = peer.tunnel.lock();
                let Some(tunn) = tunnel.tunn.as_mut() else {
                    continue;
                };
                let due = peer.reachability.tick(now_ms.max(1));
                if due.became_unreachable {
                    tracing::warn!(
                        peer = %peer.public_key,
                        endpoint = ?endpoint,
                        "peer unreachable: no answer to handshakes for {} s",
                        UNREACHABLE_AFTER_MS / 1000
                    );
                }
                let result = if due.recover {
                    // Our data goes out and nothing comes back: the peer may
                    // have lost the session (a restart, a replaced config).
                    tracing::debug!(peer = %peer.public_key, "silent session; new handshake");
                    Ok(tunn.format_handshake_initiation(true).map(Into::into))
                } else {
                    tunn.update_timers()
                };
                match result {
                    Ok(Some(message)) => {
                        if let Some(ep) = endpoint {
                            send_message(&shared, udp, &peer, ep, &Packet::from(message));
                        }
                    }
                    Err(e) => tracing::trace!(peer = %peer.public_key, "timers: {e:?}"),
                    Ok(None) => {}
                }
            }
            let keepalive = u64::from(peer.keepalive.load(Ordering::Relaxed)) * 1000;
            if keepalive > 0
                && now_ms.saturating_sub(peer.last_sent_ms.load(Ordering::Relaxed)) >= keepalive
            {
                send_keepalive(&shared, &peer);
            }
        }
    }
}
