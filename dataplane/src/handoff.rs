//! Handing a running device to a new process: how `weft-wg --take-over`
//! upgrades the tunnel with a blackout of about one round trip instead of a
//! restart's (a new interface, routes gone, peers noticing late).
//!
//! The interface is multi-queue, so the successor joins it with queues of its
//! own while the old process still runs; the routes and addresses on it stay
//! where they are. The UDP sockets are passed over the control socket
//! (SCM_RIGHTS), so the port never closes. Sessions cannot move (the protocol
//! core does not export its keys), so the successor greets every peer at once:
//! traffic resumes after one handshake.
//!
//! ```text
//!   successor                          running process
//!   weft_handoff=1 ------------------>
//!                  <------------------ configuration + UDP sockets
//!   join the interface, configure
//!   ready ---------------------------->
//!                                      stop workers, leave the interface
//!                  <------------------ released
//!   start, greet every peer
//!   done ----------------------------->
//!                                      exit
//! ```
//!
//! Until `done` the running process can go back: if the successor fails or
//! vanishes, it rejoins the interface and carries on, so a failed upgrade is
//! not an outage.

use crate::config::{DeviceInfo, DeviceUpdate, PeerUpdate};
use crate::control::{format_set, ControlClient};
use crate::device::{Device, DeviceError, DeviceOptions};
use crate::uapi::parse_set;
use crate::udp::UdpSockets;
use std::io::{self, BufRead, BufReader, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

/// How long either side waits for the other's next step.
const STEP_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum HandoffError {
    #[error("no running device to take over at {0}")]
    NothingRunning(String),
    #[error("handoff: {0}")]
    Io(#[from] io::Error),
    #[error("handoff: the running process said {0:?}")]
    Protocol(String),
    #[error("handoff: {0}")]
    Device(#[from] DeviceError),
}

/// The configuration a successor needs to carry on: key, port, mark and
/// every peer as it is now (a learned endpoint included).
pub fn state_of(info: &DeviceInfo) -> DeviceUpdate {
    DeviceUpdate {
        private_key: info.private_key.clone(),
        listen_port: Some(info.listen_port),
        fwmark: Some(info.fwmark),
        replace_peers: true,
        peers: info
            .peers
            .iter()
            .map(|p| {
                let mut u = PeerUpdate::new(p.public_key);
                u.preshared_key = p.preshared_key;
                u.endpoint = p.endpoint;
                u.persistent_keepalive = Some(p.persistent_keepalive);
                u.replace_allowed_ips = true;
                u.allowed_ips = p.allowed_ips.clone();
                u
            })
            .collect(),
    }
}

/// Descriptors one message may carry (the kernel's SCM_MAX_FD is 253).
const MAX_FDS: usize = 64;

/// Sends `data` with `fds` attached (SCM_RIGHTS).
fn send_with_fds(stream: &UnixStream, data: &[u8], fds: &[RawFd]) -> io::Result<()> {
    if fds.is_empty() || fds.len() > MAX_FDS {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} descriptors to send (1 to {MAX_FDS})", fds.len()),
        ));
    }
    let fds_len = std::mem::size_of_val(fds) as u32;
    let mut iov = libc::iovec {
        iov_base: data.as_ptr() as *mut libc::c_void,
        iov_len: data.len(),
    };
    // SAFETY: CMSG_SPACE is a pure size computation.
    let space = unsafe { libc::CMSG_SPACE(fds_len) } as usize;
    let mut control = vec![0u8; space];
    // SAFETY: an all-zero msghdr is valid; the pointers set below outlive the call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr() as *mut libc::c_void;
    msg.msg_controllen = space as _;
    // SAFETY: the control buffer holds one cmsg of the size CMSG_SPACE gave,
    // and its data has room for every descriptor.
    unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(fds_len) as _;
        let data = libc::CMSG_DATA(cmsg) as *mut RawFd;
        for (i, fd) in fds.iter().enumerate() {
            std::ptr::write_unaligned(data.add(i), *fd);
        }
    }
    let mut sent = 0;
    while sent == 0 {
        // SAFETY: msg points at live buffers for the duration of the call.
        let n = unsafe { libc::sendmsg(stream.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        sent = n as usize;
    }
    // The descriptors went with the first bytes; the rest is plain data.
    let mut w = stream;
    w.write_all(&data[sent..])
}

/// Receives into `buf`; returns the byte count and the descriptors that came.
fn recv_with_fds(stream: &UnixStream, buf: &mut [u8]) -> io::Result<(usize, Vec<OwnedFd>)> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr() as *mut libc::c_void,
        iov_len: buf.len(),
    };
    // SAFETY: CMSG_SPACE is a pure size computation.
    let space =
        unsafe { libc::CMSG_SPACE((MAX_FDS * std::mem::size_of::<RawFd>()) as u32) } as usize;
    let mut control = vec![0u8; space];
    // SAFETY: an all-zero msghdr is valid; the pointers set below outlive the call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr() as *mut libc::c_void;
    msg.msg_controllen = space as _;
    let n = loop {
        // SAFETY: msg points at live buffers for the duration of the call.
        let n = unsafe { libc::recvmsg(stream.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        break n as usize;
    };
    let mut fds = Vec::new();
    // SAFETY: walking the control messages the kernel wrote into `control`;
    // an SCM_RIGHTS message's data is its length's worth of descriptors,
    // which are ours from now on.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(cmsg) as *const RawFd;
                let header = data as usize - cmsg as usize;
                let count = ((*cmsg).cmsg_len as usize).saturating_sub(header)
                    / std::mem::size_of::<RawFd>();
                for i in 0..count {
                    fds.push(OwnedFd::from_raw_fd(std::ptr::read_unaligned(data.add(i))));
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    if msg.msg_flags & libc::MSG_CTRUNC != 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "more descriptors came than expected",
        ));
    }
    Ok((n, fds))
}

