//! `weft-lab`: Weft's local lab. `up` builds a multi-cloud mesh in network
//! namespaces (4 nodes in 3 locations, one behind NAT), each node running
//! the real `weft-agent`, `weft-wg` and `weft-cni` found beside this
//! binary; proves every pod-to-pod and pod-to-node path; prints the table
//! and the graph; tears everything down. `down` removes what an interrupted
//! run left. Not part of the product: no node runs it.

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "weft-lab",
    version,
    about = "A local multi-cloud Weft mesh in network namespaces (needs root)"
)]
struct Cli {
    #[command(subcommand)]
    action: Action,
}

#[derive(Subcommand)]
enum Action {
    /// Build 4 nodes in 3 locations (one behind NAT), each running weft-agent
    /// with a pod wired by weft-cni; prove pod-to-pod and pod-to-node
    /// reachability; print the table and the graph; tear everything down.
    Up {
        /// Keep it running until Enter or Ctrl-C, to look around
        /// (e.g. `sudo ip netns exec wd-aws-1-pod ping 10.42.3.2`).
        #[arg(long)]
        keep: bool,
        /// Encapsulate traffic between the nodes of one location (VXLAN).
        #[arg(long, default_value = "never", value_parser = ["never", "crosssubnet", "always"])]
        encapsulate: String,
        /// Both families: an IPv6 pod CIDR and internal address per node
        /// beside the IPv4 ones, the public nodes dialled over IPv6, gcp on
        /// an IPv6-only underlay, home NATed for IPv4 and routed for IPv6;
        /// every pod-to-pod path checked in both families.
        #[arg(long)]
        dual_stack: bool,
    },
    /// Remove what an interrupted demo left behind.
    Down,
}

fn run(action: Action) -> Result<String, String> {
    let paths = weft_lab::DemoPaths::beside_current_exe().map_err(|e| e.to_string())?;
    if let Action::Down = action {
        weft_lab::down(&paths.work);
        return Ok("removed the demo's namespaces, agents and files\n".into());
    }
    let (keep, encapsulate, dual_stack) = match &action {
        Action::Up {
            keep,
            encapsulate,
            dual_stack,
        } => (
            *keep,
            encapsulate.parse().map_err(|e: String| e)?,
            *dual_stack,
        ),
        Action::Down => (false, weft_agent::mesh::Encapsulate::Never, false),
    };
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err("the demo needs root (network namespaces, TUN, routes)".into());
    }
    // Ctrl-C at any point: clean up, then leave.
    let work = paths.work.clone();
    wgconf::signals::TerminationSignals::block().on_arrival(move |_| {
        eprintln!("\nweft-lab: interrupted; tearing down");
        weft_lab::down(&work);
        std::process::exit(130);
    });
    let started = std::time::Instant::now();
    let progress = |step: &str| eprintln!("== {step}");
    let d = if dual_stack {
        weft_lab::Demo::up_dual_stack(paths, encapsulate, &progress)
    } else {
        weft_lab::Demo::up_with(paths, encapsulate, &progress)
    }
    .map_err(|e| e.to_string())?;
    eprintln!("== checking reachability across the mesh");
    let rows = d.check(std::time::Duration::from_secs(15));
    let mut out = String::new();
    out.push_str(&weft_lab::table(&rows));
    out.push('\n');
    out.push_str(&d.graph().map_err(|e| e.to_string())?);
    let failed = rows.iter().filter(|r| r.rtt_ms.is_none()).count();
    out.push_str(&format!(
        "\n{} of {} paths reachable; up and checked in {:.1} s\n",
        rows.len() - failed,
        rows.len(),
        started.elapsed().as_secs_f64()
    ));
    print!("{out}");
    out.clear();
    if keep {
        eprintln!("running; press Enter (or Ctrl-C) to tear down");
        let mut line = String::new();
        let _ = std::io::stdin().read_line(&mut line);
    }
    eprintln!("== tearing down");
    drop(d);
    if failed > 0 {
        return Err(format!("{failed} paths unreachable"));
    }
    Ok(out)
}

fn main() -> ExitCode {
    match run(Cli::parse().action) {
        Ok(out) => {
            print!("{out}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("weft-lab: {e}");
            ExitCode::FAILURE
        }
    }
}
