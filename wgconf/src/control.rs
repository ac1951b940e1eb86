//! The control socket between weft-agent and the process that runs its
//! tunnel (`weft-wg --control PATH`): the standard UAPI text protocol, plus
//! three requests of Weft's own that standard clients never send:
//!
//! - `weft_get=1`: the `get` reply with `weft_pid`, `weft_binary` (who
//!   serves the device) and per peer `weft_reachable`;
//! - `weft_stop=1`: stop the device and exit;
//! - `weft_handoff=1`: hand the running interface to a new process (an
//!   upgrade, see [`crate::handoff`]).
//!
//! The tunnel lives in its own process so that restarting or upgrading the
//! agent never touches the data path; this module is how the agent talks to
//! it. The pure halves (formatting a `set`, parsing a `get`) are tested
//! without sockets.

use crate::config::{DeviceInfo, DeviceUpdate, PeerInfo};
use crate::key::{PresharedKey, PrivateKey, PublicKey};
use crate::prefix::IpPrefix;
use crate::uapi::parse_endpoint;
use std::fmt::Write as _;
use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How long one request to the tunnel's process may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("cannot reach the tunnel's process at {path}: {source}")]
    Connect { path: PathBuf, source: io::Error },
    #[error("talking to the tunnel's process: {0}")]
    Io(#[from] io::Error),
    #[error("the tunnel's process refused: {}", io::Error::from_raw_os_error(*.0))]
    Refused(i32),
    #[error("the tunnel's process answered something unreadable: {0}")]
    Malformed(String),
}

/// Renders `update` as the lines of a `set=1` request (without the request
/// line and the final blank line).
pub fn format_set(update: &DeviceUpdate) -> String {
    let mut out = String::new();
    // Writing to a String cannot fail; the results are ignored for that reason.
    if let Some(k) = &update.private_key {
        let _ = writeln!(out, "private_key={}", k.to_hex());
    }
    if let Some(p) = update.listen_port {
        let _ = writeln!(out, "listen_port={p}");
    }
    if let Some(m) = update.fwmark {
        let _ = writeln!(out, "fwmark={m}");
    }
    if update.replace_peers {
        out.push_str("replace_peers=true\n");
    }
    for p in &update.peers {
        let _ = writeln!(out, "public_key={}", p.public_key.to_hex());
        if p.remove {
            out.push_str("remove=true\n");
            continue;
        }
        if p.update_only {
            out.push_str("update_only=true\n");
        }
        if let Some(k) = &p.preshared_key {
            let _ = writeln!(out, "preshared_key={}", k.to_hex());
        }
        if let Some(ep) = p.endpoint {
            let _ = writeln!(out, "endpoint={ep}");
        }
        if let Some(k) = p.persistent_keepalive {
            let _ = writeln!(out, "persistent_keepalive_interval={k}");
        }
        if p.replace_allowed_ips {
            out.push_str("replace_allowed_ips=true\n");
        }
        for ip in &p.allowed_ips {
            let _ = writeln!(out, "allowed_ip={ip}");
        }
    }
    out
}

/// What a `weft_get` says about the process serving the device.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostInfo {
    pub pid: Option<u32>,
    /// Which executable it runs (see [`binary_identity`]).
    pub binary: Option<String>,
}

fn malformed(line: &str) -> ControlError {
    ControlError::Malformed(format!("{line:?}"))
}

