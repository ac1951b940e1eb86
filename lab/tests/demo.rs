//! The local multi-cloud demo as an end-to-end test: four nodes in three
//! locations (one behind NAT) in network namespaces, each running weft-agent
//! with its tunnel (a `weft-wg` process) and a pod wired by weft-cni. Then an agent is
//! killed and restarted: its key and WireGuard IP stay, and pods reconnect.
//! The same mesh again with VXLAN inside a location, and again driven
//! through the Kubernetes backend: the agents read Nodes from an API server
//! in the demo's internet namespace and announce themselves there. Last,
//! Debian's Prometheus scrapes the mesh with the shipped alert rules, and
//! the shipped dashboard's queries and alerts run against it.

use fake_apiserver as fake_api;

mod prometheus;

use std::path::Path;
use std::time::{Duration, Instant, SystemTime};
use weft_lab::{self as demo, Demo, DemoPaths};

/// weftctl, built with this test's profile.
fn weftctl() -> std::path::PathBuf {
    testkit::sibling_binary(env!("CARGO_BIN_EXE_weft-lab"), "weftctl", "agent")
}

/// The product's binaries, built with this test's profile.
fn paths() -> DemoPaths {
    let own = env!("CARGO_BIN_EXE_weft-lab");
    let mut p = DemoPaths::in_dir(Path::new(own).parent().expect("target dir"));
    p.agent = testkit::sibling_binary(own, "weft-agent", "agent");
    p.cni = testkit::sibling_binary(own, "weft-cni", "cni-plugin");
    p.tunnel = testkit::sibling_binary(own, "weft-wg", "dataplane");
    p.work = std::env::temp_dir().join(format!("weft-demo-test-{}", std::process::id()));
    p
}

