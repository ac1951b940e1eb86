//! The UDP socket layer: one dual-stack socket, batched receive (recvmmsg with
//! UDP GRO) and segmented send (UDP GSO), all through `quinn-udp`, which probes
//! GSO/GRO support at run time and falls back to one datagram per syscall.
//!
//! Why quinn-udp rather than hand-written `socket2` + libc: it already carries
//! the cmsg plumbing, the run-time GSO probe and the EIO fallback (GSO refused
//! by a device without checksum offload), and it reuses its control buffers per
//! call, so a batch costs no allocation. What it does not do we add here:
//! forced socket buffer sizes and back-pressure on a full send buffer.

use quinn_udp::{RecvMeta, Transmit, UdpSockRef, UdpSocketState};
use std::io::{self, IoSliceMut};
use std::net::{IpAddr, SocketAddr, SocketAddrV6, UdpSocket as StdUdpSocket};
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::time::Duration;

/// Socket buffers we ask for. The kernel default (208 KiB) overflows at a few
/// Gbit/s of bursty GSO traffic; the *FORCE variants bypass `rmem_max`, which
/// cannot be raised from inside a network namespace.
pub const SOCKET_BUFFER_BYTES: usize = 8 << 20;

/// The largest payload one GSO send may carry (the IP total length is 16 bits).
pub const MAX_GSO_BYTES: usize = 65_000;

pub struct UdpSocket {
    socket: StdUdpSocket,
    state: UdpSocketState,
    dual_stack: bool,
    port: u16,
}

