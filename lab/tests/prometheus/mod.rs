//! Debian's Prometheus, run in a namespace of its own that is plugged into
//! the demo's private networks (as a monitoring host in each cloud would
//! be), scraping every node's agent and loading the shipped alert rules.
//! Queries go through its HTTP API from a thread inside that namespace.

use serde_json::Value;
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::Duration;
use testkit::{Netns, TempDir};

const LISTEN: &str = "127.0.0.1:9090";
/// Scrapes and rule evaluations every second, so a test sees a change in
/// seconds.
const INTERVAL: &str = "1s";

pub struct Prometheus {
    ns: Netns,
    child: Child,
    dir: TempDir,
}

/// The shipped PrometheusRule's groups, as a rules file (JSON is YAML).
fn rules_file() -> String {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests/monitoring/weft-alerts.yaml");
    let text = std::fs::read_to_string(&path).expect("weft-alerts.yaml");
    let rule: Value = serde_yaml::from_str(&text).expect("YAML");
    serde_json::to_string_pretty(&rule["spec"]).expect("JSON")
}

impl Prometheus {
    /// Starts Prometheus with job "weft" scraping `targets` (node name,
    /// address:port), plugged into the demo's bridges `lans` (bridge in the
    /// namespace `net`, an address for Prometheus on it).
    pub fn start(net: &str, lans: &[(&str, &str)], targets: &[(&str, String)]) -> Self {
        testkit::require_tool("prometheus");
        let ns = Netns::with_prefix("wpm");
        for (i, (bridge, addr)) in lans.iter().enumerate() {
            let (inside, outside) = (format!("lan{i}"), testkit::unique("pm"));
            testkit::ip(&[
                "link", "add", &inside, "netns", &ns.name, "type", "veth", "peer", "name",
                &outside, "netns", net,
            ]);
            testkit::ip(&["-n", net, "link", "set", &outside, "master", bridge, "up"]);
            ns.ip(&["addr", "add", addr, "dev", &inside]);
            ns.ip(&["link", "set", &inside, "up"]);
        }
        let dir = TempDir::new("weft-prom");
        std::fs::write(dir.join("weft-alerts.rules.json"), rules_file()).expect("rules");
        let static_configs: Vec<Value> = targets
            .iter()
            .map(|(node, addr)| serde_json::json!({"targets": [addr], "labels": {"node": node}}))
            .collect();
        let config = serde_json::json!({
            "global": {"scrape_interval": INTERVAL, "evaluation_interval": INTERVAL, "scrape_timeout": INTERVAL},
            "rule_files": [dir.join("weft-alerts.rules.json")],
            "scrape_configs": [{"job_name": "weft", "static_configs": static_configs}],
        });
        let config_path = dir.join("prometheus.json");
        std::fs::write(&config_path, config.to_string()).expect("config");
        let log = std::fs::File::create(dir.join("prometheus.log")).expect("log");
        let child = ns
            .command("prometheus")
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={LISTEN}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("prometheus starts");
        let p = Self { ns, child, dir };
        let ready =
            testkit::wait_until(Duration::from_secs(20), Duration::from_millis(200), || {
                p.get("/-/ready").is_some_and(|(code, _)| code == 200)
            });
        assert!(ready, "prometheus not ready in 20 s: {}", p.log());
        p
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default()
    }

    /// GET `path` from Prometheus' HTTP API (from inside its namespace):
    /// status code and body.
    fn get(&self, path: &str) -> Option<(u16, String)> {
        let path = path.to_string();
        self.ns
            .run_in(move || {
                let addr = LISTEN.parse().ok()?;
                weft_agent::report::http_get(addr, &path, Duration::from_secs(10)).ok()
            })
            .join()
            .ok()
            .flatten()
    }

    /// The result of an instant query; fails the test if Prometheus refuses
    /// the expression.
    pub fn query(&self, expr: &str) -> Vec<Value> {
        let path = format!("/api/v1/query?query={}", encode(expr));
        let (code, body) = self.get(&path).expect("prometheus answers");
        let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        assert!(
            code == 200 && v["status"] == "success",
            "query {expr:?} failed ({code}): {body}"
        );
        v["data"]["result"].as_array().cloned().unwrap_or_default()
    }

    /// The alerts Prometheus holds (pending or firing), as (name, state, labels).
    pub fn alerts(&self) -> Vec<(String, String, Value)> {
        let (_, body) = self.get("/api/v1/alerts").expect("prometheus answers");
        let v: Value = serde_json::from_str(&body).expect("JSON");
        v["data"]["alerts"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|a| {
                (
                    a["labels"]["alertname"].as_str().unwrap_or("").to_string(),
                    a["state"].as_str().unwrap_or("").to_string(),
                    a["labels"].clone(),
                )
            })
            .collect()
    }

    /// The rule groups Prometheus loaded: rule names and their health.
    pub fn rules(&self) -> Vec<(String, String)> {
        let (_, body) = self.get("/api/v1/rules").expect("prometheus answers");
        let v: Value = serde_json::from_str(&body).expect("JSON");
        v["data"]["groups"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
            .map(|r| {
                (
                    r["name"].as_str().unwrap_or("").to_string(),
                    r["health"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Percent-encodes a query parameter.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A sample's value in an instant query's result (`None` for NaN or none).
pub fn value(sample: &Value) -> Option<f64> {
    sample["value"][1]
        .as_str()
        .and_then(|v| v.parse::<f64>().ok())
        .filter(|v| v.is_finite())
}

/// Every query of the shipped dashboard, by panel title, with Grafana's
/// `$__rate_interval` set for a one-second scrape.
pub fn dashboard_queries() -> Vec<(String, String)> {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests/monitoring/weft-dashboard.json");
    let d: Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("dashboard")).expect("JSON");
    let mut out = Vec::new();
    for p in d["panels"].as_array().into_iter().flatten() {
        for t in p["targets"].as_array().into_iter().flatten() {
            if let (Some(title), Some(expr)) = (p["title"].as_str(), t["expr"].as_str()) {
                out.push((title.to_string(), expr.replace("$__rate_interval", "15s")));
            }
        }
    }
    out
}

/// Every alert's name and expression in the shipped rules.
pub fn alert_expressions() -> Vec<(String, String)> {
    let rules: Value = serde_json::from_str(&rules_file()).expect("JSON");
    rules["groups"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
        .filter_map(|r| {
            Some((
                r["alert"].as_str()?.to_string(),
                r["expr"].as_str()?.to_string(),
            ))
        })
        .collect()
}