/// Parses a `get` or `weft_get` reply body (the lines before `errno=`).
pub fn parse_get<'a>(
    lines: impl IntoIterator<Item = &'a str>,
) -> Result<(DeviceInfo, HostInfo), ControlError> {
    let mut info = DeviceInfo {
        private_key: None,
        public_key: None,
        listen_port: 0,
        fwmark: 0,
        peers: Vec::new(),
    };
    let mut host = HostInfo::default();
    let mut handshake: Option<(u64, u32)> = None;
    // A time the clock cannot hold (seconds past the end of SystemTime, or
    // nanoseconds of a second or more) is a malformed reply, not a panic.
    let finish = |peer: Option<&mut PeerInfo>, hs: &mut Option<(u64, u32)>| {
        if let (Some(p), Some((s, n))) = (peer, hs.take()) {
            if s != 0 || n != 0 {
                let at = (n < 1_000_000_000)
                    .then(|| UNIX_EPOCH.checked_add(Duration::new(s, n)))
                    .flatten()
                    .ok_or_else(|| {
                        ControlError::Malformed(format!(
                            "last handshake at {s} s and {n} ns is not a time"
                        ))
                    })?;
                p.last_handshake = Some(at);
            }
        }
        Ok::<(), ControlError>(())
    };
    for line in lines {
        let (key, value) = line.split_once('=').ok_or_else(|| malformed(line))?;
        let num = |v: &str| v.parse::<u64>().map_err(|_| malformed(line));
        if key == "public_key" {
            finish(info.peers.last_mut(), &mut handshake)?;
            info.peers.push(PeerInfo {
                public_key: PublicKey::from_hex(value).map_err(|_| malformed(line))?,
                preshared_key: None,
                endpoint: None,
                last_handshake: None,
                rx_bytes: 0,
                tx_bytes: 0,
                persistent_keepalive: 0,
                allowed_ips: Vec::new(),
                reachable: None,
            });
            continue;
        }
        match (info.peers.last_mut(), key) {
            (None, "private_key") => {
                let k = PrivateKey::from_hex(value).map_err(|_| malformed(line))?;
                info.public_key = Some(k.public_key());
                info.private_key = Some(k);
            }
            (None, "listen_port") => {
                info.listen_port = value.parse().map_err(|_| malformed(line))?
            }
            (None, "fwmark") => info.fwmark = value.parse().map_err(|_| malformed(line))?,
            (None, "weft_pid") => host.pid = Some(value.parse().map_err(|_| malformed(line))?),
            (None, "weft_binary") => host.binary = Some(value.to_string()),
            (Some(p), "preshared_key") => {
                let k = PresharedKey::from_hex(value).map_err(|_| malformed(line))?;
                p.preshared_key = (!k.is_zero()).then_some(k);
            }
            (Some(p), "endpoint") => {
                p.endpoint = Some(parse_endpoint(value).map_err(|_| malformed(line))?)
            }
            (Some(p), "allowed_ip") => p
                .allowed_ips
                .push(value.parse::<IpPrefix>().map_err(|_| malformed(line))?),
            (Some(p), "rx_bytes") => p.rx_bytes = num(value)?,
            (Some(p), "tx_bytes") => p.tx_bytes = num(value)?,
            (Some(p), "persistent_keepalive_interval") => {
                p.persistent_keepalive = value.parse().map_err(|_| malformed(line))?
            }
            (Some(_), "last_handshake_time_sec") => {
                handshake.get_or_insert((0, 0)).0 = num(value)?;
            }
            (Some(_), "last_handshake_time_nsec") => {
                handshake.get_or_insert((0, 0)).1 =
                    u32::try_from(num(value)?).map_err(|_| malformed(line))?;
            }
            (Some(p), "weft_reachable") => {
                p.reachable = Some(value.parse().map_err(|_| malformed(line))?)
            }
            (Some(_), "protocol_version") => {}
            _ => return Err(malformed(line)),
        }
    }
    finish(info.peers.last_mut(), &mut handshake)?;
    Ok((info, host))
}

/// Which executable this process runs, as a string that changes when the
/// file is replaced (an upgrade): device, inode, size and modification time
/// of /proc/self/exe.
pub fn binary_identity() -> String {
    identity_of(Path::new("/proc/self/exe"))
}

