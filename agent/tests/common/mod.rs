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
