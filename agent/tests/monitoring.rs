//! The monitoring kit in `manifests/monitoring/`: the PrometheusRule's
//! alerts, their `promtool` unit tests, the PodMonitor and the Grafana
//! dashboard. Every metric an alert or a panel reads is one the agent
//! exports; every alert has a test that fires it and one that does not;
//! the PodMonitor finds the DaemonSet's pods and port. The queries
//! themselves run against a real Prometheus scraping a live mesh in
//! `lab/tests/demo.rs`.

use serde_json::Value;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use weft_agent::metrics::{ErrorStage, Metrics, PeerIdentity, PeerStat};

fn monitoring() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests/monitoring")
}

fn yaml(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{path:?}: {e}"))
}

fn alerts() -> Value {
    yaml(&monitoring().join("weft-alerts.yaml"))
}

fn rules(alerts: &Value) -> Vec<Value> {
    alerts["spec"]["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .flat_map(|g| g["rules"].as_array().expect("rules").clone())
        .collect()
}

fn dashboard() -> Value {
    let path = monitoring().join("weft-dashboard.json");
    serde_json::from_str(&std::fs::read_to_string(&path).expect("dashboard")).expect("JSON")
}

/// Every query of the dashboard, by panel title.
fn dashboard_queries(dashboard: &Value) -> Vec<(String, String)> {
    dashboard["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .filter(|p| p["type"] != "row")
        .flat_map(|p| {
            let title = p["title"].as_str().expect("title").to_string();
            p["targets"]
                .as_array()
                .expect("targets")
                .iter()
                .map(move |t| (title.clone(), t["expr"].as_str().expect("expr").to_string()))
        })
        .collect()
}

/// The metric names a PromQL expression mentions (ours, Kilo's and the
/// WireGuard exporter's).
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = expr.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let starts_word = i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_');
        let rest = &expr[i..];
        if starts_word
            && ["weft_", "kilo_", "wireguard_"]
                .iter()
                .any(|p| rest.starts_with(p))
        {
            let len = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            names.insert(rest[..len].to_string());
            i += len;
        } else {
            i += 1;
        }
    }
    names
}

/// The series names an agent with a peer, an error and a pass exports.
fn exported_names() -> BTreeSet<String> {
    let m = Metrics::new();
    m.set_mesh(2, 1, true);
    m.set_node("a", "eu");
    m.set_ready(true);
    m.reconciled(0.01);
    m.error(ErrorStage::Reconcile);
    m.set_peer_identities(
        [(
            "k=".to_string(),
            PeerIdentity {
                name: "b".into(),
                location: "us".into(),
            },
        )]
        .into(),
    );
    m.set_peers(vec![PeerStat {
        public_key: "k=".into(),
        rx_bytes: 1,
        tx_bytes: 2,
        handshake_age: Some(3.0),
        latest_handshake: Some(1_800_000_000.0),
        allowed_ips: "10.4.0.2/32".into(),
        reachable: Some(true),
    }]);
    m.render()
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_string)
        .collect()
}

