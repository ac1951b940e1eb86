//! `weft-agent`'s command line, here rather than in the binary so that the
//! mapping from flags to settings is tested. Kilo's `kg` flags are
//! accepted with their names and meanings, so a Kilo DaemonSet's arguments
//! read naturally (booleans as `--flag` or `--flag=false`, durations as
//! `30s`); where Weft's default differs from Kilo's, the help says so.

use crate::cli::{BackendArgs, LogLevel};
use crate::reconcile::CleanUp;
use clap::{ArgAction, Parser};
use ipnet::IpNet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Parser, Debug)]
#[command(
    name = "weft-agent",
    version,
    about = "Weft's node agent: joins this node to the encrypted mesh",
    long_about = "Weft's node agent. It reads the mesh description, computes what this node \
                  needs (a userspace WireGuard tunnel if it leads its segment, routes, \
                  masquerading, the CNI configuration) and applies only what differs, again \
                  whenever the description changes and every --resync. Stopping it leaves \
                  the node's network as it is (a restart picks up from there) unless \
                  --clean-up or --clean-up-interface is given. Kilo's kg flags are accepted \
                  with their meanings."
)]
pub struct AgentArgs {
    /// This node's name in the mesh (with Kubernetes: the Node's name).
    #[arg(long, env = "NODE_NAME")]
    pub hostname: String,
    #[command(flatten)]
    pub backend: BackendArgs,
    /// Kubernetes backend: only private addresses inside these CIDRs may be
    /// announced as the node's internal IP (repeatable).
    #[arg(long = "internal-cidr")]
    pub internal_cidrs: Vec<IpNet>,
    /// Announce the internal IP as this node's endpoint where it has one
    /// (Kilo's flag: nodes that reach each other privately, not over the
    /// internet).
    #[arg(long, default_value_t = false, action = ArgAction::Set, num_args = 0..=1,
          require_equals = true, default_missing_value = "true", value_name = "BOOL")]
    pub prioritise_private_addresses: bool,
    /// Log as JSON lines instead of text.
    #[arg(long)]
    pub log_json: bool,
    /// How much to log (Kilo's levels); WEFT_LOG, a tracing filter, wins.
    #[arg(long, value_enum)]
    pub log_level: Option<LogLevel>,
    /// Name of the WireGuard interface.
    #[arg(long, default_value = "weft0")]
    pub interface: String,
    /// Where the node's private key lives (created 0600 on first start).
    #[arg(long, default_value = "/var/lib/weft")]
    pub state_dir: PathBuf,
    /// Write the CNI configuration (10-weft.conflist) and masquerade the
    /// pods' traffic out of the mesh. --cni=false in add-on mode: the CNI
    /// already installed does both.
    #[arg(long, default_value_t = true, action = ArgAction::Set, num_args = 0..=1,
          require_equals = true, default_missing_value = "true", value_name = "BOOL")]
    pub cni: bool,
    /// The same as --cni=false.
    #[arg(long, hide = true)]
    pub no_cni: bool,
    /// Directory for the CNI conflist (10-weft.conflist).
    #[arg(long, default_value = "/etc/cni/net.d")]
    pub cni_dir: PathBuf,
    /// Where host-local keeps its allocations: a `kilo` directory there
    /// (or Kilo's conflist in --cni-dir) means the node ran Kilo, and the
    /// network keeps Kilo's name so that running pods keep their addresses.
    #[arg(long, default_value = crate::reconcile::cni::IPAM_DIR)]
    pub ipam_dir: PathBuf,
    /// Directory of the tunnel's read-only UAPI socket, so `wg show` works.
    #[arg(long, default_value = wgconf::uapi::SOCKET_DIR)]
    pub uapi_dir: PathBuf,
    /// No UAPI socket (`wg show` will not see the tunnel).
    #[arg(long)]
    pub no_uapi: bool,
    /// Who runs the tunnel's process (weft-wg, which outlives the agent so
    /// that an agent restart drops nothing): `spawn`: this agent starts it
    /// when the node first leads (and an upgraded binary takes the running
    /// tunnel over); `external`: someone else does (the DaemonSet's tunnel
    /// container), the agent only connects to its control socket.
    #[arg(long, value_enum, default_value_t = TunnelLaunch::Spawn)]
    pub tunnel: TunnelLaunch,
    /// Kilo's flag: false means the interface is someone else's to create,
    /// the same as --tunnel external.
    #[arg(long, default_value_t = true, action = ArgAction::Set, num_args = 0..=1,
          require_equals = true, default_missing_value = "true", value_name = "BOOL")]
    pub create_interface: bool,
    /// With `--tunnel spawn`: the weft-wg executable. Default: beside this
    /// executable, else on the PATH.
    #[arg(long)]
    pub tunnel_binary: Option<PathBuf>,
    /// The tunnel's control socket (root only). Default:
    /// /var/run/weft/INTERFACE.ctl.
    #[arg(long)]
    pub control_socket: Option<PathBuf>,
    /// Do not manage masquerading and forwarding rules.
    #[arg(long)]
    pub no_nat: bool,
    /// Accept forwarding to and from the mesh's prefixes in FORWARD
    /// (Kilo's flag; on by default here, where Kilo's is off: hosts whose
    /// FORWARD policy is DROP, as Docker sets it, otherwise drop pods'
    /// traffic).
    #[arg(long, default_value_t = true, action = ArgAction::Set, num_args = 0..=1,
          require_equals = true, default_missing_value = "true", value_name = "BOOL")]
    pub iptables_forward_rules: bool,
    /// The cluster's service CIDR (repeat for each family): traffic from
    /// pods and peers to Services is not masqueraded, so a Service's
    /// backends see who called (Kilo's --service-cidr).
    #[arg(long = "service-cidr", value_name = "CIDR")]
    pub service_cidrs: Vec<IpNet>,
    /// Re-apply everything this often (seconds) even without changes.
    #[arg(long, default_value_t = 30)]
    pub resync: u64,
    /// The same as --resync, as Kilo writes it (30s, 1m, 1m30s).
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    pub resync_period: Option<Duration>,
    /// Address for Prometheus metrics (/metrics), liveness (/healthz: the
    /// agent's loop turns) and readiness (/readyz: synced, applied, CNI
    /// configuration written, forwarding on); empty to disable; `:PORT`
    /// (Kilo's form) is every address. The manifests bind the node's own
    /// address.
    #[arg(long, default_value = "0.0.0.0:1107")]
    pub listen: String,
    /// Turn on IP forwarding for the families of this node's pod CIDRs and
    /// exit (what the DaemonSet's privileged init container runs).
    #[arg(long)]
    pub enable_forwarding: bool,
    /// On exit, remove the routes, rules, netfilter chains and CNI
    /// configuration this agent created (Kilo's flag, whose default is
    /// true; here false: a restart should not be an outage).
    #[arg(long, default_value_t = false, action = ArgAction::Set, num_args = 0..=1,
          require_equals = true, default_missing_value = "true", value_name = "BOOL")]
    pub clean_up: bool,
    /// On exit, also stop the tunnel, which removes its interface (Kilo's
    /// flag).
    #[arg(long, default_value_t = false, action = ArgAction::Set, num_args = 0..=1,
          require_equals = true, default_missing_value = "true", value_name = "BOOL")]
    pub clean_up_interface: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum TunnelLaunch {
    Spawn,
    External,
}

