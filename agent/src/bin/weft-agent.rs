//! `weft-agent`: the per-node agent. Reads the mesh (a file, or the
//! Kubernetes API as Kilo does), computes this node's desired state and
//! applies it: the userspace WireGuard tunnel (weft-wg, in a process of its
//! own that outlives the agent), addresses, routes, netfilter and the CNI
//! configuration. With the Kubernetes backend it also announces the node
//! (key, endpoint, addresses, check-ins) and watches its segment's leader
//! candidates.

use clap::Parser;
use ipnet::IpNet;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use weft_agent::backend::Waker;
use weft_agent::cli::{BackendArgs, BackendKind};
use weft_agent::controller::announce::{Announcer, HostAddresses};
use weft_agent::controller::{self, Controller, HostNetwork, Parts};
use weft_agent::forwarding::Sysctls;
use weft_agent::metrics::Metrics;
use weft_agent::probe::SegmentWatch;
use weft_agent::reconcile::tunnel::{Launch, TunnelSettings};
use weft_agent::reconcile::{key, Reconciler, Settings, VXLAN_NAME};
use weft_agent::status::Status;
use wgconf::signals::TerminationSignals;

#[derive(Parser)]
#[command(
    name = "weft-agent",
    version,
    about = "Weft's node agent: joins this node to the encrypted mesh",
    long_about = "Weft's node agent. It reads the mesh description, computes what this node \
                  needs (a userspace WireGuard tunnel if it leads its segment, routes, \
                  masquerading, the CNI configuration) and applies only what differs, again \
                  whenever the description changes and every --resync. Stopping it leaves \
                  the node's network as it is (a restart picks up from there) unless \
                  --clean-up is given."
)]
struct Cli {
    /// This node's name in the mesh (with Kubernetes: the Node's name).
    #[arg(long, env = "NODE_NAME")]
    hostname: String,
    #[command(flatten)]
    backend: BackendArgs,
    /// Kubernetes backend: only private addresses inside these CIDRs may be
    /// announced as the node's internal IP (repeatable).
    #[arg(long = "internal-cidr")]
    internal_cidrs: Vec<IpNet>,
    /// Log as JSON lines instead of text.
    #[arg(long)]
    log_json: bool,
    /// Name of the WireGuard interface.
    #[arg(long, default_value = "weft0")]
    interface: String,
    /// Where the node's private key lives (created 0600 on first start).
    #[arg(long, default_value = "/var/lib/weft")]
    state_dir: PathBuf,
    /// Directory for the CNI conflist (10-weft.conflist).
    #[arg(long, default_value = "/etc/cni/net.d")]
    cni_dir: PathBuf,
    /// Do not write a CNI configuration.
    #[arg(long)]
    no_cni: bool,
    /// Where host-local keeps its allocations: a `kilo` directory there
    /// (or Kilo's conflist in --cni-dir) means the node ran Kilo, and the
    /// network keeps Kilo's name so that running pods keep their addresses.
    #[arg(long, default_value = weft_agent::reconcile::cni::IPAM_DIR)]
    ipam_dir: PathBuf,
    /// Directory of the tunnel's read-only UAPI socket, so `wg show` works.
    #[arg(long, default_value = wgconf::uapi::SOCKET_DIR)]
    uapi_dir: PathBuf,
    /// No UAPI socket (`wg show` will not see the tunnel).
    #[arg(long)]
    no_uapi: bool,
    /// Who runs the tunnel's process (weft-wg, which outlives the agent so
    /// that an agent restart drops nothing): `spawn`: this agent starts it
    /// when the node first leads (and an upgraded binary takes the running
    /// tunnel over); `external`: someone else does (the DaemonSet's tunnel
    /// container), the agent only connects to its control socket.
    #[arg(long, value_enum, default_value_t = TunnelLaunch::Spawn)]
    tunnel: TunnelLaunch,
    /// With `--tunnel spawn`: the weft-wg executable. Default: beside this
    /// executable, else on the PATH.
    #[arg(long)]
    tunnel_binary: Option<PathBuf>,
    /// The tunnel's control socket (root only). Default:
    /// /var/run/weft/INTERFACE.ctl.
    #[arg(long)]
    control_socket: Option<PathBuf>,
    /// Do not manage masquerading and forwarding rules.
    #[arg(long)]
    no_nat: bool,
    /// The cluster's service CIDR (repeat for each family): traffic from
    /// pods and peers to Services is not masqueraded, so a Service's
    /// backends see who called (Kilo's --service-cidr).
    #[arg(long = "service-cidr", value_name = "CIDR")]
    service_cidrs: Vec<IpNet>,
    /// Re-apply everything this often (seconds) even without changes.
    #[arg(long, default_value_t = 30)]
    resync: u64,
    /// Address for Prometheus metrics (/metrics), liveness (/healthz: the
    /// agent's loop turns) and readiness (/readyz: synced, applied, CNI
    /// configuration written, forwarding on); empty to disable. The
    /// manifests bind the node's own address.
    #[arg(long, default_value = "0.0.0.0:1107")]
    listen: String,
    /// Turn on IP forwarding for the families of this node's pod CIDRs and
    /// exit (what the DaemonSet's privileged init container runs).
    #[arg(long)]
    enable_forwarding: bool,
    /// On exit, remove the routes, rules, CNI configuration and tunnel this
    /// agent created. Off by default: a restart should not be an outage.
    #[arg(long)]
    clean_up: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum TunnelLaunch {
    Spawn,
    External,
}

/// Finds this node's pod CIDRs (waiting up to 30 s for the API) and turns
/// on forwarding for their families: the privileged init container's job.
fn enable_forwarding(cli: &Cli) -> Result<(), String> {
    let (waker, _wake) = Waker::new();
    let mut backend = cli.backend.open(&cli.hostname, waker)?;
    let families = controller::enable_forwarding(
        backend.as_mut(),
        &cli.hostname,
        &Sysctls::default(),
        Duration::from_secs(30),
    )?;
    for f in families {
        tracing::info!("{} forwarding is on", f.name());
    }
    Ok(())
}

fn run(cli: Cli) -> Result<(), String> {
    if cli.enable_forwarding {
        return enable_forwarding(&cli);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    TerminationSignals::block().on_arrival(move |_| flag.store(true, Ordering::SeqCst));
    let key_path = cli.state_dir.join("key");
    let (key, created) = key::load_or_create(&key_path).map_err(|e| e.to_string())?;
    tracing::info!(
        node = %cli.hostname,
        public_key = %key.public_key(),
        "{} key {}",
        if created { "created" } else { "loaded" },
        key_path.display()
    );
    let reconciler = Reconciler::new(
        Settings {
            cni_dir: (!cli.no_cni).then(|| cli.cni_dir.clone()),
            ipam_dir: cli.ipam_dir.clone(),
            manage_nat: !cli.no_nat,
            service_cidrs: cli.service_cidrs.clone(),
            tunnel: TunnelSettings {
                interface: cli.interface.clone(),
                control: cli.control_socket.clone().unwrap_or_else(|| {
                    PathBuf::from(format!("/var/run/weft/{}.ctl", cli.interface))
                }),
                uapi_dir: (!cli.no_uapi).then(|| cli.uapi_dir.clone()),
                launch: match (cli.tunnel, &cli.tunnel_binary) {
                    (TunnelLaunch::External, _) => Launch::External,
                    (TunnelLaunch::Spawn, Some(b)) => Launch::Spawn { binary: b.clone() },
                    (TunnelLaunch::Spawn, None) => Launch::spawn_default(),
                },
            },
        },
        key,
    )
    .map_err(|e| e.to_string())?;

    let metrics = Metrics::new();
    let status = Arc::new(Status::default());
    if !cli.listen.is_empty() {
        let addr: std::net::SocketAddr = cli
            .listen
            .parse()
            .map_err(|e| format!("--listen {:?} is not ADDRESS:PORT: {e}", cli.listen))?;
        weft_agent::http::serve(addr, metrics.clone(), status.clone())
            .map_err(|e| format!("cannot serve metrics: {e}"))?;
    }
    let (waker, wake) = Waker::new();
    let backend = cli.backend.open(&cli.hostname, waker)?;
    tracing::info!("mesh from {}", backend.describe());
    // Only the Kubernetes backend is read by others: a mesh file is not.
    let announcer = (cli.backend.backend == BackendKind::Kubernetes).then(|| {
        let ignore = vec![
            cli.interface.clone(),
            VXLAN_NAME.into(),
            "kube-bridge".into(),
        ];
        Announcer::new(
            Box::new(HostAddresses::new(
                &cli.hostname,
                ignore,
                cli.internal_cidrs.clone(),
            )),
            SegmentWatch::start(),
        )
    });
    let mut controller = Controller::new(Parts {
        hostname: cli.hostname.clone(),
        backend,
        wake,
        network: Box::new(HostNetwork {
            reconciler,
            sysctls: Sysctls::default(),
        }),
        announcer,
        metrics,
        status,
        resync: Duration::from_secs(cli.resync),
    });
    controller
        .run(&stop, cli.clean_up)
        .map_err(|e| e.to_string())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    weft_agent::cli::init_logs(cli.log_json);
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("weft-agent: must run as root (TUN, routes, netfilter)");
        return ExitCode::FAILURE;
    }
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("weft-agent: {e}");
            ExitCode::FAILURE
        }
    }
}
