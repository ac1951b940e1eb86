use super::*;
use crate::mesh::testing::{key_for, node, peer, snapshot, two_locations};
use crate::mesh::{MeshOptions, RecordError};

const NOW: u64 = 1_800_000_000;

fn mesh() -> (Loaded, Topology) {
    let mut nodes = two_locations();
    nodes.push(node(
        "old-1",
        "gcp",
        "203.0.113.22:51820",
        None,
        "10.42.5.0/24",
        false,
    ));
    for n in &mut nodes {
        n.last_seen = Some(NOW - 12);
    }
    // A node whose agent stopped checking in long ago.
    nodes[3].last_seen = Some(NOW - 86_400);
    let loaded = Loaded {
        options: MeshOptions::default(),
        snapshot: snapshot(nodes, vec![peer("laptop", &["10.5.0.1/32"])]),
        rejected: vec![RecordError {
            kind: "peer",
            name: "broken".into(),
            field: "publicKey".into(),
            reason: "not a WireGuard key".into(),
        }],
        warnings: Vec::new(),
        announced: Default::default(),
    };
    let topology = Topology::new(&loaded.snapshot, &loaded.options, NOW).expect("topology");
    (loaded, topology)
}

fn answered(ready: bool, failed: &[&str]) -> Agent {
    Agent::Answered {
        address: "x".into(),
        ready,
        failed: failed.iter().map(|s| s.to_string()).collect(),
    }
}

fn healthy_probes() -> BTreeMap<String, Probe> {
    ["aws-1", "aws-2", "gcp-1"]
        .into_iter()
        .map(|n| {
            let probe = Probe {
                agent: answered(true, &[]),
                tunnel: vec![TunnelPeer {
                    peer: "gcp-1".into(),
                    location: "gcp".into(),
                    handshake_age_seconds: Some(42.0),
                    reachable: Some(true),
                }],
            };
            (n.to_string(), probe)
        })
        .collect()
}

#[test]
fn a_record_left_out_is_a_problem_with_its_reason() {
    let (loaded, topology) = mesh();
    let r = Report::new(&loaded, &topology, &healthy_probes(), NOW);
    assert!(!r.healthy);
    assert_eq!(r.nodes.len(), 3, "the stale node is not a member");
    assert_eq!(r.locations, 2);
    assert_eq!(r.peers, vec!["laptop"]);
    let problems = r.problems.join("\n");
    assert!(problems.contains("node old-1 is left out"), "{problems}");
    assert!(
        problems.contains("peer broken is left out: publicKey: not a WireGuard key"),
        "{problems}"
    );
    assert_eq!(r.verdict, "2 problems");
}

#[test]
fn a_healthy_mesh_says_so_and_shows_each_node() {
    let (mut loaded, _) = mesh();
    loaded.snapshot.nodes.pop();
    loaded.rejected.clear();
    let topology = Topology::new(&loaded.snapshot, &loaded.options, NOW).expect("topology");
    let r = Report::new(&loaded, &topology, &healthy_probes(), NOW);
    assert!(r.healthy, "{:?}", r.problems);
    assert_eq!(
        r.verdict,
        "healthy: every agent ready, every tunnel peer answering"
    );
    let aws: Vec<_> = r.nodes.iter().filter(|n| n.location == "aws").collect();
    assert_eq!(
        aws.iter().filter(|n| n.leader).count(),
        1,
        "one leader per location"
    );
    assert!(r.nodes.iter().all(|n| n.check_in_age_seconds == Some(12)));
    let text = r.text();
    assert!(
        text.starts_with("3 nodes in 2 locations, 1 peers\n"),
        "{text}"
    );
    assert!(text.contains("gcp-1 42s"), "{text}");
    assert!(text.contains("12s"), "{text}");
    assert!(text.trim_end().ends_with(&r.verdict), "{text}");
    // Without asking the agents, health is only what the records say.
    let r = Report::new(&loaded, &topology, &BTreeMap::new(), NOW);
    assert!(r.healthy);
    assert_eq!(r.verdict, "healthy as far as seen: 0 of 3 agents asked");
}