/// A Go-style duration as Kilo's flags take it: a sequence of a number and
/// a unit (`h`, `m`, `s`, `ms`), such as `30s` or `1m30s`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("{s:?} is not a duration such as 30s, 1m or 1m30s");
    let mut total = Duration::ZERO;
    let mut rest = s.trim();
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
        let n: u64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit = match &rest[..unit_len] {
            "h" => Duration::from_secs(3600),
            "m" => Duration::from_secs(60),
            "s" => Duration::from_secs(1),
            "ms" => Duration::from_millis(1),
            _ => return Err(bad()),
        };
        total += unit
            .checked_mul(u32::try_from(n).map_err(|_| bad())?)
            .ok_or_else(bad)?;
        rest = &rest[unit_len..];
    }
    Ok(total)
}

impl AgentArgs {
    /// Whether the agent writes the CNI configuration and masquerades pods.
    pub fn cni(&self) -> bool {
        self.cni && !self.no_cni
    }

    /// Who runs the tunnel, --create-interface=false meaning someone else.
    pub fn tunnel_launch(&self) -> TunnelLaunch {
        if self.create_interface {
            self.tunnel
        } else {
            TunnelLaunch::External
        }
    }

    /// Seconds between full passes: --resync-period if given, else --resync.
    pub fn resync(&self) -> Result<Duration, String> {
        let d = self
            .resync_period
            .unwrap_or(Duration::from_secs(self.resync));
        if d < Duration::from_secs(1) {
            return Err("the resync period must be at least 1 s".into());
        }
        Ok(d)
    }

    /// The metrics address; `None` when disabled.
    pub fn listen(&self) -> Result<Option<SocketAddr>, String> {
        let l = self.listen.trim();
        if l.is_empty() {
            return Ok(None);
        }
        let full = match l.strip_prefix(':') {
            Some(port) => format!("0.0.0.0:{port}"),
            None => l.to_string(),
        };
        full.parse()
            .map(Some)
            .map_err(|e| format!("--listen {l:?} is not ADDRESS:PORT or :PORT: {e}"))
    }

