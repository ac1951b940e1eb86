//! Prometheus metrics (prometheus-client's registry and OpenMetrics text):
//! mesh size, reconciles, errors and durations, the API's reachability, and
//! per peer the tunnel's traffic, handshake age and reachability (Kilo needs
//! a separate exporter for those). The names are the documented ones.
//!
//! `weft_mtu_bytes` is the MTU the node chose for its tunnel and pods.
//!
//! For alerts and dashboards that speak of locations: `weft_node_info`
//! (1, labelled with this node's name and location), `weft_ready` (what
//! `/readyz` answers, as 1 or 0), and the per-peer series labelled with the
//! peer's name (a node or a Peer resource) and location besides its key.
//!
//! The figures a Kilo user's dashboard reads are also exported under the
//! names it reads, so it works unchanged on Weft nodes: Kilo's own
//! (`kilo_nodes`, `kilo_peers`, `kilo_leader`, `kilo_reconciles_total`,
//! `kilo_errors_total`) and the WireGuard exporter's that Kilo's docs
//! point to (`wireguard_sent_bytes_total`, `wireguard_received_bytes_total`,
//! `wireguard_latest_handshake_seconds`: the Unix time of the latest
//! handshake, 0 before the first, labelled by `public_key` and
//! `allowed_ips` as that exporter does).

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// Upper bounds of the reconcile-duration histogram, in seconds.
const BUCKETS: [f64; 8] = [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 2.5];

/// One peer's counters as the tunnel reports them.
#[derive(Clone, Debug, PartialEq)]
pub struct PeerStat {
    pub public_key: String,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    /// Seconds since the last handshake, if there was one.
    pub handshake_age: Option<f64>,
    /// The Unix time of the last handshake, if there was one.
    pub latest_handshake: Option<f64>,
    /// The peer's allowed IPs, comma-separated.
    pub allowed_ips: String,
    /// Whether the peer answers (`None` before anything was tried).
    pub reachable: Option<bool>,
}

impl PeerStat {
    /// One peer as the tunnel reported it, with its handshake's age at `now`.
    pub fn from_tunnel(peer: &wgconf::PeerInfo, now: std::time::SystemTime) -> Self {
        Self {
            public_key: peer.public_key.to_base64(),
            rx_bytes: peer.rx_bytes,
            tx_bytes: peer.tx_bytes,
            handshake_age: peer
                .last_handshake
                .and_then(|t| now.duration_since(t).ok())
                .map(|d| d.as_secs_f64()),
            latest_handshake: peer
                .last_handshake
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map(|d| d.as_secs_f64()),
            allowed_ips: peer
                .allowed_ips
                .iter()
                .map(|p| p.to_string())
                .collect::<Vec<_>>()
                .join(","),
            reachable: peer.reachable,
        }
    }
}

/// Where in a pass an error happened: the `stage` label of `weft_errors_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorStage {
    /// Reading the mesh (the API or the mesh file).
    Backend,
    /// Computing the topology from what was read.
    Topology,
    /// Applying the desired state to this node.
    Reconcile,
    /// Publishing this node's annotations.
    Announce,
}

