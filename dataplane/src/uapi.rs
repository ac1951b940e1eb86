//! The WireGuard cross-platform userspace API (UAPI): the text protocol `wg`
//! speaks over `/var/run/wireguard/IFNAME.sock`.
//!
//! The protocol half here is pure (text in, [`DeviceUpdate`] out; [`DeviceInfo`]
//! in, text out) so that every malformed input can be tested without a socket.
//! The socket half serves one connection per thread and answers every request
//! with `errno=N`; a broken request never takes the device down.

use crate::allowed_ips::IpPrefix;
use crate::config::{DeviceInfo, DeviceUpdate, PeerInfo, PeerUpdate};
use crate::key::{PresharedKey, PrivateKey, PublicKey};
use std::fmt::Write as _;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, ToSocketAddrs};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

/// Where `wg` looks for userspace devices.
pub const SOCKET_DIR: &str = "/var/run/wireguard";

/// A rejected `set` request, with the errno `wg` will report.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UapiError {
    #[error("malformed line {0:?}")]
    Protocol(String),
    #[error("invalid value for {key}: {reason}")]
    Invalid { key: String, reason: String },
    #[error("unknown key {0:?}")]
    UnknownKey(String),
}

impl UapiError {
    pub fn errno(&self) -> i32 {
        match self {
            UapiError::Protocol(_) => libc::EPROTO,
            UapiError::Invalid { .. } | UapiError::UnknownKey(_) => libc::EINVAL,
        }
    }
}

fn invalid(key: &str, reason: impl ToString) -> UapiError {
    UapiError::Invalid {
        key: key.to_string(),
        reason: reason.to_string(),
    }
}

fn parse_bool_true(key: &str, value: &str) -> Result<bool, UapiError> {
    match value {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(invalid(key, "want true or false")),
    }
}

/// Parses an endpoint the way `wg` sends it: `IPv4:port` or `[IPv6]:port`.
/// Names are not resolved here; `wg` resolves them before sending.
pub fn parse_endpoint(value: &str) -> Result<SocketAddr, UapiError> {
    value
        .parse::<SocketAddr>()
        .map_err(|_| invalid("endpoint", format!("{value:?} is not IP:PORT")))
}

/// Parses the body of a `set=1` request (the lines after `set=1`, without the
/// terminating blank line).
pub fn parse_set<'a>(lines: impl IntoIterator<Item = &'a str>) -> Result<DeviceUpdate, UapiError> {
    let mut update = DeviceUpdate::default();
    for line in lines {
        let (key, value) = line
            .split_once('=')
            .ok_or_else(|| UapiError::Protocol(line.to_string()))?;
        if key == "public_key" {
            let pk = PublicKey::from_hex(value).map_err(|e| invalid(key, e))?;
            update.peers.push(PeerUpdate::new(pk));
            continue;
        }
        match update.peers.last_mut() {
            None => match key {
                "private_key" => {
                    update.private_key =
                        Some(PrivateKey::from_hex(value).map_err(|e| invalid(key, e))?)
                }
                "listen_port" => {
                    update.listen_port = Some(value.parse().map_err(|e| invalid(key, e))?)
                }
                "fwmark" => update.fwmark = Some(value.parse().map_err(|e| invalid(key, e))?),
                "replace_peers" => update.replace_peers = parse_bool_true(key, value)?,
                _ => return Err(UapiError::UnknownKey(key.to_string())),
            },
            Some(peer) => match key {
                "remove" => peer.remove = parse_bool_true(key, value)?,
                "update_only" => peer.update_only = parse_bool_true(key, value)?,
                "preshared_key" => {
                    peer.preshared_key =
                        Some(PresharedKey::from_hex(value).map_err(|e| invalid(key, e))?)
                }
                "endpoint" => peer.endpoint = Some(parse_endpoint(value)?),
                "persistent_keepalive_interval" => {
                    peer.persistent_keepalive = Some(value.parse().map_err(|e| invalid(key, e))?)
                }
                "replace_allowed_ips" => peer.replace_allowed_ips = parse_bool_true(key, value)?,
                "allowed_ip" => peer
                    .allowed_ips
                    .push(value.parse::<IpPrefix>().map_err(|e| invalid(key, e))?),
                "protocol_version" => {
                    if value != "1" {
                        return Err(invalid(key, "only protocol version 1 exists"));
                    }
                }
                _ => return Err(UapiError::UnknownKey(key.to_string())),
            },
        }
    }
    Ok(update)
}

