//! `weft-cni`: the CNI plugin binary. The runtime passes the command in
//! CNI_* environment variables and the network configuration on stdin; the
//! result or a CNI error goes to stdout as JSON.

use std::io::{Read, Write};
use std::process::ExitCode;
use weft_cni::command::{run, Env};
use weft_cni::error::CniError;

/// Configurations are a few KiB; refuse to buffer without bound.
const MAX_STDIN: u64 = 4 << 20;

fn main() -> ExitCode {
    let env = Env::from_process();
    if env.command.is_empty() && std::env::args().any(|a| a == "--help" || a == "-h") {
        println!(
            "weft-cni: a CNI plugin (bridge + host-local IPAM) for Weft.\n\
             It is run by a container runtime, not by hand: CNI_COMMAND (ADD, DEL, CHECK,\n\
             VERSION, STATUS, GC), CNI_CONTAINERID, CNI_NETNS, CNI_IFNAME and CNI_PATH in the\n\
             environment, the network configuration (keys of the reference bridge and\n\
             host-local plugins) on stdin, the result as JSON on stdout."
        );
        return ExitCode::SUCCESS;
    }
    let mut stdin = Vec::new();
    let read = std::io::stdin().take(MAX_STDIN + 1).read_to_end(&mut stdin);
    // The version to answer errors in: the config's if it has one.
    let version = serde_json::from_slice::<serde_json::Value>(&stdin)
        .ok()
        .and_then(|v| v["cniVersion"].as_str().map(str::to_string))
        .filter(|v| weft_cni::config::SUPPORTED_VERSIONS.contains(&v.as_str()))
        .unwrap_or_else(|| "1.1.0".to_string());
    let outcome = match read {
        Err(e) => Err(CniError::io(format!("cannot read stdin: {e}"))),
        Ok(_) if stdin.len() as u64 > MAX_STDIN => {
            Err(CniError::decode("configuration larger than 4 MiB"))
        }
        Ok(_) => run(&env, &stdin),
    };
    let mut out = std::io::stdout().lock();
    match outcome {
        Ok(Some(text)) => {
            let _ = writeln!(out, "{text}");
            ExitCode::SUCCESS
        }
        Ok(None) => ExitCode::SUCCESS,
        Err(e) => {
            let _ = writeln!(out, "{}", e.to_json(&version));
            eprintln!("weft-cni {}: {e}", env.command);
            ExitCode::FAILURE
        }
    }
}