#[test]
fn alerts_read_only_exported_metrics_and_say_what_to_do() {
    let alerts = alerts();
    assert_eq!(alerts["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(alerts["kind"], "PrometheusRule");
    let exported = exported_names();
    let rules = rules(&alerts);
    assert!(rules.len() >= 7, "{rules:?}");
    for rule in &rules {
        let name = rule["alert"].as_str().expect("every rule is an alert");
        let expr = rule["expr"].as_str().expect("expr");
        for metric in metric_names(expr) {
            assert!(
                exported.contains(&metric),
                "{name} reads {metric}, which the agent does not export: {exported:?}"
            );
        }
        assert!(
            ["warning", "critical"].contains(&rule["labels"]["severity"].as_str().unwrap_or("")),
            "{name}: severity"
        );
        for a in ["summary", "description"] {
            assert!(
                rule["annotations"][a]
                    .as_str()
                    .is_some_and(|s| s.len() > 20),
                "{name}: {a}"
            );
        }
        assert!(
            rule["for"].as_str().is_some(),
            "{name}: a `for` so a blip does not page"
        );
    }
}

#[test]
fn every_alert_has_a_test_that_fires_it_and_one_that_does_not() {
    let tests = yaml(&monitoring().join("weft-alerts.test.yaml"));
    assert_eq!(tests["rule_files"][0], "weft-alerts.rules.yaml");
    let cases: Vec<&Value> = tests["tests"]
        .as_array()
        .expect("tests")
        .iter()
        .flat_map(|t| t["alert_rule_test"].as_array().expect("alert_rule_test"))
        .collect();
    for rule in rules(&alerts()) {
        let name = rule["alert"].as_str().expect("alert");
        let of_this: Vec<_> = cases.iter().filter(|c| c["alertname"] == name).collect();
        let fires = |c: &&&Value| c["exp_alerts"].as_array().is_some_and(|a| !a.is_empty());
        assert!(of_this.iter().any(fires), "no test fires {name}");
        assert!(
            of_this.iter().any(|c| !fires(c)),
            "no test shows {name} quiet"
        );
    }
}

#[test]
#[ignore = "needs promtool (Debian's prometheus package; scripts/test.sh installs it as root)"]
fn promtool_checks_the_rules_and_runs_their_tests() {
    testkit::require_tool("promtool");
    let dir = testkit::TempDir::new("weft-alerts");
    // The PrometheusRule's groups are a rules file as Prometheus reads one.
    let spec = serde_yaml::to_string(&alerts()["spec"]).expect("YAML");
    std::fs::write(dir.join("weft-alerts.rules.yaml"), spec).expect("write rules");
    std::fs::copy(
        monitoring().join("weft-alerts.test.yaml"),
        dir.join("weft-alerts.test.yaml"),
    )
    .expect("copy tests");
    for args in [
        ["check", "rules", "weft-alerts.rules.yaml"],
        ["test", "rules", "weft-alerts.test.yaml"],
    ] {
        let out = Command::new("promtool")
            .args(args)
            .current_dir(dir.path())
            .output()
            .expect("promtool runs");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        eprintln!("promtool {}:\n{text}", args.join(" "));
        assert!(out.status.success(), "promtool {}: {text}", args.join(" "));
        assert!(text.contains("SUCCESS"), "{text}");
    }
}

#[test]
fn the_dashboard_reads_exported_metrics_from_one_data_source() {
    let d = dashboard();
    let exported = exported_names();
    let queries = dashboard_queries(&d);
    assert!(queries.len() >= 10, "{queries:?}");
    let mut ids = BTreeSet::new();
    for p in d["panels"].as_array().expect("panels") {
        assert!(ids.insert(p["id"].as_u64().expect("id")), "duplicate id");
        let g = &p["gridPos"];
        let (x, w) = (g["x"].as_u64().expect("x"), g["w"].as_u64().expect("w"));
        assert!(x + w <= 24, "{} is wider than the grid", p["title"]);
        if p["type"] != "row" {
            assert_eq!(p["datasource"]["uid"], "${datasource}", "{}", p["title"]);
        }
    }
    for (title, expr) in &queries {
        let names = metric_names(expr);
        assert!(!names.is_empty() || expr.contains("up{"), "{title}: {expr}");
        for metric in names {
            assert!(
                exported.contains(&metric),
                "{title} reads {metric}, which the agent does not export"
            );
        }
    }
}

#[test]
fn the_pod_monitor_finds_the_agents_port_as_job_weft() {
    let pm = yaml(&monitoring().join("weft-podmonitor.yaml"));
    assert_eq!(pm["kind"], "PodMonitor");
    let selector = pm["spec"]["selector"]["matchLabels"]
        .as_object()
        .expect("matchLabels");
    let job_label = pm["spec"]["jobLabel"].as_str().expect("jobLabel");
    let port = pm["spec"]["podMetricsEndpoints"][0]["port"]
        .as_str()
        .expect("port");
    for manifest in ["weft-k3s.yaml", "weft-kubeadm.yaml"] {
        let path = monitoring().join("..").join(manifest);
        let text = std::fs::read_to_string(&path).expect("manifest");
        let ds = serde_yaml::Deserializer::from_str(&text)
            .map(|doc| <Value as serde::Deserialize>::deserialize(doc).expect("YAML"))
            .find(|d| d["kind"] == "DaemonSet")
            .expect("a DaemonSet");
        let labels = &ds["spec"]["template"]["metadata"]["labels"];
        for (k, v) in selector {
            assert_eq!(&labels[k], v, "{manifest}: pods lack {k}");
        }
        // The alerts and the dashboard select job="weft".
        assert_eq!(labels[job_label], "weft", "{manifest}");
        let containers = ds["spec"]["template"]["spec"]["containers"]
            .as_array()
            .expect("containers");
        let ports = containers
            .iter()
            .flat_map(|c| c["ports"].as_array().cloned().unwrap_or_default());
        assert!(
            ports.into_iter().any(|p| p["name"] == port),
            "{manifest}: no port {port}"
        );
    }
}

#[test]
fn metric_names_are_found_in_expressions() {
    let names = metric_names("sum by (x) (rate(weft_a_total[5m])) * on (i) kilo_b > myweft_c");
    let want: BTreeSet<String> = ["weft_a_total", "kilo_b"].map(String::from).into();
    assert_eq!(names, want);
}