#[test]
fn silent_unready_agents_and_unreachable_peers_are_problems() {
    let (mut loaded, _) = mesh();
    loaded.snapshot.nodes.pop();
    loaded.rejected.clear();
    let topology = Topology::new(&loaded.snapshot, &loaded.options, NOW).expect("topology");
    let mut probes = healthy_probes();
    probes.insert(
        "gcp-1".into(),
        Probe {
            agent: Agent::Unreachable {
                address: "10.128.0.21:1107".into(),
                error: "connection refused".into(),
            },
            tunnel: vec![],
        },
    );
    probes.insert(
        "aws-2".into(),
        Probe {
            agent: answered(false, &["cni failed: cannot write"]),
            tunnel: vec![],
        },
    );
    probes.get_mut("aws-1").expect("aws-1").tunnel[0].reachable = Some(false);
    let r = Report::new(&loaded, &topology, &probes, NOW);
    assert!(!r.healthy);
    assert_eq!(
        r.problems,
        vec![
            "aws-1 cannot reach its tunnel peer gcp-1",
            "aws-2 is not ready: cni failed: cannot write",
            "the agent on gcp-1 does not answer at 10.128.0.21:1107: connection refused",
        ]
    );
    let text = r.text();
    assert!(text.contains("gcp-1 UNREACHABLE (42s)"), "{text}");
    assert!(text.contains("NOT READY"), "{text}");
    assert!(text.contains("no answer"), "{text}");
    // The JSON a script reads.
    let json = serde_json::to_value(&r).expect("json");
    assert_eq!(json["healthy"], false);
    assert_eq!(json["nodes"][2]["agent"]["state"], "unreachable");
    assert_eq!(json["nodes"][0]["tunnel"][0]["reachable"], false);
}

#[test]
fn agents_are_asked_at_their_internal_address() {
    let (_, topology) = mesh();
    let addrs = agent_addresses(&topology, 1107);
    assert!(addrs.contains(&("gcp-1".into(), "10.128.0.21:1107".parse().unwrap())));
    assert_eq!(addrs.len(), 3);
}

#[test]
fn tunnel_peers_come_from_the_metrics_text() {
    let k = key_for("x").to_base64();
    let text = format!(
        "# TYPE weft_peer_reachable gauge\n\
         weft_peer_reachable{{public_key=\"{k}\",peer=\"gcp-1\",location=\"gcp\"}} 0\n\
         weft_peer_last_handshake_age_seconds{{public_key=\"{k}\",peer=\"gcp-1\",location=\"gcp\"}} 7.5\n\
         weft_peer_reachable{{public_key=\"unnamed=\"}} 1\n\
         weft_nodes 3\n\
         garbage{{ 1\n"
    );
    let peers = tunnel_peers(&text);
    assert_eq!(
        peers,
        vec![
            TunnelPeer {
                peer: "gcp-1".into(),
                location: "gcp".into(),
                handshake_age_seconds: Some(7.5),
                reachable: Some(false),
            },
            TunnelPeer {
                peer: "unnamed=".into(),
                location: String::new(),
                handshake_age_seconds: None,
                reachable: Some(true),
            },
        ]
    );
}

#[test]
fn a_probe_of_a_closed_port_says_why() {
    // A port on loopback nothing listens on: bound, then released.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port");
    let p = probe(addr, Duration::from_millis(500));
    match p.agent {
        Agent::Unreachable { address, error } => {
            assert_eq!(address, addr.to_string());
            assert!(!error.is_empty());
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn ages_read_as_people_read_them() {
    assert_eq!(age(0.4), "0s");
    assert_eq!(age(119.0), "119s");
    assert_eq!(age(185.0), "3m5s");
    assert_eq!(age(7500.0), "2h5m");
}

#[test]
fn a_probe_reads_what_the_agents_http_endpoint_serves() {
    use crate::metrics::{Metrics, PeerIdentity, PeerStat};
    use crate::status::{Status, CHECKS};
    use std::sync::Arc;
    let metrics = Metrics::new();
    metrics.set_peer_identities(BTreeMap::from([(
        "k=".to_string(),
        PeerIdentity {
            name: "gcp-1".into(),
            location: "gcp".into(),
        },
    )]));
    metrics.set_peers(vec![PeerStat {
        public_key: "k=".into(),
        rx_bytes: 1,
        tx_bytes: 2,
        handshake_age: Some(9.0),
        latest_handshake: Some(1.0),
        allowed_ips: "10.4.0.2/32".into(),
        reachable: Some(false),
    }]);
    let status = Arc::new(Status::default());
    for c in CHECKS {
        status.set(c, Ok(()));
    }
    status.set("cni", Err("cannot write /etc/cni/net.d".into()));
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port");
    crate::http::serve(addr, metrics, status.clone()).expect("serve");
    let mut p = probe(addr, Duration::from_secs(2));
    let end = std::time::Instant::now() + Duration::from_secs(5);
    while matches!(p.agent, Agent::Unreachable { .. }) && std::time::Instant::now() < end {
        std::thread::sleep(Duration::from_millis(20));
        p = probe(addr, Duration::from_secs(2));
    }
    assert_eq!(
        p.agent,
        Agent::Answered {
            address: addr.to_string(),
            ready: false,
            failed: vec!["cni failed: cannot write /etc/cni/net.d".into()],
        }
    );
    assert_eq!(
        p.tunnel,
        vec![TunnelPeer {
            peer: "gcp-1".into(),
            location: "gcp".into(),
            handshake_age_seconds: Some(9.0),
            reachable: Some(false),
        }]
    );
    status.set("cni", Ok(()));
    let p = probe(addr, Duration::from_secs(2));
    assert!(
        matches!(p.agent, Agent::Answered { ready: true, .. }),
        "{p:?}"
    );
}
