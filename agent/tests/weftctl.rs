//! weftctl's outputs against golden files. Set WEFT_BLESS=1 to rewrite them
//! after an intended change, then review the diff.

use fake_apiserver as fake_api;

use std::path::Path;
use std::process::Command;

const WEFTCTL: &str = env!("CARGO_BIN_EXE_weftctl");

fn golden_dir() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden"))
}

fn weftctl(args: &[&str]) -> (String, String, bool) {
    let out = Command::new(WEFTCTL)
        .arg("--mesh")
        .arg(golden_dir().join("mesh.yaml"))
        .args(args)
        .output()
        .expect("run weftctl");
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        out.status.success(),
    )
}

fn check(name: &str, args: &[&str]) {
    let (stdout, stderr, ok) = weftctl(args);
    assert!(ok, "weftctl {args:?} failed: {stderr}");
    let path = golden_dir().join(name);
    if std::env::var_os("WEFT_BLESS").is_some() {
        std::fs::write(&path, &stdout).expect("write golden file");
        return;
    }
    let want = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(stdout, want, "weftctl {args:?} differs from {name}");
}

#[test]
fn showconf_node_leader() {
    check("showconf-node-aws-1.conf", &["showconf", "node", "aws-1"]);
}

#[test]
fn showconf_node_as_peer_in_every_format() {
    check(
        "showconf-node-gcp-1-as-peer.conf",
        &["showconf", "node", "gcp-1", "--as-peer"],
    );
    check(
        "showconf-node-gcp-1-as-peer.yaml",
        &[
            "showconf",
            "node",
            "gcp-1",
            "--as-peer",
            "-o",
            "yaml",
            "--allowed-ips",
            "10.43.0.0/16",
        ],
    );
    check(
        "showconf-node-home-as-peer.json",
        &["showconf", "node", "home", "--as-peer", "-o", "json"],
    );
}

#[test]
fn showconf_peer() {
    check("showconf-peer-laptop.conf", &["showconf", "peer", "laptop"]);
    check(
        "showconf-peer-ci-runner-as-peer.yaml",
        &["showconf", "peer", "ci-runner", "--as-peer", "-o", "yaml"],
    );
}

#[test]
fn graph() {
    check("graph.dot", &["graph"]);
}

#[test]
fn non_leader_prints_nothing_and_succeeds() {
    let (stdout, stderr, ok) = weftctl(&["showconf", "node", "aws-2"]);
    assert!(ok);
    assert!(stdout.is_empty());
    assert!(
        stderr.contains("node aws-2 is not a leader node"),
        "{stderr}"
    );
}

#[test]
fn bad_input_is_named() {
    let (_, stderr, ok) = weftctl(&["showconf", "node", "nope"]);
    assert!(!ok);
    assert!(stderr.contains("node nope is not in the mesh"), "{stderr}");
    // The broken node is reported with its field, and the rest still works.
    assert!(stderr.contains("node broken: endpoint"), "{stderr}");
    let (_, stderr, ok) = weftctl(&["showconf", "node", "aws-1", "-o", "yaml"]);
    assert!(!ok);
    assert!(stderr.contains("--as-peer"), "{stderr}");
    let out = Command::new(WEFTCTL)
        .args(["--mesh", "/nonexistent/mesh.yaml", "graph"])
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read /nonexistent/mesh.yaml"));
}