fn setsockopt_int(fd: RawFd, level: i32, name: i32, value: i32) -> io::Result<()> {
    // SAFETY: fd is a live socket; the option value is a plain c_int.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            &value as *const i32 as *const libc::c_void,
            std::mem::size_of::<i32>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

impl UdpSocket {
    /// Binds `port` (0 = random) on all addresses, IPv6 and IPv4 on one socket
    /// when the host has IPv6, IPv4 only otherwise. `reuse_port` lets more
    /// sockets of this process join the port (see [`UdpSockets`]).
    pub fn bind(port: u16, fwmark: u32, reuse_port: bool) -> io::Result<Self> {
        let (socket, dual_stack) = match Self::bind_raw(libc::AF_INET6, port, reuse_port) {
            Ok(s) => (s, true),
            Err(e) => {
                tracing::debug!("IPv6 socket unavailable ({e}); using IPv4 only");
                (Self::bind_raw(libc::AF_INET, port, reuse_port)?, false)
            }
        };
        let fd = socket.as_raw_fd();
        for (force, plain) in [
            (libc::SO_RCVBUFFORCE, libc::SO_RCVBUF),
            (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF),
        ] {
            let bytes = SOCKET_BUFFER_BYTES as i32;
            if setsockopt_int(fd, libc::SOL_SOCKET, force, bytes).is_err() {
                // Without CAP_NET_ADMIN: take what rmem_max/wmem_max allow.
                let _ = setsockopt_int(fd, libc::SOL_SOCKET, plain, bytes);
            }
        }
        let state = UdpSocketState::new(UdpSockRef::from(&socket))?;
        let port = socket.local_addr()?.port();
        let socket = Self {
            socket,
            state,
            dual_stack,
            port,
        };
        if fwmark != 0 {
            socket.set_fwmark(fwmark)?;
        }
        Ok(socket)
    }

    /// Takes over a bound socket (handed over by the process that ran the
    /// device before), keeping its port and buffers.
    pub fn from_owned(fd: std::os::fd::OwnedFd) -> io::Result<Self> {
        let socket = StdUdpSocket::from(fd);
        let local = socket.local_addr()?;
        let dual_stack = local.is_ipv6();
        socket.set_nonblocking(true)?;
        let state = UdpSocketState::new(UdpSockRef::from(&socket))?;
        Ok(Self {
            socket,
            state,
            dual_stack,
            port: local.port(),
        })
    }

    /// A socket of `family` bound to `port` on the unspecified address;
    /// an IPv6 one takes IPv4 too (mapped).
    fn bind_raw(family: i32, port: u16, reuse_port: bool) -> io::Result<StdUdpSocket> {
        // SAFETY: plain socket(2) call; the fd is owned by the returned socket.
        let fd = unsafe { libc::socket(family, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd was just created and is owned by nobody else.
        let socket = unsafe { <StdUdpSocket as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        if reuse_port {
            setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_REUSEPORT, 1)?;
        }
        let rc = if family == libc::AF_INET6 {
            setsockopt_int(fd, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, 0)?;
            let sa = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: port.to_be(),
                sin6_flowinfo: 0,
                sin6_addr: libc::in6_addr { s6_addr: [0; 16] },
                sin6_scope_id: 0,
            };
            // SAFETY: sa is a valid sockaddr_in6 of the size passed.
            unsafe {
                libc::bind(
                    fd,
                    &sa as *const libc::sockaddr_in6 as *const libc::sockaddr,
                    std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t,
                )
            }
        } else {
            let sa = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: port.to_be(),
                sin_addr: libc::in_addr { s_addr: 0 },
                sin_zero: [0; 8],
            };
            // SAFETY: sa is a valid sockaddr_in of the size passed.
            unsafe {
                libc::bind(
                    fd,
                    &sa as *const libc::sockaddr_in as *const libc::sockaddr,
                    std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
                )
            }
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(socket)
    }

    /// Marks outgoing packets for policy routing (0 clears the mark).
    pub fn set_fwmark(&self, fwmark: u32) -> io::Result<()> {
        setsockopt_int(
            self.raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_MARK,
            fwmark as i32,
        )
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn raw_fd(&self) -> RawFd {
        self.socket.as_raw_fd()
    }

    /// How many segments one send may carry (1 without GSO).
    pub fn max_gso_segments(&self) -> usize {
        self.state.max_gso_segments()
    }

    /// How many datagrams one receive buffer may hold (1 without GRO).
    pub fn gro_segments(&self) -> usize {
        self.state.gro_segments()
    }

    /// An address the socket can send to: IPv4 destinations are mapped into
    /// IPv6 on a dual-stack socket.
    fn destination(&self, dst: SocketAddr) -> SocketAddr {
        match dst {
            SocketAddr::V4(v4) if self.dual_stack => {
                SocketAddr::V6(SocketAddrV6::new(v4.ip().to_ipv6_mapped(), v4.port(), 0, 0))
            }
            other => other,
        }
    }

    /// Sends `contents` as datagrams of `segment_size` bytes (the last may be
    /// shorter) in one syscall where GSO is available. Waits, bounded, for
    /// room when the send buffer is full instead of dropping the batch.
    pub fn send(&self, dst: SocketAddr, contents: &[u8], segment_size: usize) -> io::Result<()> {
        let destination = self.destination(dst);
        let gso = self.max_gso_segments() > 1 && contents.len() > segment_size;
        if !gso && contents.len() > segment_size {
            for chunk in contents.chunks(segment_size) {
                self.send_one(destination, chunk, None)?;
            }
            return Ok(());
        }
        self.send_one(
            destination,
            contents,
            if gso { Some(segment_size) } else { None },
        )
    }

    fn send_one(
        &self,
        destination: SocketAddr,
        contents: &[u8],
        segment_size: Option<usize>,
    ) -> io::Result<()> {
        let transmit = Transmit {
            destination,
            ecn: None,
            contents,
            segment_size,
            src_ip: None,
        };
        for _ in 0..100 {
            match self
                .state
                .try_send(UdpSockRef::from(&self.socket), &transmit)
            {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    wait_fd(self.raw_fd(), libc::POLLOUT, Duration::from_millis(10));
                }
                Err(e) if e.raw_os_error() == Some(libc::EIO) && segment_size.is_some() => {
                    // The route's device cannot take GSO; quinn-udp has now
                    // turned it off, so resend this batch one by one.
                    let size = segment_size.unwrap_or(contents.len());
                    for chunk in contents.chunks(size) {
                        self.send_one(destination, chunk, None)?;
                    }
                    return Ok(());
                }
                other => return other,
            }
        }
        Err(io::Error::new(
            io::ErrorKind::WouldBlock,
            "send buffer stayed full for 1 s",
        ))
    }

    /// Receives a batch without blocking; `Ok(0)` when nothing is queued.
    pub fn recv(&self, bufs: &mut [IoSliceMut<'_>], meta: &mut [RecvMeta]) -> io::Result<usize> {
        match self.state.recv(UdpSockRef::from(&self.socket), bufs, meta) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(0),
            other => other,
        }
    }
}

/// The device's sockets: one per worker, all bound to one port with
/// SO_REUSEPORT. The kernel picks the socket for a datagram by a hash of its
/// addresses and ports, so each peer's datagrams reach one socket, and so
/// one worker, in the order they came: workers decrypt in parallel across
/// peers, never within one.
pub struct UdpSockets {
    sockets: Vec<UdpSocket>,
}

impl UdpSockets {
    /// Binds `count` sockets (at least one) to `port` (0 = a random free
    /// port). A port another socket holds is refused, even one bound with
    /// SO_REUSEPORT by a process of the same user (which the group would
    /// otherwise take in and share the traffic with).
    pub fn bind(port: u16, fwmark: u32, count: usize) -> io::Result<Self> {
        if port != 0 {
            // A socket without SO_REUSEPORT cannot share the port with anyone:
            // binding it proves the port free.
            drop(UdpSocket::bind(port, 0, false)?);
        }
        let first = UdpSocket::bind(port, fwmark, true)?;
        let port = first.port();
        let mut sockets = vec![first];
        for _ in 1..count.max(1) {
            sockets.push(UdpSocket::bind(port, fwmark, true)?);
        }
        Ok(Self { sockets })
    }

    /// Takes over sockets handed over by the process that ran the device.
    pub fn from_owned(fds: Vec<std::os::fd::OwnedFd>) -> io::Result<Self> {
        let sockets = fds
            .into_iter()
            .map(UdpSocket::from_owned)
            .collect::<io::Result<Vec<_>>>()?;
        let Some(port) = sockets.first().map(UdpSocket::port) else {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "no socket"));
        };
        if sockets.iter().any(|s| s.port() != port) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the sockets are bound to different ports",
            ));
        }
        Ok(Self { sockets })
    }

    pub fn port(&self) -> u16 {
        self.sockets[0].port()
    }

    pub fn len(&self) -> usize {
        self.sockets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sockets.is_empty()
    }

    /// The socket worker `i` receives on, if it has one.
    pub fn receiver(&self, i: usize) -> Option<&UdpSocket> {
        self.sockets.get(i)
    }

    /// The socket worker `i` sends from (any of them: they share the port).
    pub fn sender(&self, i: usize) -> &UdpSocket {
        &self.sockets[i % self.sockets.len()]
    }

    pub fn set_fwmark(&self, fwmark: u32) -> io::Result<()> {
        self.sockets.iter().try_for_each(|s| s.set_fwmark(fwmark))
    }

    pub fn raw_fds(&self) -> Vec<RawFd> {
        self.sockets.iter().map(UdpSocket::raw_fd).collect()
    }
}

