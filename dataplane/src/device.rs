//! The device: a multi-queue TUN interface, a group of UDP sockets on one
//! port, the peer table, one worker per queue (both directions, see
//! `worker.rs`) and the timers. Configuration goes through
//! [`Device::apply`] (the same model as the UAPI `set`) and is read back with
//! [`Device::info`].

use crate::allowed_ips::AllowedIps;
use crate::config::{DeviceInfo, DeviceUpdate, PeerInfo, PeerUpdate};
use crate::key::{PrivateKey, PublicKey};
use crate::peer::{Peer, StaticIdentity};
use crate::reachability::Reachability;
use crate::shared::{Shared, State};
use crate::udp::UdpSockets;
use crate::{outbound, timers, worker};
use gotatun::noise::index_table::IndexTable;
use gotatun::noise::rate_limiter::RateLimiter;
use gotatun::x25519;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;
use tun_rs::{DeviceBuilder, SyncDevice};

/// Handshake messages one source address may send per second before it must
/// prove that it owns the address with a cookie (the kernel takes 20 per
/// second from a source; another source is never affected).
const HANDSHAKE_RATE_LIMIT: u64 = 20;
/// Workers (TUN queues) at most, however many cores there are: past this
/// the peer locks, not the cores, limit a device.
pub const MAX_WORKERS: usize = 16;

/// One worker per core this process may run on, up to [`MAX_WORKERS`].
pub fn default_workers() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(MAX_WORKERS)
}

/// How a device is created.
#[derive(Debug, Clone)]
pub struct DeviceOptions {
    /// Interface name, at most 15 bytes.
    pub name: String,
    /// Interface MTU; 1420 fits WireGuard over a 1500-byte path on IPv6.
    pub mtu: u16,
    /// Ask the kernel for TSO/USO super-packets and hand it GRO-coalesced ones.
    pub offload: bool,
    /// Workers, each with a TUN queue and a UDP socket of its own (1 to
    /// [`MAX_WORKERS`]).
    pub workers: usize,
}

impl DeviceOptions {
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            mtu: 1420,
            offload: true,
            workers: default_workers(),
        }
    }

    fn worker_count(&self) -> usize {
        self.workers.clamp(1, MAX_WORKERS)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("invalid interface name {0:?}: 1 to 15 characters, no '/', whitespace or ':'")]
    InvalidName(String),
    #[error(
        "interface {0} exists already (another process runs it; to take it over, use --take-over)"
    )]
    Exists(String),
    #[error("cannot create TUN interface {name}: {source}")]
    Tun { name: String, source: io::Error },
    #[error("cannot bind UDP port {port}: {source}")]
    Bind { port: u16, source: io::Error },
    #[error("{0}")]
    Io(#[from] io::Error),
}

impl DeviceError {
    /// The errno a UAPI client is told.
    pub fn errno(&self) -> i32 {
        match self {
            DeviceError::Bind { source, .. } => source.raw_os_error().unwrap_or(libc::EADDRINUSE),
            DeviceError::InvalidName(_) => libc::EINVAL,
            DeviceError::Exists(_) => libc::EEXIST,
            _ => libc::EIO,
        }
    }
}

/// A running userspace WireGuard interface.
pub struct Device {
    shared: Arc<Shared>,
    workers: Mutex<Vec<JoinHandle<()>>>,
}

fn valid_ifname(name: &str) -> bool {
    !name.is_empty()
        && name.len() < libc::IFNAMSIZ
        && name != "."
        && name != ".."
        && !name
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace() || c == '\0')
}

impl Device {
    /// Creates the TUN interface (down, like wireguard-go leaves it) with a
    /// queue per worker, binds a random UDP port and starts the workers. The
    /// device has no key and no peers until [`Device::apply`] gives it some.
    /// An interface of that name must not exist yet (another process would
    /// be running it).
    pub fn create(options: &DeviceOptions) -> Result<Self, DeviceError> {
        if !valid_ifname(&options.name) {
            return Err(DeviceError::InvalidName(options.name.clone()));
        }
        if interface_exists(&options.name) {
            return Err(DeviceError::Exists(options.name.clone()));
        }
        let queues = open_tun(options, false)?;
        let sockets = UdpSockets::bind(0, 0, queues.len())
            .map_err(|source| DeviceError::Bind { port: 0, source })?;
        let device = Self::assemble(options, queues, sockets)?;
        device.start()?;
        Ok(device)
    }

