//! Helpers the agent's integration tests share.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

/// Another package's binary, built with the same profile as this test
/// (cargo builds only this package's binaries for its tests).
pub fn sibling_binary(bin: &str, package: &str) -> PathBuf {
    let agent = Path::new(env!("CARGO_BIN_EXE_weft-agent"));
    let dir = agent.parent().expect("target dir");
    let path = dir.join(bin);
    if !path.is_file() {
        // The profile is the target directory's name ("debug" is "dev").
        let profile = match dir.file_name().and_then(|n| n.to_str()) {
            Some("debug") | None => "dev".to_string(),
            Some(name) => name.to_string(),
        };
        let ok = std::process::Command::new(env!("CARGO"))
            .args(["build", "-p", package, "--bin", bin, "--profile", &profile])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "cannot build {bin}");
    }
    path
}

/// Whether the test can run: it needs root for network namespaces. Says
/// SKIPPED when not.
pub fn running_as_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIPPED: needs root for network namespaces");
        return false;
    }
    true
}

/// Runs `ip` with `args`; fails the test if it fails.
pub fn ip(args: &[&str]) {
    let ok = std::process::Command::new("ip")
        .args(args)
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "ip {args:?}");
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