fn expect_line(reader: &mut impl BufRead, want: &str) -> Result<(), HandoffError> {
    let mut line = String::new();
    reader.read_line(&mut line)?;
    if line.trim_end() != want {
        return Err(HandoffError::Protocol(line.trim_end().to_string()));
    }
    Ok(())
}

/// The running process's side: gives `device` to the process at the other
/// end of `stream`. Returns once the successor runs (then this process
/// should exit without touching the interface), or with an error once this
/// process has taken the device back.
pub fn give(device: &Device, stream: &UnixStream) -> Result<(), HandoffError> {
    stream.set_read_timeout(Some(STEP_TIMEOUT))?;
    let state = format!("{}\n", format_set(&state_of(&device.info())));
    send_with_fds(stream, state.as_bytes(), &device.udp_fds())?;
    let mut reader = BufReader::new(stream.try_clone()?);
    // Nothing has changed yet: a successor that stops here costs nothing.
    expect_line(&mut reader, "ready")?;
    device.pause();
    if let Err(e) = device.set_queues_attached(false) {
        // Some may be off already: put them all back.
        let _ = device.set_queues_attached(true);
        device.start()?;
        return Err(e.into());
    }
    let mut w = stream;
    let done = w
        .write_all(b"released\n")
        .map_err(HandoffError::from)
        .and_then(|()| expect_line(&mut reader, "done"));
    if let Err(e) = done {
        // The successor failed after we let go: take the device back.
        tracing::warn!("the successor failed ({e}); carrying on with the running device");
        device.set_queues_attached(true)?;
        device.start()?;
        return Err(e);
    }
    Ok(())
}