    /// Joins the existing interface `options.name` with a queue per worker
    /// and takes `sockets` as its own, for a process taking over a running
    /// device (see [`crate::handoff`]). The workers are not started: the
    /// caller applies the configuration first, then calls [`Device::start`].
    pub fn adopt(options: &DeviceOptions, sockets: UdpSockets) -> Result<Self, DeviceError> {
        if !valid_ifname(&options.name) {
            return Err(DeviceError::InvalidName(options.name.clone()));
        }
        let queues = open_tun(options, true)?;
        Self::assemble(options, queues, sockets)
    }

    fn assemble(
        options: &DeviceOptions,
        queues: Vec<SyncDevice>,
        sockets: UdpSockets,
    ) -> Result<Self, DeviceError> {
        for q in &queues {
            q.set_nonblocking(true)?;
        }
        let first = sockets.sender(0);
        tracing::info!(
            interface = %options.name,
            workers = queues.len(),
            tun_offload = queues[0].tcp_gso(),
            udp_gso_segments = first.max_gso_segments(),
            udp_gro_segments = first.gro_segments(),
            port = sockets.port(),
            "device created"
        );
        let placeholder = x25519::PublicKey::from([0u8; 32]);
        let state = State {
            identity: None,
            private_key: None,
            listen_port: 0,
            fwmark: 0,
            sockets: Arc::new(sockets),
            rate_limiter: Arc::new(RateLimiter::new(&placeholder, HANDSHAKE_RATE_LIMIT)),
            strict_limiter: Arc::new(RateLimiter::new(&placeholder, 0)),
            index_table: IndexTable::from_os_rng(),
            peers: HashMap::new(),
            allowed_ips: AllowedIps::new(),
        };
        let shared = Arc::new(Shared::new(options.name.clone(), queues, state)?);
        shared.refresh_tun_mtu();
        Ok(Self {
            shared,
            workers: Mutex::new(Vec::new()),
        })
    }

    /// Starts the workers (a no-op while they run).
    pub fn start(&self) -> Result<(), DeviceError> {
        let mut workers = self.workers.lock();
        if !workers.is_empty() {
            return Ok(());
        }
        for index in 0..self.shared.queues.len() {
            let s = self.shared.clone();
            workers.push(
                std::thread::Builder::new()
                    .name(format!("weft-worker-{index}"))
                    .spawn(move || worker::run(s, index))?,
            );
        }
        let s = self.shared.clone();
        workers.push(
            std::thread::Builder::new()
                .name("weft-timers".into())
                .spawn(move || timers::run(s))?,
        );
        Ok(())
    }

    /// Stops the workers and waits for them, leaving the interface, the
    /// socket and the peers as they are; [`Device::start`] resumes.
    pub fn pause(&self) {
        let mut workers = self.workers.lock();
        self.shared.set_pausing(true);
        for w in workers.drain(..) {
            let _ = w.join();
        }
        self.shared.set_pausing(false);
    }

