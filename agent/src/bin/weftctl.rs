//! `weftctl`: look at a Weft mesh. `status` says whether it is healthy,
//! `graph` draws it, `showconf` prints the WireGuard configuration of a node
//! or peer, as Kilo's `kgctl` does.

use clap::{Parser, Subcommand};
use ipnet::IpNet;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use weft_agent::backend::{Backend, Loaded};
use weft_agent::cli::BackendArgs;
use weft_agent::mesh::{Liveness, Topology};
use weft_agent::render::{self, Format, RenderError};
use weft_agent::report;

#[derive(Parser)]
#[command(
    name = "weftctl",
    version,
    about = "Inspect a Weft mesh: its health, a drawing, or the WireGuard configuration of a node or peer",
    long_about = "Inspect a Weft mesh: whether it is healthy (status), a drawing of it \
                  (graph), or the WireGuard configuration a node runs or an external peer \
                  needs (showconf). The mesh is computed from the same inputs the agents \
                  use, so what weftctl shows is what the nodes do."
)]
struct Cli {
    #[command(flatten)]
    backend: BackendArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Join this machine to the mesh as a Peer, with Weft's userspace tunnel
    /// (no kernel WireGuard, no wireguard-go; needs root): creates the Peer
    /// resource, runs weft-wg, routes the cluster's ranges into it, follows
    /// the mesh, and on SIGINT or SIGTERM removes its routes, its tunnel and
    /// (unless --keep-peer) the Peer. Needs the Kubernetes backend.
    Connect(ConnectArgs),
    /// Say whether the mesh is healthy: per location its leader and members,
    /// each node's check-in age, its agent's readiness and its tunnel's
    /// handshakes (asked at the node's internal IP), the nodes and Peers left
    /// out and why. Exits 1 when something is wrong, 2 when the mesh cannot
    /// be read.
    Status {
        /// Output format: text for people, json for scripts.
        #[arg(short, long, value_enum, default_value_t = StatusFormat::Text)]
        output: StatusFormat,
        /// Do not ask the agents (/readyz, /metrics); judge by the records alone.
        #[arg(long)]
        no_probe: bool,
        /// The port the agents serve /readyz and /metrics on (their --listen).
        #[arg(long, default_value_t = 1107)]
        agent_port: u16,
        /// Seconds to wait for each agent's answer.
        #[arg(long, default_value_t = 2.0)]
        timeout: f64,
        /// Print the status again every SECONDS until interrupted.
        #[arg(long, value_name = "SECONDS")]
        watch: Option<u64>,
    },
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
struct ConnectArgs {
    /// The Peer's name (default: this machine's hostname).
    name: Option<String>,
    /// This machine's address in the mesh: the Peer's allowed IP.
    #[arg(short = 'a', long, default_value = "10.10.10.10/32")]
    allowed_ip: IpNet,
    /// More cluster ranges to route into the mesh, e.g. the service CIDR.
    #[arg(long, value_delimiter = ',', num_args = 1..)]
    allowed_ips: Vec<IpNet>,
    /// The private key file (0600; created if missing). Default: a new key
    /// for this run.
    #[arg(long)]
    private_key: Option<PathBuf>,
    /// Leave the Peer in the cluster on the way out.
    #[arg(long)]
    keep_peer: bool,
    /// The tunnel's interface.
    #[arg(short, long, default_value = "weft-connect")]
    interface: String,
    /// The tunnel's UDP port.
    #[arg(long, default_value_t = 51820)]
    port: u16,
    #[arg(long, default_value_t = 1420, value_parser = clap::value_parser!(u16).range(1280..))]
    mtu: u16,
    /// Seconds between keepalives to the mesh (keeps NAT mappings open).
    #[arg(long, default_value_t = 10)]
    persistent_keepalive: u16,
    /// Seconds between looks at the mesh besides the API's notifications.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
    resync: u64,
    /// The weft-wg binary (default: beside weftctl, else on the PATH).
    #[arg(long)]
    tunnel_binary: Option<PathBuf>,
    /// The tunnel's control socket (default /var/run/weft/INTERFACE.ctl).
    #[arg(long)]
    control_socket: Option<PathBuf>,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum StatusFormat {
    Text,
    Json,
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

/// What a command printed, and whether it found the mesh well.
struct Outcome {
    text: String,
    ok: bool,
}

impl From<String> for Outcome {
    fn from(text: String) -> Self {
        Outcome { text, ok: true }
    }
}

fn run(cli: Cli) -> Result<Outcome, String> {
    if let Command::CniConfig { pod_cidrs, mtu } = &cli.command {
        return Ok(weft_agent::reconcile::cni::conflist(pod_cidrs, *mtu).into());
    }
    if let Command::Connect(args) = &cli.command {
        return connect(&cli.backend, args).map(|()| String::new().into());
    }
    if let Command::Status {
        output,
        no_probe,
        agent_port,
        timeout,
        watch,
    } = cli.command
    {
        if !(timeout > 0.0 && timeout <= 60.0) {
            return Err("--timeout must be more than 0 and at most 60 seconds".into());
        }
        let args = StatusArgs {
            output,
            probe: !no_probe,
            agent_port,
            timeout: std::time::Duration::from_secs_f64(timeout),
        };
        let Some(every) = watch else {
            return status(&cli.backend, &args);
        };
        if every == 0 {
            return Err("--watch needs at least 1 second".into());
        }
        loop {
            let outcome = status(&cli.backend, &args)?;
            // Clear the screen and go home, as `watch` does.
            print!("\x1b[2J\x1b[H{}", outcome.text);
            let _ = std::io::stdout().flush();
            std::thread::sleep(std::time::Duration::from_secs(every));
        }
    }
    let (loaded, clock) = load(&cli.backend)?;
    for r in &loaded.rejected {
        eprintln!("weftctl: left out {r}");
    }
    for w in &loaded.warnings {
        eprintln!("weftctl: ignored a value: {w}");
    }
    let topology =
        Topology::new(&loaded.snapshot, &loaded.options, clock).map_err(|e| e.to_string())?;
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
        Command::CniConfig { .. } | Command::Status { .. } | Command::Connect(_) => {
            unreachable!("handled above")
        }
        Command::Graph { svg } => {
            let dot = render::graph(&topology);
            return if svg { to_svg(&dot) } else { Ok(dot) }.map(Outcome::from);
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
        Ok(s) => Ok(s.into()),
        // Like kgctl: a non-leader has nothing to show, which is not an error.
        Err(e @ RenderError::NotLeader(_)) => {
            eprintln!("weftctl: {e}");
            Ok(String::new().into())
        }
        Err(e) => Err(e.to_string()),
    }
}

/// `weftctl connect`: runs until SIGINT or SIGTERM.
fn connect(backend: &BackendArgs, args: &ConnectArgs) -> Result<(), String> {
    use weft_agent::reconcile::tunnel::{Launch, TunnelSettings};
    use weft_agent::reconcile::{Reconciler, Settings};
    weft_agent::cli::init_logs(false, None);
    let name = match &args.name {
        Some(n) => n.clone(),
        None => hostname()?,
    };
    // Before any thread starts, so every thread has them blocked.
    let signals = wgconf::signals::TerminationSignals::block();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = stop.clone();
    signals.on_arrival(move |_| flag.store(true, std::sync::atomic::Ordering::Relaxed));
    let key = match &args.private_key {
        Some(path) => {
            weft_agent::reconcile::key::load_or_create(path)
                .map_err(|e| e.to_string())?
                .0
        }
        None => wgconf::PrivateKey::generate().map_err(|e| e.to_string())?,
    };
    let (waker, woken) = weft_agent::backend::Waker::new();
    let mut kube = backend.open_kube("", waker)?;
    wait_ready(&kube)?;
    let interface = args.interface.clone();
    let mut reconciler = Reconciler::new(
        Settings {
            cni_dir: None,
            ipam_dir: PathBuf::new(),
            manage_nat: false,
            service_cidrs: Vec::new(),
            masquerade_pods: false,
            accept_forward: false,
            tunnel: TunnelSettings {
                control: args
                    .control_socket
                    .clone()
                    .unwrap_or_else(|| PathBuf::from(format!("/var/run/weft/{interface}.ctl"))),
                interface,
                uapi_dir: None,
                launch: match &args.tunnel_binary {
                    Some(b) => Launch::Spawn { binary: b.clone() },
                    None => Launch::spawn_default(),
                },
            },
        },
        key,
    )
    .map_err(|e| format!("{e} (connect needs root)"))?;
    let options = weft_agent::connect::Options {
        name,
        address: args.allowed_ip,
        extra_allowed_ips: args.allowed_ips.clone(),
        persistent_keepalive: args.persistent_keepalive,
        listen_port: args.port,
        mtu: args.mtu,
        resync: std::time::Duration::from_secs(args.resync),
        keep_peer: args.keep_peer,
        given: backend.given(),
    };
    weft_agent::connect::run(&mut kube, &woken, &mut reconciler, &options, &stop)
}

fn hostname() -> Result<String, String> {
    let raw = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map_err(|e| format!("no Peer name given and no hostname: {e}"))?;
    let name = raw.trim().to_ascii_lowercase();
    if name.is_empty() {
        return Err("no Peer name given and the hostname is empty".into());
    }
    Ok(name)
}

struct StatusArgs {
    output: StatusFormat,
    probe: bool,
    agent_port: u16,
    timeout: std::time::Duration,
}

/// Reads the mesh, asks every member's agent at once, and reports.
fn status(backend: &BackendArgs, args: &StatusArgs) -> Result<Outcome, String> {
    let (loaded, clock) = load(backend)?;
    let now = weft_agent::backend::unix_now();
    let topology =
        Topology::new(&loaded.snapshot, &loaded.options, clock).map_err(|e| e.to_string())?;
    let addresses = if args.probe {
        report::agent_addresses(&topology, args.agent_port)
    } else {
        Vec::new()
    };
    let probes: BTreeMap<String, report::Probe> = std::thread::scope(|scope| {
        let asking: Vec<_> = addresses
            .iter()
            .map(|(name, addr)| (name, scope.spawn(|| report::probe(*addr, args.timeout))))
            .collect();
        asking
            .into_iter()
            .filter_map(|(name, h)| Some((name.clone(), h.join().ok()?)))
            .collect()
    });
    let r = report::Report::new(&loaded, &topology, &probes, now);
    let text = match args.output {
        StatusFormat::Text => r.text(),
        StatusFormat::Json => serde_json::to_string_pretty(&r).map_err(|e| e.to_string())? + "\n",
    };
    Ok(Outcome {
        text,
        ok: r.healthy,
    })
}

/// Reads the mesh once, with the clock its staleness is judged by (the
/// backend's: the check-in limits given, outages allowed for); the
/// Kubernetes API gets 15 s to answer its lists.
fn load(args: &BackendArgs) -> Result<(Loaded, Liveness), String> {
    // weftctl only reads: no node of its own to announce.
    let mut backend = args.open("", weft_agent::backend::Waker::new().0)?;
    wait_ready(backend.as_ref())?;
    let mut loaded = backend.observe().map_err(|e| e.to_string())?;
    for note in args.resolve_options(&mut loaded) {
        eprintln!("weftctl: {note}");
    }
    Ok((loaded, backend.liveness(weft_agent::backend::unix_now())))
}

/// Waits up to 15 s for the backend's first picture of the mesh.
fn wait_ready(backend: &dyn Backend) -> Result<(), String> {
    let end = std::time::Instant::now() + std::time::Duration::from_secs(15);
    while !backend.ready() {
        if std::time::Instant::now() >= end {
            return Err(format!("no answer from {} within 15 s", backend.describe()));
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    Ok(())
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
        Ok(Outcome { text, ok }) => {
            print!("{text}");
            if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        // 2, as for a usage error: `status` exits 1 for a mesh with
        // problems, and a script must tell that from a mesh not read at all.
        Err(e) => {
            eprintln!("weftctl: {e}");
            ExitCode::from(2)
        }
    }
}
