//! Kilo's node annotations, exactly as Kilo names and formats them, so a
//! cluster set up for Kilo works unchanged and Kilo's `kgctl` can read a Weft
//! cluster.

use super::node::NodeView;
use crate::SelfReport;
use crate::{Endpoint, RawNode, RecordError};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use wgconf::PublicKey;

/// Set by users.
pub const LOCATION: &str = "kilo.squat.ai/location";
pub const FORCE_ENDPOINT: &str = "kilo.squat.ai/force-endpoint";
pub const FORCE_INTERNAL_IP: &str = "kilo.squat.ai/force-internal-ip";
pub const PERSISTENT_KEEPALIVE: &str = "kilo.squat.ai/persistent-keepalive";
pub const LEADER: &str = "kilo.squat.ai/leader";
pub const ALLOWED_LOCATION_IPS: &str = "kilo.squat.ai/allowed-location-ips";
/// Written by the agent of the node.
pub const ENDPOINT: &str = "kilo.squat.ai/endpoint";
pub const INTERNAL_IP: &str = "kilo.squat.ai/internal-ip";
pub const KEY: &str = "kilo.squat.ai/key";
pub const LAST_SEEN: &str = "kilo.squat.ai/last-seen";
pub const WIREGUARD_IP: &str = "kilo.squat.ai/wireguard-ip";
pub const GRANULARITY: &str = "kilo.squat.ai/granularity";
pub const DISCOVERED_ENDPOINTS: &str = "kilo.squat.ai/discovered-endpoints";
/// Weft's own, written by Weft agents only (Kilo ignores it): the segment
/// members this node cannot reach, comma-separated (see `mesh::failover`).
pub const UNREACHABLE: &str = "weft.dev/unreachable";
/// Weft's own: the node's private IPv6 address with its prefix, the next
/// hop of IPv6 pods inside its location (Kilo's `internal-ip` is one
/// address; Kilo nodes ignore this and route IPv4 only).
pub const INTERNAL_IP6: &str = "weft.dev/internal-ip6";
/// The agent-owned keys, all of which `owned_patch` manages.
pub const OWNED: [&str; 9] = [
    ENDPOINT,
    INTERNAL_IP,
    KEY,
    LAST_SEEN,
    WIREGUARD_IP,
    GRANULARITY,
    DISCOVERED_ENDPOINTS,
    UNREACHABLE,
    INTERNAL_IP6,
];
/// Where the location comes from when there is no annotation.
pub const DEFAULT_TOPOLOGY_LABEL: &str = "topology.kubernetes.io/region";

/// How often a node re-announces that it is alive (Kilo: 30 s; others leave
/// it out after twice that).
pub const CHECK_IN_PERIOD: u64 = 30;

/// One entry of `discovered-endpoints`: the JSON form of Go's `net.UDPAddr`,
/// which is what Kilo writes and reads.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct UdpAddr {
    #[serde(rename = "IP")]
    ip: IpAddr,
    port: u16,
    #[serde(default)]
    zone: String,
}

/// `discovered-endpoints` as Kilo writes it; "" when there is nothing.
pub fn format_discovered(map: &BTreeMap<PublicKey, SocketAddr>) -> String {
    if map.is_empty() {
        return String::new();
    }
    let m: BTreeMap<String, UdpAddr> = map
        .iter()
        .map(|(k, a)| {
            (
                k.to_base64(),
                UdpAddr {
                    ip: a.ip(),
                    port: a.port(),
                    zone: String::new(),
                },
            )
        })
        .collect();
    serde_json::to_string(&m).unwrap_or_default()
}

