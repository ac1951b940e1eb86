//! Kilo's `Peer` resource (`kilo.squat.ai/v1alpha1`, cluster scoped): the
//! Rust type the CRD is generated from, and its translation into the mesh's
//! peer record with Kilo's validation.

use crate::{RawPeer, RecordError};
use kube_derive::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A WireGuard peer outside the cluster: a laptop, a CI runner, another
/// cluster's location.
#[derive(CustomResource, Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[kube(
    group = "kilo.squat.ai",
    version = "v1alpha1",
    kind = "Peer",
    plural = "peers",
    crates(kube_core = "::kube_core")
)]
#[serde(rename_all = "camelCase")]
pub struct PeerSpec {
    /// The prefixes the peer owns; traffic to them is sent to it.
    #[serde(rename = "allowedIPs")]
    pub allowed_ips: Vec<String>,
    /// Where the peer listens, if it is reachable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<PeerEndpoint>,
    /// Seconds between keepalives; > 0 also means the peer may roam.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub persistent_keepalive: Option<i64>,
    /// Base64 preshared key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preshared_key: Option<String>,
    /// Base64 WireGuard public key.
    pub public_key: String,
}

#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
pub struct PeerEndpoint {
    #[serde(rename = "dnsOrIP")]
    pub dns_or_ip: DnsOrIp,
    pub port: u32,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
pub struct DnsOrIp {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
}

fn reject(name: &str, field: &str, reason: impl ToString) -> RecordError {
    RecordError {
        kind: "peer",
        name: name.to_string(),
        field: field.to_string(),
        reason: reason.to_string(),
    }
}

/// Kilo's checks, then the mesh's own parse. Where Kilo silently drops an
/// invalid preshared key and uses the peer without it, Weft rejects the peer:
/// running without the key the user asked for is not a safe default.
pub fn raw_peer(p: &Peer) -> Result<RawPeer, RecordError> {
    let name = p.metadata.name.clone().unwrap_or_default();
    let spec = &p.spec;
    let endpoint = match &spec.endpoint {
        None => None,
        Some(ep) => {
            if ep.port == 0 || ep.port > 65535 {
                return Err(reject(
                    &name,
                    "spec.endpoint.port",
                    format!("{} is not 1..65535", ep.port),
                ));
            }
            // The IP wins over the DNS name when both are set, as in Kilo.
            let host = match (&ep.dns_or_ip.ip, &ep.dns_or_ip.dns) {
                (Some(ip), _) => {
                    let ip: std::net::IpAddr = ip.parse().map_err(|_| {
                        reject(
                            &name,
                            "spec.endpoint.dnsOrIP.ip",
                            format!("{ip:?} is not an IP"),
                        )
                    })?;
                    if ip.is_ipv6() {
                        format!("[{ip}]")
                    } else {
                        ip.to_string()
                    }
                }
                (None, Some(dns)) => dns.clone(),
                (None, None) => {
                    return Err(reject(&name, "spec.endpoint.dnsOrIP", "needs dns or ip"));
                }
            };
            Some(format!("{host}:{}", ep.port))
        }
    };
    let keepalive = match spec.persistent_keepalive {
        None => None,
        Some(k) if (0..=i64::from(u16::MAX)).contains(&k) => Some(k as u16),
        Some(k) => {
            return Err(reject(
                &name,
                "spec.persistentKeepalive",
                format!("{k} is not 0..65535"),
            ))
        }
    };
    let raw = RawPeer {
        name: name.clone(),
        allowed_ips: spec.allowed_ips.clone(),
        public_key: spec.public_key.clone(),
        endpoint,
        persistent_keepalive: keepalive,
        preshared_key: spec.preshared_key.clone(),
    };
    // Field names as the resource spells them.
    raw.parse().map_err(|mut e| {
        e.field = format!("spec.{}", e.field);
        e
    })?;
    Ok(raw)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube_core::CustomResourceExt;
    use serde_json::json;

    const KEY: &str = "jYkfTPBnJTk8ehUeUMvJjwWShRJD4ls1YrtIl0pZuXY=";

    fn peer(spec: serde_json::Value) -> Peer {
        serde_json::from_value(json!({
            "apiVersion": "kilo.squat.ai/v1alpha1",
            "kind": "Peer",
            "metadata": {"name": "laptop", "resourceVersion": "42", "uid": "0b8d1f3e-1c5a-4f8e-9a1b-2c3d4e5f6a7b"},
            "spec": spec
        }))
        .expect("a Peer")
    }

    #[test]
    fn kilo_peers_translate() {
        let p = peer(json!({
            "allowedIPs": ["10.5.0.1/32"],
            "publicKey": KEY,
            "persistentKeepalive": 10,
            "endpoint": {"dnsOrIP": {"ip": "2001:db8::1", "dns": "ignored.example"}, "port": 51820}
        }));
        let raw = raw_peer(&p).unwrap();
        assert_eq!(raw.endpoint.as_deref(), Some("[2001:db8::1]:51820"));
        assert_eq!(raw.persistent_keepalive, Some(10));
        let dns = peer(json!({
            "allowedIPs": ["10.5.0.2/32"], "publicKey": KEY,
            "endpoint": {"dnsOrIP": {"dns": "vpn.example.com"}, "port": 4000}
        }));
        assert_eq!(
            raw_peer(&dns).unwrap().endpoint.as_deref(),
            Some("vpn.example.com:4000")
        );
    }

    #[test]
    fn invalid_peers_are_rejected_with_the_field() {
        for (spec, field) in [
            (
                json!({"allowedIPs": ["10.5.0.1"], "publicKey": KEY}),
                "spec.allowedIPs",
            ),
            (
                json!({"allowedIPs": [], "publicKey": KEY}),
                "spec.allowedIPs",
            ),
            (
                json!({"allowedIPs": ["10.5.0.1/32"], "publicKey": "nope"}),
                "spec.publicKey",
            ),
            (
                json!({"allowedIPs": ["10.5.0.1/32"], "publicKey": KEY, "presharedKey": "nope"}),
                "spec.presharedKey",
            ),
            (
                json!({"allowedIPs": ["10.5.0.1/32"], "publicKey": KEY, "persistentKeepalive": -1}),
                "spec.persistentKeepalive",
            ),
            (
                json!({"allowedIPs": ["10.5.0.1/32"], "publicKey": KEY,
                    "endpoint": {"dnsOrIP": {"ip": "1.2.3.4"}, "port": 0}}),
                "spec.endpoint.port",
            ),
            (
                json!({"allowedIPs": ["10.5.0.1/32"], "publicKey": KEY,
                    "endpoint": {"dnsOrIP": {"ip": "1.2.3"}, "port": 1}}),
                "spec.endpoint.dnsOrIP.ip",
            ),
            (
                json!({"allowedIPs": ["10.5.0.1/32"], "publicKey": KEY,
                    "endpoint": {"dnsOrIP": {}, "port": 1}}),
                "spec.endpoint.dnsOrIP",
            ),
            (
                json!({"allowedIPs": ["10.5.0.1/32"], "publicKey": KEY,
                    "endpoint": {"dnsOrIP": {"dns": "Not_A_Name"}, "port": 1}}),
                "spec.endpoint",
            ),
        ] {
            let e = raw_peer(&peer(spec.clone())).unwrap_err();
            assert_eq!(e.field, field, "{spec}: {e}");
        }
    }

    /// manifests/crds.yaml is generated from the type; WEFT_BLESS=1 rewrites it.
    #[test]
    fn crd_manifest_matches_the_type() {
        let crd = Peer::crd();
        assert_eq!(crd.spec.scope, "Cluster");
        let yaml = serde_yaml::to_string(&crd).unwrap();
        let path = std::path::Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../manifests/crds.yaml"
        ));
        let text = format!(
            "# Generated from agent/src/k8s/peer.rs (WEFT_BLESS=1 cargo test -p agent crd to regenerate).\n{yaml}"
        );
        if std::env::var_os("WEFT_BLESS").is_some() {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, &text).unwrap();
        }
        assert_eq!(
            std::fs::read_to_string(path).unwrap_or_default(),
            text,
            "manifests/crds.yaml is stale"
        );
    }
}
