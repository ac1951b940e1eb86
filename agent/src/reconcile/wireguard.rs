//! From the desired WireGuard configuration to the smallest update of the
//! running device: only peers that changed are touched, each on its own
//! (Kilo replaces the whole configuration on any difference, which drops
//! every connection at each resync).

use crate::mesh::WireGuardConfig;
use ipnet::IpNet;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use wgconf::{DeviceInfo, DeviceUpdate, PeerUpdate, PrivateKey, PublicKey};

/// What we last asked of one peer, to tell our changes from the device's
/// own (a roaming endpoint learned from a handshake is the device's to keep).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Applied {
    pub endpoint: Option<SocketAddr>,
}

/// A desired peer with its endpoint resolved.
#[derive(Clone, Debug, PartialEq)]
pub struct ResolvedPeer {
    pub public_key: PublicKey,
    pub endpoint: Option<SocketAddr>,
    pub allowed_ips: Vec<IpNet>,
    pub persistent_keepalive: u16,
    pub preshared_key: Option<wgconf::PresharedKey>,
}

/// The update that brings `current` to `desired`. `applied` remembers the
/// endpoints we set before and is updated.
pub fn diff(
    key: &PrivateKey,
    current: &DeviceInfo,
    desired: &WireGuardConfig,
    peers: &[ResolvedPeer],
    applied: &mut BTreeMap<PublicKey, Applied>,
) -> DeviceUpdate {
    let mut update = DeviceUpdate::default();
    if current.private_key.as_ref() != Some(key) {
        update.private_key = Some(key.clone());
    }
    if current.listen_port != desired.listen_port {
        update.listen_port = Some(desired.listen_port);
    }
    let wanted: BTreeMap<PublicKey, &ResolvedPeer> =
        peers.iter().map(|p| (p.public_key, p)).collect();
    for p in &current.peers {
        if !wanted.contains_key(&p.public_key) {
            let mut u = PeerUpdate::new(p.public_key);
            u.remove = true;
            update.peers.push(u);
            applied.remove(&p.public_key);
        }
    }
    for (key, want) in &wanted {
        let have = current.peers.iter().find(|p| p.public_key == *key);
        let mut u = PeerUpdate::new(*key);
        let mut changed = have.is_none();
        let mut want_ips = want.allowed_ips.clone();
        want_ips.sort();
        want_ips.dedup();
        let have_ips: Vec<IpNet> = have
            .map(|h| {
                let mut v: Vec<IpNet> = h
                    .allowed_ips
                    .iter()
                    .filter_map(|p| IpNet::new(p.addr(), p.len()).ok())
                    .collect();
                v.sort();
                v
            })
            .unwrap_or_default();
        if want_ips != have_ips {
            u.replace_allowed_ips = true;
            u.allowed_ips = want_ips
                .iter()
                .filter_map(|c| wgconf::IpPrefix::new(c.addr(), c.prefix_len()).ok())
                .collect();
            changed = true;
        }
        // Set the endpoint when it is new to us; leave a roamed one alone.
        let last = applied.entry(*key).or_default();
        if want.endpoint.is_some() && (have.is_none() || last.endpoint != want.endpoint) {
            u.endpoint = want.endpoint;
            last.endpoint = want.endpoint;
            changed = true;
        }
        if have.map(|h| h.persistent_keepalive) != Some(want.persistent_keepalive) {
            u.persistent_keepalive = Some(want.persistent_keepalive);
            changed = true;
        }
        let have_psk = have.and_then(|h| h.preshared_key).map(|k| k.0);
        if have_psk != want.preshared_key.map(|k| k.0) {
            u.preshared_key = Some(want.preshared_key.unwrap_or(wgconf::PresharedKey([0; 32])));
            changed = true;
        }
        if changed {
            update.peers.push(u);
        }
    }
    update
}

