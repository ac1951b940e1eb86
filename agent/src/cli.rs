//! Command-line options shared by `weft-agent` and `weftctl`: where the mesh
//! comes from and, for the Kubernetes backend, the mesh-wide options (which
//! a mesh file carries itself).

use crate::backend::k8s::annotations::DEFAULT_TOPOLOGY_LABEL;
use crate::backend::k8s::{KubeBackend, KubeSettings};
use crate::backend::{Backend, FileBackend, Loaded, Waker};
use crate::mesh::{Compatibility, Encapsulate, Given, Granularity, MeshOptions, Mtu};
use ipnet::IpNet;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum BackendKind {
    /// A YAML/JSON mesh description (--mesh), re-read when it changes.
    File,
    /// Nodes' kilo.squat.ai/* annotations and Kilo's Peer resources.
    Kubernetes,
}

#[derive(clap::Args, Clone, Debug)]
pub struct BackendArgs {
    /// Where the mesh comes from.
    #[arg(long, value_enum, env = "WEFT_BACKEND", default_value_t = BackendKind::File)]
    pub backend: BackendKind,
    /// Mesh description (YAML or JSON) of the file backend.
    #[arg(long, env = "WEFT_MESH", default_value = "/etc/weft/mesh.yaml")]
    pub mesh: PathBuf,
    /// Kubernetes backend: kubeconfig file. Default: $KUBECONFIG,
    /// ~/.kube/config, then the in-cluster service account.
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// Kubernetes backend: the API server's address (https://HOST:PORT),
    /// replacing the one the kubeconfig or the in-cluster configuration
    /// names. Needed where the kubernetes Service address does not work
    /// yet, e.g. kubeadm nodes without kube-proxy.
    #[arg(long, env = "WEFT_API_SERVER", alias = "master")]
    pub api_server: Option<String>,
    /// Kubernetes backend: the Node label read as the location when a node
    /// has no kilo.squat.ai/location annotation.
    #[arg(long, default_value = DEFAULT_TOPOLOGY_LABEL)]
    pub topology_label: String,
    /// Kubernetes backend: how nodes are grouped: location (one tunnel per
    /// location, through its leader), full (every node its own), cross
    /// (tunnels only between locations, no leader bottleneck). Default:
    /// location for weft-agent; weftctl reads what the nodes announce
    /// (kilo.squat.ai/granularity), as kgctl does.
    #[arg(long = "mesh-granularity", value_parser = parse_granularity)]
    pub granularity: Option<Granularity>,
    /// Kubernetes backend: the pool the leaders' WireGuard IPs come from.
    /// Default: 10.4.0.0/16 for weft-agent; weftctl reads the pool of the
    /// leaders' kilo.squat.ai/wireguard-ip, as kgctl does.
    #[arg(long)]
    pub subnet: Option<IpNet>,
    /// Kubernetes backend: the WireGuard UDP port.
    #[arg(long, default_value_t = 51820, value_parser = clap::value_parser!(u16).range(1..))]
    pub port: u16,
    /// Kubernetes backend: when traffic between nodes of one location is
    /// encapsulated (VXLAN): never, crosssubnet, always. Kilo's default is
    /// always, which works where the cloud drops packets for pod IPs.
    #[arg(long, default_value = "always", value_parser = parse_encapsulate)]
    pub encapsulate: Encapsulate,
    /// Kubernetes backend: MTU of the tunnel and of the pods' interfaces.
    /// auto: each node measures the underlay towards its tunnels' far ends
    /// (the route's MTU, else its link's) and leaves room for WireGuard (60
    /// bytes over IPv4, 80 over IPv6), taking the smallest; re-measured on
    /// every pass. A number (at least 1280) is used as it is. (A mesh file
    /// says `mtu:` in its options, auto when absent.)
    #[arg(long, default_value = "auto", value_parser = parse_mtu)]
    pub mtu: Mtu,
    /// Kubernetes backend: whether Weft routes inside a location (Kilo's
    /// --local). --local=false is add-on mode: the CNI already installed
    /// keeps each location's network, Weft only joins locations, and its
    /// routes go in a table of their own so the other CNI's stay untouched.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1,
          require_equals = true, default_missing_value = "true", value_name = "BOOL")]
    pub local: bool,
    /// Kubernetes backend: the CNI Weft runs on as an add-on (Kilo's
    /// --compatibility): flannel (its VXLAN backend: members reach their
    /// leader through flannel.1). Goes with --local=false --cni=false.
    #[arg(long, default_value = "", value_parser = parse_compatibility)]
    pub compatibility: Compatibility,
    /// Kubernetes backend: seconds between this node's check-ins
    /// (kilo.squat.ai/last-seen). Kilo's 30 is what Kilo nodes expect;
    /// labs and tests shorten it.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
    pub check_in_period: u64,
    /// Kubernetes backend: seconds without a check-in after which a node is
    /// left out of the mesh. Must be the same on every node of a cluster
    /// (Kilo's is 60) and at least twice the check-in period.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(2..))]
    pub stale_after: u64,
    /// Kubernetes backend: seconds the API may stay unreachable before
    /// /readyz fails (the mesh stays applied either way).
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
    pub unready_after: u64,
}