/// Renders the reply to `get=1` (without the final `errno=0` line).
pub fn format_get(info: &DeviceInfo) -> String {
    let mut out = String::new();
    // Writing to a String cannot fail; the results are ignored for that reason.
    if let Some(k) = &info.private_key {
        let _ = writeln!(out, "private_key={}", k.to_hex());
    }
    if info.listen_port != 0 {
        let _ = writeln!(out, "listen_port={}", info.listen_port);
    }
    if info.fwmark != 0 {
        let _ = writeln!(out, "fwmark={}", info.fwmark);
    }
    for p in &info.peers {
        let _ = writeln!(out, "public_key={}", p.public_key.to_hex());
        if let Some(psk) = &p.preshared_key {
            let _ = writeln!(out, "preshared_key={}", psk.to_hex());
        }
        let _ = writeln!(out, "protocol_version=1");
        if let Some(ep) = p.endpoint {
            let _ = writeln!(out, "endpoint={ep}");
        }
        let since = p
            .last_handshake
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .unwrap_or(Duration::ZERO);
        let _ = writeln!(out, "last_handshake_time_sec={}", since.as_secs());
        let _ = writeln!(out, "last_handshake_time_nsec={}", since.subsec_nanos());
        let _ = writeln!(out, "tx_bytes={}", p.tx_bytes);
        let _ = writeln!(out, "rx_bytes={}", p.rx_bytes);
        let _ = writeln!(
            out,
            "persistent_keepalive_interval={}",
            p.persistent_keepalive
        );
        for ip in &p.allowed_ips {
            let _ = writeln!(out, "allowed_ip={ip}");
        }
    }
    out
}

/// What a connection may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// `get` only: `set` is refused with EPERM (the agent owns the config).
    ReadOnly,
    /// The standard protocol, `get` and `set`.
    ReadWrite,
    /// Also Weft's own requests (`weft_get`, `weft_stop`, `weft_handoff`):
    /// the agent's control socket.
    Control,
}

/// What the socket server needs from a device.
pub trait UapiHandler: Send + Sync + 'static {
    fn get(&self) -> DeviceInfo;
    /// Applies an update; on failure returns a (positive) errno and changes
    /// nothing.
    fn set(&self, update: DeviceUpdate) -> Result<(), i32>;
    /// Device-level `key=value` lines a `weft_get` reply adds (who serves
    /// the device: pid, binary).
    fn host_lines(&self) -> Vec<String> {
        Vec::new()
    }
    /// `weft_stop=1`: stop the device and the process serving it.
    fn stop(&self) {}
    /// `weft_handoff=1`: hand the running device to the process at the
    /// other end of `stream` (see [`crate::handoff`]).
    fn hand_off(&self, _stream: &UnixStream) -> io::Result<()> {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "this device cannot be handed off",
        ))
    }
}

/// Longest line we accept; the longest legitimate one is a 64-hex-char key.
const MAX_LINE: usize = 512;
/// Upper bound on a `set` request, so a client cannot make us buffer without end.
const MAX_SET_LINES: usize = 1 << 20;

/// Reads one line (without the newline). `Ok(None)` on a clean end of stream.
pub(crate) fn read_line(reader: &mut impl BufRead, line: &mut String) -> io::Result<Option<()>> {
    line.clear();
    let n = reader.take(MAX_LINE as u64 + 1).read_line(line)?;
    if n == 0 {
        return Ok(None);
    }
    if !line.ends_with('\n') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "line too long or unterminated",
        ));
    }
    line.pop();
    Ok(Some(()))
}

/// The status line ending every reply. As wireguard-go does and `wg`
/// expects, an error is sent as a negative errno.
pub fn errno_line(errno: i32) -> String {
    format!("errno={}\n\n", -errno.abs())
}

/// Reads the blank line that ends a request without a body; false (after
/// answering EPROTO) if something else came.
fn end_of_request(
    reader: &mut impl BufRead,
    writer: &mut impl Write,
    line: &mut String,
) -> io::Result<bool> {
    if read_line(reader, line)?.is_none() || !line.is_empty() {
        writer.write_all(errno_line(libc::EPROTO).as_bytes())?;
        return Ok(false);
    }
    Ok(true)
}

