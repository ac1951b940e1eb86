//! Prometheus metrics and a health check on a small HTTP endpoint: mesh size,
//! reconcile counts, errors and durations, and per-peer traffic and handshake
//! age from the embedded tunnel (Kilo needs a separate exporter for those).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Upper bounds of the reconcile-duration histogram, in seconds.
const BUCKETS: [f64; 8] = [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 2.5];

/// One peer's counters as the device reports them.
#[derive(Clone, Debug, PartialEq)]
pub struct PeerStat {
    pub public_key: String,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    /// Seconds since the last handshake, if there was one.
    pub handshake_age: Option<f64>,
    /// Whether the peer answers (`None` before anything was tried).
    pub reachable: Option<bool>,
}

#[derive(Default)]
pub struct Metrics {
    nodes: AtomicU64,
    peers: AtomicU64,
    leader: AtomicU64,
    reconciles: AtomicU64,
    errors: Mutex<BTreeMap<&'static str, u64>>,
    durations: Mutex<([u64; BUCKETS.len()], u64, f64)>,
    peer_stats: Mutex<Vec<PeerStat>>,
}

impl Metrics {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    pub fn set_mesh(&self, nodes: usize, peers: usize, leader: bool) {
        self.nodes.store(nodes as u64, Ordering::Relaxed);
        self.peers.store(peers as u64, Ordering::Relaxed);
        self.leader.store(u64::from(leader), Ordering::Relaxed);
    }

    pub fn reconciled(&self, seconds: f64) {
        self.reconciles.fetch_add(1, Ordering::Relaxed);
        let mut d = self.durations.lock().unwrap_or_else(|e| e.into_inner());
        for (i, le) in BUCKETS.iter().enumerate() {
            if seconds <= *le {
                d.0[i] += 1;
            }
        }
        d.1 += 1;
        d.2 += seconds;
    }

    /// Counts an error of one stage (`backend`, `topology`, `reconcile`).
    pub fn error(&self, stage: &'static str) {
        *self
            .errors
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(stage)
            .or_default() += 1;
    }

    pub fn set_peers(&self, stats: Vec<PeerStat>) {
        *self.peer_stats.lock().unwrap_or_else(|e| e.into_inner()) = stats;
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let gauge = |out: &mut String, name: &str, help: &str, v: u64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        };
        gauge(
            &mut out,
            "weft_nodes",
            "Nodes in the mesh (ready).",
            self.nodes.load(Ordering::Relaxed),
        );
        gauge(
            &mut out,
            "weft_peers",
            "Peers in the mesh.",
            self.peers.load(Ordering::Relaxed),
        );
        gauge(
            &mut out,
            "weft_leader",
            "1 if this node leads its segment.",
            self.leader.load(Ordering::Relaxed),
        );
        let _ = writeln!(
            out,
            "# HELP weft_reconciles_total Reconcile passes.\n# TYPE weft_reconciles_total counter\nweft_reconciles_total {}",
            self.reconciles.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP weft_errors_total Errors by stage.\n# TYPE weft_errors_total counter"
        );
        for (stage, n) in self.errors.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            let _ = writeln!(out, "weft_errors_total{{stage=\"{stage}\"}} {n}");
        }
        {
            let d = self.durations.lock().unwrap_or_else(|e| e.into_inner());
            let name = "weft_reconcile_duration_seconds";
            let _ = writeln!(
                out,
                "# HELP {name} Duration of reconcile passes.\n# TYPE {name} histogram"
            );
            for (i, le) in BUCKETS.iter().enumerate() {
                let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {}", d.0[i]);
            }
            let _ = writeln!(
                out,
                "{name}_bucket{{le=\"+Inf\"}} {}\n{name}_sum {}\n{name}_count {}",
                d.1, d.2, d.1
            );
        }
        let peers = self.peer_stats.lock().unwrap_or_else(|e| e.into_inner());
        for (name, help, kind) in [
            (
                "weft_peer_rx_bytes_total",
                "Bytes received from a peer.",
                "counter",
            ),
            (
                "weft_peer_tx_bytes_total",
                "Bytes sent to a peer.",
                "counter",
            ),
            (
                "weft_peer_last_handshake_age_seconds",
                "Seconds since the last handshake with a peer.",
                "gauge",
            ),
            (
                "weft_peer_reachable",
                "1 while a peer answers, 0 once its handshakes go unanswered for 5 s.",
                "gauge",
            ),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for p in peers.iter() {
                let v = match name {
                    "weft_peer_rx_bytes_total" => Some(p.rx_bytes as f64),
                    "weft_peer_tx_bytes_total" => Some(p.tx_bytes as f64),
                    "weft_peer_reachable" => p.reachable.map(|r| f64::from(u8::from(r))),
                    _ => p.handshake_age,
                };
                if let Some(v) = v {
                    let _ = writeln!(out, "{name}{{public_key=\"{}\"}} {v}", p.public_key);
                }
            }
        }
        out
    }
}

