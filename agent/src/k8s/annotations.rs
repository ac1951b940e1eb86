//! Kilo's node annotations, exactly as Kilo names and formats them, so a
//! cluster set up for Kilo works unchanged and Kilo's `kgctl` can read a Weft
//! cluster.

use crate::mesh::RawNode;
use k8s_openapi::api::core::v1::Node;
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;

const PREFIX: &str = "kilo.squat.ai/";
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
/// The agent-owned keys, all of which `owned_patch` manages.
pub const OWNED: [&str; 7] = [
    ENDPOINT,
    INTERNAL_IP,
    KEY,
    LAST_SEEN,
    WIREGUARD_IP,
    GRANULARITY,
    DISCOVERED_ENDPOINTS,
];
/// Where the location comes from when there is no annotation.
pub const DEFAULT_TOPOLOGY_LABEL: &str = "topology.kubernetes.io/region";

/// A problem with one annotation; the node is still used where Kilo would.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Warning {
    pub node: String,
    pub field: String,
    pub reason: String,
}

/// Reads a Node into a raw mesh record, following Kilo's rules:
/// - the location annotation wins whenever present, even empty; then the
///   topology label; else the empty location;
/// - `leader` counts by presence ("false" too);
/// - a forced endpoint or internal IP replaces the detected one; a forced
///   internal IP of "" or "-" means none;
/// - an unparsable keepalive counts as 0 (reported);
/// - allowed-location-ips entries without a prefix length are dropped
///   (reported, where Kilo drops them silently);
/// - a node without a valid `last-seen` is treated as stale.
pub fn raw_node(node: &Node, topology_label: &str) -> (RawNode, Vec<Warning>) {
    let name = node.metadata.name.clone().unwrap_or_default();
    let empty = BTreeMap::new();
    let ann = node.metadata.annotations.as_ref().unwrap_or(&empty);
    let labels = node.metadata.labels.as_ref().unwrap_or(&empty);
    let mut warnings = Vec::new();
    let mut warn = |field: &str, reason: String| {
        warnings.push(Warning {
            node: name.clone(),
            field: field.to_string(),
            reason,
        })
    };
    let location = ann
        .get(LOCATION)
        .or_else(|| labels.get(topology_label))
        .cloned()
        .unwrap_or_default();
    let endpoint = ann
        .get(FORCE_ENDPOINT)
        .or_else(|| ann.get(ENDPOINT))
        .cloned();
    let internal_ip = match ann.get(FORCE_INTERNAL_IP) {
        Some(v) if v.is_empty() || v == "-" => Some("-".to_string()),
        Some(v) => Some(v.clone()),
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
        if ip.contains('/') {
            allowed_location_ips.push(ip.to_string());
        } else {
            warn(
                ALLOWED_LOCATION_IPS,
                format!("{ip:?} has no prefix length; ignored"),
            );
        }
    }
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
    let spec = node.spec.as_ref();
    let mut pod_cidrs: Vec<String> = spec.and_then(|s| s.pod_cidrs.clone()).unwrap_or_default();
    if pod_cidrs.is_empty() {
        if let Some(c) = spec.and_then(|s| s.pod_cidr.clone()) {
            pod_cidrs.push(c);
        }
    }
    (
        RawNode {
            name: name.clone(),
            location,
            endpoint,
            internal_ip,
            pod_cidrs,
            public_key: ann.get(KEY).cloned(),
            persistent_keepalive,
            leader: ann.contains_key(LEADER),
            allowed_location_ips,
            last_seen,
        },
        warnings,
    )
}

/// A JSON merge patch that sets the agent-owned annotations to `want`
/// (missing keys of `OWNED` are removed) and leaves everything else alone,
/// or `None` when the node already matches. Minimal: only differing keys.
pub fn owned_patch(node: &Node, want: &BTreeMap<String, String>) -> Option<Value> {
    let empty = BTreeMap::new();
    let have = node.metadata.annotations.as_ref().unwrap_or(&empty);
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
    debug_assert!(want.keys().all(|k| k.starts_with(PREFIX)));
    (!changes.is_empty()).then(|| json!({"metadata": {"annotations": changes}}))
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(node.not_ready(1_795_000_030), None);
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
        assert!(parsed.not_ready(100).is_some());
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
}