/// Both scenarios share the demo's fixed namespace names, so they run in
/// sequence within one test.
#[test]
#[ignore = "needs root: network namespaces"]
fn demo_scenarios() {
    testkit::require_root("network namespaces");
    demo_mesh_end_to_end_and_agent_restart();
    demo_mesh_with_vxlan_inside_a_location();
    demo_mesh_in_both_families();
    demo_mesh_through_the_kubernetes_backend();
    demo_mesh_watched_by_prometheus();
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

    // Restart the aws leader's agent while pods talk through its tunnel
    // (gcp-1's pod to aws-2's pod crosses aws-1's tunnel): the tunnel runs
    // in a process of its own, so not one probe is lost.
    let key_before = d.public_key("aws-1").expect("key");
    let wg_before = Demo::wireguard_address("aws-1").expect("aws-1 has a WireGuard address");
    assert_eq!(wg_before, "10.4.0.1/16");
    let from = demo::pod_ns("gcp-1");
    let to = Demo::pod_ip("aws-2");
    let restart = |d: &mut Demo| {
        d.stop_agent("aws-1");
        d.start_agent("aws-1").expect("restart");
    };
    let probes = demo::probe_during(
        &from,
        &to,
        Duration::from_millis(50),
        80,
        Duration::from_millis(1000),
        || restart(&mut d),
    )
    .expect("probes");
    eprintln!(
        "agent restart: {} of {} probes (every 50 ms) answered, longest gap {:?}",
        probes.answered.len(),
        probes.sent,
        probes.longest_gap()
    );
    assert_eq!(
        probes.lost(),
        0,
        "an agent restart lost traffic: {probes:?}"
    );
    d.wait_applied(Duration::from_secs(10))
        .expect("applied again");
    assert_eq!(
        d.public_key("aws-1").expect("key"),
        key_before,
        "key changed on restart"
    );
    assert_eq!(
        Demo::wireguard_address("aws-1").as_deref(),
        Some(wg_before.as_str())
    );

    // An upgrade: the agent restarts with another weft-wg binary and hands
    // the running tunnel to it; traffic pauses for about one handshake.
    let upgraded = d.paths.work.join("weft-wg-upgraded");
    std::fs::copy(&d.paths.tunnel, &upgraded).expect("copy weft-wg");
    d.paths.tunnel = upgraded.clone();
    let control = d.paths.work.join("aws-1").join("weft0.ctl");
    let client = wgconf::control::ControlClient::new(&control);
    let (_, before) = client.get().expect("the tunnel answers");
    let probes = demo::probe_during(
        &from,
        &to,
        Duration::from_millis(50),
        80,
        Duration::from_millis(1000),
        || restart(&mut d),
    )
    .expect("probes");
    eprintln!(
        "tunnel upgrade: {} of {} probes (every 50 ms) answered, longest gap {:?}",
        probes.answered.len(),
        probes.sent,
        probes.longest_gap()
    );
    let (_, after) = client.get().expect("the upgraded tunnel answers");
    assert_ne!(after.pid, before.pid, "a new tunnel process runs");
    assert_eq!(
        after.binary,
        Some(wgconf::control::identity_of(&upgraded)),
        "from the new binary"
    );
    assert!(
        probes.answered.iter().any(|s| *s > 70),
        "traffic resumed: {probes:?}"
    );
    assert!(
        probes.longest_gap() <= Duration::from_millis(200),
        "an upgrade cost {:?} of traffic",
        probes.longest_gap()
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

/// The dual-stack demo (`scripts/demo.sh --dual-stack`): every pod reaches
/// every other pod in both families and every node, with VXLAN inside aws
/// for IPv4; gcp has no public IPv4, so everything reaches it over IPv6,
/// and it reaches home (IPv4 NAT) at the IPv6 source of home's keepalives.
fn demo_mesh_in_both_families() {
    let d = Demo::up_dual_stack(paths(), weft_agent::mesh::Encapsulate::Always, &|step| {
        eprintln!("== {step}")
    })
    .expect("dual-stack demo up");
    let rows = d.check(Duration::from_secs(20));
    eprintln!("{}", demo::table(&rows));
    let unreachable: Vec<_> = rows.iter().filter(|r| r.rtt_ms.is_none()).collect();
    assert!(unreachable.is_empty(), "unreachable: {unreachable:?}");
    assert_eq!(
        rows.len(),
        36,
        "4 nodes x 3 others x (pod v4, pod v6, node)"
    );
    let v6 = rows.iter().filter(|r| r.target.contains(':')).count();
    assert_eq!(v6, 12);
    // gcp-1 is on an IPv6-only underlay: its tunnel's peers are at IPv6
    // endpoints, home included (learned from home's handshakes).
    let control = d.paths.work.join(demo::IPV6_ONLY).join("weft0.ctl");
    let (info, _) = wgconf::control::ControlClient::new(control)
        .get()
        .expect("gcp-1's tunnel");
    for p in &info.peers {
        let ep = p.endpoint.expect("an endpoint");
        assert!(ep.is_ipv6(), "gcp-1 reaches {} at {ep}", p.public_key);
        assert!(p.last_handshake.is_some(), "{}", p.public_key);
    }
    let graph = d.graph().expect("graph");
    assert!(graph.contains("fd42:0:0:3::/64") && graph.contains("10.42.3.0/24"));
}

/// The demo's nodes as k3s would register them, with only what users set
/// for Kilo: a location (the region label, or Kilo's annotation), and for
/// the node behind NAT a forced endpoint and a keepalive. Everything else
/// (keys, endpoints, internal IPs, WireGuard IPs) the agents announce.
fn demo_mesh_through_the_kubernetes_backend() {
    use serde_json::json;
    let mut p = paths();
    p.work = std::env::temp_dir().join(format!("weft-demo-kube-{}", std::process::id()));
    let work = p.work.clone();
    let progress = |step: &str| eprintln!("== {step}");
    let mut d =
        Demo::networks(p, weft_agent::mesh::Encapsulate::Always, &progress).expect("demo networks");

    // The API server, on the internet bridge (plain HTTP, in-memory).
    let api = fake_api::FakeApi::new();
    let net = "wd-net";
    let ok = std::process::Command::new("ip")
        .args(["-n", net, "addr", "add", "203.0.113.1/24", "dev", "br-inet"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "address for the API server");
    let listener = weft_netlink::in_netns(Path::new(&format!("/var/run/netns/{net}")), |_| {
        std::net::TcpListener::bind("203.0.113.1:6443")
            .map_err(|e| weft_netlink::NetlinkError::Failed(e.to_string()))
    })
    .expect("listen in the internet namespace");
    let server = api.serve_http(listener);
    for n in demo::nodes() {
        let mut node = fake_api::k3s_node(n.name, n.pod_cidr);
        if n.public.is_some() {
            node["metadata"]["labels"]["topology.kubernetes.io/region"] = json!(n.location);
        } else {
            let a = &mut node["metadata"]["annotations"];
            a["kilo.squat.ai/location"] = json!(n.location);
            a["kilo.squat.ai/force-endpoint"] = json!(n.endpoint);
            a["kilo.squat.ai/persistent-keepalive"] = json!("25");
        }
        api.put("nodes", node);
    }
    std::fs::create_dir_all(&work).expect("work dir");
    let kubeconfig = work.join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        "apiVersion: v1\nkind: Config\nclusters:\n- name: demo\n  cluster: {server: 'http://203.0.113.1:6443'}\nusers:\n- name: demo\n  user: {}\ncontexts:\n- name: demo\n  context: {cluster: demo, user: demo}\ncurrent-context: demo\n",
    )
    .expect("kubeconfig");

    // Kilo's clocks shortened tenfold (check-ins every 3 s, stale after
    // 6 s), so the outage below outlasts the staleness limit in seconds.
    let clocks = demo::Clocks {
        check_in_period: 3,
        stale_after: 6,
        unready_after: 6,
    };
    let started = Instant::now();
    d.start(
        demo::MeshSource::Kubernetes {
            kubeconfig: kubeconfig.clone(),
            clocks,
        },
        &progress,
    )
    .expect("agents applied the mesh read from the API");
    eprintln!(
        "four agents announced themselves and applied the mesh in {:?}",
        started.elapsed()
    );
    let rows = d.check(Duration::from_secs(20));
    eprintln!("{}", demo::table(&rows));
    let unreachable: Vec<_> = rows.iter().filter(|r| r.rtt_ms.is_none()).collect();
    assert!(unreachable.is_empty(), "unreachable: {unreachable:?}");
    assert_eq!(rows.len(), 24);
    healthy_start_logs(&d);

    let rss = std::process::Command::new("ps")
        .args(["-o", "rss=", "-C", "weft-agent"])
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default();
    eprintln!("agents' RSS with the Kubernetes backend (KiB): {rss}");

    // weftctl status through the API: every node checked in moments ago
    // (every 3 s here), every agent ready.
    // With the cluster's clocks, as every agent has them: a node is stale,
    // and leaves the mesh, by the same rule everywhere.
    let through_api = [
        "--backend",
        "kubernetes",
        "--kubeconfig",
        &kubeconfig.to_string_lossy(),
        "--check-in-period",
        "3",
        "--stale-after",
        "6",
        "--unready-after",
        "6",
    ];
    let (ok, text) = weftctl_status_from(&through_api, false);
    eprintln!("weftctl status through the API:\n{text}");
    assert!(ok, "{text}");
    let (_, json) = weftctl_status_from(&through_api, true);
    let report: serde_json::Value = serde_json::from_str(&json).expect("status JSON");
    for n in report["nodes"].as_array().expect("nodes") {
        let age = n["check_in_age_seconds"].as_u64().expect("a check-in age");
        assert!(age <= 10, "{}: checked in {age} s ago", n["name"]);
        assert_eq!(n["agent"]["ready"], true, "{json}");
    }

    // What the agents announced, in Kilo's formats.
    let ann = |n: &str| api.get("nodes", n).expect("node")["metadata"]["annotations"].clone();
    for n in demo::nodes() {
        let a = ann(n.name);
        assert_eq!(
            a["kilo.squat.ai/key"],
            json!(d.public_key(n.name).expect("key")),
            "{}",
            n.name
        );
        assert_eq!(
            a["kilo.squat.ai/internal-ip"],
            json!(n.private),
            "{}",
            n.name
        );
        assert_eq!(a["kilo.squat.ai/granularity"], "location");
        let endpoint = match n.public {
            Some(p) => format!("{}:51820", p.split('/').next().unwrap()),
            // Behind NAT it only knows its private address; the forced
            // endpoint is what others use.
            None => format!("{}:51820", n.private.split('/').next().unwrap()),
        };
        assert_eq!(a["kilo.squat.ai/endpoint"], json!(endpoint), "{}", n.name);
        let wg = a["kilo.squat.ai/wireguard-ip"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        if n.name == "aws-2" {
            assert_eq!(wg, "", "aws-2 does not lead aws");
        } else {
            assert_eq!(Some(wg), Demo::wireguard_address(n.name), "{}", n.name);
        }
    }
    // The NATed node's keepalive lets the leaders learn where its packets
    // come from (the router's public address) and publish it.
    let home_key = d.public_key("home-1").expect("key");
    let learned = testkit::wait_for(Duration::from_secs(20), Duration::from_millis(200), || {
        demo::nodes().iter().find_map(|n| {
            let v = ann(n.name)["kilo.squat.ai/discovered-endpoints"]
                .as_str()?
                .to_string();
            let m: serde_json::Value = serde_json::from_str(&v).ok()?;
            Some((n.name, m.get(&home_key)?.clone()))
        })
    })
    .expect("a node publishes home-1's NAT endpoint within 20 s");
    eprintln!("{} learned home-1 at {}", learned.0, learned.1);
    assert_eq!(learned.1["IP"], "203.0.113.31");

    // A restarted agent finds its node in the API and the mesh heals.
    d.stop_agent("gcp-1");
    d.start_agent("gcp-1").expect("restart");
    let restarted = Instant::now();
    while demo::ping(&demo::pod_ns("gcp-1"), &Demo::pod_ip("home-1")).is_none() {
        assert!(
            restarted.elapsed() < Duration::from_secs(10),
            "no reconnect within 10 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!(
        "gcp-1's pod reached home-1's {:?} after the restart",
        restarted.elapsed()
    );

    // The API goes away for longer than the staleness limit after which a
    // node without check-ins is left out. Nothing may change, the agents must
    // stay nearly idle and nearly silent, and check in as soon as it is back.
    let names: Vec<&str> = demo::nodes().iter().map(|n| n.name).collect();
    let before: Vec<_> = names.iter().map(|n| d.state(n)).collect();
    let cpu = |d: &Demo| -> Vec<Duration> {
        names
            .iter()
            .map(|n| d.agent_pid(n).and_then(demo::cpu_time).expect("agent cpu"))
            .collect()
    };
    let logs = |d: &Demo| -> Vec<usize> { names.iter().map(|n| d.log_lines(n)).collect() };
    let (cpu0, logs0) = (cpu(&d), logs(&d));
    let outage = Duration::from_secs(clocks.stale_after + 6);
    server.stop();
    std::thread::sleep(outage);
    let (cpu1, logs1) = (cpu(&d), logs(&d));
    let during: Vec<_> = names.iter().map(|n| d.state(n)).collect();
    let back_at = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let back = Instant::now();
    server
        .start_with(|addr| {
            weft_netlink::in_netns(Path::new(&format!("/var/run/netns/{net}")), |_| {
                std::net::TcpListener::bind(addr)
                    .map_err(|e| weft_netlink::NetlinkError::Failed(e.to_string()))
            })
            .map_err(|e| std::io::Error::other(e.to_string()))
        })
        .expect("the API back");
    let checked_in = |n: &str| {
        ann(n)["kilo.squat.ai/last-seen"]
            .as_str()
            .and_then(|v| v.parse::<u64>().ok())
            .is_some_and(|t| t >= back_at)
    };
    while !names.iter().all(|n| checked_in(n)) {
        assert!(
            back.elapsed() < Duration::from_secs(2),
            "not every agent checked in within 2 s of the API's return: {:?}",
            names.iter().map(|n| (n, checked_in(n))).collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let check_in_after = back.elapsed();
    for (i, n) in names.iter().enumerate() {
        let used = cpu1[i].saturating_sub(cpu0[i]);
        let lines = logs1[i] - logs0[i];
        eprintln!(
            "API outage of {outage:?}: {n}'s agent used {used:?} of CPU ({:.2} % of a core), \
             logged {lines} lines",
            used.as_secs_f64() * 100.0 / outage.as_secs_f64()
        );
        assert!(
            used.as_secs_f64() <= 0.01 * outage.as_secs_f64(),
            "{n}'s agent used {used:?} during the outage"
        );
        assert!(
            lines <= 20,
            "{n}'s agent logged {lines} lines during the outage:\n{}",
            d.log_from(n, logs0[i])[..lines].join("\n")
        );
        assert_eq!(
            during[i], before[i],
            "{n} changed its routes or peers during the outage"
        );
    }
    eprintln!("every agent checked in {check_in_after:?} after the API returned");
    // Through the grace that follows an outage, nobody is left out either.
    std::thread::sleep(Duration::from_secs(5));
    for (i, n) in names.iter().enumerate() {
        assert_eq!(
            d.state(n),
            before[i],
            "{n} changed its routes or peers after the outage"
        );
    }

    // Every Weft node reports what it cannot reach in its segment (an empty
    // report while all is well).
    let reported = |n: &str| ann(n)["weft.dev/unreachable"].as_str().map(str::to_string);
    assert_eq!(reported("aws-2").as_deref(), Some(""));

    // The leader's private link fails for 3 s: that is a stall, not a death;
    // leadership stays where it is.
    let patches_before = api.received().len();
    d.set_link("aws-1", "eth1", false).expect("link down");
    std::thread::sleep(Duration::from_secs(3));
    d.set_link("aws-1", "eth1", true).expect("link up");
    std::thread::sleep(Duration::from_secs(3));
    let moved = api.received()[patches_before..]
        .iter()
        .filter(|r| r.path.ends_with("/aws-2"))
        .any(|r| {
            r.body["metadata"]["annotations"]["weft.dev/unreachable"]
                .as_str()
                .is_some_and(|v| v.contains("aws-1"))
        });
    assert!(
        !moved,
        "a 3 s stall of the leader's link was reported as a death"
    );
    assert_eq!(
        ann("aws-2")["kilo.squat.ai/wireguard-ip"],
        "",
        "aws-2 stayed a follower"
    );

    // The aws leader dies (agent and tunnel killed, links down). aws-2's
    // pod talks to gcp-1's pod through the aws leader: the blackout ends
    // when aws-2 has taken over and gcp-1 has switched to it.
    let from = demo::pod_ns("aws-2");
    let to = Demo::pod_ip("gcp-1");
    assert!(demo::ping(&from, &to).is_some());
    let patches_before = api.received().len();
    let probes = demo::probe_during(
        &from,
        &to,
        Duration::from_millis(200),
        75,
        Duration::from_secs(2),
        || d.kill_node("aws-1"),
    )
    .expect("probes");
    let blackout = probes.longest_gap();
    eprintln!(
        "leader death: {} of {} probes (every 200 ms) answered, blackout {blackout:?}",
        probes.answered.len(),
        probes.sent
    );
    assert!(
        probes.answered.iter().any(|s| *s > 60),
        "aws-2's pod never reached gcp-1 again: {probes:?}"
    );
    assert!(
        blackout <= Duration::from_secs(5),
        "failover took {blackout:?}"
    );
    // aws-2 reported the death (under the lab's short clocks the dead node
    // may since have gone stale and left the mesh, which ends the report).
    let reported_death = api.received()[patches_before..]
        .iter()
        .filter(|r| r.path.ends_with("/aws-2"))
        .any(|r| r.body["metadata"]["annotations"]["weft.dev/unreachable"] == "aws-1");
    assert!(reported_death, "aws-2 never reported aws-1 unreachable");
    // Every other leader agrees: its tunnel's peer for aws is aws-2 now.
    let (aws1, aws2) = (
        d.public_key("aws-1").expect("key"),
        d.public_key("aws-2").expect("key"),
    );
    for n in ["gcp-1", "home-1"] {
        let control = d.paths.work.join(n).join("weft0.ctl");
        let (info, _) = wgconf::control::ControlClient::new(control)
            .get()
            .expect("tunnel");
        let keys: Vec<String> = info
            .peers
            .iter()
            .map(|p| p.public_key.to_string())
            .collect();
        assert!(
            keys.contains(&aws2) && !keys.contains(&aws1),
            "{n}: {keys:?}"
        );
    }
    assert!(
        ann("aws-2")["kilo.squat.ai/wireguard-ip"]
            .as_str()
            .is_some_and(|s| !s.is_empty()),
        "aws-2 leads aws now"
    );
    // A laptop on the internet joins with `weftctl connect` (no kernel
    // WireGuard here either) and reaches the pods of every location (aws-1's
    // is gone with its node; aws goes through its new leader, aws-2).
    let laptop = Laptop::connect(&d, &through_api);
    laptop.reaches_pods(&["aws-2", "gcp-1", "home-1"], Duration::from_secs(30));
    let peer = api.get("peers", "laptop").expect("the Peer was created");
    assert_eq!(peer["spec"]["allowedIPs"], json!(["10.5.0.1/32"]));
    // aws-1 comes back and, first in Kilo's order, leads aws again: the
    // laptop follows that leader change too and reaches both aws pods.
    d.set_link("aws-1", "eth0", true).expect("link up");
    d.set_link("aws-1", "eth1", true).expect("link up");
    d.start_agent("aws-1").expect("aws-1's agent starts");
    let back = Instant::now();
    let leads_again =
        testkit::wait_until(Duration::from_secs(30), Duration::from_millis(200), || {
            ann("aws-1")["kilo.squat.ai/wireguard-ip"]
                .as_str()
                .is_some_and(|s| !s.is_empty())
                && ann("aws-2")["kilo.squat.ai/wireguard-ip"] == ""
        });
    assert!(leads_again, "aws-1 did not lead aws again");
    eprintln!("aws-1 back: leads aws again after {:?}", back.elapsed());
    laptop.reaches_pods(
        &["aws-1", "aws-2", "gcp-1", "home-1"],
        Duration::from_secs(20),
    );
    // It follows the mesh: another Peer appears, and the laptop's tunnel
    // and routes take it in.
    api.put(
        "peers",
        json!({"apiVersion": "kilo.squat.ai/v1alpha1", "kind": "Peer",
               "metadata": {"name": "ci"},
               "spec": {"allowedIPs": ["10.5.0.2/32"], "publicKey": "uAW87eBu27C8lOkOuvmJ/oBC875v440ZzJNcAjcH8Sk=",
                        "persistentKeepalive": 10}}),
    );
    let followed = testkit::wait_until(Duration::from_secs(15), Duration::from_millis(100), || {
        testkit::ip(&["-n", LAPTOP_NS, "route", "show", "10.5.0.2/32"]).contains("weft-connect")
    });
    assert!(
        followed,
        "the laptop did not route to the new Peer:\n{}",
        laptop.log()
    );
    // Stopped, it leaves nothing behind: no Peer, no interface, no route,
    // no tunnel process.
    laptop.disconnect();
    assert!(api.get("peers", "laptop").is_none(), "the Peer stayed");
    drop(d);
    let _ = std::fs::remove_dir_all(&work);
}

const LAPTOP_NS: &str = "wd-laptop";

/// A machine on the demo's internet running `weftctl connect laptop`.
struct Laptop {
    child: Option<std::process::Child>,
    log: std::path::PathBuf,
    control: std::path::PathBuf,
}

impl Laptop {
    fn connect(d: &Demo, backend: &[&str]) -> Self {
        let ip = testkit::ip;
        // Its namespace starts with the demo's prefix: the demo removes it.
        ip(&["netns", "add", LAPTOP_NS]);
        ip(&["-n", LAPTOP_NS, "link", "set", "lo", "up"]);
        ip(&[
            "link",
            "add",
            "eth0",
            "netns",
            LAPTOP_NS,
            "type",
            "veth",
            "peer",
            "name",
            "lap0",
            "netns",
            demo::NET,
        ]);
        ip(&[
            "-n",
            demo::NET,
            "link",
            "set",
            "lap0",
            "master",
            "br-inet",
            "up",
        ]);
        ip(&[
            "-n",
            LAPTOP_NS,
            "addr",
            "add",
            "203.0.113.40/24",
            "dev",
            "eth0",
        ]);
        ip(&["-n", LAPTOP_NS, "link", "set", "eth0", "up"]);
        let log = d.paths.work.join("laptop.log");
        let control = d.paths.work.join("laptop.ctl");
        let child = std::process::Command::new("ip")
            .args(["netns", "exec", LAPTOP_NS])
            .arg(weftctl())
            .args(backend)
            .args([
                "connect",
                "laptop",
                "--allowed-ip",
                "10.5.0.1/32",
                "--resync",
                "5",
            ])
            .arg("--tunnel-binary")
            .arg(&d.paths.tunnel)
            .arg("--control-socket")
            .arg(&control)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log"))
            .spawn()
            .expect("weftctl connect starts");
        Laptop {
            child: Some(child),
            log,
            control,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn reaches_pods(&self, nodes: &[&str], within: Duration) {
        let started = Instant::now();
        for &n in nodes {
            let pod = Demo::pod_ip(n);
            let reached = testkit::wait_until(within, Duration::ZERO, || {
                demo::ping(LAPTOP_NS, &pod).is_some()
            });
            assert!(
                reached,
                "the laptop does not reach {n}'s pod {pod}:\n{}",
                self.log()
            );
        }
        eprintln!(
            "the laptop reaches the pods of {nodes:?} {:?} after asking",
            started.elapsed()
        );
    }

    /// SIGTERM, as Ctrl-C would; then checks that nothing is left.
    fn disconnect(mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        // SAFETY: kill(2) on our own child (`ip netns exec` execs weftctl).
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let exited =
            testkit::wait_until(Duration::from_secs(10), Duration::from_millis(50), || {
                matches!(child.try_wait(), Ok(Some(_)))
            });
        assert!(exited, "weftctl connect did not stop:\n{}", self.log());
        let status = child.wait().expect("status");
        assert!(
            status.success(),
            "weftctl connect: {status}\n{}",
            self.log()
        );
        assert!(
            !testkit::try_run(&["ip", "-n", LAPTOP_NS, "link", "show", "weft-connect"]),
            "the interface stayed"
        );
        let routes = testkit::ip(&["-n", LAPTOP_NS, "route", "show", "proto", "87"]);
        assert!(routes.is_empty(), "routes stayed: {routes}");
        assert!(
            wgconf::control::ControlClient::new(&self.control)
                .get()
                .is_err(),
            "the tunnel still answers"
        );
        eprintln!("laptop disconnected:\n{}", self.log());
    }
}

impl Drop for Laptop {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
            // Its tunnel outlives it by design: stop it too.
            let _ = wgconf::control::ControlClient::new(&self.control).stop();
        }
    }
}

/// The agents' logs up to now, as `kubectl logs` would show them (stderr is
/// a file here, as under a kubelet): no escape sequences, and a healthy
/// start says nothing at WARN or ERROR, so an alert on those lines stays
/// quiet on a healthy install.
fn healthy_start_logs(d: &Demo) {
    for n in demo::nodes() {
        let log = d.log_from(n.name, 0);
        assert!(!log.is_empty(), "{}: the agent logged nothing", n.name);
        let escaped: Vec<&String> = log.iter().filter(|l| l.contains('\x1b')).collect();
        assert!(
            escaped.is_empty(),
            "{}: escape sequences: {escaped:#?}",
            n.name
        );
        let loud: Vec<&String> = log
            .iter()
            .filter(|l| matches!(l.split_whitespace().nth(1), Some("WARN" | "ERROR")))
            .collect();
        assert!(
            loud.is_empty(),
            "{}: a healthy start logged {loud:#?}\nits whole log:\n{}",
            n.name,
            log.join("\n")
        );
    }
}

/// Debian's Prometheus scrapes every agent of the demo (from a namespace
/// plugged into each location's private network), with the shipped alert
/// rules loaded: every rule evaluates, every dashboard query returns data,
/// and when a location's only node goes down the unreachable-peer and
/// agent-down expressions name it (the alert goes pending) and clear once
/// it is back.
fn demo_mesh_watched_by_prometheus() {
    let mut p = paths();
    p.work = std::env::temp_dir().join(format!("weft-demo-prom-{}", std::process::id()));
    let mut d = Demo::up(p, &|step| eprintln!("== {step}")).expect("demo up");
    let targets: Vec<(&str, String)> = demo::nodes()
        .iter()
        .map(|n| {
            let ip = n.private.split('/').next().unwrap_or(n.private);
            (n.name, format!("{ip}:1107"))
        })
        .collect();
    let prom = prometheus::Prometheus::start(
        demo::NET,
        &[
            ("br-aws", "172.31.0.50/24"),
            ("br-gcp", "10.128.0.50/24"),
            ("br-home", "192.168.1.50/24"),
        ],
        &targets,
    );
    let every_agent =
        testkit::wait_until(Duration::from_secs(20), Duration::from_millis(500), || {
            prom.query("up{job=\"weft\"} == 1").len() == targets.len()
        });
    assert!(every_agent, "not every agent scraped: {}", prom.log());

    // Traffic on every path, so the tunnels' counters move.
    let rows = d.check(Duration::from_secs(15));
    assert!(
        rows.iter().all(|r| r.rtt_ms.is_some()),
        "{}",
        demo::table(&rows)
    );

    let alerts = prometheus::alert_expressions();
    let loaded = testkit::wait_until(Duration::from_secs(10), Duration::from_millis(500), || {
        let rules = prom.rules();
        alerts
            .iter()
            .all(|(name, _)| rules.iter().any(|(n, health)| n == name && health == "ok"))
    });
    assert!(loaded, "rules not all evaluated: {:?}", prom.rules());

    // aws-1's pod sends to gcp-1's pod from here on, so the traffic panels
    // show a rate above zero, and the tunnel keeps trying when gcp-1 dies.
    let mut sender = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &demo::pod_ns("aws-1"),
            "ping",
            "-q",
            "-i",
            "0.2",
            "-w",
            "120",
        ])
        .arg(Demo::pod_ip("gcp-1"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("ping");
    let queries = prometheus::dashboard_queries();
    let mut empty = Vec::new();
    let answered = testkit::wait_until(Duration::from_secs(20), Duration::from_secs(1), || {
        empty = queries
            .iter()
            .filter(|(_, q)| prom.query(q).is_empty())
            .map(|(t, _)| t.clone())
            .collect();
        empty.is_empty()
    });
    assert!(answered, "dashboard panels without data: {empty:?}");
    // Sent from one location to another, as the panels show it.
    let panel = |title: &str| {
        let q = &queries.iter().find(|(t, _)| t == title).expect("panel").1;
        prom.query(q)
    };
    let rate = |r: &serde_json::Value| prometheus::value(r).unwrap_or(0.0);
    let aws_to_gcp = testkit::wait_until(Duration::from_secs(20), Duration::from_secs(1), || {
        panel("Between locations").iter().any(|r| {
            r["metric"]["from"] == "aws" && r["metric"]["location"] == "gcp" && rate(r) > 0.0
        })
    });
    assert!(
        aws_to_gcp,
        "no traffic from aws to gcp: {:?}",
        panel("Between locations")
    );
    for (title, q) in &queries {
        let result = prom.query(q);
        // The series with the largest value, as a reader's eye goes to it.
        let value = |r: &serde_json::Value| prometheus::value(r).unwrap_or(f64::MIN);
        let top = result
            .iter()
            .max_by(|a, b| value(a).total_cmp(&value(b)))
            .map(|r| format!("{} = {}", r["metric"], r["value"][1]))
            .unwrap_or_default();
        eprintln!("panel {title:?}: {} series, largest {top}", result.len());
    }
    let sent = panel("Sent per peer");
    assert!(
        sent.iter()
            .any(|r| r["metric"]["peer"] == "gcp-1" && rate(r) > 0.0),
        "{sent:?}"
    );

    let quiet_when_healthy = [
        "WeftPeerUnreachable",
        "WeftAgentDown",
        "WeftLocationWithoutLeader",
        "WeftNodeNotReady",
    ];
    for (name, expr) in &alerts {
        let result = prom.query(expr);
        eprintln!("alert {name}: {} series on a healthy mesh", result.len());
        if quiet_when_healthy.contains(&name.as_str()) {
            assert!(result.is_empty(), "{name} on a healthy mesh: {result:?}");
        }
    }
    // The same mesh as `weftctl status` sees it from aws-1.
    let (ok, text) = weftctl_status(&d, false);
    eprintln!("weftctl status on a healthy mesh:\n{text}");
    assert!(ok, "weftctl status failed on a healthy mesh:\n{text}");
    let (_, json) = weftctl_status(&d, true);
    let report: serde_json::Value = serde_json::from_str(&json).expect("status JSON");
    assert_eq!(report["healthy"], true, "{json}");
    assert_eq!(report["locations"], 3);
    let nodes = report["nodes"].as_array().expect("nodes");
    assert_eq!(nodes.len(), 4);
    assert!(
        nodes
            .iter()
            .all(|n| n["agent"]["state"] == "answered" && n["agent"]["ready"] == true),
        "{json}"
    );
    let aws_1 = nodes.iter().find(|n| n["name"] == "aws-1").expect("aws-1");
    assert_eq!(aws_1["leader"], true);
    let tunnel: Vec<&str> = aws_1["tunnel"]
        .as_array()
        .expect("tunnel")
        .iter()
        .filter_map(|t| t["peer"].as_str())
        .collect();
    assert_eq!(tunnel, ["gcp-1", "home-1"], "{json}");

    let expr_of = |name: &str| {
        alerts
            .iter()
            .find(|(n, _)| n == name)
            .expect("alert")
            .1
            .clone()
    };

    // gcp's only node goes down while aws-1's pod keeps sending to its pod.
    let down_at = Instant::now();
    d.kill_node("gcp-1");
    let names_gcp = |r: &Vec<serde_json::Value>| r.iter().any(|s| s["metric"]["peer"] == "gcp-1");
    let unreachable = testkit::wait_until(Duration::from_secs(60), Duration::from_secs(1), || {
        names_gcp(&prom.query(&expr_of("WeftPeerUnreachable")))
    });
    assert!(unreachable, "WeftPeerUnreachable did not name gcp-1");
    eprintln!(
        "gcp-1 down: WeftPeerUnreachable names it after {:?}",
        down_at.elapsed()
    );
    let agent_down = prom.query(&expr_of("WeftAgentDown"));
    assert!(
        agent_down.iter().any(|s| s["metric"]["node"] == "gcp-1"),
        "WeftAgentDown: {agent_down:?}"
    );
    let mut held = Vec::new();
    let pending = testkit::wait_until(Duration::from_secs(10), Duration::from_millis(500), || {
        held = prom.alerts();
        held.iter().any(|(n, state, l)| {
            n == "WeftPeerUnreachable"
                && (state == "pending" || state == "firing")
                && l["peer"] == "gcp-1"
        })
    });
    assert!(pending, "WeftPeerUnreachable is not pending: {held:?}");

    let (ok, text) = weftctl_status(&d, false);
    eprintln!("weftctl status with gcp-1 down:\n{text}");
    assert!(!ok, "weftctl status passed with gcp-1 down:\n{text}");
    assert!(
        text.contains("problem: the agent on gcp-1 does not answer at 10.128.0.21:1107")
            && text.contains("problem: aws-1 cannot reach its tunnel peer gcp-1"),
        "{text}"
    );

    // Back up: links, agent and tunnel; both expressions clear.
    d.set_link("gcp-1", "eth0", true).expect("link up");
    d.set_link("gcp-1", "eth1", true).expect("link up");
    d.start_agent("gcp-1").expect("agent starts");
    let up_at = Instant::now();
    let cleared = testkit::wait_until(Duration::from_secs(60), Duration::from_secs(1), || {
        !names_gcp(&prom.query(&expr_of("WeftPeerUnreachable")))
            && prom.query(&expr_of("WeftAgentDown")).is_empty()
    });
    let _ = sender.kill();
    let _ = sender.wait();
    assert!(cleared, "the alerts did not clear after gcp-1 came back");
    let healed = testkit::wait_until(Duration::from_secs(20), Duration::from_secs(1), || {
        weftctl_status(&d, false).0
    });
    assert!(healed, "weftctl status: {}", weftctl_status(&d, false).1);
    eprintln!("gcp-1 back: both clear after {:?}", up_at.elapsed());
    drop(prom);
    drop(d);
}

/// `weftctl status` as an operator on aws-1 runs it (the agents answer at
/// their internal addresses, across the mesh): whether it found the mesh
/// healthy, and what it printed.
fn weftctl_status(d: &Demo, json: bool) -> (bool, String) {
    let mesh = d.paths.work.join("mesh.yaml");
    weftctl_status_from(&["--mesh", &mesh.to_string_lossy()], json)
}

/// `weftctl status` on aws-1 with the given backend flags.
fn weftctl_status_from(backend: &[&str], json: bool) -> (bool, String) {
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", &demo::node_ns("aws-1")])
        .arg(weftctl())
        .args(backend)
        .arg("status")
        .args(if json { &["-o", "json"][..] } else { &[][..] })
        .output()
        .expect("weftctl runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    // 1: problems found; 2: the mesh could not be read.
    assert!(
        out.status.code().is_some_and(|c| c <= 1),
        "weftctl status failed to run ({}): {stderr}",
        out.status
    );
    (
        out.status.success(),
        format!("{}{stderr}", String::from_utf8_lossy(&out.stdout)),
    )
}