/// Serves `/metrics` and `/healthz` on `listener`, one short request per
/// connection, until the process ends.
pub fn serve(listener: TcpListener, metrics: Arc<Metrics>) {
    for conn in listener.incoming() {
        let Ok(stream) = conn else { continue };
        let m = metrics.clone();
        let _ = std::thread::Builder::new()
            .name("metrics-conn".into())
            .spawn(move || {
                let _ = answer(stream, &m);
            });
    }
}

fn answer(stream: TcpStream, metrics: &Metrics) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    // Bounded: a request line longer than 8 KiB is not ours to serve.
    std::io::Read::take(&mut reader, 8192).read_line(&mut line)?;
    let path = line.split_whitespace().nth(1).unwrap_or("");
    let (status, content_type, body) = match (line.split_whitespace().next(), path) {
        (Some("GET"), "/metrics") => ("200 OK", "text/plain; version=0.0.4", metrics.render()),
        (Some("GET"), "/healthz") => ("200 OK", "text/plain", "ok\n".to_string()),
        (Some("GET"), _) => ("404 Not Found", "text/plain", "not found\n".to_string()),
        _ => (
            "405 Method Not Allowed",
            "text/plain",
            "GET only\n".to_string(),
        ),
    };
    let mut w = stream;
    write!(
        w,
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn renders_the_exposition_format() {
        let m = Metrics::new();
        m.set_mesh(4, 1, true);
        m.reconciled(0.0012);
        m.reconciled(0.03);
        m.error("backend");
        m.set_peers(vec![PeerStat {
            public_key: "abc=".into(),
            rx_bytes: 10,
            tx_bytes: 20,
            handshake_age: Some(3.5),
            reachable: Some(false),
        }]);
        let text = m.render();
        for line in [
            "weft_nodes 4",
            "weft_leader 1",
            "weft_reconciles_total 2",
            "weft_errors_total{stage=\"backend\"} 1",
            "weft_reconcile_duration_seconds_bucket{le=\"0.001\"} 0",
            "weft_reconcile_duration_seconds_bucket{le=\"0.005\"} 1",
            "weft_reconcile_duration_seconds_bucket{le=\"+Inf\"} 2",
            "weft_reconcile_duration_seconds_count 2",
            "weft_peer_rx_bytes_total{public_key=\"abc=\"} 10",
            "weft_peer_last_handshake_age_seconds{public_key=\"abc=\"} 3.5",
            "weft_peer_reachable{public_key=\"abc=\"} 0",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
    }

    #[test]
    fn serves_metrics_health_and_refuses_the_rest() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let m = Metrics::new();
        m.set_mesh(2, 0, false);
        std::thread::spawn(move || serve(l, m));
        let get = |req: &str| {
            let mut s = TcpStream::connect(addr).unwrap();
            s.write_all(req.as_bytes()).unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).unwrap();
            out
        };
        let r = get("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(
            r.starts_with("HTTP/1.1 200 OK") && r.contains("weft_nodes 2"),
            "{r}"
        );
        assert!(get("GET /healthz HTTP/1.1\r\n\r\n").ends_with("ok\n"));
        assert!(get("GET /nope HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 404"));
        assert!(get("POST /metrics HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 405"));
        assert!(get("\u{0}\u{1}garbage\r\n").starts_with("HTTP/1.1 405"));
    }
}