fn parse_granularity(s: &str) -> Result<Granularity, String> {
    s.parse()
}

fn parse_compatibility(s: &str) -> Result<Compatibility, String> {
    s.parse()
}

fn parse_mtu(s: &str) -> Result<Mtu, String> {
    s.parse()
}

fn parse_encapsulate(s: &str) -> Result<Encapsulate, String> {
    s.parse()
}

impl BackendArgs {
    /// The mesh-wide options these flags give, with Kilo's defaults where
    /// a flag is absent (what an agent runs with).
    pub fn mesh_options(&self) -> MeshOptions {
        let defaults = MeshOptions::default();
        MeshOptions {
            granularity: self.granularity.unwrap_or(defaults.granularity),
            subnet: self.subnet.map_or(defaults.subnet, |s| s.trunc()),
            port: self.port,
            encapsulate: self.encapsulate,
            mtu: self.mtu,
            local: self.local,
            compatibility: self.compatibility,
        }
    }

    /// The options the flags give, each one absent filled in from what the
    /// cluster's nodes announce (a reader's view: weftctl's, like kgctl's),
    /// with a sentence for each value guessed or disputed. A mesh file
    /// carries its own options and is left as it is.
    pub fn resolve_options(&self, loaded: &mut Loaded) -> Vec<String> {
        if self.backend != BackendKind::Kubernetes {
            return Vec::new();
        }
        loaded.resolve_options(self.given())
    }

    /// The mesh-wide options given as flags; the rest is the cluster's.
    pub fn given(&self) -> Given {
        Given {
            subnet: self.subnet.map(|s| s.trunc()),
            granularity: self.granularity,
        }
    }

    /// Opens the chosen backend; `node_name` is the node the Kubernetes
    /// backend writes its own annotations to.
    pub fn open(&self, node_name: &str, waker: Waker) -> Result<Box<dyn Backend>, String> {
        Ok(match self.backend {
            BackendKind::File => Box::new(FileBackend::new(self.mesh.clone())),
            BackendKind::Kubernetes => Box::new(self.open_kube(node_name, waker)?),
        })
    }

    /// Opens the Kubernetes backend whatever `--backend` says (for what
    /// only the API can do, such as creating a Peer).
    pub fn open_kube(&self, node_name: &str, waker: Waker) -> Result<KubeBackend, String> {
        KubeBackend::connect(
            self.kubeconfig.as_deref(),
            self.api_server.as_deref().filter(|s| !s.is_empty()),
            KubeSettings::new(node_name, self.mesh_options(), &self.topology_label).with_timing(
                Duration::from_secs(self.check_in_period),
                Duration::from_secs(self.stale_after),
                Duration::from_secs(self.unready_after),
            )?,
            waker,
        )
        .map_err(|e| e.to_string())
    }
}

/// Without WEFT_LOG: our own lines at info. kube's client logs every failed
/// request and the protocol core every handshake it sends or drops; the
/// agent says once what matters instead (the API away and back, a peer
/// unreachable and back).
const DEFAULT_LOG_FILTER: &str = "info,kube_client=off,kube_runtime=error,gotatun=off";

/// Kilo's `--log-level` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogLevel {
    All,
    Debug,
    Info,
    Warn,
    Error,
    None,
}

impl LogLevel {
    /// The filter it stands for (the default keeps the client libraries'
    /// chatter out, as [`DEFAULT_LOG_FILTER`] does).
    pub fn filter(self) -> &'static str {
        match self {
            LogLevel::All => "trace",
            LogLevel::Debug => "debug,kube_client=info,gotatun=info",
            LogLevel::Info => DEFAULT_LOG_FILTER,
            LogLevel::Warn => "warn,kube_client=off,kube_runtime=error,gotatun=off",
            LogLevel::Error => "error,kube_client=off,gotatun=off",
            LogLevel::None => "off",
        }
    }
}

/// Logs to stderr as weft-agent and `weftctl connect` write them: filtered
/// by WEFT_LOG, else by `level`, else [`DEFAULT_LOG_FILTER`]; coloured only
/// on a terminal; as JSON lines when asked.
pub fn init_logs(json: bool, level: Option<LogLevel>) {
    let default = level.map_or(DEFAULT_LOG_FILTER, LogLevel::filter);
    let filter = tracing_subscriber::EnvFilter::try_from_env("WEFT_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(wgconf::logging::stderr_colour())
        .with_writer(std::io::stderr);
    if json {
        logs.json().init();
    } else {
        logs.init();
    }
}
