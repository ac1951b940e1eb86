//! A worker: one TUN queue and one UDP socket, both directions.
//!
//! The device runs one worker per queue. The kernel steers each flow to one
//! TUN queue (and the replies of a flow to the queue its packets were
//! written on), and each peer's datagrams to one socket of the reuse-port
//! group, so a flow is only ever handled by one worker, in order, while
//! different flows and peers spread over the workers and the cores.
//!
//! A worker serves both directions of its queue: a request it decrypts and
//! writes to the TUN is often answered on the same queue at once, and the
//! worker finds the answer on its next step without being woken for it.
//! It sleeps (in `poll`) only when both its queue and its socket are empty.

use crate::inbound::Inbound;
use crate::outbound::{Outbound, Step};
use crate::shared::Shared;
use std::os::fd::AsRawFd;
use std::sync::Arc;

/// How long a poll waits at most; bounds how late a missed signal is seen.
const POLL_TIMEOUT_MS: i32 = 1000;

pub(crate) fn run(shared: Arc<Shared>, index: usize) {
    let tun = &shared.queues[index];
    let mut outbound = Outbound::new();
    let mut inbound = Inbound::new(tun);
    while !shared.is_stopping() {
        let generation = shared.sockets_generation();
        let sockets = shared.state.read().sockets.clone();
        // A device handed fewer sockets than it has queues receives on the
        // ones it has; every worker can send from any of them.
        let receiver = sockets.receiver(index);
        let sender = sockets.sender(index);
        loop {
            if shared.is_stopping() {
                return;
            }
            if shared.sockets_generation() != generation {
                break;
            }
            let out = outbound.step(&shared, tun, sender);
            if out == Step::Gone {
                return;
            }
            let received = receiver.is_some_and(|udp| inbound.step(&shared, tun, udp));
            if out == Step::Idle && !received {
                wait(
                    &shared,
                    index,
                    tun.as_raw_fd(),
                    receiver.map(|u| u.raw_fd()),
                );
            }
        }
    }
}

/// Sleeps until the queue or the socket has something, or a stop or a
/// socket change wakes us.
fn wait(shared: &Shared, index: usize, tun_fd: i32, udp_fd: Option<i32>) {
    let wake = shared.wake_fd(index);
    let mut fds = [
        pollfd(shared.stop_fd.raw()),
        pollfd(wake.raw()),
        pollfd(tun_fd),
        pollfd(udp_fd.unwrap_or(-1)),
    ];
    // SAFETY: valid pollfds (a negative fd is ignored by poll).
    let rc = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, POLL_TIMEOUT_MS) };
    if rc > 0 && fds[1].revents != 0 {
        wake.drain();
    }
}

fn pollfd(fd: i32) -> libc::pollfd {
    libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    }
}