impl AsFd for UdpSocket {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.socket.as_fd()
    }
}

/// The sender as a peer would see it: IPv4-mapped IPv6 shown as IPv4.
pub fn canonical(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), v6.port()),
            None => addr,
        },
        v4 => v4,
    }
}

/// Waits until `fd` is ready for `events` or `timeout` passes.
pub fn wait_fd(fd: RawFd, events: i16, timeout: Duration) -> bool {
    let mut pfd = libc::pollfd {
        fd,
        events,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    let rc = unsafe { libc::poll(&mut pfd, 1, timeout.as_millis() as i32) };
    rc > 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gso_batch_arrives_as_separate_datagrams() {
        let a = UdpSocket::bind(0, 0, false).unwrap();
        let b = UdpSocket::bind(0, 0, false).unwrap();
        let dst: SocketAddr = format!("127.0.0.1:{}", b.port()).parse().unwrap();
        // Three full segments and a short one.
        let mut payload = Vec::new();
        for i in 0..3u8 {
            payload.extend(std::iter::repeat_n(i, 1000));
        }
        payload.extend(std::iter::repeat_n(9u8, 10));
        a.send(dst, &payload, 1000).unwrap();

        let mut storage = vec![0u8; 65536];
        let mut got = Vec::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while got.len() < 4 && std::time::Instant::now() < deadline {
            wait_fd(b.raw_fd(), libc::POLLIN, Duration::from_millis(100));
            let mut meta = [RecvMeta::default()];
            let mut bufs = [IoSliceMut::new(&mut storage)];
            let n = b.recv(&mut bufs, &mut meta).unwrap();
            for m in &meta[..n] {
                assert_eq!(
                    canonical(m.addr).ip(),
                    "127.0.0.1".parse::<IpAddr>().unwrap()
                );
                for d in storage[..m.len].chunks(m.stride) {
                    got.push(d.to_vec());
                }
            }
        }
        assert_eq!(got.len(), 4);
        assert_eq!(got[1], vec![1u8; 1000]);
        assert_eq!(got[3], vec![9u8; 10]);
    }

    #[test]
    fn a_taken_port_is_refused_even_to_a_reuse_port_group() {
        // Another group (as another weft-wg would hold it) on the port.
        let other = UdpSocket::bind(0, 0, true).unwrap();
        let e = UdpSockets::bind(other.port(), 0, 2).err().expect("refused");
        assert_eq!(e.kind(), io::ErrorKind::AddrInUse);
        let plain = UdpSocket::bind(0, 0, false).unwrap();
        assert!(UdpSockets::bind(plain.port(), 0, 2).is_err());
    }

    #[test]
    fn each_sender_reaches_one_socket_of_the_group_in_order() {
        let group = UdpSockets::bind(0, 0, 2).unwrap();
        assert_eq!(group.len(), 2);
        assert_eq!(group.receiver(1).unwrap().port(), group.port());
        assert!(group.receiver(2).is_none());
        let dst: SocketAddr = format!("127.0.0.1:{}", group.port()).parse().unwrap();
        // 32 senders: the chance that the hash sends all to one socket is 2^-31.
        let senders: Vec<UdpSocket> = (0..32)
            .map(|_| UdpSocket::bind(0, 0, false).unwrap())
            .collect();
        for round in 0..10u8 {
            for (i, s) in senders.iter().enumerate() {
                s.send(dst, &[i as u8, round], 2).unwrap();
            }
        }
        // Per socket: the (sender, round) pairs in arrival order.
        let mut got: Vec<Vec<(u8, u8)>> = vec![Vec::new(), Vec::new()];
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let mut storage = vec![0u8; 65536];
        while got.iter().map(Vec::len).sum::<usize>() < 320 && std::time::Instant::now() < deadline
        {
            for (k, list) in got.iter_mut().enumerate() {
                let sock = group.receiver(k).unwrap();
                wait_fd(sock.raw_fd(), libc::POLLIN, Duration::from_millis(10));
                let mut meta = [RecvMeta::default()];
                let mut bufs = [IoSliceMut::new(&mut storage)];
                let n = sock.recv(&mut bufs, &mut meta).unwrap();
                for m in &meta[..n] {
                    for d in storage[..m.len].chunks(m.stride.max(1)) {
                        list.push((d[0], d[1]));
                    }
                }
            }
        }
        assert_eq!(got.iter().map(Vec::len).sum::<usize>(), 320);
        assert!(
            got.iter().all(|l| !l.is_empty()),
            "the group spreads senders"
        );
        for i in 0..32u8 {
            let at: Vec<usize> = (0..2)
                .filter(|k| got[*k].iter().any(|p| p.0 == i))
                .collect();
            assert_eq!(at.len(), 1, "sender {i} reached {at:?}");
            let rounds: Vec<u8> = got[at[0]]
                .iter()
                .filter(|p| p.0 == i)
                .map(|p| p.1)
                .collect();
            assert_eq!(rounds, (0..10).collect::<Vec<u8>>(), "sender {i} in order");
        }
    }

    #[test]
    fn handed_over_sockets_must_share_one_port() {
        let a = UdpSocket::bind(0, 0, false).unwrap();
        let b = UdpSocket::bind(0, 0, false).unwrap();
        let owned = |s: UdpSocket| std::os::fd::OwnedFd::from(s.socket);
        assert!(UdpSockets::from_owned(vec![owned(a), owned(b)]).is_err());
        assert!(UdpSockets::from_owned(Vec::new()).is_err());
        let g = UdpSockets::bind(0, 0, 2).unwrap();
        let port = g.port();
        let fds = g.sockets.into_iter().map(owned).collect();
        let taken = UdpSockets::from_owned(fds).unwrap();
        assert_eq!((taken.port(), taken.len()), (port, 2));
    }
}