impl ErrorStage {
    pub const ALL: [ErrorStage; 4] = [
        ErrorStage::Backend,
        ErrorStage::Topology,
        ErrorStage::Reconcile,
        ErrorStage::Announce,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorStage::Backend => "backend",
            ErrorStage::Topology => "topology",
            ErrorStage::Reconcile => "reconcile",
            ErrorStage::Announce => "announce",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Stage {
    stage: String,
}

impl From<ErrorStage> for Stage {
    fn from(s: ErrorStage) -> Self {
        Stage {
            stage: s.as_str().to_string(),
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NodeInfo {
    node: String,
    location: String,
}

/// Who a tunnel peer is in the mesh: a node (a location's leader) or a Peer
/// resource; `location` is empty for a Peer.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PeerIdentity {
    pub name: String,
    pub location: String,
}

/// The tunnel's per-peer figures, encoded as they are at each scrape, and
/// who each peer is (by its base64 public key).
#[derive(Debug, Default)]
struct PeerStats {
    stats: Mutex<Vec<PeerStat>>,
    identities: Mutex<BTreeMap<String, PeerIdentity>>,
}

impl Collector for PeerStats {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let peers = self.stats.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let identities = self
            .identities
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        // Weft's own series: the key, and the peer's name and location once
        // the mesh names it.
        let labels = |p: &PeerStat| {
            let mut l = vec![("public_key".to_string(), escape_label(&p.public_key))];
            if let Some(who) = identities.get(&p.public_key) {
                l.push(("peer".into(), escape_label(&who.name)));
                l.push(("location".into(), escape_label(&who.location)));
            }
            l
        };
        let labels = &labels;
        type Labels<'a> = &'a dyn Fn(&PeerStat) -> Vec<(String, String)>;
        // The WireGuard exporter's names and labels (see the module's doc).
        let exporter_labels = |p: &PeerStat| {
            vec![
                ("public_key".to_string(), escape_label(&p.public_key)),
                ("allowed_ips".to_string(), escape_label(&p.allowed_ips)),
            ]
        };
        let exporter_labels = &exporter_labels;
        let all: [(&str, &str, bool, Labels); 4] = [
            (
                "weft_peer_rx_bytes",
                "Bytes received from a peer.",
                true,
                labels,
            ),
            ("weft_peer_tx_bytes", "Bytes sent to a peer.", false, labels),
            (
                "wireguard_received_bytes",
                "Bytes received from the peer.",
                true,
                exporter_labels,
            ),
            (
                "wireguard_sent_bytes",
                "Bytes sent to the peer.",
                false,
                exporter_labels,
            ),
        ];
        for (name, help, rx, labels) in all {
            let c = ConstCounter::new(0u64);
            let mut family = encoder.encode_descriptor(name, help, None, c.metric_type())?;
            for p in &peers {
                let v = ConstCounter::new(if rx { p.rx_bytes } else { p.tx_bytes });
                v.encode(family.encode_family(&labels(p))?)?;
            }
        }
        let g = ConstGauge::new(0.0f64);
        let mut family = encoder.encode_descriptor(
            "wireguard_latest_handshake_seconds",
            "Unix time of the latest handshake with the peer; 0 before the first.",
            None,
            g.metric_type(),
        )?;
        for p in &peers {
            ConstGauge::new(p.latest_handshake.unwrap_or(0.0))
                .encode(family.encode_family(&exporter_labels(p))?)?;
        }
        let mut family = encoder.encode_descriptor(
            "weft_peer_last_handshake_age_seconds",
            "Seconds since the last handshake with a peer.",
            None,
            g.metric_type(),
        )?;
        for p in &peers {
            if let Some(age) = p.handshake_age {
                ConstGauge::new(age).encode(family.encode_family(&labels(p))?)?;
            }
        }
        let mut family = encoder.encode_descriptor(
            "weft_peer_reachable",
            "1 while a peer answers, 0 once its handshakes go unanswered for 5 s.",
            None,
            g.metric_type(),
        )?;
        for p in &peers {
            if let Some(r) = p.reachable {
                ConstGauge::new(i64::from(r)).encode(family.encode_family(&labels(p))?)?;
            }
        }
        Ok(())
    }
}

pub struct Metrics {
    registry: Registry,
    nodes: Gauge,
    peers: Gauge,
    leader: Gauge,
    api_reachable: Gauge,
    ready: Gauge,
    mtu: Gauge,
    node_info: Family<NodeInfo, Gauge>,
    reconciles: Counter,
    errors: Family<Stage, Counter>,
    /// All stages together, for Kilo's `kilo_errors_total`.
    errors_total: Counter,
    durations: Histogram,
    peer_stats: Arc<PeerStats>,
}

/// Lets the registry hold a collector the metrics keep updating.
#[derive(Debug)]
struct Shared(Arc<PeerStats>);

impl Collector for Shared {
    fn encode(&self, encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        self.0.encode(encoder)
    }
}

impl Metrics {
    pub fn new() -> Arc<Self> {
        let mut registry = Registry::default();
        let nodes = Gauge::default();
        let peers = Gauge::default();
        let leader = Gauge::default();
        let api_reachable = Gauge::default();
        let ready = Gauge::default();
        let mtu = Gauge::default();
        let node_info = Family::<NodeInfo, Gauge>::default();
        let reconciles = Counter::default();
        let errors = Family::<Stage, Counter>::default();
        // Every stage from zero: a rate over a counter that appears with
        // its first error misses that error.
        for stage in ErrorStage::ALL {
            let _ = errors.get_or_create(&stage.into());
        }
        let errors_total = Counter::default();
        let durations = Histogram::new(BUCKETS);
        // The registry ends each help text with a period of its own.
        registry.register("weft_nodes", "Nodes in the mesh", nodes.clone());
        registry.register("weft_peers", "External peers in the mesh", peers.clone());
        registry.register(
            "weft_leader",
            "1 while this node leads its segment",
            leader.clone(),
        );
        registry.register(
            "weft_api_reachable",
            "1 while the Kubernetes API answers (always 1 for a mesh file)",
            api_reachable.clone(),
        );
        registry.register(
            "weft_ready",
            "1 while every readiness check passes (what /readyz answers)",
            ready.clone(),
        );
        registry.register(
            "weft_mtu_bytes",
            "The MTU this node gives its tunnel and its pods' interfaces (--mtu auto: measured on the underlay; 0 before the first pass)",
            mtu.clone(),
        );
        registry.register(
            "weft_node_info",
            "1, labelled with this node's name and location",
            node_info.clone(),
        );
        registry.register("weft_reconciles", "Reconcile passes", reconciles.clone());
        registry.register("weft_errors", "Errors by stage", errors.clone());
        registry.register(
            "weft_reconcile_duration_seconds",
            "Duration of reconcile passes",
            durations.clone(),
        );
        // Kilo's names for the same figures (a clone shares the value).
        registry.register(
            "kilo_nodes",
            "Nodes in the mesh (Kilo's name)",
            nodes.clone(),
        );
        registry.register(
            "kilo_peers",
            "External peers in the mesh (Kilo's name)",
            peers.clone(),
        );
        registry.register(
            "kilo_leader",
            "1 while this node leads its segment (Kilo's name)",
            leader.clone(),
        );
        registry.register(
            "kilo_reconciles",
            "Reconcile passes (Kilo's name)",
            reconciles.clone(),
        );
        registry.register(
            "kilo_errors",
            "Errors of every stage (Kilo's name)",
            errors_total.clone(),
        );
        let peer_stats = Arc::new(PeerStats::default());
        registry.register_collector(Box::new(Shared(peer_stats.clone())));
        api_reachable.set(1);
        Arc::new(Self {
            registry,
            nodes,
            peers,
            leader,
            api_reachable,
            ready,
            mtu,
            node_info,
            reconciles,
            errors,
            errors_total,
            durations,
            peer_stats,
        })
    }

    pub fn set_mesh(&self, nodes: usize, peers: usize, leader: bool) {
        self.nodes.set(nodes as i64);
        self.peers.set(peers as i64);
        self.leader.set(i64::from(leader));
    }

    /// This node's name and location, for `weft_node_info`.
    pub fn set_node(&self, node: &str, location: &str) {
        let info = NodeInfo {
            node: escape_label(node),
            location: escape_label(location),
        };
        if self.node_info.get(&info).is_none() {
            self.node_info.clear();
        }
        self.node_info.get_or_create(&info).set(1);
    }

    /// Who the tunnel's peers are, by base64 public key.
    pub fn set_peer_identities(&self, identities: BTreeMap<String, PeerIdentity>) {
        *self
            .peer_stats
            .identities
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = identities;
    }

    pub fn set_mtu(&self, mtu: u16) {
        self.mtu.set(i64::from(mtu));
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.set(i64::from(ready));
    }

    pub fn set_api_reachable(&self, reachable: bool) {
        self.api_reachable.set(i64::from(reachable));
    }

    pub fn reconciled(&self, seconds: f64) {
        self.reconciles.inc();
        self.durations.observe(seconds);
    }

    /// Counts an error of one stage.
    pub fn error(&self, stage: ErrorStage) {
        self.errors.get_or_create(&stage.into()).inc();
        self.errors_total.inc();
    }

    pub fn set_peers(&self, stats: Vec<PeerStat>) {
        *self
            .peer_stats
            .stats
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = stats;
    }

    /// The OpenMetrics text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String does not fail; an encoding error would be a
        // bug in a metric, and then the scrape gets what was written.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// A label value as the text format writes it (`\\`, `\"` and `\n`
/// escaped). prometheus-client writes values as given, and a location
/// comes from an annotation that may hold anything.
fn escape_label(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// One sample of the text exposition, as read back (by `weftctl status`).
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

/// Reads one line of the OpenMetrics (or Prometheus) text format: `name
/// value` or `name{label="value",...} value`, with `\\`, `\"` and `\n`
/// escaped in label values. Comments, blank lines and anything malformed
/// give `None`; a timestamp after the value is ignored.
pub fn parse_sample(line: &str) -> Option<Sample> {
    let line = line.trim_end();
    if line.starts_with('#') {
        return None;
    }
    let name_end = line.find(['{', ' ']).unwrap_or(line.len());
    let name = &line[..name_end];
    let valid_name = |s: &str| {
        s.chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    };
    if !valid_name(name) {
        return None;
    }
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(inner) = rest.strip_prefix('{') {
        let mut chars = inner.char_indices();
        loop {
            // A label's name up to '=', or the end of the set.
            let mut key = String::new();
            let mut closed = false;
            for (_, c) in chars.by_ref() {
                match c {
                    '=' => break,
                    '}' if key.is_empty() => {
                        closed = true;
                        break;
                    }
                    c if c.is_ascii_alphanumeric() || c == '_' => key.push(c),
                    _ => return None,
                }
            }
            if closed {
                break;
            }
            if key.is_empty() || chars.next().map(|(_, c)| c) != Some('"') {
                return None;
            }
            let mut value = String::new();
            loop {
                match chars.next()?.1 {
                    '"' => break,
                    '\\' => match chars.next()?.1 {
                        'n' => value.push('\n'),
                        c @ ('\\' | '"') => value.push(c),
                        _ => return None,
                    },
                    c => value.push(c),
                }
            }
            labels.push((key, value));
            match chars.next()? {
                (_, ',') => continue,
                (i, '}') => {
                    rest = &inner[i + 1..];
                    break;
                }
                _ => return None,
            }
        }
        if labels.is_empty() {
            // `name{}`: the set closed at once.
            rest = &inner[inner.find('}')? + 1..];
        }
    }
    let value = match rest.split_whitespace().next()? {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    Some(Sample {
        name: name.to_string(),
        labels,
        value,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_the_documented_names() {
        let m = Metrics::new();
        m.set_mesh(4, 1, true);
        m.reconciled(0.0012);
        m.reconciled(0.03);
        m.error(ErrorStage::Backend);
        m.set_api_reachable(false);
        m.set_ready(true);
        m.set_node("old", "somewhere");
        m.set_node("a", "eu-west");
        m.set_peer_identities(BTreeMap::from([(
            "abc=".to_string(),
            PeerIdentity {
                name: "b".into(),
                location: "us-east".into(),
            },
        )]));
        m.set_peers(vec![
            PeerStat {
                public_key: "abc=".into(),
                rx_bytes: 10,
                tx_bytes: 20,
                handshake_age: Some(3.5),
                latest_handshake: Some(1_800_000_000.0),
                allowed_ips: "10.4.0.1/32,10.42.1.0/24".into(),
                reachable: Some(false),
            },
            PeerStat {
                public_key: "new=".into(),
                rx_bytes: 0,
                tx_bytes: 148,
                handshake_age: None,
                latest_handshake: None,
                allowed_ips: "10.5.0.1/32".into(),
                reachable: None,
            },
        ]);
        let text = m.render();
        assert!(
            !text.contains("somewhere"),
            "a former location stays: {text}"
        );
        for line in [
            "weft_nodes 4",
            "weft_leader 1",
            "weft_api_reachable 0",
            "weft_reconciles_total 2",
            "weft_errors_total{stage=\"backend\"} 1",
            "weft_errors_total{stage=\"announce\"} 0",
            "weft_reconcile_duration_seconds_bucket{le=\"0.001\"} 0",
            "weft_reconcile_duration_seconds_bucket{le=\"0.005\"} 1",
            "weft_reconcile_duration_seconds_bucket{le=\"+Inf\"} 2",
            "weft_reconcile_duration_seconds_count 2",
            "weft_ready 1",
            "weft_node_info{node=\"a\",location=\"eu-west\"} 1",
            "weft_peer_rx_bytes_total{public_key=\"abc=\",peer=\"b\",location=\"us-east\"} 10",
            "weft_peer_tx_bytes_total{public_key=\"abc=\",peer=\"b\",location=\"us-east\"} 20",
            "weft_peer_last_handshake_age_seconds{public_key=\"abc=\",peer=\"b\",location=\"us-east\"} 3.5",
            "weft_peer_reachable{public_key=\"abc=\",peer=\"b\",location=\"us-east\"} 0",
            // A peer the mesh does not name (yet) keeps its key alone.
            "weft_peer_tx_bytes_total{public_key=\"new=\"} 148",
            // Kilo's dashboard reads these.
            "kilo_nodes 4",
            "kilo_peers 1",
            "kilo_leader 1",
            "kilo_reconciles_total 2",
            "kilo_errors_total 1",
            "wireguard_received_bytes_total{public_key=\"abc=\",allowed_ips=\"10.4.0.1/32,10.42.1.0/24\"} 10",
            "wireguard_sent_bytes_total{public_key=\"abc=\",allowed_ips=\"10.4.0.1/32,10.42.1.0/24\"} 20",
            "wireguard_latest_handshake_seconds{public_key=\"abc=\",allowed_ips=\"10.4.0.1/32,10.42.1.0/24\"} 1800000000.0",
            "wireguard_latest_handshake_seconds{public_key=\"new=\",allowed_ips=\"10.5.0.1/32\"} 0.0",
            "# EOF",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
    }

    #[test]
    fn a_tunnel_peer_gives_its_handshake_time_and_allowed_ips() {
        let key = wgconf::PrivateKey([9; 32]).public_key();
        let at = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_800_000_000);
        let mut info = wgconf::PeerInfo {
            public_key: key,
            preshared_key: None,
            endpoint: None,
            last_handshake: Some(at),
            rx_bytes: 1,
            tx_bytes: 2,
            persistent_keepalive: 0,
            allowed_ips: vec![
                "10.4.0.1/32".parse().unwrap(),
                "10.42.1.0/24".parse().unwrap(),
            ],
            reachable: None,
        };
        let now = at + std::time::Duration::from_secs(7);
        let stat = PeerStat::from_tunnel(&info, now);
        assert_eq!(stat.latest_handshake, Some(1_800_000_000.0));
        assert_eq!(stat.handshake_age, Some(7.0));
        assert_eq!(stat.allowed_ips, "10.4.0.1/32,10.42.1.0/24");
        info.last_handshake = None;
        let stat = PeerStat::from_tunnel(&info, now);
        assert_eq!((stat.latest_handshake, stat.handshake_age), (None, None));
    }

    #[test]
    fn samples_read_back_what_was_rendered() {
        let m = Metrics::new();
        m.set_node("a", "eu \"west\"\\1\n");
        m.set_peers(vec![PeerStat {
            public_key: "k+/=".into(),
            rx_bytes: 5,
            tx_bytes: 6,
            handshake_age: Some(2.5),
            latest_handshake: Some(1.0),
            allowed_ips: "10.0.0.0/8,fd00::/8".into(),
            reachable: Some(false),
        }]);
        let text = m.render();
        let samples: Vec<Sample> = text.lines().filter_map(parse_sample).collect();
        let lines = text.lines().filter(|l| !l.starts_with('#')).count();
        assert_eq!(
            samples.len(),
            lines,
            "every sample line reads back:\n{text}"
        );
        let info = samples
            .iter()
            .find(|s| s.name == "weft_node_info")
            .expect("info");
        assert_eq!(
            info.labels,
            vec![
                ("node".to_string(), "a".to_string()),
                ("location".to_string(), "eu \"west\"\\1\n".to_string())
            ]
        );
        let reach = samples
            .iter()
            .find(|s| s.name == "weft_peer_reachable")
            .expect("reachable");
        assert_eq!(reach.value, 0.0);
        assert_eq!(reach.labels[0], ("public_key".into(), "k+/=".into()));
    }

    #[test]
    fn malformed_samples_are_refused_not_misread() {
        for line in [
            "",
            "# HELP x y",
            "{a=\"b\"} 1",
            "x{a=\"b} 1",
            "x{a=b} 1",
            "x{=\"b\"} 1",
            "x{a=\"b\"",
            "x{a=\"b\",} 1",
            "x{a=\"\\q\"} 1",
            "x{a=\"b\"}",
            "x one",
            "9x 1",
            "x{a=\"é\"",
        ] {
            assert_eq!(parse_sample(line), None, "{line:?}");
        }
        let s = parse_sample("x{} 1 1700000000").expect("empty set, timestamp");
        assert_eq!((s.name.as_str(), s.labels.len(), s.value), ("x", 0, 1.0));
        assert_eq!(parse_sample("x +Inf").map(|s| s.value), Some(f64::INFINITY));
    }

    #[test]
    fn arbitrary_text_never_panics_the_reader() {
        // A deterministic stream of lines made of the format's own
        // characters and some that are not, sliced at every char boundary.
        let alphabet: Vec<char> = "ab_:{}=\",\\ n1.-+Ié#\t".chars().collect();
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..20_000 {
            let len = (state % 24) as usize;
            let line: String = (0..len)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    alphabet[(state % alphabet.len() as u64) as usize]
                })
                .collect();
            let _ = parse_sample(&line);
            state = state.wrapping_add(1);
        }
    }
}
