//! weftctl's outputs against golden files. Set WEFT_BLESS=1 to rewrite them
//! after an intended change, then review the diff.

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
