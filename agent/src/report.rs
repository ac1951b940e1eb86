//! `weftctl status`: the mesh's health as an operator asks for it, from the
//! cluster's records and, where they answer, the agents' own `/readyz` and
//! `/metrics`: per location its leader and members, each node's check-in
//! age, readiness and tunnel handshakes, the records left out and why, and
//! a one-line verdict.
//!
//! [`Report::new`] is pure (records, topology, what the agents answered and
//! the clock in); [`probe`] asks one agent over HTTP; [`Report::text`] and
//! serde's JSON print the result.

use crate::mesh::{Loaded, Topology};
use crate::metrics::parse_sample;
use serde::Serialize;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// What a node's agent answered.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "snake_case", tag = "state")]
pub enum Agent {
    /// Not asked: probing is off, or the node has no internal IP to ask at.
    NotProbed,
    /// No answer, or not one an agent gives.
    Unreachable { address: String, error: String },
    /// `/readyz` answered; `failed` holds the failing checks' lines.
    Answered {
        address: String,
        ready: bool,
        failed: Vec<String>,
    },
}

/// One peer of a node's tunnel, as the node's `/metrics` reports it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TunnelPeer {
    /// The peer's name (a node or a Peer) where the agent names it, else its
    /// public key.
    pub peer: String,
    pub location: String,
    pub handshake_age_seconds: Option<f64>,
    /// `None` until the tunnel has tried the peer.
    pub reachable: Option<bool>,
}

/// What asking one agent gave.
#[derive(Clone, Debug, PartialEq)]
pub struct Probe {
    pub agent: Agent,
    pub tunnel: Vec<TunnelPeer>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct NodeStatus {
    pub name: String,
    pub location: String,
    pub leader: bool,
    /// Seconds since the node's agent last checked in (none for a mesh file).
    pub check_in_age_seconds: Option<u64>,
    pub agent: Agent,
    pub tunnel: Vec<TunnelPeer>,
}

/// A node or Peer the mesh leaves out, with the reason its agents report
/// (the text of their Events).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LeftOut {
    pub kind: String,
    pub name: String,
    pub reason: String,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Report {
    pub healthy: bool,
    pub verdict: String,
    pub locations: usize,
    pub nodes: Vec<NodeStatus>,
    pub peers: Vec<String>,
    pub left_out: Vec<LeftOut>,
    pub problems: Vec<String>,
}

/// Where to ask each node's agent: its internal IP at `port` (the
/// manifests bind the agent to the node's address).
pub fn agent_addresses(topology: &Topology, port: u16) -> Vec<(String, SocketAddr)> {
    topology
        .segments
        .iter()
        .flat_map(|s| &s.nodes)
        .filter_map(|n| Some((n.name.clone(), SocketAddr::new(n.internal_ip?.addr(), port))))
        .collect()
}

impl Report {
    /// The report for `topology` (computed from `loaded` at `now`, Unix
    /// seconds) with what the agents in `probes` answered, by node name.
    pub fn new(
        loaded: &Loaded,
        topology: &Topology,
        probes: &BTreeMap<String, Probe>,
        now: u64,
    ) -> Self {
        let mut nodes = Vec::new();
        let mut problems = Vec::new();
        for segment in &topology.segments {
            for (i, n) in segment.nodes.iter().enumerate() {
                let probe = probes.get(&n.name);
                let agent = probe.map_or(Agent::NotProbed, |p| p.agent.clone());
                let tunnel = probe.map(|p| p.tunnel.clone()).unwrap_or_default();
                match &agent {
                    Agent::NotProbed => {}
                    Agent::Unreachable { address, error } => problems.push(format!(
                        "the agent on {} does not answer at {address}: {error}",
                        n.name
                    )),
                    Agent::Answered {
                        ready: false,
                        failed,
                        ..
                    } => problems.push(format!("{} is not ready: {}", n.name, failed.join("; "))),
                    Agent::Answered { .. } => {}
                }
                for t in tunnel.iter().filter(|t| t.reachable == Some(false)) {
                    problems.push(format!(
                        "{} cannot reach its tunnel peer {}",
                        n.name, t.peer
                    ));
                }
                nodes.push(NodeStatus {
                    name: n.name.clone(),
                    location: n.location.clone(),
                    leader: i == segment.leader,
                    check_in_age_seconds: n.last_seen.map(|t| now.saturating_sub(t)),
                    agent,
                    tunnel,
                });
            }
        }
        nodes.sort_by(|a, b| (&a.location, &a.name).cmp(&(&b.location, &b.name)));
        let mut left_out: Vec<LeftOut> = topology
            .excluded
            .iter()
            .map(|e| LeftOut {
                kind: e.kind.to_string(),
                name: e.name.clone(),
                reason: e.reason.clone(),
            })
            .collect();
        left_out.extend(loaded.rejected.iter().map(|r| LeftOut {
            kind: r.kind.to_string(),
            name: r.name.clone(),
            reason: format!("{}: {}", r.field, r.reason),
        }));
        for l in &left_out {
            problems.push(format!("{} {} is left out: {}", l.kind, l.name, l.reason));
        }
        let mut locations: Vec<&str> = nodes.iter().map(|n| n.location.as_str()).collect();
        locations.sort_unstable();
        locations.dedup();
        let peers: Vec<String> = topology.peers.iter().map(|p| p.name.clone()).collect();
        let probed = nodes.iter().filter(|n| n.agent != Agent::NotProbed).count();
        let healthy = problems.is_empty();
        let verdict = if !healthy {
            let n = problems.len();
            format!("{n} problem{}", if n == 1 { "" } else { "s" })
        } else if probed == nodes.len() {
            "healthy: every agent ready, every tunnel peer answering".to_string()
        } else {
            format!(
                "healthy as far as seen: {probed} of {} agents asked",
                nodes.len()
            )
        };
        Report {
            healthy,
            verdict,
            locations: locations.len(),
            nodes,
            peers,
            left_out,
            problems,
        }
    }