/// Parses `discovered-endpoints` into key -> `ip:port`; entries that are
/// not a key and an address are dropped with a warning.
fn parse_discovered(v: &str, warn: &mut dyn FnMut(&str, String)) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    if v.trim().is_empty() {
        return out;
    }
    let map: BTreeMap<String, Value> = match serde_json::from_str(v) {
        Ok(m) => m,
        Err(e) => {
            warn(
                DISCOVERED_ENDPOINTS,
                format!("not a JSON map of endpoints: {e}"),
            );
            return out;
        }
    };
    for (k, entry) in map {
        let addr = serde_json::from_value::<UdpAddr>(entry)
            .ok()
            .filter(|a| a.port != 0)
            .map(|a| SocketAddr::new(a.ip, a.port));
        match (PublicKey::from_base64(&k), addr) {
            (Ok(_), Some(a)) => {
                out.insert(k, a.to_string());
            }
            _ => warn(
                DISCOVERED_ENDPOINTS,
                format!("entry {k:?} is not a public key with an IP and port; ignored"),
            ),
        }
    }
    out
}

/// The agent-owned annotations in Kilo's formats ("" where Kilo writes "").
pub fn owned_annotations(report: &SelfReport, last_seen: u64) -> BTreeMap<String, String> {
    let opt = |v: Option<String>| v.unwrap_or_default();
    let mut owned = BTreeMap::from([
        (ENDPOINT.to_string(), report.endpoint.clone()),
        (
            INTERNAL_IP.to_string(),
            opt(report.internal_ip.map(|c| c.to_string())),
        ),
        (KEY.to_string(), report.public_key.to_base64()),
        (LAST_SEEN.to_string(), last_seen.to_string()),
        (
            WIREGUARD_IP.to_string(),
            opt(report.wireguard_ip.map(|c| c.to_string())),
        ),
        (GRANULARITY.to_string(), report.granularity.to_string()),
        (
            DISCOVERED_ENDPOINTS.to_string(),
            format_discovered(&report.discovered_endpoints),
        ),
    ]);
    if let Some(names) = &report.unreachable {
        let list: Vec<&str> = names.iter().map(String::as_str).collect();
        owned.insert(UNREACHABLE.to_string(), list.join(","));
    }
    if let Some(ip6) = report.internal_ip6 {
        owned.insert(INTERNAL_IP6.to_string(), ip6.to_string());
    }
    owned
}

/// The `last-seen` to write: the node's current one while it is younger
/// than the check-in period (no patch just for it), else `now`.
pub fn check_in_value(node: &impl NodeView, now: u64) -> u64 {
    node.meta()
        .annotations
        .as_ref()
        .and_then(|a| a.get(LAST_SEEN))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .filter(|t| *t <= now && now - t < CHECK_IN_PERIOD)
        .unwrap_or(now)
}