/// The identity of the executable at `path` (see [`binary_identity`]).
pub fn identity_of(path: &Path) -> String {
    use std::os::unix::fs::MetadataExt;
    match std::fs::metadata(path) {
        Ok(m) => format!("{}:{}:{}:{}", m.dev(), m.ino(), m.size(), m.mtime()),
        Err(_) => "unknown".into(),
    }
}

/// A client of the control socket; every request uses a connection of its own.
#[derive(Debug, Clone)]
pub struct ControlClient {
    path: PathBuf,
}

impl ControlClient {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Connects, for requests of one's own (the handoff).
    pub fn connect(&self) -> Result<UnixStream, ControlError> {
        let s = UnixStream::connect(&self.path).map_err(|source| ControlError::Connect {
            path: self.path.clone(),
            source,
        })?;
        s.set_read_timeout(Some(REQUEST_TIMEOUT))?;
        s.set_write_timeout(Some(REQUEST_TIMEOUT))?;
        Ok(s)
    }

    /// Whether a process answers on the socket.
    pub fn is_alive(&self) -> bool {
        self.connect().is_ok()
    }

    /// Sends `request` (with its final blank line) and returns the reply's
    /// lines before the `errno=` line.
    fn request(&self, request: &str) -> Result<Vec<String>, ControlError> {
        let mut s = self.connect()?;
        s.write_all(request.as_bytes())?;
        let mut reader = BufReader::new(s);
        read_reply(&mut reader)
    }

    /// The device's configuration and counters, and who serves it.
    pub fn get(&self) -> Result<(DeviceInfo, HostInfo), ControlError> {
        let lines = self.request("weft_get=1\n\n")?;
        parse_get(lines.iter().map(String::as_str))
    }

    /// Applies `update`, atomically: on error nothing changed.
    pub fn set(&self, update: &DeviceUpdate) -> Result<(), ControlError> {
        self.request(&format!("set=1\n{}\n", format_set(update)))
            .map(|_| ())
    }

    /// Stops the device and its process.
    pub fn stop(&self) -> Result<(), ControlError> {
        self.request("weft_stop=1\n\n").map(|_| ())
    }
}

/// Reads reply lines up to `errno=N` and the blank line after it; an errno
/// other than 0 is an error (either sign: wireguard-go sends negative ones).
pub fn read_reply(reader: &mut impl BufRead) -> Result<Vec<String>, ControlError> {
    let mut lines = Vec::new();
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            return Err(ControlError::Malformed("the reply ended early".into()));
        }
        let l = line.trim_end_matches('\n');
        if let Some(v) = l.strip_prefix("errno=") {
            let errno: i32 = v.parse().map_err(|_| malformed(l))?;
            // The blank line that ends the reply.
            line.clear();
            let _ = reader.read_line(&mut line);
            return match errno {
                0 => Ok(lines),
                e => Err(ControlError::Refused(e.abs())),
            };
        }
        if lines.len() > 1 << 20 {
            return Err(ControlError::Malformed("the reply has no end".into()));
        }
        lines.push(l.to_string());
    }
}

