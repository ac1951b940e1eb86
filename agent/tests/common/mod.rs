//! Helpers the agent's integration tests share.
#![allow(dead_code, unused_imports)]

use std::path::{Path, PathBuf};

pub use testkit::ip;

/// Another package's binary, built with the same profile as this test.
pub fn sibling_binary(bin: &str, package: &str) -> PathBuf {
    testkit::sibling_binary(env!("CARGO_BIN_EXE_weft-agent"), bin, package)
}

/// Runs CNI `command` in the node namespace `node_ns` for the pod in
/// namespace `pod` with the first plugin of `conflist`, as libcni does
/// (that plugin plus the list's name and version), keeping the IPAM store
/// in `ipam_dir`. Fails the test if the plugin fails; returns its result
/// (Null when it printed none).
pub fn cni_call(
    node_ns: &str,
    plugin: &Path,
    command: &str,
    pod: &str,
    conflist: &serde_json::Value,
    ipam_dir: &Path,
) -> serde_json::Value {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut conf = conflist["plugins"][0].clone();
    conf["name"] = conflist["name"].clone();
    conf["cniVersion"] = conflist["cniVersion"].clone();
    conf["ipam"]["dataDir"] = serde_json::json!(ipam_dir);
    let mut child = Command::new("ip")
        .args(["netns", "exec", node_ns])
        .arg(plugin)
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", format!("ctr-{pod}"))
        .env("CNI_NETNS", format!("/var/run/netns/{pod}"))
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", plugin.parent().unwrap_or(Path::new("/")))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("plugin");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(conf.to_string().as_bytes())
        .expect("conf");
    let out = child.wait_with_output().expect("plugin output");
    assert!(
        out.status.success(),
        "{command} {pod} with {}: {}{}",
        plugin.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null)
}
