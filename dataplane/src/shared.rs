//! What the workers of one device share: the TUN queues, the configuration
//! and peers ([`State`]), and the stop and wake signals. The device builds
//! it and starts the workers; the workers (the per-queue workers and the
//! timers) reach everything through it, never through the device.

use crate::allowed_ips::AllowedIps;
use crate::handshake_budget::HandshakeBudget;
use crate::index::PeerIndex;
use crate::key::{PrivateKey, PublicKey};
use crate::peer::{Peer, StaticIdentity};
use crate::udp::UdpSockets;
use gotatun::noise::index_table::IndexTable;
use gotatun::noise::rate_limiter::RateLimiter;
use parking_lot::{Condvar, Mutex, RwLock};
use std::collections::HashMap;
use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;
use tun_rs::SyncDevice;

/// The configuration and the peers, behind one lock: workers take it for
/// reading once per batch; configuration changes take it for writing.
pub(crate) struct State {
    pub(crate) identity: Option<StaticIdentity>,
    pub(crate) private_key: Option<PrivateKey>,
    pub(crate) listen_port: u16,
    pub(crate) fwmark: u32,
    pub(crate) sockets: Arc<UdpSockets>,
    /// mac1, and cookies for a source past its rate.
    pub(crate) rate_limiter: Arc<RateLimiter>,
    /// The same checks with a cookie asked of every source: used while the
    /// device is under load (see [`crate::handshake_budget`]).
    pub(crate) strict_limiter: Arc<RateLimiter>,
    /// Where every peer's handshakes draw their random receiver indices.
    pub(crate) index_table: IndexTable,
    pub(crate) peers: HashMap<PublicKey, Arc<Peer>>,
    pub(crate) allowed_ips: AllowedIps<Arc<Peer>>,
}

/// An eventfd used as a level-triggered flag that workers poll alongside their
/// socket or TUN descriptor.
pub(crate) struct EventFd(RawFd);

impl EventFd {
    pub(crate) fn new() -> io::Result<Self> {
        // SAFETY: eventfd(2) with valid flags.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Self(fd))
    }
    pub(crate) fn raw(&self) -> RawFd {
        self.0
    }
    pub(crate) fn signal(&self) {
        let one: u64 = 1;
        // SAFETY: writing 8 bytes from a live u64 to our eventfd.
        unsafe { libc::write(self.0, &one as *const u64 as *const libc::c_void, 8) };
    }
    pub(crate) fn drain(&self) {
        let mut v: u64 = 0;
        // SAFETY: reading 8 bytes into a live u64 from our nonblocking eventfd.
        unsafe { libc::read(self.0, &mut v as *mut u64 as *mut libc::c_void, 8) };
    }
}

impl Drop for EventFd {
    fn drop(&mut self) {
        // SAFETY: we own the descriptor.
        unsafe { libc::close(self.0) };
    }
}

pub(crate) struct Shared {
    pub(crate) name: String,
    /// One TUN queue per worker; the kernel spreads flows over them.
    pub(crate) queues: Vec<SyncDevice>,
    pub(crate) state: RwLock<State>,
    /// Receiver index -> peer, learnt from the handshakes we send; its own
    /// lock, since workers learn while they hold `state` for reading.
    pub(crate) indices: PeerIndex,
    /// The TUN's MTU, which caps the padding of data messages.
    tun_mtu: AtomicU16,
    /// Handshakes that may cost a Diffie-Hellman, per source and in all.
    pub(crate) handshakes: HandshakeBudget,
    stopping: AtomicBool,
    /// Set while the workers are asked to stop for a while (a handoff).
    pausing: AtomicBool,
    /// Signalled once on stop and never drained, so every worker sees it.
    pub(crate) stop_fd: EventFd,
    /// Bumped when the sockets are replaced, so that busy workers switch.
    sockets_generation: AtomicU64,
    /// One per worker: wakes it from its poll to switch sockets.
    wake_fds: Vec<EventFd>,
    epoch: Instant,
    stop_reason: Mutex<Option<String>>,
    stopped: Condvar,
}

impl Shared {
    pub(crate) fn new(name: String, queues: Vec<SyncDevice>, state: State) -> io::Result<Self> {
        let wake_fds = (0..queues.len())
            .map(|_| EventFd::new())
            .collect::<io::Result<_>>()?;
        Ok(Self {
            name,
            queues,
            state: RwLock::new(state),
            indices: PeerIndex::default(),
            tun_mtu: AtomicU16::new(0),
            handshakes: HandshakeBudget::default(),
            stopping: AtomicBool::new(false),
            pausing: AtomicBool::new(false),
            stop_fd: EventFd::new()?,
            sockets_generation: AtomicU64::new(0),
            wake_fds,
            epoch: Instant::now(),
            stop_reason: Mutex::new(None),
            stopped: Condvar::new(),
        })
    }

    /// The TUN's MTU as last read (0 before the first read: no cap).
    pub(crate) fn tun_mtu(&self) -> u16 {
        self.tun_mtu.load(Ordering::Relaxed)
    }

    /// Reads the TUN's MTU again (it may be changed under us with `ip link`).
    pub(crate) fn refresh_tun_mtu(&self) {
        if let Some(mtu) = self.queues.first().and_then(|q| q.mtu().ok()) {
            self.tun_mtu.store(mtu, Ordering::Relaxed);
        }
    }

    pub(crate) fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    pub(crate) fn stop(&self, reason: &str) {
        let mut r = self.stop_reason.lock();
        if r.is_none() {
            tracing::info!(interface = %self.name, "stopping: {reason}");
            *r = Some(reason.to_string());
        }
        self.stopping.store(true, Ordering::SeqCst);
        self.stop_fd.signal();
        self.stopped.notify_all();
    }

    /// Whether the workers should leave their loops (a stop or a pause).
    pub(crate) fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::Relaxed) || self.pausing.load(Ordering::Relaxed)
    }

    /// Asks the workers to leave their loops for a while; `false` lets
    /// them run again.
    pub(crate) fn set_pausing(&self, pausing: bool) {
        self.pausing.store(pausing, Ordering::SeqCst);
        if pausing {
            self.stop_fd.signal();
        } else {
            self.stop_fd.drain();
        }
    }

    /// Replaces the sockets (the caller holds the state for writing) and
    /// tells the workers.
    pub(crate) fn replace_sockets(&self, st: &mut State, sockets: UdpSockets) {
        st.sockets = Arc::new(sockets);
        self.sockets_generation.fetch_add(1, Ordering::SeqCst);
        for w in &self.wake_fds {
            w.signal();
        }
    }

    pub(crate) fn sockets_generation(&self) -> u64 {
        self.sockets_generation.load(Ordering::Relaxed)
    }

    pub(crate) fn wake_fd(&self, worker: usize) -> &EventFd {
        &self.wake_fds[worker]
    }

    /// Waits for the stop reason (None: not yet) until `timeout`, or for
    /// ever without one.
    pub(crate) fn wait_stopped(&self, timeout: Option<std::time::Duration>) -> Option<String> {
        let mut r = self.stop_reason.lock();
        match timeout {
            None => {
                while r.is_none() {
                    self.stopped.wait(&mut r);
                }
            }
            Some(t) if r.is_none() => {
                self.stopped.wait_for(&mut r, t);
            }
            Some(_) => {}
        }
        r.clone()
    }
}
