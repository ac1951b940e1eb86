//! What `weftctl` prints: WireGuard configurations (the INI `wg setconf`
//! reads), Kilo `Peer` manifests, and a Graphviz picture of the mesh. The same
//! shapes as Kilo's `kgctl`, so guides written for it still apply.

use crate::mesh::{Endpoint, PeerConfig, Topology};
use ipnet::IpNet;
use serde_json::{json, Value};
use std::fmt::Write as _;
use wgconf::PublicKey;

/// Output format of `showconf --as-peer`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Wireguard,
    Yaml,
    Json,
}

fn join(ips: &[IpNet]) -> String {
    ips.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// One `[Peer]` section; keys in the order `wg showconf` writes them.
fn peer_section(out: &mut String, p: &PeerConfig) {
    // Writing to a String cannot fail.
    let _ = writeln!(out, "[Peer]");
    let _ = writeln!(out, "PublicKey = {}", p.public_key);
    if let Some(psk) = &p.preshared_key {
        let _ = writeln!(out, "PresharedKey = {}", wgconf::PublicKey(psk.0));
    }
    let _ = writeln!(out, "AllowedIPs = {}", join(&p.allowed_ips));
    if let Some(ep) = &p.endpoint {
        let _ = writeln!(out, "Endpoint = {ep}");
    }
    if p.persistent_keepalive > 0 {
        let _ = writeln!(out, "PersistentKeepalive = {}", p.persistent_keepalive);
    }
}

fn dedup(mut v: Vec<IpNet>) -> Vec<IpNet> {
    let mut seen = Vec::new();
    v.retain(|c| {
        if seen.contains(c) {
            false
        } else {
            seen.push(*c);
            true
        }
    });
    v
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum RenderError {
    #[error("node {0} is not in the mesh (unknown, or left out: see the log)")]
    UnknownNode(String),
    #[error("peer {0} is not in the mesh")]
    UnknownPeer(String),
    /// Kilo prints this and exits 0; we do the same.
    #[error("node {0} is not a leader node")]
    NotLeader(String),
}

/// `showconf node NAME`: the configuration the node runs (without its
/// private key).
pub fn node_conf(t: &Topology, name: &str) -> Result<String, RenderError> {
    let d = t
        .desired_state(name)
        .ok_or_else(|| RenderError::UnknownNode(name.to_string()))?;
    let wg = d
        .wireguard
        .ok_or_else(|| RenderError::NotLeader(name.to_string()))?;
    let mut out = String::new();
    let _ = writeln!(out, "[Interface]\nListenPort = {}", wg.listen_port);
    for p in &wg.peers {
        out.push('\n');
        peer_section(&mut out, p);
    }
    Ok(out)
}

/// The node's segment as one peer of some other WireGuard interface.
fn node_as_peer(
    t: &Topology,
    name: &str,
    extra: &[IpNet],
) -> Result<(PeerConfig, String), RenderError> {
    let (si, ni) = t
        .find(name)
        .ok_or_else(|| RenderError::UnknownNode(name.to_string()))?;
    let seg = &t.segments[si];
    if seg.leader != ni {
        return Err(RenderError::NotLeader(name.to_string()));
    }
    let leader = seg.leader();
    let mut allowed = seg.routed_ips();
    allowed.extend_from_slice(extra);
    let public_key = leader
        .public_key
        .ok_or_else(|| RenderError::UnknownNode(name.to_string()))?;
    Ok((
        PeerConfig {
            name: name.to_string(),
            public_key,
            endpoint: seg.endpoint(&t.discovered),
            allowed_ips: dedup(allowed),
            persistent_keepalive: leader.persistent_keepalive,
            preshared_key: None,
        },
        name.to_string(),
    ))
}

/// `showconf node NAME --as-peer`.
pub fn node_as_peer_conf(
    t: &Topology,
    name: &str,
    extra: &[IpNet],
    format: Format,
) -> Result<String, RenderError> {
    let (p, name) = node_as_peer(t, name, extra)?;
    Ok(render_peer(&p, &name, format))
}

/// `showconf peer NAME`: the `[Peer]` sections an external peer loads to
/// reach every segment and every other peer.
pub fn peer_conf(t: &Topology, name: &str) -> Result<String, RenderError> {
    let mut out = String::new();
    for (i, p) in peer_configs(t, name)?.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        peer_section(&mut out, p);
    }
    Ok(out)
}

/// The peers an external peer `name` has: every segment's leader (with the
/// segment's routed IPs), then every other Peer.
pub fn peer_configs(t: &Topology, name: &str) -> Result<Vec<PeerConfig>, RenderError> {
    let me = t
        .peers
        .iter()
        .find(|p| p.name == name)
        .ok_or_else(|| RenderError::UnknownPeer(name.to_string()))?;
    let mut out = Vec::new();
    for seg in &t.segments {
        if let Some(public_key) = seg.leader().public_key {
            out.push(PeerConfig {
                name: seg.key.clone(),
                public_key,
                endpoint: seg.endpoint(&t.discovered),
                allowed_ips: seg.routed_ips(),
                persistent_keepalive: me.persistent_keepalive,
                preshared_key: me.preshared_key,
            });
        }
    }
    for other in t.peers.iter().filter(|p| p.name != name) {
        out.push(PeerConfig {
            name: other.name.clone(),
            public_key: other.public_key,
            endpoint: other.endpoint.clone(),
            allowed_ips: other.allowed_ips.clone(),
            persistent_keepalive: me.persistent_keepalive,
            preshared_key: None,
        });
    }
    Ok(out)
}

/// `showconf peer NAME --as-peer`.
pub fn peer_as_peer_conf(
    t: &Topology,
    name: &str,
    extra: &[IpNet],
    format: Format,
) -> Result<String, RenderError> {
    let p = t
        .peers
        .iter()
        .find(|p| p.name == name)
        .ok_or_else(|| RenderError::UnknownPeer(name.to_string()))?;
    let mut allowed = p.allowed_ips.clone();
    allowed.extend_from_slice(extra);
    let conf = PeerConfig {
        name: p.name.clone(),
        public_key: p.public_key,
        endpoint: p.endpoint.clone(),
        allowed_ips: dedup(allowed),
        persistent_keepalive: p.persistent_keepalive,
        preshared_key: p.preshared_key,
    };
    Ok(render_peer(&conf, name, format))
}

/// A Kilo `Peer` resource for `p`, field for field what kgctl prints (the
/// API machinery's `creationTimestamp: null` included; a keepalive of 0
/// and an absent key or endpoint left out), except that the keepalive is
/// in seconds: kgctl's carries nanoseconds, a known bug we do not copy.
pub fn peer_manifest(p: &PeerConfig, name: &str) -> Value {
    let mut spec = json!({
        "allowedIPs": p.allowed_ips.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "publicKey": p.public_key.to_base64(),
    });
    if p.persistent_keepalive > 0 {
        spec["persistentKeepalive"] = json!(p.persistent_keepalive);
    }
    if let Some(ep) = &p.endpoint {
        let dns_or_ip = match ep {
            Endpoint::Ip(a) => json!({"ip": a.ip().to_string()}),
            Endpoint::Dns { host, .. } => json!({"dns": host}),
        };
        spec["endpoint"] = json!({"dnsOrIP": dns_or_ip, "port": ep.port()});
    }
    if let Some(psk) = &p.preshared_key {
        spec["presharedKey"] = json!(PublicKey(psk.0).to_base64());
    }
    json!({
        "apiVersion": "kilo.squat.ai/v1alpha1",
        "kind": "Peer",
        "metadata": {"creationTimestamp": null, "name": name},
        "spec": spec,
    })
}

fn render_peer(p: &PeerConfig, name: &str, format: Format) -> String {
    match format {
        Format::Wireguard => {
            let mut out = String::new();
            peer_section(&mut out, p);
            out
        }
        Format::Json => {
            let mut s = serde_json::to_string_pretty(&peer_manifest(p, name)).unwrap_or_default();
            s.push('\n');
            s
        }
        Format::Yaml => serde_yaml::to_string(&peer_manifest(p, name)).unwrap_or_default(),
    }
}

fn dot_id(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// `graph`: Graphviz DOT, one dashed cluster per segment, leaders joined to
/// their members and to each other (where tunnelled), peers dashed.
pub fn graph(t: &Topology) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "digraph weft {{");
    let _ = writeln!(
        out,
        "  label={};",
        dot_id(&format!("{} ({})", t.options.subnet, t.options.granularity))
    );
    let _ = writeln!(
        out,
        "  labelloc=t;\n  outputorder=nodesfirst;\n  overlap=false;"
    );
    for (i, seg) in t.segments.iter().enumerate() {
        let _ = writeln!(out, "  subgraph \"cluster_{i}\" {{");
        let _ = writeln!(out, "    label={};\n    style=dashed;", dot_id(&seg.key));
        for (j, n) in seg.nodes.iter().enumerate() {
            let mut label = format!("{}\\n{}", n.location, n.name);
            for c in &n.pod_cidrs {
                let _ = write!(label, "\\n{c}");
            }
            if let Some(ip) = n.internal_ip {
                let _ = write!(label, "\\n{ip}");
            }
            if j == seg.leader {
                let _ = write!(label, "\\n{}", seg.wireguard_ip);
                if let Some(ep) = &n.endpoint {
                    let _ = write!(label, "\\n{ep}");
                }
            }
            let shape = if j == seg.leader { "ellipse" } else { "box" };
            let _ = writeln!(
                out,
                "    {} [label=\"{}\" shape={shape}];",
                dot_id(&n.name),
                label.replace('"', "'")
            );
        }
        for (j, n) in seg.nodes.iter().enumerate() {
            if j != seg.leader {
                let _ = writeln!(
                    out,
                    "    {} -> {} [dir=both];",
                    dot_id(&seg.leader().name),
                    dot_id(&n.name)
                );
            }
        }
        let _ = writeln!(out, "  }}");
    }
    for i in 0..t.segments.len() {
        for j in i + 1..t.segments.len() {
            if t.tunnelled(i, j) {
                let _ = writeln!(
                    out,
                    "  {} -> {} [dir=both];",
                    dot_id(&t.segments[i].leader().name),
                    dot_id(&t.segments[j].leader().name)
                );
            }
        }
    }
    for p in &t.peers {
        let _ = writeln!(
            out,
            "  {} [label=\"{}\\n{}\" shape=note];",
            dot_id(&format!("peer:{}", p.name)),
            p.name,
            join(&p.allowed_ips)
        );
        for seg in &t.segments {
            let _ = writeln!(
                out,
                "  {} -> {} [dir=both style=dashed];",
                dot_id(&seg.leader().name),
                dot_id(&format!("peer:{}", p.name))
            );
        }
    }
    let _ = writeln!(out, "}}");
    out
}