    /// The report as a person reads it.
    pub fn text(&self) -> String {
        let mut out = format!(
            "{} nodes in {} locations, {} peers\n\n",
            self.nodes.len(),
            self.locations,
            self.peers.len()
        );
        let rows: Vec<[String; 6]> = self
            .nodes
            .iter()
            .map(|n| {
                let agent = match &n.agent {
                    Agent::NotProbed => "-".to_string(),
                    Agent::Unreachable { .. } => "no answer".to_string(),
                    Agent::Answered { ready: true, .. } => "ready".to_string(),
                    Agent::Answered { ready: false, .. } => "NOT READY".to_string(),
                };
                let tunnel = n
                    .tunnel
                    .iter()
                    .map(|t| {
                        let age = t
                            .handshake_age_seconds
                            .map_or("no handshake".to_string(), age);
                        if t.reachable == Some(false) {
                            format!("{} UNREACHABLE ({age})", t.peer)
                        } else {
                            format!("{} {age}", t.peer)
                        }
                    })
                    .collect::<Vec<_>>()
                    .join(", ");
                [
                    n.location.clone(),
                    n.name.clone(),
                    if n.leader { "leader" } else { "" }.to_string(),
                    n.check_in_age_seconds
                        .map_or("-".to_string(), |s| age(s as f64)),
                    agent,
                    if tunnel.is_empty() {
                        "-".into()
                    } else {
                        tunnel
                    },
                ]
            })
            .collect();
        let header = [
            "LOCATION",
            "NODE",
            "ROLE",
            "CHECK-IN",
            "AGENT",
            "TUNNEL (last handshake)",
        ]
        .map(String::from);
        let mut widths = [0; 6];
        for row in std::iter::once(&header).chain(&rows) {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        for row in std::iter::once(&header).chain(&rows) {
            let line: Vec<String> = row
                .iter()
                .zip(widths)
                .map(|(cell, w)| format!("{cell:<w$}"))
                .collect();
            out.push_str(line.join("  ").trim_end());
            out.push('\n');
        }
        if !self.peers.is_empty() {
            out.push_str(&format!("\npeers: {}\n", self.peers.join(", ")));
        }
        if !self.problems.is_empty() {
            out.push('\n');
            for p in &self.problems {
                out.push_str(&format!("problem: {p}\n"));
            }
        }
        out.push_str(&format!("\n{}\n", self.verdict));
        out
    }
}

/// Seconds as a person reads an age: 42s, 3m5s, 2h4m.
fn age(seconds: f64) -> String {
    let s = seconds.max(0.0).round() as u64;
    match s {
        0..=119 => format!("{s}s"),
        120..=7199 => format!("{}m{}s", s / 60, s % 60),
        _ => format!("{}h{}m", s / 3600, s % 3600 / 60),
    }
}

/// The most of an answer read from an agent: a mesh of thousands of peers
/// has a few MiB of metrics.
const MAX_ANSWER: u64 = 16 << 20;

/// `GET path` over plain HTTP/1.0 (an agent's endpoint, or any small
/// server that closes after answering): the status code and the body.
pub fn http_get(addr: SocketAddr, path: &str, timeout: Duration) -> Result<(u16, String), String> {
    let mut s = TcpStream::connect_timeout(&addr, timeout).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    s.set_write_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").map_err(|e| e.to_string())?;
    let mut reply = Vec::new();
    s.take(MAX_ANSWER)
        .read_to_end(&mut reply)
        .map_err(|e| e.to_string())?;
    let reply = String::from_utf8_lossy(&reply);
    let (head, body) = reply.split_once("\r\n\r\n").ok_or("not an HTTP answer")?;
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or("not an HTTP answer")?;
    Ok((code, body.to_string()))
}

/// Asks the agent at `addr` for its readiness and its tunnel's peers.
pub fn probe(addr: SocketAddr, timeout: Duration) -> Probe {
    let address = addr.to_string();
    let agent = match http_get(addr, "/readyz", timeout) {
        Err(error) => Agent::Unreachable { address, error },
        Ok((code @ (200 | 503), body)) => Agent::Answered {
            address,
            ready: code == 200,
            failed: body
                .lines()
                .filter_map(|l| l.strip_prefix("[-] "))
                .map(str::to_string)
                .collect(),
        },
        Ok((code, _)) => Agent::Unreachable {
            address,
            error: format!("/readyz answered {code}"),
        },
    };
    // An agent that did not answer is not asked again (another timeout).
    let tunnel = match &agent {
        Agent::Answered { .. } => match http_get(addr, "/metrics", timeout) {
            Ok((200, body)) => tunnel_peers(&body),
            _ => Vec::new(),
        },
        _ => Vec::new(),
    };
    Probe { agent, tunnel }
}

/// The tunnel's peers from an agent's metrics text.
pub fn tunnel_peers(metrics: &str) -> Vec<TunnelPeer> {
    let mut peers: BTreeMap<String, TunnelPeer> = BTreeMap::new();
    for sample in metrics.lines().filter_map(parse_sample) {
        let is_age = sample.name == "weft_peer_last_handshake_age_seconds";
        if !is_age && sample.name != "weft_peer_reachable" {
            continue;
        }
        let label = |k: &str| {
            sample
                .labels
                .iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.clone())
        };
        let Some(key) = label("public_key") else {
            continue;
        };
        let entry = peers.entry(key.clone()).or_insert_with(|| TunnelPeer {
            peer: label("peer").unwrap_or(key),
            location: label("location").unwrap_or_default(),
            handshake_age_seconds: None,
            reachable: None,
        });
        if is_age {
            entry.handshake_age_seconds = Some(sample.value);
        } else {
            entry.reachable = Some(sample.value != 0.0);
        }
    }
    let mut out: Vec<TunnelPeer> = peers.into_values().collect();
    out.sort_by(|a, b| a.peer.cmp(&b.peer));
    out
}

#[cfg(test)]
mod tests;