    /// What to remove on the way out.
    pub fn clean_up(&self) -> CleanUp {
        CleanUp {
            network: self.clean_up,
            interface: self.clean_up_interface,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mesh::{Compatibility, Mtu};

    fn parse(args: &[&str]) -> AgentArgs {
        let mut v = vec!["weft-agent", "--hostname", "n1"];
        v.extend_from_slice(args);
        AgentArgs::try_parse_from(v).unwrap_or_else(|e| panic!("{args:?}: {e}"))
    }

    /// The arguments of Kilo's own add-on manifests (kilo-kubeadm-flannel,
    /// kilo-kubeadm-cilium without its cilium part), as they are written.
    #[test]
    fn a_kilo_daemonsets_arguments_read_as_kilo_means_them() {
        let a = parse(&[
            "--kubeconfig=/etc/kubernetes/kubeconfig",
            "--cni=false",
            "--compatibility=flannel",
            "--local=false",
            "--internal-cidr=10.0.0.5/32",
            "--encapsulate=crosssubnet",
            "--clean-up-interface=true",
            "--subnet=172.31.254.0/24",
            "--log-level=all",
            "--mtu=auto",
            "--resync-period=30s",
            "--listen=:1107",
            "--master=https://10.0.0.10:6443",
        ]);
        assert!(!a.cni());
        let o = a.backend.mesh_options();
        assert_eq!(o.compatibility, Compatibility::Flannel);
        assert!(!o.local);
        assert_eq!(o.mtu, Mtu::Auto);
        assert_eq!(o.subnet.to_string(), "172.31.254.0/24");
        assert_eq!(a.internal_cidrs[0].to_string(), "10.0.0.5/32");
        assert_eq!(
            a.clean_up(),
            CleanUp {
                network: false,
                interface: true
            }
        );
        assert_eq!(a.log_level, Some(LogLevel::All));
        assert_eq!(a.resync(), Ok(Duration::from_secs(30)));
        assert_eq!(a.listen(), Ok(Some("0.0.0.0:1107".parse().unwrap())));
        assert_eq!(
            a.backend.api_server.as_deref(),
            Some("https://10.0.0.10:6443")
        );
    }

    #[test]
    fn booleans_take_kilos_forms_and_weft_keeps_its_defaults() {
        let d = parse(&[]);
        assert!(d.cni() && d.backend.local && d.iptables_forward_rules && d.create_interface);
        assert!(!d.prioritise_private_addresses);
        assert_eq!(d.clean_up(), CleanUp::default(), "a restart is no outage");
        assert_eq!(d.tunnel_launch(), TunnelLaunch::Spawn);
        let a = parse(&[
            "--prioritise-private-addresses",
            "--iptables-forward-rules=false",
            "--create-interface=false",
            "--clean-up",
            "--cni",
        ]);
        assert!(a.prioritise_private_addresses && !a.iptables_forward_rules && a.cni());
        assert_eq!(a.tunnel_launch(), TunnelLaunch::External);
        assert_eq!(
            a.clean_up(),
            CleanUp {
                network: true,
                interface: false
            }
        );
        assert!(!parse(&["--no-cni"]).cni());
        for bad in [
            &["--cni=maybe"][..],
            &["--compatibility=cilium"],
            &["--compatibility=calico"],
            &["--resync-period=soon"],
            &["--mtu=1000"],
        ] {
            let mut v = vec!["weft-agent", "--hostname", "n1"];
            v.extend_from_slice(bad);
            let e = AgentArgs::try_parse_from(v)
                .expect_err("refused")
                .to_string();
            assert!(
                e.contains(bad[0].split('=').next().unwrap()),
                "{bad:?}: {e}"
            );
        }
        let cilium =
            AgentArgs::try_parse_from(["weft-agent", "--hostname", "n", "--compatibility=cilium"])
                .expect_err("not yet")
                .to_string();
        assert!(cilium.contains("docs/addon.md"), "{cilium}");
    }

    #[test]
    fn go_durations() {
        for (s, secs) in [("30s", 30), ("1m", 60), ("1m30s", 90), ("2h", 7200)] {
            assert_eq!(parse_duration(s), Ok(Duration::from_secs(secs)), "{s}");
        }
        assert_eq!(parse_duration("1500ms"), Ok(Duration::from_millis(1500)));
        for bad in ["", "30", "s", "1d", "-1s", "1.5s", "99999999999h"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
        assert!(parse(&["--resync-period=500ms"]).resync().is_err());
        assert_eq!(
            parse(&["--resync", "5"]).resync(),
            Ok(Duration::from_secs(5))
        );
    }

    #[test]
    fn listen_forms() {
        assert_eq!(parse(&["--listen", ""]).listen(), Ok(None));
        assert_eq!(
            parse(&["--listen", "10.0.0.5:1107"]).listen(),
            Ok(Some("10.0.0.5:1107".parse().unwrap()))
        );
        assert!(parse(&["--listen", "nowhere"]).listen().is_err());
    }
}