    /// Takes this process's queues off the interface (the kernel then steers
    /// every packet to the other queues), or puts them back.
    pub fn set_queues_attached(&self, attached: bool) -> io::Result<()> {
        for q in &self.shared.queues {
            // SAFETY: an all-zero ifreq is a valid value; only the flags are read.
            let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
            req.ifr_ifru.ifru_flags = if attached {
                libc::IFF_ATTACH_QUEUE
            } else {
                libc::IFF_DETACH_QUEUE
            } as libc::c_short;
            // SAFETY: TUNSETQUEUE on our own TUN descriptor with a valid ifreq.
            let rc = unsafe { libc::ioctl(q.as_raw_fd(), libc::TUNSETQUEUE, &mut req) };
            if rc < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(())
    }

    /// The UDP sockets' descriptors (to hand them to a successor).
    pub fn udp_fds(&self) -> Vec<RawFd> {
        self.shared.state.read().sockets.raw_fds()
    }

    /// How many workers (TUN queues) the device runs.
    pub fn workers(&self) -> usize {
        self.shared.queues.len()
    }

    /// Sends every peer a keepalive, which starts a handshake where there
    /// is no session (a process that took a device over has none).
    pub fn greet_all(&self) {
        let peers: Vec<Arc<Peer>> = self.shared.state.read().peers.values().cloned().collect();
        for peer in peers {
            outbound::send_keepalive(&self.shared, &peer);
        }
    }

    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// The first TUN queue's descriptor, e.g. to check it is still open.
    pub fn tun_fd(&self) -> RawFd {
        self.shared.queues[0].as_raw_fd()
    }

    /// Whether the TUN device hands us offloaded (TSO) super-packets.
    pub fn offload(&self) -> bool {
        self.shared.queues[0].tcp_gso()
    }

    /// Applies a configuration change atomically: on error nothing changed.
    /// New peers, peers at a new endpoint and peers given a new keepalive
    /// are greeted at once (see below).
    pub fn apply(&self, update: &DeviceUpdate) -> Result<(), DeviceError> {
        let greet = self.change(update)?;
        // Greet new peers, peers at a new endpoint and peers given a new
        // keepalive at once: the keepalive starts a handshake when there is
        // no session. A restarted node thus re-establishes its tunnels within
        // a round trip instead of waiting for the other side to notice the
        // silence (15 s), and a node behind NAT becomes reachable at once.
        for peer in greet {
            outbound::send_keepalive(&self.shared, &peer);
        }
        Ok(())
    }

    /// As [`Device::apply`] without greeting anyone: for a device taking
    /// over, whose predecessor still reads the socket.
    pub fn configure(&self, update: &DeviceUpdate) -> Result<(), DeviceError> {
        self.change(update).map(|_| ())
    }

    /// Applies `update`; returns the peers to greet.
    fn change(&self, update: &DeviceUpdate) -> Result<Vec<Arc<Peer>>, DeviceError> {
        let mut greet = Vec::new();
        {
            let mut st = self.shared.state.write();
            // Binding a new socket is the only step that can fail, so it comes
            // before anything is changed. Asking for the port we already hold
            // (as `wg setconf` of a `wg showconf` does) keeps the socket.
            let port = update.listen_port.unwrap_or(st.listen_port);
            let fwmark = update.fwmark.unwrap_or(st.fwmark);
            if port != 0 && port != st.sockets.port() {
                let sockets = UdpSockets::bind(port, fwmark, self.shared.queues.len())
                    .map_err(|source| DeviceError::Bind { port, source })?;
                tracing::info!(port, fwmark, "listening");
                self.shared.replace_sockets(&mut st, sockets);
            } else if fwmark != st.fwmark {
                st.sockets
                    .set_fwmark(fwmark)
                    .map_err(|source| DeviceError::Bind { port, source })?;
            }
            st.listen_port = port;
            st.fwmark = fwmark;
            let mut new_identity = false;
            if let Some(key) = &update.private_key {
                new_identity = set_private_key(&self.shared, &mut st, key);
            }
            if update.replace_peers {
                st.peers.clear();
                self.shared.indices.clear();
                st.allowed_ips = AllowedIps::new();
            }
            for pu in &update.peers {
                if let Some(peer) = apply_peer(&self.shared, &mut st, pu) {
                    greet.push(peer);
                }
            }
            if new_identity {
                greet = st.peers.values().cloned().collect();
            }
        }
        Ok(greet)
    }

    /// The current configuration and counters.
    pub fn info(&self) -> DeviceInfo {
        let st = self.shared.state.read();
        let mut allowed: HashMap<PublicKey, Vec<_>> = HashMap::new();
        for (prefix, peer) in st.allowed_ips.iter() {
            allowed.entry(peer.public_key).or_default().push(prefix);
        }
        let mut peers: Vec<PeerInfo> = st
            .peers
            .values()
            .map(|p| {
                let mut ips = allowed.remove(&p.public_key).unwrap_or_default();
                ips.sort();
                // Its own statement: a guard held across the struct literal
                // would deadlock with last_handshake() below.
                let preshared_key = p.preshared_key().filter(|k| !k.is_zero());
                let (rx_bytes, tx_bytes) = p.transfer();
                PeerInfo {
                    public_key: p.public_key,
                    preshared_key,
                    endpoint: p.endpoint(),
                    last_handshake: p.last_handshake(),
                    rx_bytes,
                    tx_bytes,
                    persistent_keepalive: p.persistent_keepalive(),
                    allowed_ips: ips,
                    reachable: match p.reachability() {
                        Reachability::Unknown => None,
                        Reachability::Reachable => Some(true),
                        Reachability::Unreachable => Some(false),
                    },
                }
            })
            .collect();
        peers.sort_by_key(|p| p.public_key);
        DeviceInfo {
            private_key: st.private_key.clone(),
            public_key: st.private_key.as_ref().map(PrivateKey::public_key),
            listen_port: st.sockets.port(),
            fwmark: st.fwmark,
            peers,
        }
    }

    /// Blocks until the device stops (TUN removed or [`Device::stop`]) and
    /// returns why.
    pub fn wait(&self) -> String {
        self.shared.wait_stopped(None).unwrap_or_default()
    }

    /// Waits up to `timeout` for the device to stop; `None` if it is running.
    pub fn wait_timeout(&self, timeout: Duration) -> Option<String> {
        self.shared.wait_stopped(Some(timeout))
    }

    /// Asks the workers to stop; the interface goes away when the device is dropped.
    pub fn stop(&self, reason: &str) {
        self.shared.stop(reason);
    }

    /// A handle that can stop the device from another thread (a signal handler).
    pub fn stopper(&self) -> Stopper {
        Stopper(self.shared.clone())
    }
}

/// Stops a device from elsewhere.
#[derive(Clone)]
pub struct Stopper(Arc<Shared>);

impl Stopper {
    pub fn stop(&self, reason: &str) {
        self.0.stop(reason);
    }
}

impl Drop for Device {
    fn drop(&mut self) {
        self.shared.stop("device dropped");
        for w in self.workers.lock().drain(..) {
            let _ = w.join();
        }
    }
}

impl crate::uapi::UapiHandler for Device {
    fn get(&self) -> DeviceInfo {
        self.info()
    }
    fn set(&self, update: DeviceUpdate) -> Result<(), i32> {
        self.apply(&update).map_err(|e| {
            tracing::warn!("uapi set failed: {e}");
            e.errno()
        })
    }
}

/// Opens a queue per worker of the TUN interface: a new interface, or
/// (`attach`) more queues of an existing one, left as it is (MTU, up or
/// down). A successor process joins the same way before this one leaves, so
/// the interface (with its routes) outlives a handoff.
fn open_tun(options: &DeviceOptions, attach: bool) -> Result<Vec<SyncDevice>, DeviceError> {
    let first = open_first_queue(options, attach)?;
    let mut queues = Vec::with_capacity(options.worker_count());
    for _ in 1..options.worker_count() {
        // The same flags and offloads as the first.
        queues.push(first.try_clone().map_err(|source| DeviceError::Tun {
            name: options.name.clone(),
            source,
        })?);
    }
    queues.insert(0, first);
    Ok(queues)
}

fn open_first_queue(options: &DeviceOptions, attach: bool) -> Result<SyncDevice, DeviceError> {
    let build = |offload: bool| {
        let b = DeviceBuilder::new()
            .name(&options.name)
            .offload(offload)
            .multi_queue(true);
        if attach {
            b.inherit_enable_state().build_sync()
        } else {
            b.mtu(options.mtu).enable(false).build_sync()
        }
    };
    let tun_err = |source| DeviceError::Tun {
        name: options.name.clone(),
        source,
    };
    if options.offload {
        match build(true) {
            Ok(t) => return Ok(t),
            Err(e) => tracing::warn!("TUN offload unavailable ({e}); one packet per read"),
        }
    }
    build(false).map_err(tun_err)
}

/// Whether a network interface of this name exists in our namespace.
pub fn interface_exists(name: &str) -> bool {
    let Ok(c) = std::ffi::CString::new(name) else {
        return false;
    };
    // SAFETY: if_nametoindex reads a NUL-terminated string we own.
    unsafe { libc::if_nametoindex(c.as_ptr()) != 0 }
}

/// Sets or clears the key; true if the device now has a new identity.
fn set_private_key(shared: &Shared, st: &mut State, key: &PrivateKey) -> bool {
    if st.private_key.as_ref() == Some(key) || (key.is_zero() && st.private_key.is_none()) {
        return false;
    }
    if key.is_zero() {
        st.private_key = None;
        st.identity = None;
    } else {
        let secret = key.to_x25519();
        let public = x25519::PublicKey::from(&secret);
        // A peer with our own public key makes no sense; wg drops it too.
        let own = PublicKey(public.to_bytes());
        if let Some(p) = st.peers.remove(&own) {
            remove_peer_routes(shared, st, &p);
        }
        st.rate_limiter = Arc::new(RateLimiter::new(&public, HANDSHAKE_RATE_LIMIT));
        st.strict_limiter = Arc::new(RateLimiter::new(&public, 0));
        st.private_key = Some(key.clone());
        st.identity = Some(StaticIdentity { secret, public });
    }
    for peer in st.peers.values() {
        shared.indices.forget(peer);
        peer.reset_tunnel(st.identity.as_ref(), &st.rate_limiter, &st.index_table);
    }
    st.identity.is_some()
}

fn remove_peer_routes(shared: &Shared, st: &mut State, peer: &Arc<Peer>) {
    shared.indices.forget(peer);
    st.allowed_ips.retain(|p| !Arc::ptr_eq(p, peer));
}

/// Applies one peer's changes; returns the peer if it should be greeted now
/// (new, moved to another endpoint, or given a new persistent keepalive).
fn apply_peer(shared: &Shared, st: &mut State, pu: &PeerUpdate) -> Option<Arc<Peer>> {
    if pu.remove {
        if let Some(p) = st.peers.remove(&pu.public_key) {
            remove_peer_routes(shared, st, &p);
        }
        return None;
    }
    if st.identity.as_ref().map(|id| id.public.to_bytes()) == Some(pu.public_key.0) {
        return None;
    }
    let mut greet = false;
    let peer = match st.peers.get(&pu.public_key) {
        Some(p) => p.clone(),
        None if pu.update_only => return None,
        None => {
            let peer = Arc::new(Peer::new(pu.public_key, pu.preshared_key));
            peer.reset_tunnel(st.identity.as_ref(), &st.rate_limiter, &st.index_table);
            st.peers.insert(pu.public_key, peer.clone());
            greet = true;
            peer
        }
    };
    if let Some(psk) = pu.preshared_key {
        if peer.preshared_key() != Some(psk) {
            peer.set_preshared_key(psk);
        }
    }
    if let Some(ep) = pu.endpoint {
        let old = peer.set_endpoint(ep);
        greet |= old != Some(ep);
    }
    if pu.replace_allowed_ips {
        st.allowed_ips.retain(|p| !Arc::ptr_eq(p, &peer));
    }
    for prefix in &pu.allowed_ips {
        st.allowed_ips.insert(*prefix, peer.clone());
    }
    if let Some(secs) = pu.persistent_keepalive {
        let old = peer.set_persistent_keepalive(secs);
        greet |= secs > 0 && old != secs;
    }
    greet.then_some(peer)
}
