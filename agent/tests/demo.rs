//! The local multi-cloud demo as an end-to-end test: four nodes in three
//! locations (one behind NAT) in network namespaces, each running weft-agent
//! with its embedded tunnel and a pod wired by weft-cni. Then an agent is
//! killed and restarted: its key and WireGuard IP stay, and pods reconnect.

use std::path::Path;
use std::time::{Duration, Instant};
use weft_agent::demo::{self, Demo, DemoPaths};

fn can_run() -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIPPED: needs root for network namespaces");
        return false;
    }
    true
}

fn paths() -> DemoPaths {
    let agent = Path::new(env!("CARGO_BIN_EXE_weft-agent"));
    let dir = agent.parent().expect("target dir");
    let mut p = DemoPaths::in_dir(dir);
    // weft-cni is another package's binary: make sure it is built (same profile).
    if !p.cni.is_file() {
        let profile = if dir.ends_with("release") {
            vec!["--release"]
        } else {
            vec![]
        };
        let ok = std::process::Command::new(env!("CARGO"))
            .args(["build", "-p", "cni-plugin", "--bin", "weft-cni"])
            .args(profile)
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "cannot build weft-cni");
    }
    p.work = std::env::temp_dir().join(format!("weft-demo-test-{}", std::process::id()));
    p
}

/// Both scenarios share the demo's fixed namespace names, so they run in
/// sequence within one test.
#[test]
fn demo_scenarios() {
    if !can_run() {
        return;
    }
    demo_mesh_end_to_end_and_agent_restart();
    demo_mesh_with_vxlan_inside_a_location();
}

fn demo_mesh_end_to_end_and_agent_restart() {
    let mut d = Demo::up(paths(), &|step| eprintln!("== {step}")).expect("demo up");
    let rows = d.check(Duration::from_secs(15));
    eprintln!("{}", demo::table(&rows));
    let unreachable: Vec<_> = rows.iter().filter(|r| r.rtt_ms.is_none()).collect();
    assert!(unreachable.is_empty(), "unreachable: {unreachable:?}");
    assert_eq!(rows.len(), 24);
    // Same location goes over the private network, the rest is encrypted.
    assert!(rows
        .iter()
        .any(|r| r.from == "pod@aws-1" && r.to == "pod@aws-2" && r.path == "private"));

    // Kill the aws leader's agent and restart it.
    let key_before = d.public_key("aws-1").expect("key");
    let wg_before = Demo::wireguard_address("aws-1").expect("aws-1 has a WireGuard address");
    assert_eq!(wg_before, "10.4.0.1/16");
    d.stop_agent("aws-1");
    d.start_agent("aws-1").expect("restart");
    let restarted = Instant::now();
    let mut reconnected = None;
    while restarted.elapsed() < Duration::from_secs(10) {
        let ok = demo::ping(&demo::pod_ns("gcp-1"), &Demo::pod_ip("aws-2")).is_some()
            && demo::ping(&demo::pod_ns("aws-2"), &Demo::pod_ip("home-1")).is_some();
        if ok {
            reconnected = Some(restarted.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let reconnected = reconnected.expect("pods did not reconnect within 10 s of the restart");
    eprintln!("pods reconnected {reconnected:?} after the agent restart");
    assert!(
        reconnected < Duration::from_secs(5),
        "reconnect took {reconnected:?}"
    );
    assert_eq!(
        d.public_key("aws-1").expect("key"),
        key_before,
        "key changed on restart"
    );
    assert_eq!(
        Demo::wireguard_address("aws-1").as_deref(),
        Some(wg_before.as_str())
    );
    drop(d);
    let left = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip");
    assert!(
        !String::from_utf8_lossy(&left.stdout).contains(demo::PREFIX),
        "namespaces left behind"
    );
}

/// Inside a location, `encapsulate: always` sends node-to-node traffic
/// through VXLAN (this kernel has no IPIP), and everything still connects.
fn demo_mesh_with_vxlan_inside_a_location() {
    let mut p = paths();
    p.work = std::env::temp_dir().join(format!("weft-demo-vxlan-{}", std::process::id()));
    let d = Demo::up_with(p, weft_agent::mesh::Encapsulate::Always, &|step| {
        eprintln!("== {step}")
    })
    .expect("demo up");
    let rows = d.check(Duration::from_secs(15));
    eprintln!("{}", demo::table(&rows));
    assert!(
        rows.iter().all(|r| r.rtt_ms.is_some()),
        "some paths unreachable"
    );
    let routes = std::process::Command::new("ip")
        .args([
            "-n",
            &demo::node_ns("aws-2"),
            "route",
            "show",
            "10.42.1.0/24",
        ])
        .output()
        .expect("ip route");
    let routes = String::from_utf8_lossy(&routes.stdout);
    assert!(
        routes.contains("dev weft-vxlan"),
        "aws-2 reaches aws-1's pods through {routes}"
    );
    let link = std::process::Command::new("ip")
        .args([
            "-n",
            &demo::node_ns("aws-2"),
            "-d",
            "link",
            "show",
            "weft-vxlan",
        ])
        .output()
        .expect("ip link");
    assert!(String::from_utf8_lossy(&link.stdout).contains("vxlan id 1107"));
}