/// The successor's side: takes the device running behind `control` over,
/// as an interface per `options`. The returned device runs and has greeted
/// every peer.
pub fn take(control: &Path, options: &DeviceOptions) -> Result<Device, HandoffError> {
    let client = ControlClient::new(control);
    let stream = client
        .connect()
        .map_err(|_| HandoffError::NothingRunning(control.display().to_string()))?;
    stream.set_read_timeout(Some(STEP_TIMEOUT))?;
    (&stream).write_all(b"weft_handoff=1\n\n")?;
    // The configuration comes with the sockets attached to its first bytes
    // and ends with a blank line.
    let mut text = Vec::new();
    let mut udp_fds = Vec::new();
    let mut buf = vec![0u8; 64 << 10];
    while !text.ends_with(b"\n\n") {
        let (n, fds) = recv_with_fds(&stream, &mut buf)?;
        if n == 0 {
            return Err(HandoffError::Protocol("the running process hung up".into()));
        }
        udp_fds.extend(fds);
        text.extend_from_slice(&buf[..n]);
        if text.len() > 16 << 20 {
            return Err(HandoffError::Protocol("a configuration without end".into()));
        }
        if text.starts_with(b"errno=") {
            return Err(HandoffError::Protocol(
                String::from_utf8_lossy(&text).trim().to_string(),
            ));
        }
    }
    if udp_fds.is_empty() {
        return Err(HandoffError::Protocol(
            "no socket came with the state".into(),
        ));
    }
    let text = String::from_utf8(text)
        .map_err(|_| HandoffError::Protocol("the state is not text".into()))?;
    let update = parse_set(text.lines().filter(|l| !l.is_empty()))
        .map_err(|e| HandoffError::Protocol(e.to_string()))?;
    let device = Device::adopt(options, UdpSockets::from_owned(udp_fds)?)?;
    device.configure(&update)?;
    let mut reader = BufReader::new(stream.try_clone()?);
    (&stream).write_all(b"ready\n")?;
    expect_line(&mut reader, "released")?;
    device.start()?;
    device.greet_all();
    (&stream).write_all(b"done\n")?;
    Ok(device)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::PeerInfo;
    use crate::key::PrivateKey;

    #[test]
    fn the_state_restores_key_port_and_peers() {
        let info = DeviceInfo {
            private_key: Some(PrivateKey([3; 32])),
            public_key: None,
            listen_port: 51820,
            fwmark: 0,
            peers: vec![PeerInfo {
                public_key: PrivateKey([4; 32]).public_key(),
                preshared_key: None,
                endpoint: Some("192.0.2.7:4242".parse().unwrap()),
                last_handshake: None,
                rx_bytes: 1,
                tx_bytes: 2,
                persistent_keepalive: 25,
                allowed_ips: vec!["10.42.1.0/24".parse().unwrap()],
                reachable: Some(true),
            }],
        };
        let u = state_of(&info);
        assert!(u.replace_peers);
        assert_eq!(u.listen_port, Some(51820));
        let text = format_set(&u);
        assert_eq!(parse_set(text.lines()).unwrap(), u);
        assert_eq!(
            u.peers[0].endpoint, info.peers[0].endpoint,
            "a learned endpoint moves too"
        );
    }

    #[test]
    fn descriptors_travel_with_the_first_bytes() {
        let (a, b) = UnixStream::pair().unwrap();
        let file = std::fs::File::open("/dev/null").unwrap();
        let payload = vec![b'x'; 100_000];
        let dir = std::fs::File::open("/").unwrap();
        let sender = std::thread::spawn(move || {
            send_with_fds(&a, &payload, &[file.as_raw_fd(), dir.as_raw_fd()])
        });
        let mut buf = vec![0u8; 200_000];
        let mut got = 0;
        let mut fds = Vec::new();
        while got < 100_000 {
            let (n, f) = recv_with_fds(&b, &mut buf[got..]).unwrap();
            assert!(n > 0);
            fds.extend(f);
            got += n;
        }
        sender.join().unwrap().unwrap();
        assert_eq!(fds.len(), 2, "both descriptors came, once");
        // They are working descriptors of their own, in order.
        let mut fds = fds.into_iter();
        let null = std::fs::File::from(fds.next().unwrap()).metadata().unwrap();
        let root = std::fs::File::from(fds.next().unwrap()).metadata().unwrap();
        assert!(!null.is_dir());
        assert!(root.is_dir());
    }
}
