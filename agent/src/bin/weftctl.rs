//! `weftctl`: look at a Weft mesh. `graph` draws it, `showconf` prints the
//! WireGuard configuration of a node or peer, as Kilo's `kgctl` does.

use clap::{Parser, Subcommand};
use ipnet::IpNet;
use std::io::Write;
use std::process::ExitCode;
use weft_agent::backend::Loaded;
use weft_agent::cli::BackendArgs;
use weft_agent::mesh::Topology;
use weft_agent::render::{self, Format, RenderError};

#[derive(Parser)]
#[command(
    name = "weftctl",
    version,
    about = "Inspect a Weft mesh: draw it, or print the WireGuard configuration of a node or peer",
    long_about = "Inspect a Weft mesh: draw it (graph), or print the WireGuard configuration \
                  a node runs or an external peer needs (showconf). The mesh is computed \
                  from the same inputs the agents use, so what weftctl shows is what the \
                  nodes do."
)]
struct Cli {
    #[command(flatten)]
    backend: BackendArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the mesh as Graphviz DOT (segments, leaders, tunnels, peers).
    Graph {
        /// Render SVG with Graphviz's `circo` instead (needs graphviz installed).
        #[arg(long)]
        svg: bool,
    },
    /// Print a WireGuard configuration.
    Showconf {
        #[command(subcommand)]
        what: Showconf,
    },
    /// Print the CNI conflist weft-agent writes for a node with these pod
    /// CIDRs (10-weft.conflist), e.g. to check a node's or to set one up by hand.
    CniConfig {
        /// The node's pod CIDRs (spec.podCIDRs), one per family.
        #[arg(long = "pod-cidr", required = true)]
        pod_cidrs: Vec<IpNet>,
        /// MTU of the pods' interfaces and the bridge.
        #[arg(long, default_value_t = 1420, value_parser = clap::value_parser!(u16).range(1280..))]
        mtu: u16,
    },
}

#[derive(clap::Args)]
struct ShowconfArgs {
    /// Print the node's segment (or the peer) as a peer of another interface:
    /// the multi-cluster recipe.
    #[arg(long)]
    as_peer: bool,
    /// Output format with --as-peer: wireguard (INI), or a Kilo Peer manifest.
    #[arg(short, long, value_enum, default_value_t = Format::Wireguard)]
    output: Format,
    /// Extra allowed IPs to add with --as-peer (e.g. the service CIDR).
    #[arg(long, value_delimiter = ',', num_args = 1..)]
    allowed_ips: Vec<IpNet>,
}

#[derive(Subcommand)]
enum Showconf {
    /// The configuration a node runs (its private key is never shown).
    Node {
        name: String,
        #[command(flatten)]
        args: ShowconfArgs,
    },
    /// The sections an external peer loads to reach the mesh.
    Peer {
        name: String,
        #[command(flatten)]
        args: ShowconfArgs,
    },
}

fn run(cli: Cli) -> Result<String, String> {
    if let Command::CniConfig { pod_cidrs, mtu } = &cli.command {
        return Ok(weft_agent::reconcile::cni::conflist(pod_cidrs, *mtu));
    }
    let loaded = load(&cli.backend)?;
    for r in &loaded.rejected {
        eprintln!("weftctl: left out {r}");
    }
    for w in &loaded.warnings {
        eprintln!("weftctl: ignored a value: {w}");
    }
    let topology = Topology::new(
        &loaded.snapshot,
        &loaded.options,
        weft_agent::backend::unix_now(),
    )
    .map_err(|e| e.to_string())?;
    for c in &topology.claims {
        eprintln!("weftctl: ignored a value: {c}");
    }
    for e in &topology.excluded {
        eprintln!("weftctl: left out {} {}: {}", e.kind, e.name, e.reason);
    }
    let check_args = |args: &ShowconfArgs| {
        if !args.as_peer && (args.output != Format::Wireguard || !args.allowed_ips.is_empty()) {
            return Err("--output and --allowed-ips go with --as-peer".to_string());
        }
        Ok(())
    };
    let result = match cli.command {
        Command::CniConfig { .. } => unreachable!("handled above"),
        Command::Graph { svg } => {
            let dot = render::graph(&topology);
            return if svg { to_svg(&dot) } else { Ok(dot) };
        }
        Command::Showconf {
            what: Showconf::Node { name, args },
        } => {
            check_args(&args)?;
            if args.as_peer {
                render::node_as_peer_conf(&topology, &name, &args.allowed_ips, args.output)
            } else {
                render::node_conf(&topology, &name)
            }
        }
        Command::Showconf {
            what: Showconf::Peer { name, args },
        } => {
            check_args(&args)?;
            if args.as_peer {
                render::peer_as_peer_conf(&topology, &name, &args.allowed_ips, args.output)
            } else {
                render::peer_conf(&topology, &name)
            }
        }
    };
    match result {
        Ok(s) => Ok(s),
        // Like kgctl: a non-leader has nothing to show, which is not an error.
        Err(e @ RenderError::NotLeader(_)) => {
            eprintln!("weftctl: {e}");
            Ok(String::new())
        }
        Err(e) => Err(e.to_string()),
    }
}

/// Reads the mesh once; the Kubernetes API gets 15 s to answer its lists.
fn load(args: &BackendArgs) -> Result<Loaded, String> {
    // weftctl only reads: no node of its own to announce.
    let mut backend = args.open("", weft_agent::backend::Waker::new().0)?;
    let end = std::time::Instant::now() + std::time::Duration::from_secs(15);
    while !backend.ready() {
        if std::time::Instant::now() >= end {
            return Err(format!("no answer from {} within 15 s", backend.describe()));
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    backend.observe().map_err(|e| e.to_string())
}

fn to_svg(dot: &str) -> Result<String, String> {
    let mut child = std::process::Command::new("circo")
        .arg("-Tsvg")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("--svg needs Graphviz (apt-get install graphviz): {e}"))?;
    if let Some(mut i) = child.stdin.take() {
        i.write_all(dot.as_bytes()).map_err(|e| e.to_string())?;
    }
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!(
            "circo failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(s) => {
            print!("{s}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("weftctl: {e}");
            ExitCode::FAILURE
        }
    }
}