/// Serves requests on one connection until the client closes it.
pub fn serve_connection(
    stream: UnixStream,
    handler: &dyn UapiHandler,
    access: Access,
) -> io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    loop {
        if read_line(&mut reader, &mut line)?.is_none() {
            return Ok(());
        }
        let control = access == Access::Control;
        match line.as_str() {
            "get=1" | "weft_get=1" => {
                let weft = line == "weft_get=1";
                if (weft && !control) || !end_of_request(&mut reader, &mut writer, &mut line)? {
                    if weft && !control {
                        writer.write_all(errno_line(libc::EINVAL).as_bytes())?;
                    }
                    return Ok(());
                }
                let info = handler.get();
                let body = if weft {
                    format_weft_get(&info, &handler.host_lines())
                } else {
                    format_get(&info)
                };
                writer.write_all(body.as_bytes())?;
                writer.write_all(errno_line(0).as_bytes())?;
            }
            "set=1" => {
                let mut lines = Vec::new();
                loop {
                    match read_line(&mut reader, &mut line)? {
                        None => return Ok(()),
                        Some(()) if line.is_empty() => break,
                        Some(()) if lines.len() >= MAX_SET_LINES => {
                            writer.write_all(errno_line(libc::E2BIG).as_bytes())?;
                            return Ok(());
                        }
                        Some(()) => lines.push(line.clone()),
                    }
                }
                let errno = if access == Access::ReadOnly {
                    tracing::warn!(
                        "refused a UAPI set (wg set): weft-agent manages this interface"
                    );
                    libc::EPERM
                } else {
                    match parse_set(lines.iter().map(String::as_str)) {
                        Ok(update) => match handler.set(update) {
                            Ok(()) => 0,
                            Err(errno) => errno,
                        },
                        Err(e) => {
                            tracing::warn!("uapi: rejected set request: {e}");
                            e.errno()
                        }
                    }
                };
                writer.write_all(errno_line(errno).as_bytes())?;
            }
            "weft_stop=1" if control => {
                if !end_of_request(&mut reader, &mut writer, &mut line)? {
                    return Ok(());
                }
                writer.write_all(errno_line(0).as_bytes())?;
                writer.flush()?;
                handler.stop();
                return Ok(());
            }
            "weft_handoff=1" if control => {
                if !end_of_request(&mut reader, &mut writer, &mut line)? {
                    return Ok(());
                }
                // The rest of the conversation belongs to the handoff.
                drop(reader);
                if let Err(e) = handler.hand_off(&writer) {
                    tracing::warn!("handoff refused or failed: {e}");
                    let _ = writer.write_all(errno_line(libc::EIO).as_bytes());
                }
                return Ok(());
            }
            _ => {
                writer.write_all(errno_line(libc::EINVAL).as_bytes())?;
                return Ok(());
            }
        }
        writer.flush()?;
    }
}

/// The listening UAPI socket of one interface. The socket file is removed on
/// drop, unless another process has taken its place since.
pub struct UapiListener {
    listener: UnixListener,
    path: PathBuf,
    /// The socket file's inode, to tell ours from a successor's.
    inode: u64,
    /// Set once a successor has taken over: the file is its to keep or
    /// replace, and we never remove it (a check and then a removal would
    /// race with the successor binding its own socket in between).
    leave_file: std::sync::atomic::AtomicBool,
}

fn inode(path: &Path) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(path).ok().map(|m| m.ino())
}

impl UapiListener {
    /// Binds `/var/run/wireguard/IFNAME.sock`, replacing a stale socket but
    /// refusing to steal one that a live process still answers on.
    pub fn bind(ifname: &str) -> io::Result<Self> {
        Self::bind_in(Path::new(SOCKET_DIR), ifname)
    }

    pub fn bind_in(dir: &Path, ifname: &str) -> io::Result<Self> {
        Self::bind_path(&dir.join(format!("{ifname}.sock")), false)
    }

