//! The timer worker: drives boringtun's protocol timers (handshake retries,
//! rekeying, session expiry, passive keepalives), sends persistent keepalives,
//! and refills the handshake rate limiter.

use crate::outbound::send_keepalive;
use crate::peer::Peer;
use crate::reachability::UNREACHABLE_AFTER_MS;
use crate::shared::Shared;
use boringtun::noise::TunnResult;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often timers are checked. WireGuard's timers are in seconds; 100 ms
/// keeps retries and keepalives within a tenth of a second of due.
const TICK: Duration = Duration::from_millis(100);

pub(crate) fn run(shared: Arc<Shared>) {
    let mut buf = vec![0u8; 256];
    let mut last_reset = Instant::now();
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
        let (peers, sockets, limiter): (Vec<Arc<Peer>>, _, _) = {
            let st = shared.state.read();
            (
                st.peers.values().cloned().collect(),
                st.sockets.clone(),
                st.rate_limiter.clone(),
            )
        };
        let udp = sockets.sender(0);
        if last_reset.elapsed() >= Duration::from_secs(1) {
            limiter.reset_count();
            last_reset = Instant::now();
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
                    tunn.format_handshake_initiation(&mut buf, true)
                } else {
                    tunn.update_timers(&mut buf)
                };
                match result {
                    TunnResult::WriteToNetwork(msg) => {
                        if let Some(ep) = endpoint {
                            let n = msg.len();
                            if udp.send(ep, &buf[..n], n).is_ok() {
                                peer.sent(&buf[..n], n, now_ms.max(1));
                            }
                        }
                    }
                    TunnResult::Err(e) => tracing::trace!(peer = %peer.public_key, "timers: {e:?}"),
                    _ => {}
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
