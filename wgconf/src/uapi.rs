//! The WireGuard cross-platform userspace API (UAPI) as text: what `wg`
//! sends over `/var/run/wireguard/IFNAME.sock` and what it expects back.
//!
//! Pure: text in, [`DeviceUpdate`] out; [`DeviceInfo`] in, text out, so
//! every malformed input can be tested without a socket. The socket server
//! is the data plane's (`dataplane::uapi`); the agent's side of its control
//! socket is [`crate::control`].

use crate::config::{DeviceInfo, DeviceUpdate, PeerInfo, PeerUpdate};
use crate::key::{PresharedKey, PrivateKey, PublicKey};
use crate::prefix::IpPrefix;
use std::fmt::Write as _;
use std::net::SocketAddr;
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

/// The status line ending every reply. As wireguard-go does and `wg`
/// expects, an error is sent as a negative errno.
pub fn errno_line(errno: i32) -> String {
    format!("errno={}\n\n", -errno.abs())
}

/// The `weft_get` reply body (Weft's own request, served on the agent's
/// control socket only, see [`crate::control`]): `get`'s, with the host's
/// lines at device level and each peer's reachability.
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
}