/// The time of a handshake as UAPI carries it, for tests and logs.
pub fn handshake_secs(t: Option<SystemTime>) -> u64 {
    t.and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::PeerUpdate;
    use crate::uapi::parse_set;
    use crate::uapi::{format_get, format_weft_get};

    fn key(n: u8) -> PrivateKey {
        PrivateKey([n; 32])
    }

    #[test]
    fn a_formatted_set_parses_back_to_the_same_update() {
        let mut p1 = PeerUpdate::new(key(1).public_key());
        p1.endpoint = Some("192.0.2.1:51820".parse().unwrap());
        p1.persistent_keepalive = Some(25);
        p1.replace_allowed_ips = true;
        p1.allowed_ips = vec![
            "10.42.1.0/24".parse().unwrap(),
            "fd00::/64".parse().unwrap(),
        ];
        p1.preshared_key = Some(PresharedKey([7; 32]));
        let mut p2 = PeerUpdate::new(key(2).public_key());
        p2.remove = true;
        let mut p3 = PeerUpdate::new(key(3).public_key());
        p3.update_only = true;
        p3.endpoint = Some("[2001:db8::1]:1".parse().unwrap());
        let update = DeviceUpdate {
            private_key: Some(key(9)),
            listen_port: Some(51820),
            fwmark: Some(7),
            replace_peers: true,
            peers: vec![p1, p2, p3],
        };
        let text = format_set(&update);
        assert_eq!(parse_set(text.lines()).unwrap(), update);
    }

    #[test]
    fn a_weft_get_parses_back_with_reachability_and_host() {
        let info = DeviceInfo {
            private_key: Some(key(9)),
            public_key: Some(key(9).public_key()),
            listen_port: 51820,
            fwmark: 3,
            peers: vec![
                PeerInfo {
                    public_key: key(1).public_key(),
                    preshared_key: Some(PresharedKey([5; 32])),
                    endpoint: Some("192.0.2.1:51820".parse().unwrap()),
                    last_handshake: Some(UNIX_EPOCH + Duration::new(1_700_000_000, 42)),
                    rx_bytes: 10,
                    tx_bytes: 20,
                    persistent_keepalive: 25,
                    allowed_ips: vec!["10.42.1.0/24".parse().unwrap()],
                    reachable: Some(true),
                },
                PeerInfo {
                    public_key: key(2).public_key(),
                    preshared_key: None,
                    endpoint: None,
                    last_handshake: None,
                    rx_bytes: 0,
                    tx_bytes: 0,
                    persistent_keepalive: 0,
                    allowed_ips: vec![],
                    reachable: Some(false),
                },
                PeerInfo {
                    public_key: key(3).public_key(),
                    preshared_key: None,
                    endpoint: None,
                    last_handshake: None,
                    rx_bytes: 0,
                    tx_bytes: 0,
                    persistent_keepalive: 0,
                    allowed_ips: vec![],
                    reachable: None,
                },
            ],
        };
        let host = vec!["weft_pid=42".to_string(), "weft_binary=1:2:3:4".into()];
        let text = format_weft_get(&info, &host);
        let (back, h) = parse_get(text.lines()).unwrap();
        assert_eq!(back, info);
        assert_eq!(h.pid, Some(42));
        assert_eq!(h.binary.as_deref(), Some("1:2:3:4"));
        // The standard reply is what `wg` reads: no Weft keys in it.
        assert!(!format_get(&info).contains("weft_"));
    }

    #[test]
    fn hostile_replies_are_errors_not_panics() {
        for bad in [
            "public_key=zz",
            "listen_port=70000",
            "allowed_ip=10.0.0.0/24",
            "nonsense",
            "weft_pid=-1",
            // Found by the uapi fuzz target: these panicked (a time past
            // what SystemTime holds, nanoseconds of a whole second).
            "public_key=b85996fecc9c7f1fc6d2572a76eda11d59bcd20be8e543b15ce4bd85a8e75a33\n\
             last_handshake_time_sec=15554523751108313087",
            "public_key=b85996fecc9c7f1fc6d2572a76eda11d59bcd20be8e543b15ce4bd85a8e75a33\n\
             last_handshake_time_sec=18446744073709551615\nlast_handshake_time_nsec=999999999",
            "public_key=b85996fecc9c7f1fc6d2572a76eda11d59bcd20be8e543b15ce4bd85a8e75a33\n\
             last_handshake_time_sec=1\nlast_handshake_time_nsec=1000000000",
        ] {
            assert!(parse_get(bad.lines()).is_err(), "{bad}");
        }
        let mut r = BufReader::new("listen_port=1\nerrno=-22\n\n".as_bytes());
        assert!(matches!(read_reply(&mut r), Err(ControlError::Refused(22))));
        let mut r = BufReader::new("listen_port=1\n".as_bytes());
        assert!(read_reply(&mut r).is_err());
    }
}