/// Whether an update changes nothing.
pub fn is_noop(u: &DeviceUpdate) -> bool {
    u.private_key.is_none()
        && u.listen_port.is_none()
        && u.fwmark.is_none()
        && !u.replace_peers
        && u.peers.is_empty()
}

#[cfg(test)]
mod tests {
    use super::*;
    use wgconf::PeerInfo;

    fn key(n: u8) -> PublicKey {
        PrivateKey([n; 32]).public_key()
    }

    fn conf() -> WireGuardConfig {
        WireGuardConfig {
            address: "10.4.0.1/16".parse().unwrap(),
            listen_port: 51820,
            mtu: 1420,
            peers: vec![],
        }
    }

    fn resolved(n: u8, ips: &[&str], ep: &str) -> ResolvedPeer {
        ResolvedPeer {
            public_key: key(n),
            endpoint: Some(ep.parse().unwrap()),
            allowed_ips: ips.iter().map(|s| s.parse().unwrap()).collect(),
            persistent_keepalive: 0,
            preshared_key: None,
        }
    }

    fn info_from(update: &DeviceUpdate, sk: &PrivateKey) -> DeviceInfo {
        DeviceInfo {
            private_key: Some(sk.clone()),
            public_key: Some(sk.public_key()),
            listen_port: update.listen_port.unwrap_or(51820),
            fwmark: 0,
            peers: update
                .peers
                .iter()
                .filter(|p| !p.remove)
                .map(|p| PeerInfo {
                    public_key: p.public_key,
                    preshared_key: None,
                    endpoint: p.endpoint,
                    last_handshake: None,
                    rx_bytes: 0,
                    tx_bytes: 0,
                    persistent_keepalive: p.persistent_keepalive.unwrap_or(0),
                    allowed_ips: p.allowed_ips.clone(),
                    reachable: None,
                })
                .collect(),
        }
    }

    #[test]
    fn first_apply_then_noop_then_one_peer_changes() {
        let sk = PrivateKey([9; 32]);
        let empty = DeviceInfo {
            private_key: None,
            public_key: None,
            listen_port: 40000,
            fwmark: 0,
            peers: vec![],
        };
        let mut applied = BTreeMap::new();
        let peers = vec![
            resolved(1, &["10.42.1.0/24", "10.4.0.2/32"], "1.1.1.1:51820"),
            resolved(2, &["10.42.2.0/24"], "2.2.2.2:51820"),
        ];
        let u = diff(&sk, &empty, &conf(), &peers, &mut applied);
        assert_eq!(u.private_key, Some(sk.clone()));
        assert_eq!(u.listen_port, Some(51820));
        assert_eq!(u.peers.len(), 2);
        assert!(!u.replace_peers, "never replace all peers");

        let now = info_from(&u, &sk);
        let u2 = diff(&sk, &now, &conf(), &peers, &mut applied);
        assert!(is_noop(&u2), "{u2:?}");

        // One peer's IPs change: only that peer is updated.
        let mut peers2 = peers.clone();
        peers2[1].allowed_ips.push("10.42.9.0/24".parse().unwrap());
        let u3 = diff(&sk, &now, &conf(), &peers2, &mut applied);
        assert_eq!(u3.peers.len(), 1);
        assert_eq!(u3.peers[0].public_key, key(2));
        assert!(u3.peers[0].replace_allowed_ips);
        assert_eq!(u3.peers[0].endpoint, None, "endpoint unchanged, not re-set");

        // A peer that roamed keeps its learned endpoint.
        let mut roamed = now.clone();
        roamed.peers[0].endpoint = Some("9.9.9.9:1234".parse().unwrap());
        assert!(is_noop(&diff(&sk, &roamed, &conf(), &peers, &mut applied)));

        // A peer that left is removed, alone.
        let u4 = diff(&sk, &now, &conf(), &peers[..1], &mut applied);
        assert_eq!(u4.peers.len(), 1);
        assert!(u4.peers[0].remove);
    }
}