/// weftctl reading a cluster: the mesh from Nodes annotated as Kilo (and
/// Weft) agents write them, served over HTTP on loopback; the multi-cluster
/// recipe's output is a Peer the other cluster's API would accept.
#[test]
fn reads_a_cluster_through_the_kubernetes_api() {
    use serde_json::json;
    let api = fake_api::FakeApi::new();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let keys = [
        "jYkfTPBnJTk8ehUeUMvJjwWShRJD4ls1YrtIl0pZuXY=",
        "CtSz0h5pUnM7LuFEIUyP3igPtAHcVj+PSMKR2f/zqz0=",
    ];
    for (i, (name, loc)) in [("a-1", "aws"), ("g-1", "gcp")].iter().enumerate() {
        let mut n = fake_api::k3s_node(name, &format!("10.42.{i}.0/24"));
        n["metadata"]["annotations"]["kilo.squat.ai/location"] = json!(loc);
        n["metadata"]["annotations"]["kilo.squat.ai/key"] = json!(keys[i]);
        n["metadata"]["annotations"]["kilo.squat.ai/endpoint"] =
            json!(format!("203.0.113.{}:51820", i + 1));
        n["metadata"]["annotations"]["kilo.squat.ai/internal-ip"] = json!(format!("10.0.{i}.5/24"));
        n["metadata"]["annotations"]["kilo.squat.ai/last-seen"] = json!(now.to_string());
        api.put("nodes", n);
    }
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let _server = api.serve_http(listener);
    let dir = std::env::temp_dir().join(format!("weftctl-kube-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let kubeconfig = dir.join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!("apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster: {{server: 'http://127.0.0.1:{port}'}}\nusers:\n- name: u\n  user: {{}}\ncontexts:\n- name: c\n  context: {{cluster: c, user: u}}\ncurrent-context: c\n"),
    )
    .unwrap();
    let run = |args: &[&str]| {
        let out = Command::new(WEFTCTL)
            .args(["--backend", "kubernetes", "--kubeconfig"])
            .arg(&kubeconfig)
            .args(args)
            .output()
            .expect("run weftctl");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let graph = run(&["graph"]);
    assert!(
        graph.starts_with("digraph") || graph.starts_with("graph"),
        "{graph}"
    );
    assert!(graph.contains("a-1") && graph.contains("g-1"), "{graph}");
    let peer = run(&[
        "showconf",
        "node",
        "a-1",
        "--as-peer",
        "-o",
        "yaml",
        "--allowed-ips",
        "10.43.0.0/16",
    ]);
    let v: serde_yaml::Value = serde_yaml::from_str(&peer).expect("YAML");
    let p: weft_agent::backend::k8s::peer::Peer = serde_yaml::from_value(v).expect("a Kilo Peer");
    let raw = weft_agent::backend::k8s::peer::raw_peer(&p).expect("valid for the other cluster");
    assert_eq!(raw.public_key, keys[0]);
    assert!(
        raw.allowed_ips.contains(&"10.42.0.0/24".to_string()),
        "{:?}",
        raw.allowed_ips
    );
    assert!(
        raw.allowed_ips.contains(&"10.43.0.0/16".to_string()),
        "{:?}",
        raw.allowed_ips
    );
    assert_eq!(raw.endpoint.as_deref(), Some("203.0.113.1:51820"));
    let _ = std::fs::remove_dir_all(&dir);
}

/// `weftctl status` on a mesh file: exit code and stdout.
fn status_of(mesh: &Path, args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(WEFTCTL)
        .arg("--mesh")
        .arg(mesh)
        .arg("status")
        .args(args)
        .output()
        .expect("run weftctl");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

// Without --no-probe, status asks the agents at their internal addresses;
// those of the golden mesh are private ranges, and tests keep their traffic
// on loopback and in their own namespaces: the probing runs in the demo's
// e2e (lab/tests/demo.rs) and against loopback in the unit tests.

#[test]
fn status_reports_a_record_left_out_and_fails() {
    // The golden mesh has a node whose endpoint does not parse.
    let (code, text) = status_of(&golden_dir().join("mesh.yaml"), &["--no-probe"]);
    assert_eq!(code, Some(1), "{text}");
    let path = golden_dir().join("status-no-probe.txt");
    if std::env::var_os("WEFT_BLESS").is_some() {
        std::fs::write(&path, &text).expect("write golden file");
    } else {
        let want = std::fs::read_to_string(&path).expect("golden file");
        assert_eq!(
            text, want,
            "weftctl status differs from status-no-probe.txt"
        );
    }
    let (code, json) = status_of(
        &golden_dir().join("mesh.yaml"),
        &["--no-probe", "-o", "json"],
    );
    assert_eq!(code, Some(1));
    let report: serde_json::Value = serde_json::from_str(&json).expect("JSON");
    assert_eq!(report["healthy"], false);
    assert_eq!(report["left_out"][0]["name"], "broken", "{json}");
    assert!(report["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .all(|n| n["agent"]["state"] == "not_probed"));
}

#[test]
fn status_passes_on_a_mesh_without_problems_and_refuses_bad_flags() {
    let mesh = std::fs::read_to_string(golden_dir().join("mesh.yaml")).expect("mesh");
    // The golden mesh without its broken node.
    let start = mesh.find("  - name: broken").expect("broken node");
    let end = mesh.find("peers:").expect("peers");
    let dir = testkit::TempDir::new("weftctl-status");
    let healthy = dir.join("mesh.yaml");
    std::fs::write(&healthy, format!("{}{}", &mesh[..start], &mesh[end..])).expect("write");
    let (code, text) = status_of(&healthy, &["--no-probe"]);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("healthy as far as seen: 0 of"), "{text}");
    for bad in [
        &["--timeout", "0"][..],
        &["--watch", "0"],
        &["--timeout", "nan"],
    ] {
        let out = Command::new(WEFTCTL)
            .arg("--mesh")
            .arg(&healthy)
            .arg("status")
            .args(bad)
            .output()
            .expect("run weftctl");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && stderr.contains("--"),
            "{bad:?}: {stderr}"
        );
    }
}