/// Reads a Node into a raw mesh record, following Kilo's rules:
/// - the location annotation wins whenever present, even empty; then the
///   topology label; else the empty location;
/// - `leader` counts by presence ("false" too);
/// - a forced endpoint or internal IP replaces the detected one; a forced
///   internal IP of "" or "-" means none; a forced value that does not parse
///   is reported and the announced one is used, as Kilo does, so one typo
///   never takes a node (and with a leader, its location) out of the mesh;
/// - an unparsable keepalive counts as 0 (reported);
/// - allowed-location-ips entries that are not a CIDR are dropped
///   (reported, where Kilo drops them silently);
/// - a node without a valid `last-seen` is treated as stale.
///
/// Problems with single annotations come back as warnings: the node is still
/// used, without that value.
pub fn raw_node(node: &impl NodeView, topology_label: &str) -> (RawNode, Vec<RecordError>) {
    let meta = node.meta();
    let name = meta.name.clone().unwrap_or_default();
    let empty = BTreeMap::new();
    let ann = meta.annotations.as_ref().unwrap_or(&empty);
    let labels = meta.labels.as_ref().unwrap_or(&empty);
    let mut warnings = Vec::new();
    let mut warn = |field: &str, reason: String| {
        warnings.push(RecordError {
            kind: "node",
            name: name.clone(),
            field: field.to_string(),
            reason,
        })
    };
    let location = ann
        .get(LOCATION)
        .or_else(|| labels.get(topology_label))
        .cloned()
        .unwrap_or_default();
    let endpoint = match ann.get(FORCE_ENDPOINT).filter(|v| !v.trim().is_empty()) {
        Some(v) => match v.trim().parse::<Endpoint>() {
            Ok(_) => Some(v.trim().to_string()),
            Err(e) => {
                warn(
                    FORCE_ENDPOINT,
                    format!("{e}; using the announced endpoint ({ENDPOINT})"),
                );
                ann.get(ENDPOINT).cloned()
            }
        },
        None => ann.get(ENDPOINT).cloned(),
    };
    let internal_ip = match ann.get(FORCE_INTERNAL_IP) {
        Some(v) if v.is_empty() || v == "-" => Some("-".to_string()),
        Some(v) if v.trim().parse::<ipnet::IpNet>().is_ok() => Some(v.trim().to_string()),
        Some(v) => {
            warn(
                FORCE_INTERNAL_IP,
                format!("{v:?} is not a CIDR; using the detected internal IP ({INTERNAL_IP})"),
            );
            ann.get(INTERNAL_IP).cloned()
        }
        None => ann.get(INTERNAL_IP).cloned(),
    };
    let persistent_keepalive = ann.get(PERSISTENT_KEEPALIVE).map(|v| {
        if v.trim().parse::<u16>().is_ok() {
            v.trim().to_string()
        } else {
            warn(
                PERSISTENT_KEEPALIVE,
                format!("{v:?} is not a number of seconds; using 0"),
            );
            "0".to_string()
        }
    });
    let mut allowed_location_ips = Vec::new();
    for ip in ann
        .get(ALLOWED_LOCATION_IPS)
        .map(|v| {
            v.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .collect::<Vec<_>>()
        })
        .unwrap_or_default()
    {
        if !ip.contains('/') {
            warn(
                ALLOWED_LOCATION_IPS,
                format!("{ip:?} has no prefix length; ignored"),
            );
        } else if ip.parse::<ipnet::IpNet>().is_err() {
            warn(
                ALLOWED_LOCATION_IPS,
                format!("{ip:?} is not a CIDR; ignored"),
            );
        } else {
            allowed_location_ips.push(ip.to_string());
        }
    }
    let internal_ip6 = ann
        .get(INTERNAL_IP6)
        .and_then(|v| match v.trim().parse::<ipnet::IpNet>() {
            Ok(c @ ipnet::IpNet::V6(_)) => Some(c.to_string()),
            _ => {
                warn(INTERNAL_IP6, format!("{v:?} is not an IPv6 CIDR; ignored"));
                None
            }
        });
    let last_seen = match ann.get(LAST_SEEN).map(|v| v.trim().parse::<u64>()) {
        Some(Ok(t)) => Some(t),
        Some(Err(_)) => {
            warn(
                LAST_SEEN,
                "not unix seconds; the node counts as stale".into(),
            );
            Some(0)
        }
        // Tracked by this backend: no check-in yet means stale.
        None => Some(0),
    };
    let discovered_endpoints = ann
        .get(DISCOVERED_ENDPOINTS)
        .map(|v| parse_discovered(v, &mut warn))
        .unwrap_or_default();
    let pod_cidrs = node.pod_cidrs();
    (
        RawNode {
            name: name.clone(),
            location,
            endpoint,
            internal_ip,
            internal_ip6,
            pod_cidrs,
            public_key: ann.get(KEY).cloned(),
            persistent_keepalive,
            leader: ann.contains_key(LEADER),
            allowed_location_ips,
            last_seen,
            discovered_endpoints,
            unreachable: ann.get(UNREACHABLE).map(|v| {
                v.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(str::to_string)
                    .collect()
            }),
        },
        warnings,
    )
}

