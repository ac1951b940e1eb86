//! `weft-agent`: the per-node agent. Reads the mesh (a file, or the
//! Kubernetes API as Kilo does), computes this node's desired state and
//! applies it: the userspace WireGuard tunnel (weft-wg, in a process of its
//! own that outlives the agent), addresses, routes, netfilter and the CNI
//! configuration. With the Kubernetes backend it also announces the node
//! (key, endpoint, addresses, check-ins) and watches its segment's leader
//! candidates.

use clap::Parser;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use weft_agent::backend::Waker;
use weft_agent::cli::BackendKind;
use weft_agent::controller::announce::{Announcer, HostAddresses};
use weft_agent::controller::{self, Controller, HostNetwork, Parts};
use weft_agent::flags::{AgentArgs, TunnelLaunch};
use weft_agent::forwarding::Sysctls;
use weft_agent::metrics::Metrics;
use weft_agent::probe::SegmentWatch;
use weft_agent::reconcile::tunnel::{Launch, TunnelSettings};
use weft_agent::reconcile::{key, Reconciler, Settings, VXLAN_NAME};
use weft_agent::status::Status;
use wgconf::signals::TerminationSignals;

/// Finds this node's pod CIDRs (waiting up to 30 s for the API) and turns
/// on forwarding for their families: the privileged init container's job.
fn enable_forwarding(cli: &AgentArgs) -> Result<(), String> {
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

fn run(cli: AgentArgs) -> Result<(), String> {
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
    let resync = cli.resync()?;
    let listen = cli.listen()?;
    let reconciler = Reconciler::new(
        Settings {
            cni_dir: cli.cni().then(|| cli.cni_dir.clone()),
            ipam_dir: cli.ipam_dir.clone(),
            manage_nat: !cli.no_nat,
            service_cidrs: cli.service_cidrs.clone(),
            masquerade_pods: cli.cni(),
            accept_forward: cli.iptables_forward_rules,
            tunnel: TunnelSettings {
                interface: cli.interface.clone(),
                control: cli.control_socket.clone().unwrap_or_else(|| {
                    PathBuf::from(format!("/var/run/weft/{}.ctl", cli.interface))
                }),
                uapi_dir: (!cli.no_uapi).then(|| cli.uapi_dir.clone()),
                launch: match (cli.tunnel_launch(), &cli.tunnel_binary) {
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
    if let Some(addr) = listen {
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
            Box::new(
                HostAddresses::new(&cli.hostname, ignore, cli.internal_cidrs.clone())
                    .with_private_endpoint(cli.prioritise_private_addresses),
            ),
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
        resync,
    });
    controller
        .run(&stop, cli.clean_up())
        .map_err(|e| e.to_string())
}

fn main() -> ExitCode {
    let cli = AgentArgs::parse();
    weft_agent::cli::init_logs(cli.log_json, cli.log_level);
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