    /// Binds `path` (root-only). With `replace`, a socket a live process
    /// answers on is replaced too: that process is handing over to us.
    pub fn bind_path(path: &Path, replace: bool) -> io::Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(dir)?;
        }
        if path.exists() {
            if !replace && UnixStream::connect(path).is_ok() {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    format!("{} is in use by a running process", path.display()),
                ));
            }
            std::fs::remove_file(path)?;
        }
        // Create the socket with no access for group and others from the
        // first instant, then make that explicit.
        // SAFETY: umask(2) has no preconditions; the old mask is restored.
        let old = unsafe { libc::umask(0o077) };
        let bound = UnixListener::bind(path);
        // SAFETY: as above.
        unsafe { libc::umask(old) };
        let listener = bound?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        let inode = inode(path).unwrap_or(0);
        Ok(Self {
            listener,
            path: path.to_path_buf(),
            inode,
            leave_file: std::sync::atomic::AtomicBool::new(false),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn listener(&self) -> &UnixListener {
        &self.listener
    }

    /// Accepts connections until the listener is shut down, each served on
    /// its own thread.
    pub fn serve(&self, handler: std::sync::Arc<dyn UapiHandler>, access: Access) {
        for conn in self.listener.incoming() {
            match conn {
                Ok(stream) => {
                    let handler = handler.clone();
                    let spawned =
                        std::thread::Builder::new()
                            .name("weft-uapi".into())
                            .spawn(move || {
                                if let Err(e) = serve_connection(stream, handler.as_ref(), access) {
                                    tracing::debug!("uapi connection ended: {e}");
                                }
                            });
                    if let Err(e) = spawned {
                        tracing::warn!("uapi: cannot start a connection thread: {e}");
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::debug!("uapi: accept stopped: {e}");
                    return;
                }
            }
        }
    }

    /// Serves on a thread of its own; the thread ends when the returned
    /// handle is dropped (which also removes the socket file, if ours).
    pub fn spawn(
        self,
        handler: std::sync::Arc<dyn UapiHandler>,
        access: Access,
    ) -> io::Result<ServingSocket> {
        let listener = std::sync::Arc::new(self);
        let serving = listener.clone();
        let thread = std::thread::Builder::new()
            .name("weft-uapi-accept".into())
            .spawn(move || serving.serve(handler, access))?;
        Ok(ServingSocket {
            listener,
            thread: Some(thread),
        })
    }

    /// Whether the socket file at our path is still ours.
    fn still_ours(&self) -> bool {
        inode(&self.path) == Some(self.inode)
    }
}

impl Drop for UapiListener {
    fn drop(&mut self) {
        if !self.leave_file.load(std::sync::atomic::Ordering::SeqCst) && self.still_ours() {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// A socket served on its own thread; dropping it stops serving.
pub struct ServingSocket {
    listener: std::sync::Arc<UapiListener>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ServingSocket {
    pub fn path(&self) -> &Path {
        self.listener.path()
    }

    /// Leaves the socket file in place when this is dropped: a successor
    /// took the device over and binds (or has bound) its own there.
    pub fn leave_file(&self) {
        self.listener
            .leave_file
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Drop for ServingSocket {
    fn drop(&mut self) {
        // Wakes the blocked accept (it returns EINVAL), so the thread ends;
        // the listener's own drop then removes the socket file.
        // SAFETY: shutdown(2) on a socket the listener keeps open.
        unsafe {
            libc::shutdown(
                std::os::fd::AsRawFd::as_raw_fd(self.listener.listener()),
                libc::SHUT_RDWR,
            )
        };
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Resolves `HOST:PORT` for callers that accept names (the agent's config);
/// the UAPI itself only ever carries literal addresses.
pub fn resolve_endpoint(value: &str) -> io::Result<SocketAddr> {
    value
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("{value} has no address")))
}

/// The `weft_get` reply body (Weft's own request, served on the agent's
/// control socket only, see [`crate::control`]): `get`'s, with the host's lines at device
/// level and each peer's reachability.
pub fn format_weft_get(info: &DeviceInfo, host_lines: &[String]) -> String {
    let mut out = String::new();
    for l in host_lines {
        out.push_str(l);
        out.push('\n');
    }
    // Per-peer extras go after the peer's standard lines; a `get` body is
    // split at each public_key line to place them.
    let standard = format_get(info);
    let mut peers = info.peers.iter();
    let mut current: Option<&PeerInfo> = None;
    for line in standard.lines() {
        if line.starts_with("public_key=") {
            push_reachable(&mut out, current);
            current = peers.next();
        }
        out.push_str(line);
        out.push('\n');
    }
    push_reachable(&mut out, current);
    out
}

fn push_reachable(out: &mut String, peer: Option<&PeerInfo>) {
    if let Some(r) = peer.and_then(|p| p.reachable) {
        let _ = writeln!(out, "weft_reachable={r}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::PeerInfo;
    use std::time::SystemTime;

    const K1: &str = "e84b5a6d2717c1003a13b431570353dbaca9146cf150c5f8575680feba52027a";
    const K2: &str = "b85996fecc9c7f1fc6d2572a76eda11d59bcd20be8e543b15ce4bd85a8e75a33";

    #[test]
    fn parses_the_example_from_the_spec() {
        let req = format!(
            "private_key={K1}\nlisten_port=12912\nfwmark=0\nreplace_peers=true\n\
             public_key={K2}\npreshared_key={K1}\nreplace_allowed_ips=true\n\
             allowed_ip=192.168.4.4/32\nendpoint=[abcd:23::33%2]:51820\n\
             public_key={K1}\nreplace_allowed_ips=true\nallowed_ip=192.168.4.6/32\n\
             persistent_keepalive_interval=111\nendpoint=182.122.22.19:3233\n\
             protocol_version=1\npublic_key={K2}\nremove=true"
        );
        let u = parse_set(req.lines()).unwrap();
        assert_eq!(u.listen_port, Some(12912));
        assert_eq!(u.fwmark, Some(0));
        assert!(u.replace_peers);
        assert_eq!(u.peers.len(), 3);
        assert_eq!(u.peers[0].public_key.to_hex(), K2);
        assert!(u.peers[0].replace_allowed_ips);
        assert_eq!(u.peers[0].allowed_ips[0].to_string(), "192.168.4.4/32");
        assert_eq!(
            u.peers[0].endpoint.unwrap().to_string(),
            "[abcd:23::33%2]:51820"
        );
        assert_eq!(u.peers[1].persistent_keepalive, Some(111));
        assert_eq!(
            u.peers[1].endpoint.unwrap().to_string(),
            "182.122.22.19:3233"
        );
        assert!(u.peers[2].remove);
    }

    #[test]
    fn rejects_malformed_requests_with_errno() {
        let cases: &[(&str, i32)] = &[
            ("private_key=zz", libc::EINVAL),
            ("listen_port=70000", libc::EINVAL),
            ("listen_port=-1", libc::EINVAL),
            ("fwmark=x", libc::EINVAL),
            ("no_equals_sign", libc::EPROTO),
            ("bogus=1", libc::EINVAL),
            ("replace_peers=yes", libc::EINVAL),
            ("endpoint=1.2.3.4:5", libc::EINVAL), // peer key before any public_key
            ("public_key=abc", libc::EINVAL),
        ];
        for (req, errno) in cases {
            let e = parse_set(req.lines()).unwrap_err();
            assert_eq!(e.errno(), *errno, "{req}");
        }
        let peer_cases = [
            "endpoint=1.2.3.4",
            "endpoint=host.example:51820",
            "allowed_ip=10.0.0.0/40",
            "allowed_ip=nonsense",
            "persistent_keepalive_interval=65536",
            "protocol_version=2",
            "preshared_key=00",
            "remove=1",
        ];
        for line in peer_cases {
            let req = format!("public_key={K1}\n{line}");
            assert_eq!(
                parse_set(req.lines()).unwrap_err().errno(),
                libc::EINVAL,
                "{line}"
            );
        }
    }

    #[test]
    fn formats_get_reply() {
        let info = DeviceInfo {
            private_key: Some(PrivateKey::from_hex(K1).unwrap()),
            public_key: None,
            listen_port: 51820,
            fwmark: 0,
            peers: vec![PeerInfo {
                public_key: PublicKey::from_hex(K2).unwrap(),
                preshared_key: None,
                endpoint: Some("10.0.0.2:51820".parse().unwrap()),
                last_handshake: Some(UNIX_EPOCH + Duration::new(1_700_000_000, 5)),
                rx_bytes: 10,
                tx_bytes: 20,
                persistent_keepalive: 25,
                allowed_ips: vec!["10.1.0.0/16".parse().unwrap()],
                reachable: None,
            }],
        };
        let text = format_get(&info);
        let want = format!(
            "private_key={K1}\nlisten_port=51820\npublic_key={K2}\nprotocol_version=1\n\
             endpoint=10.0.0.2:51820\nlast_handshake_time_sec=1700000000\n\
             last_handshake_time_nsec=5\ntx_bytes=20\nrx_bytes=10\n\
             persistent_keepalive_interval=25\nallowed_ip=10.1.0.0/16\n"
        );
        assert_eq!(text, want);
        let _ = SystemTime::now();
    }

    /// A handler that records what it was asked to do.
    struct Recorder(std::sync::Mutex<Vec<DeviceUpdate>>);
    impl UapiHandler for Recorder {
        fn get(&self) -> DeviceInfo {
            DeviceInfo {
                private_key: None,
                public_key: None,
                listen_port: 7,
                fwmark: 0,
                peers: vec![],
            }
        }
        fn set(&self, update: DeviceUpdate) -> Result<(), i32> {
            self.0.lock().unwrap().push(update);
            Ok(())
        }
    }

    fn talk(handler: &Recorder, request: &[u8]) -> String {
        let (a, mut b) = UnixStream::pair().unwrap();
        b.write_all(request).unwrap();
        b.shutdown(std::net::Shutdown::Write).unwrap();
        serve_connection(a, handler, Access::ReadWrite).ok();
        // The server may close with our junk unread, which resets the
        // connection; what it wrote before that is still the answer.
        let mut out = Vec::new();
        let _ = b.read_to_end(&mut out);
        String::from_utf8_lossy(&out).into_owned()
    }

    #[test]
    fn serves_get_and_set_on_one_connection() {
        let h = Recorder(Default::default());
        let out = talk(&h, b"get=1\n\nset=1\nlisten_port=9\n\nget=1\n\n");
        assert_eq!(
            out,
            "listen_port=7\nerrno=0\n\nerrno=0\n\nlisten_port=7\nerrno=0\n\n"
        );
        assert_eq!(h.0.lock().unwrap()[0].listen_port, Some(9));
    }

    #[test]
    fn hostile_connections_get_errno_not_a_crash() {
        let h = Recorder(Default::default());
        assert_eq!(talk(&h, b"hello\n"), format!("errno=-{}\n\n", libc::EINVAL));
        assert_eq!(
            talk(&h, b"set=1\nlisten_port=abc\n\n"),
            format!("errno=-{}\n\n", libc::EINVAL)
        );
        assert_eq!(
            talk(&h, b"get=1\nx\n"),
            format!("errno=-{}\n\n", libc::EPROTO)
        );
        let mut long = b"set=1\n".to_vec();
        long.extend(std::iter::repeat_n(b'a', 10_000));
        assert_eq!(talk(&h, &long), "");
        // Random bytes, including invalid UTF-8.
        let junk: Vec<u8> = (0..4096u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        let _ = talk(&h, &junk);
        assert!(h.0.lock().unwrap().is_empty());
    }

    #[test]
    fn socket_is_private_and_removed_on_drop() {
        let dir = std::env::temp_dir().join(format!("weft-uapi-test-{}", std::process::id()));
        let l = UapiListener::bind_in(&dir, "wtest0").unwrap();
        let mode = std::fs::metadata(l.path()).unwrap().permissions().mode();
        assert_eq!(
            mode & 0o077,
            0,
            "socket must not be reachable by group/others"
        );
        // A second bind while the first is alive is refused.
        assert!(UapiListener::bind_in(&dir, "wtest0").is_err());
        let path = l.path().to_path_buf();
        drop(l);
        assert!(!path.exists());
        let _ = std::fs::remove_dir(&dir);
    }

    #[test]
    fn a_listener_told_to_leave_its_file_does_not_remove_it() {
        let dir = std::env::temp_dir().join(format!("weft-uapi-leave-{}", std::process::id()));
        let path = dir.join("wtest1.sock");
        let handler: std::sync::Arc<dyn UapiHandler> =
            std::sync::Arc::new(Recorder(std::sync::Mutex::new(Vec::new())));
        let old = UapiListener::bind_path(&path, false)
            .unwrap()
            .spawn(handler.clone(), Access::ReadWrite)
            .unwrap();
        // Handed over: whatever the successor does with the path, the old
        // listener leaves it alone, here even while the file is still its own.
        old.leave_file();
        drop(old);
        assert!(path.exists(), "the file was removed after a handoff");
        // A successor replaces it, and removes it on its own exit.
        let new = UapiListener::bind_path(&path, true).unwrap();
        drop(new);
        assert!(!path.exists());
        let _ = std::fs::remove_dir(&dir);
    }
}