/// A JSON merge patch that sets the agent-owned annotations to `want`
/// (missing keys of `OWNED` are removed) and leaves everything else alone,
/// or `None` when the node already matches. Minimal: only differing keys.
pub fn owned_patch(node: &impl NodeView, want: &BTreeMap<String, String>) -> Option<Value> {
    let empty = BTreeMap::new();
    let have = node.meta().annotations.as_ref().unwrap_or(&empty);
    let mut changes = Map::new();
    for key in OWNED {
        match (have.get(key), want.get(key)) {
            (Some(h), Some(w)) if h == w => {}
            (_, Some(w)) => {
                changes.insert(key.to_string(), json!(w));
            }
            (Some(_), None) => {
                changes.insert(key.to_string(), Value::Null);
            }
            (None, None) => {}
        }
    }
    debug_assert!(want.keys().all(|k| OWNED.contains(&k.as_str())));
    (!changes.is_empty()).then(|| json!({"metadata": {"annotations": changes}}))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Node;

    /// The shape `kubectl get node -o json` returns, trimmed to what matters.
    fn node_json(annotations: Value, labels: Value, spec: Value) -> Node {
        let v = json!({
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": "worker-1",
                "uid": "4c9d7cbe-1b2e-4d1e-9d55-5a0e7c3c2a11",
                "resourceVersion": "1234",
                "creationTimestamp": "2026-11-01T10:00:00Z",
                "labels": labels,
                "annotations": annotations,
            },
            "spec": spec,
            "status": {
                "addresses": [
                    {"type": "InternalIP", "address": "10.0.0.5"},
                    {"type": "Hostname", "address": "worker-1"}
                ]
            }
        });
        serde_json::from_value(v).expect("a Node")
    }

    const KEY_B64: &str = "jYkfTPBnJTk8ehUeUMvJjwWShRJD4ls1YrtIl0pZuXY=";

    #[test]
    fn complete_node_as_kilo_writes_it() {
        let n = node_json(
            json!({
                "kilo.squat.ai/endpoint": "3.120.0.1:51820",
                "kilo.squat.ai/internal-ip": "10.0.0.5/24",
                "kilo.squat.ai/key": KEY_B64,
                "kilo.squat.ai/last-seen": "1795000000",
                "kilo.squat.ai/wireguard-ip": "10.4.0.1/16",
                "kilo.squat.ai/granularity": "location",
                "kilo.squat.ai/persistent-keepalive": "25",
                "kilo.squat.ai/leader": "false",
                "kilo.squat.ai/allowed-location-ips": "192.168.50.0/24, 192.168.60.1",
                "node.alpha.kubernetes.io/ttl": "0"
            }),
            json!({"topology.kubernetes.io/region": "eu-west-1", "kubernetes.io/hostname": "worker-1"}),
            json!({"podCIDR": "10.42.1.0/24", "podCIDRs": ["10.42.1.0/24", "fd42:1::/64"]}),
        );
        let (raw, warnings) = raw_node(&n, DEFAULT_TOPOLOGY_LABEL);
        assert_eq!(raw.name, "worker-1");
        assert_eq!(raw.location, "eu-west-1");
        assert_eq!(raw.endpoint.as_deref(), Some("3.120.0.1:51820"));
        assert_eq!(raw.internal_ip.as_deref(), Some("10.0.0.5/24"));
        assert_eq!(raw.pod_cidrs, ["10.42.1.0/24", "fd42:1::/64"]);
        assert!(raw.leader, "presence counts, even \"false\"");
        assert_eq!(raw.persistent_keepalive.as_deref(), Some("25"));
        assert_eq!(raw.allowed_location_ips, ["192.168.50.0/24"]);
        assert_eq!(raw.last_seen, Some(1_795_000_000));
        assert_eq!(warnings.len(), 1);
        assert_eq!(warnings[0].field, ALLOWED_LOCATION_IPS);
        // And it parses into a ready node.
        let node = raw.parse().expect("valid");
        assert_eq!(node.not_ready(&crate::Liveness::at(1_795_000_030)), None);
    }

    /// Every annotation a person writes, with a bad value: the node stays in
    /// the mesh, the value falls back as in Kilo, and the warning (an Event
    /// on the node) names the annotation.
    #[test]
    fn a_bad_value_in_any_user_annotation_never_drops_the_node() {
        let base = || {
            json!({
                "kilo.squat.ai/key": KEY_B64,
                "kilo.squat.ai/endpoint": "3.120.0.1:51820",
                "kilo.squat.ai/internal-ip": "10.0.0.5/24",
                "kilo.squat.ai/last-seen": "1700000000",
            })
        };
        type Check = fn(&RawNode);
        let cases: &[(&str, &str, Check)] = &[
            (FORCE_ENDPOINT, "not an endpoint", |r| {
                assert_eq!(r.endpoint.as_deref(), Some("3.120.0.1:51820"))
            }),
            (FORCE_ENDPOINT, "1.2.3.4", |r| {
                assert_eq!(r.endpoint.as_deref(), Some("3.120.0.1:51820"))
            }),
            (FORCE_ENDPOINT, "host:99999", |r| {
                assert_eq!(r.endpoint.as_deref(), Some("3.120.0.1:51820"))
            }),
            (FORCE_INTERNAL_IP, "10.0.0.300/24", |r| {
                assert_eq!(r.internal_ip.as_deref(), Some("10.0.0.5/24"))
            }),
            (FORCE_INTERNAL_IP, "10.0.0.9", |r| {
                assert_eq!(r.internal_ip.as_deref(), Some("10.0.0.5/24"))
            }),
            (PERSISTENT_KEEPALIVE, "soon", |r| {
                assert_eq!(r.persistent_keepalive.as_deref(), Some("0"))
            }),
            (PERSISTENT_KEEPALIVE, "70000", |r| {
                assert_eq!(r.persistent_keepalive.as_deref(), Some("0"))
            }),
            (
                ALLOWED_LOCATION_IPS,
                "10.9.0.0/33, printer, 10.8.0.0/24",
                |r| assert_eq!(r.allowed_location_ips, ["10.8.0.0/24"]),
            ),
            (DISCOVERED_ENDPOINTS, "{oops", |r| {
                assert!(r.discovered_endpoints.is_empty())
            }),
        ];
        for (annotation, value, check) in cases {
            let mut ann = base();
            ann[*annotation] = json!(value);
            let (raw, warnings) = raw_node(
                &node_json(ann, json!({}), json!({"podCIDR": "10.42.2.0/24"})),
                DEFAULT_TOPOLOGY_LABEL,
            );
            check(&raw);
            assert!(
                warnings.iter().any(|w| w.field == *annotation),
                "{annotation}={value:?}: no warning names it: {warnings:?}"
            );
            let node = raw
                .parse()
                .unwrap_or_else(|e| panic!("{annotation}={value:?} dropped the node: {e}"));
            assert!(node.endpoint.is_some(), "{annotation}={value:?}");
        }
        // The forced endpoint's message says what was wrong and what is used.
        let mut ann = base();
        ann[FORCE_ENDPOINT] = json!("not an endpoint");
        let (_, warnings) = raw_node(
            &node_json(ann, json!({}), json!({})),
            DEFAULT_TOPOLOGY_LABEL,
        );
        assert_eq!(
            warnings[0].to_string(),
            "node worker-1: kilo.squat.ai/force-endpoint: \"not an endpoint\" is not HOST:PORT; using the announced endpoint (kilo.squat.ai/endpoint)"
        );
    }

    #[test]
    fn overrides_and_defaults() {
        let n = node_json(
            json!({
                "kilo.squat.ai/location": "",
                "kilo.squat.ai/force-endpoint": "node.example.com:4000",
                "kilo.squat.ai/endpoint": "1.1.1.1:51820",
                "kilo.squat.ai/force-internal-ip": "-",
                "kilo.squat.ai/internal-ip": "10.0.0.5/24",
                "kilo.squat.ai/persistent-keepalive": "soon"
            }),
            json!({"topology.kubernetes.io/region": "eu-west-1", "custom/zone": "z1"}),
            json!({"podCIDR": "10.42.2.0/24"}),
        );
        let (raw, warnings) = raw_node(&n, DEFAULT_TOPOLOGY_LABEL);
        assert_eq!(raw.location, "", "an empty location annotation still wins");
        assert_eq!(raw.endpoint.as_deref(), Some("node.example.com:4000"));
        assert_eq!(raw.internal_ip.as_deref(), Some("-"));
        assert_eq!(
            raw.pod_cidrs,
            ["10.42.2.0/24"],
            "podCIDR when podCIDRs is absent"
        );
        assert!(!raw.leader);
        assert_eq!(raw.persistent_keepalive.as_deref(), Some("0"));
        assert_eq!(raw.last_seen, Some(0), "never checked in: stale");
        assert_eq!(warnings[0].field, PERSISTENT_KEEPALIVE);
        let parsed = raw.parse().expect("valid");
        assert_eq!(parsed.internal_ip, None);
        assert!(parsed.not_ready(&crate::Liveness::at(100)).is_some());
        // Another topology label.
        let (raw, _) = raw_node(
            &node_json(json!({}), json!({"custom/zone": "z1"}), json!({})),
            "custom/zone",
        );
        assert_eq!(raw.location, "z1");
    }

    #[test]
    fn patch_touches_only_owned_keys_that_differ() {
        let n = node_json(
            json!({
                "kilo.squat.ai/key": KEY_B64,
                "kilo.squat.ai/last-seen": "100",
                "kilo.squat.ai/wireguard-ip": "10.4.0.1/16",
                "kilo.squat.ai/location": "aws",
                "unrelated": "x"
            }),
            json!({}),
            json!({}),
        );
        let mut want = BTreeMap::new();
        want.insert(KEY.to_string(), KEY_B64.to_string());
        want.insert(LAST_SEEN.to_string(), "130".to_string());
        want.insert(ENDPOINT.to_string(), "3.120.0.1:51820".to_string());
        let p = owned_patch(&n, &want).expect("a patch");
        assert_eq!(
            p,
            json!({"metadata": {"annotations": {
                "kilo.squat.ai/last-seen": "130",
                "kilo.squat.ai/endpoint": "3.120.0.1:51820",
                "kilo.squat.ai/wireguard-ip": null
            }}})
        );
        // Applying it leaves nothing to patch.
        let mut applied = n.clone();
        let ann = applied
            .metadata
            .annotations
            .get_or_insert_with(BTreeMap::new);
        ann.insert(LAST_SEEN.into(), "130".into());
        ann.insert(ENDPOINT.into(), "3.120.0.1:51820".into());
        ann.remove(WIREGUARD_IP);
        assert_eq!(owned_patch(&applied, &want), None);
    }

    #[test]
    fn discovered_endpoints_in_kilos_format() {
        let key = PublicKey::from_base64(KEY_B64).unwrap();
        let map = BTreeMap::from([(key, "198.51.100.7:40001".parse().unwrap())]);
        let text = format_discovered(&map);
        // Go's json.Marshal of map[string]*net.UDPAddr.
        assert_eq!(
            text,
            format!(r#"{{"{KEY_B64}":{{"IP":"198.51.100.7","Port":40001,"Zone":""}}}}"#)
        );
        assert_eq!(format_discovered(&BTreeMap::new()), "");
        let n = node_json(
            json!({
                "kilo.squat.ai/discovered-endpoints": format!(
                    r#"{{"{KEY_B64}":{{"IP":"198.51.100.7","Port":40001,"Zone":""}},"bad":{{"IP":"1.2.3.4","Port":1}},"{KEY_B64}x":{{"IP":"x"}}}}"#
                )
            }),
            json!({}),
            json!({}),
        );
        let (raw, warnings) = raw_node(&n, DEFAULT_TOPOLOGY_LABEL);
        assert_eq!(
            raw.discovered_endpoints,
            BTreeMap::from([(KEY_B64.to_string(), "198.51.100.7:40001".to_string())])
        );
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        assert!(warnings.iter().all(|w| w.field == DISCOVERED_ENDPOINTS));
        let parsed = raw.parse().unwrap();
        assert_eq!(parsed.discovered_endpoints, map);
        // Not JSON at all: one warning, nothing learned.
        let n = node_json(
            json!({"kilo.squat.ai/discovered-endpoints": "{oops"}),
            json!({}),
            json!({}),
        );
        let (raw, warnings) = raw_node(&n, DEFAULT_TOPOLOGY_LABEL);
        assert!(raw.discovered_endpoints.is_empty());
        assert_eq!(warnings.len(), 1);
    }

    #[test]
    fn check_in_keeps_a_fresh_last_seen_and_renews_an_old_one() {
        let at = |v: &str| node_json(json!({"kilo.squat.ai/last-seen": v}), json!({}), json!({}));
        assert_eq!(check_in_value(&at("1000"), 1010), 1000);
        assert_eq!(
            check_in_value(&at("1000"), 1000 + CHECK_IN_PERIOD),
            1000 + CHECK_IN_PERIOD
        );
        assert_eq!(
            check_in_value(&at("5000"), 1000),
            1000,
            "from the future: renewed"
        );
        assert_eq!(check_in_value(&at("soon"), 1000), 1000);
        assert_eq!(
            check_in_value(&node_json(json!({}), json!({}), json!({})), 7),
            7
        );
    }

    #[test]
    fn owned_annotations_write_empty_strings_where_kilo_does() {
        let report = SelfReport {
            public_key: PublicKey::from_base64(KEY_B64).unwrap(),
            endpoint: "203.0.113.9:51820".into(),
            internal_ip: None,
            internal_ip6: None,
            wireguard_ip: Some("10.4.0.2/16".parse().unwrap()),
            granularity: crate::Granularity::Full,
            discovered_endpoints: BTreeMap::new(),
            unreachable: None,
        };
        let a = owned_annotations(&report, 1234);
        // Kilo's seven; Weft's report only from a node that probes, its
        // IPv6 address only from a node that has one.
        assert_eq!(a.len(), OWNED.len() - 2);
        assert!(!a.contains_key(INTERNAL_IP6));
        assert!(!a.contains_key(UNREACHABLE));
        assert_eq!(a[INTERNAL_IP], "");
        assert_eq!(a[DISCOVERED_ENDPOINTS], "");
        assert_eq!(a[WIREGUARD_IP], "10.4.0.2/16");
        assert_eq!(a[GRANULARITY], "full");
        assert_eq!(a[LAST_SEEN], "1234");
        assert_eq!(a[KEY], KEY_B64);
        let probing = SelfReport {
            unreachable: Some(["b".to_string(), "a".to_string()].into()),
            ..report.clone()
        };
        let a = owned_annotations(&probing, 1234);
        assert_eq!(a[UNREACHABLE], "a,b");
        let back = raw_node(
            &node_json(json!({UNREACHABLE: "a, b"}), json!({}), json!({})),
            DEFAULT_TOPOLOGY_LABEL,
        )
        .0;
        assert_eq!(back.unreachable, Some(vec!["a".into(), "b".into()]));
        // The IPv6 internal address goes out and comes back; a value that
        // is not IPv6 is reported and ignored, the node kept.
        let dual = SelfReport {
            internal_ip6: Some("fd00:1::11/64".parse().unwrap()),
            ..report
        };
        assert_eq!(owned_annotations(&dual, 1)[INTERNAL_IP6], "fd00:1::11/64");
        let (back, warnings) = raw_node(
            &node_json(json!({INTERNAL_IP6: "fd00:1::11/64"}), json!({}), json!({})),
            DEFAULT_TOPOLOGY_LABEL,
        );
        assert_eq!(back.internal_ip6.as_deref(), Some("fd00:1::11/64"));
        assert!(warnings.is_empty());
        let (back, warnings) = raw_node(
            &node_json(json!({INTERNAL_IP6: "10.0.0.1/24"}), json!({}), json!({})),
            DEFAULT_TOPOLOGY_LABEL,
        );
        assert_eq!(back.internal_ip6, None);
        assert_eq!(warnings[0].field, INTERNAL_IP6);
    }
}
