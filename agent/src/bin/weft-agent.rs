//! `weft-agent`: the per-node agent. Reads the mesh (a file, or the
//! Kubernetes API as Kilo does), computes this node's desired state and
//! applies it: the userspace WireGuard tunnel (weft-wg, in a process of its
//! own that outlives the agent), addresses, routes, netfilter and the CNI
//! configuration. With the Kubernetes backend it also announces the node
//! (key, endpoint, addresses, check-ins) and watches its segment's leader
//! candidates.

use clap::Parser;
use dataplane::signals::TerminationSignals;
use ipnet::IpNet;
use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, TryRecvError};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use weft_agent::backend::{Backend, BackendError, SelfReport};
use weft_agent::cli::{BackendArgs, BackendKind};
use weft_agent::discover;
use weft_agent::forwarding::{self, Sysctls};
use weft_agent::mesh::{DesiredState, RecordError, Topology};
use weft_agent::metrics::Metrics;
use weft_agent::probe::SegmentWatch;
use weft_agent::reconcile::tunnel::{Launch, TunnelSettings};
use weft_agent::reconcile::{key, Reconciler, Settings, VXLAN_NAME};
use weft_agent::status::Status;

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
    #[arg(long, default_value = dataplane::uapi::SOCKET_DIR)]
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

/// Without WEFT_LOG: our own lines at info. kube's client logs every failed
/// request and the protocol core every handshake it sends or drops; the
/// agent says once what matters instead (the API away and back, a peer
/// unreachable and back).
const DEFAULT_LOG_FILTER: &str = "info,kube_client=off,kube_runtime=error,gotatun=off";

/// Announces this node through the backend: what it discovered about its
/// own addresses, its key, and what it runs.
struct Announcer {
    /// What the hostname resolves to, once known.
    hostname_ips: Vec<IpAddr>,
    /// The lookup, while it runs: a node with unreachable DNS must not hold
    /// up its own announcement for the resolver's timeouts.
    lookup: Option<Receiver<Vec<IpAddr>>>,
    ignore: Vec<String>,
    internal_cidrs: Vec<IpNet>,
    /// The last failure, so a lasting one is logged once.
    last_error: Option<String>,
    /// The watch over this segment's leader candidates (what it reports).
    watch: SegmentWatch,
}

impl Announcer {
    fn announce(
        &mut self,
        backend: &mut dyn Backend,
        reconciler: &Reconciler,
        topology: &Topology,
        desired: Option<&DesiredState>,
    ) -> Result<(), String> {
        let result = self.try_announce(backend, reconciler, topology, desired);
        match &result {
            Err(e) if self.last_error.as_ref() == Some(e) => return Ok(()),
            Err(e) => self.last_error = Some(e.clone()),
            Ok(()) => self.last_error = None,
        }
        result
    }

    fn try_announce(
        &mut self,
        backend: &mut dyn Backend,
        reconciler: &Reconciler,
        topology: &Topology,
        desired: Option<&DesiredState>,
    ) -> Result<(), String> {
        if let Some(rx) = &self.lookup {
            match rx.try_recv() {
                Ok(ips) => {
                    tracing::debug!(?ips, "the hostname resolves to");
                    self.hostname_ips = ips;
                    self.lookup = None;
                }
                Err(TryRecvError::Disconnected) => self.lookup = None,
                Err(TryRecvError::Empty) => {}
            }
        }
        let candidates = discover::candidates(&self.hostname_ips)
            .map_err(|e| format!("reading this node's addresses: {e}"))?;
        let ignore: Vec<&str> = self.ignore.iter().map(String::as_str).collect();
        let found = discover::choose(&candidates, &ignore, &self.internal_cidrs)
            .map_err(|e| e.to_string())?;
        let roaming: BTreeSet<_> = topology
            .segments
            .iter()
            .flat_map(|s| &s.nodes)
            .filter(|n| n.persistent_keepalive > 0)
            .filter_map(|n| n.public_key)
            .chain(
                topology
                    .peers
                    .iter()
                    .filter(|p| p.persistent_keepalive > 0)
                    .map(|p| p.public_key),
            )
            .collect();
        let report = SelfReport {
            public_key: reconciler.public_key(),
            endpoint: std::net::SocketAddr::new(found.public_ip, topology.options.port).to_string(),
            internal_ip: found.internal_ip,
            wireguard_ip: desired
                .filter(|d| d.is_leader)
                .and_then(|d| d.wireguard.as_ref())
                .map(|w| w.address),
            granularity: topology.options.granularity,
            discovered_endpoints: reconciler.learned_endpoints(&roaming),
            unreachable: self.watch.report(),
        };
        match backend.publish(&report) {
            // The backend logs an outage once, not every announcement.
            Ok(()) | Err(BackendError::Unavailable) => Ok(()),
            Err(e) => Err(format!("announcing this node: {e}")),
        }
    }
}

/// Resolves the hostname on a thread of its own and waits up to 1 s for it:
/// what it resolves to if that came in time, else the lookup still running
/// (the first announcements then go out without that hint).
fn start_lookup(hostname: &str) -> (Vec<IpAddr>, Option<Receiver<Vec<IpAddr>>>) {
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    let name = hostname.to_string();
    let _ = std::thread::Builder::new()
        .name("hostname-lookup".into())
        .spawn(move || {
            let _ = tx.send(discover::resolve_hostname(&name));
        });
    match rx.recv_timeout(Duration::from_secs(1)) {
        Ok(ips) => (ips, None),
        Err(RecvTimeoutError::Timeout) => (Vec::new(), Some(rx)),
        Err(RecvTimeoutError::Disconnected) => (Vec::new(), None),
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The agent loop's memory between passes: when the last one ran, what it
/// logged (so a lasting condition is logged once), and its retry back-off.
struct Pass {
    last: Instant,
    resync: Duration,
    problems: Vec<RecordError>,
    /// Why this node was last out of the mesh.
    absence: Option<String>,
    /// Failed passes retry after 1 s, doubling to the resync period.
    retry: Duration,
    failure: Option<String>,
}

impl Pass {
    fn new(resync: Duration) -> Self {
        Self {
            last: Instant::now() - resync - Duration::from_secs(1),
            resync,
            problems: Vec::new(),
            absence: None,
            retry: Duration::from_secs(1),
            failure: None,
        }
    }

    fn due(&self) -> bool {
        self.last.elapsed() >= self.resync
    }

    /// The next pass in `self.retry`, backing off.
    fn retry_soon(&mut self) {
        self.last = Instant::now() - self.resync.saturating_sub(self.retry);
        self.retry = (self.retry * 2).min(self.resync);
    }
}

/// Everything one pass needs.
struct Agent {
    hostname: String,
    backend: Box<dyn Backend>,
    reconciler: Reconciler,
    announcer: Option<Announcer>,
    metrics: Arc<Metrics>,
    status: Arc<Status>,
    sysctls: Sysctls,
    cni: bool,
}

/// Records a readiness verdict; a change is logged once.
fn check(status: &Status, name: &'static str, verdict: Result<(), String>) {
    if status.set(name, verdict.clone()) {
        match verdict {
            Ok(()) => tracing::info!(check = name, "ready: {name} ok"),
            Err(why) => tracing::error!(check = name, "not ready: {why}"),
        }
    }
}

impl Agent {
    /// One pass: observe, compute, announce, apply; readiness updated.
    fn pass(&mut self, p: &mut Pass) {
        let started = Instant::now();
        check(&self.status, "backend", self.backend.health());
        let loaded = match self.backend.observe() {
            Ok(l) => l,
            Err(e) => {
                // Keep what is applied: a broken file is not a reason for an outage.
                tracing::error!("{e}; keeping the current state");
                self.metrics.error("backend");
                check(&self.status, "backend", self.backend.health());
                return;
            }
        };
        let clock = self.backend.liveness(now());
        let topology = Topology::new(&loaded.snapshot, &loaded.options, clock);
        // What was left out or ignored, including prefixes that Peers or
        // annotations claimed from nodes: logged and reported (Events) once
        // each time the set changes.
        let claims = topology
            .as_ref()
            .map(|t| t.claims.as_slice())
            .unwrap_or_default();
        let problems: Vec<RecordError> = loaded
            .rejected
            .iter()
            .chain(&loaded.warnings)
            .chain(claims)
            .cloned()
            .collect();
        if problems != p.problems {
            for r in &loaded.rejected {
                tracing::warn!(kind = r.kind, name = %r.name, field = %r.field, "left out: {r}");
            }
            for w in loaded.warnings.iter().chain(claims) {
                tracing::warn!(kind = w.kind, name = %w.name, field = %w.field, "ignored a value: {w}");
            }
            self.backend.report_problems(&problems);
            p.problems = problems;
        }
        let topology = match topology {
            Ok(t) => t,
            Err(e) => {
                tracing::error!("{e}; keeping the current state");
                self.metrics.error("topology");
                check(&self.status, "mesh", Err(e.to_string()));
                return;
            }
        };
        let nodes = topology.segments.iter().map(|s| s.nodes.len()).sum();
        self.metrics.set_mesh(nodes, topology.peers.len(), false);
        let desired = topology.desired_state(&self.hostname);
        if let Some(a) = self.announcer.as_mut() {
            a.watch.follow(&topology, &self.hostname);
            if let Err(e) = a.announce(
                self.backend.as_mut(),
                &self.reconciler,
                &topology,
                desired.as_ref(),
            ) {
                self.metrics.error("announce");
                tracing::error!("{e}");
            }
        }
        let Some(desired) = desired else {
            let why = topology
                .excluded
                .iter()
                .find(|e| e.name == self.hostname)
                .map(|e| e.reason.clone())
                .unwrap_or_else(|| "not in the mesh description".into());
            if p.absence.as_ref() != Some(&why) {
                tracing::warn!(node = %self.hostname, "this node is not in the mesh ({why}); keeping the current state");
                p.absence = Some(why.clone());
            }
            check(
                &self.status,
                "mesh",
                Err(format!("this node is not in the mesh: {why}")),
            );
            return;
        };
        if p.absence.take().is_some() {
            tracing::info!(node = %self.hostname, "this node is in the mesh again");
        }
        let pod_cidrs = topology
            .segments
            .iter()
            .flat_map(|s| &s.nodes)
            .find(|n| n.name == self.hostname)
            .map(|n| n.pod_cidrs.clone())
            .unwrap_or_default();
        match self.sysctls.ensure(&forwarding::needed(&pod_cidrs)) {
            Ok(on) => {
                for f in on {
                    tracing::info!("turned on {} forwarding", f.name());
                }
                check(&self.status, "forwarding", Ok(()));
            }
            Err(why) => check(&self.status, "forwarding", Err(why)),
        }
        let result = self
            .reconciler
            .apply(&desired, &pod_cidrs, loaded.options.mtu);
        self.metrics.reconciled(started.elapsed().as_secs_f64());
        self.metrics
            .set_mesh(nodes, topology.peers.len(), desired.is_leader);
        self.metrics.set_peers(self.reconciler.peer_stats());
        match result {
            Ok(c) => {
                if p.failure.take().is_some() {
                    tracing::info!("reconcile succeeded again");
                }
                p.retry = Duration::from_secs(1);
                check(&self.status, "mesh", Ok(()));
                if c.is_empty() {
                    tracing::debug!(
                        elapsed_us = started.elapsed().as_micros() as u64,
                        "no changes"
                    )
                } else {
                    tracing::info!(
                        leader = desired.is_leader,
                        segment = %desired.segment,
                        peers_updated = c.peers_updated,
                        routes_added = c.routes_added,
                        routes_removed = c.routes_removed,
                        nat = c.nat_applied,
                        cni = c.cni_written,
                        elapsed_ms = started.elapsed().as_millis() as u64,
                        "applied"
                    )
                }
            }
            Err(e) => {
                self.metrics.error("reconcile");
                let text = e.to_string();
                if p.failure.as_ref() != Some(&text) {
                    tracing::error!(
                        "reconcile failed: {text}; retrying in {} s, backing off",
                        p.retry.as_secs()
                    );
                    p.failure = Some(text.clone());
                }
                check(
                    &self.status,
                    "mesh",
                    Err(format!("reconcile failed: {text}")),
                );
                p.retry_soon();
            }
        }
        check(
            &self.status,
            "cni",
            self.reconciler.cni_status(&pod_cidrs, self.cni),
        );
    }
}

/// Finds this node's pod CIDRs through the backend (waiting up to 30 s for
/// the API) and turns on forwarding for their families: what the
/// privileged init container runs, so the agent itself needs no privileges.
fn enable_forwarding(cli: &Cli) -> Result<(), String> {
    let mut backend = cli.backend.open(&cli.hostname)?;
    let end = Instant::now() + Duration::from_secs(30);
    while !backend.ready() && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(100));
    }
    let pod_cidrs: Vec<IpNet> = if backend.ready() {
        backend
            .observe()
            .map_err(|e| e.to_string())?
            .snapshot
            .nodes
            .into_iter()
            .find(|n| n.name == cli.hostname)
            .map(|n| n.pod_cidrs)
            .unwrap_or_default()
    } else {
        Vec::new()
    };
    let families = if pod_cidrs.is_empty() {
        tracing::warn!(
            "this node's pod CIDRs are not known yet ({}); turning on IPv4 forwarding only",
            backend
                .health()
                .err()
                .unwrap_or_else(|| "no pod CIDR".into())
        );
        vec![forwarding::Family::V4]
    } else {
        forwarding::needed(&pod_cidrs)
    };
    let sysctls = Sysctls::default();
    sysctls.ensure(&families)?;
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
    let backend = cli.backend.open(&cli.hostname)?;
    tracing::info!("mesh from {}", backend.describe());
    let announcer = (cli.backend.backend == BackendKind::Kubernetes).then(|| {
        let (hostname_ips, lookup) = start_lookup(&cli.hostname);
        Announcer {
            hostname_ips,
            lookup,
            ignore: vec![
                cli.interface.clone(),
                VXLAN_NAME.into(),
                "kube-bridge".into(),
            ],
            internal_cidrs: cli.internal_cidrs.clone(),
            last_error: None,
            watch: SegmentWatch::start(),
        }
    });
    let mut agent = Agent {
        hostname: cli.hostname.clone(),
        backend,
        reconciler,
        announcer,
        metrics,
        status,
        sysctls: Sysctls::default(),
        cni: !cli.no_cni,
    };
    let mut pass = Pass::new(Duration::from_secs(cli.resync));
    let mut waiting_logged = false;
    while !stop.load(Ordering::SeqCst) {
        agent.status.beat();
        agent
            .metrics
            .set_api_reachable(agent.backend.health().is_ok());
        // A leader candidate stopped or started answering: report it now.
        let verdict = agent.announcer.as_mut().is_some_and(|a| a.watch.tick());
        if !pass.due() && !verdict && !agent.backend.changed() {
            std::thread::sleep(Duration::from_millis(200));
            continue;
        }
        if !agent.backend.ready() {
            if !waiting_logged {
                tracing::info!(
                    "waiting for a first complete picture from {}",
                    agent.backend.describe()
                );
                waiting_logged = true;
            }
            check(&agent.status, "backend", agent.backend.health());
            std::thread::sleep(Duration::from_millis(200));
            continue;
        }
        pass.last = Instant::now();
        agent.pass(&mut pass);
    }
    if cli.clean_up {
        tracing::info!("cleaning up");
        agent.reconciler.clean_up().map_err(|e| e.to_string())?;
    } else {
        tracing::info!("stopping; the node's network stays as it is");
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_env("WEFT_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT_LOG_FILTER));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if cli.log_json {
        logs.json().init();
    } else {
        logs.init();
    }
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
