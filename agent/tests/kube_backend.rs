//! The Kubernetes backend against an in-memory API server (tests/fake_api):
//! mirroring Nodes and Peers, agents announcing themselves with minimal
//! merge patches until the mesh converges, Events for bad records, and API
//! failures reported as errors.

use fake_apiserver as fake_api;

use fake_api::{k3s_node, FakeApi};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime};
use weft_agent::backend::k8s::{KubeBackend, KubeSettings};
use weft_agent::backend::Loaded;
use weft_agent::backend::{Backend, BackendError, SelfReport, Waker};
use weft_agent::mesh::{MeshOptions, Topology};
use wgconf::PrivateKey;

const REGION: &str = "topology.kubernetes.io/region";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap()
}

fn backend(api: &FakeApi, rt: &tokio::runtime::Runtime, node: &str) -> Watched {
    backend_with(
        api,
        rt,
        KubeSettings::new(node, MeshOptions::default(), REGION),
    )
}

fn backend_with(api: &FakeApi, rt: &tokio::runtime::Runtime, settings: KubeSettings) -> Watched {
    let (waker, wake) = Waker::new();
    Watched {
        backend: KubeBackend::from_client(api.client(rt), settings, waker).expect("backend"),
        wake,
    }
}

/// A backend with the receiving end of its waker, as weft-agent's loop
/// holds them.
struct Watched {
    backend: KubeBackend,
    wake: std::sync::mpsc::Receiver<()>,
}

impl Watched {
    /// Whether the loop would pass now: woken by an event, or due by the
    /// backend's own clock (both asked, as the loop asks both).
    fn pending(&mut self) -> bool {
        let woken = self.wake.try_recv().is_ok();
        let due = self.backend.due();
        woken || due
    }
}

impl std::ops::Deref for Watched {
    type Target = KubeBackend;
    fn deref(&self) -> &KubeBackend {
        &self.backend
    }
}

impl std::ops::DerefMut for Watched {
    fn deref_mut(&mut self) -> &mut KubeBackend {
        &mut self.backend
    }
}

/// Polls `backend` until `done` accepts what it observes (10 s at most).
fn observe_until(backend: &mut KubeBackend, what: &str, done: impl Fn(&Loaded) -> bool) -> Loaded {
    testkit::wait_for(Duration::from_secs(10), Duration::from_millis(20), || {
        if !backend.ready() {
            return None;
        }
        let l = backend.observe().expect("observe");
        done(&l).then_some(l)
    })
    .unwrap_or_else(|| panic!("within 10 s: {what}"))
}

/// The bodies of the Events the API server received.
fn events(api: &FakeApi) -> Vec<Value> {
    api.received()
        .into_iter()
        .filter(|r| {
            r.path
                .starts_with("/apis/events.k8s.io/v1/namespaces/default/events")
        })
        .map(|r| r.body)
        .collect()
}

fn with_region(mut node: Value, region: &str) -> Value {
    node["metadata"]["labels"][REGION] = json!(region);
    node
}

fn peer(name: &str, spec: Value) -> Value {
    json!({"apiVersion": "kilo.squat.ai/v1alpha1", "kind": "Peer",
           "metadata": {"name": name, "uid": format!("uid-{name}")}, "spec": spec})
}

#[test]
fn mirrors_nodes_and_peers_and_leaves_out_bad_records() {
    let api = FakeApi::new();
    let key_a = PrivateKey::generate().unwrap().public_key().to_base64();
    let key_b = PrivateKey::generate().unwrap().public_key().to_base64();
    let mut a = with_region(k3s_node("a", "10.42.0.0/24"), "eu-west-1");
    a["metadata"]["annotations"]["kilo.squat.ai/key"] = json!(key_a);
    a["metadata"]["annotations"]["kilo.squat.ai/endpoint"] = json!("3.0.0.1:51820");
    a["metadata"]["annotations"]["kilo.squat.ai/last-seen"] = json!(now().to_string());
    api.put("nodes", a);
    let mut broken = k3s_node("broken", "10.42.9.0/24");
    broken["metadata"]["annotations"]["kilo.squat.ai/endpoint"] = json!("no port here");
    api.put("nodes", broken);
    api.put(
        "peers",
        peer(
            "laptop",
            json!({"allowedIPs": ["10.5.0.1/32"], "publicKey": key_b, "persistentKeepalive": 10}),
        ),
    );
    api.put(
        "peers",
        peer(
            "bad",
            json!({"allowedIPs": ["not-a-cidr"], "publicKey": key_b}),
        ),
    );
    let rt = runtime();
    let mut b = backend(&api, &rt, "a");
    let l = observe_until(&mut b, "the lists", |l| l.snapshot.nodes.len() == 1);
    assert_eq!(l.snapshot.nodes[0].name, "a");
    assert_eq!(
        l.snapshot.nodes[0].location, "eu-west-1",
        "from the topology label"
    );
    assert_eq!(l.snapshot.peers.len(), 1);
    assert_eq!(l.snapshot.peers[0].name, "laptop");
    let rejected: Vec<String> = l.rejected.iter().map(ToString::to_string).collect();
    assert!(
        rejected
            .iter()
            .any(|r| r.contains("broken") && r.contains("endpoint")),
        "{rejected:?}"
    );
    assert!(
        rejected
            .iter()
            .any(|r| r.contains("bad") && r.contains("allowedIPs")),
        "{rejected:?}"
    );

    // A node joins (watch ADDED), then is deleted (watch DELETED).
    api.put("nodes", k3s_node("c", "10.42.2.0/24"));
    observe_until(&mut b, "node c added", |l| {
        l.snapshot.nodes.iter().any(|n| n.name == "c")
    });
    api.delete("nodes", "c");
    observe_until(&mut b, "node c deleted", |l| {
        l.snapshot.nodes.iter().all(|n| n.name != "c")
    });
}

struct Agent {
    name: String,
    key: PrivateKey,
    backend: Watched,
    topology: Option<Topology>,
}

impl Agent {
    /// One agent pass as weft-agent does it, when the mirror is complete and
    /// something changed: observe, compute, announce.
    fn pass(&mut self, index: u8) {
        if self.backend.ready() && self.backend.pending() {
            self.pass_now(index);
        }
    }

    /// The pass itself; `index` makes this node's addresses.
    fn pass_now(&mut self, index: u8) {
        let loaded = self.backend.observe().expect("observe");
        let clock = self.backend.liveness(now());
        let t = Topology::new(&loaded.snapshot, &loaded.options, clock).expect("topology");
        let desired = t.desired_state(&self.name);
        let report = SelfReport {
            public_key: self.key.public_key(),
            endpoint: format!("203.0.113.{index}:51820"),
            internal_ip: Some(format!("10.0.{}.{index}/24", index / 3).parse().unwrap()),
            internal_ip6: None,
            wireguard_ip: desired
                .as_ref()
                .filter(|d| d.is_leader)
                .and_then(|d| d.wireguard.as_ref())
                .map(|w| w.address),
            granularity: t.options.granularity,
            discovered_endpoints: BTreeMap::new(),
            unreachable: None,
        };
        match self.backend.publish(&report) {
            Ok(()) | Err(BackendError::Unavailable) => {}
            Err(e) => panic!("publish: {e}"),
        }
        self.topology = Some(t);
    }
}

fn leaders(t: &Topology) -> Vec<(String, String)> {
    t.segments
        .iter()
        .map(|s| (s.location.clone(), s.nodes[s.leader].name.clone()))
        .collect()
}

#[test]
fn agents_announce_themselves_and_converge() {
    let api = FakeApi::new();
    // Three fresh k3s nodes in two regions; one also names its location
    // with Kilo's annotation, which wins over the label.
    api.put(
        "nodes",
        with_region(k3s_node("aws-1", "10.42.0.0/24"), "aws"),
    );
    api.put(
        "nodes",
        with_region(k3s_node("aws-2", "10.42.1.0/24"), "aws"),
    );
    let mut gcp = with_region(k3s_node("gcp-1", "10.42.2.0/24"), "us-central1");
    gcp["metadata"]["annotations"]["kilo.squat.ai/location"] = json!("gcp");
    api.put("nodes", gcp);
    let rt = runtime();
    let mut agents: Vec<Agent> = ["aws-1", "aws-2", "gcp-1"]
        .iter()
        .map(|n| Agent {
            name: n.to_string(),
            key: PrivateKey::generate().unwrap(),
            backend: backend(&api, &rt, n),
            topology: None,
        })
        .collect();

    let converged = testkit::wait_until(Duration::from_secs(10), Duration::from_millis(20), || {
        for (i, a) in agents.iter_mut().enumerate() {
            a.pass(i as u8 + 1);
        }
        agents.iter().all(|a| {
            a.topology.as_ref().is_some_and(|t| {
                t.segments.iter().map(|s| s.nodes.len()).sum::<usize>() == 3
                    && t.desired_state(&a.name).is_some()
            })
        }) && ["aws-1", "gcp-1"].iter().all(|n| {
            api.get("nodes", n).unwrap()["metadata"]["annotations"]["kilo.squat.ai/wireguard-ip"]
                .as_str()
                .is_some_and(|s| !s.is_empty())
        })
    });
    assert!(converged, "the mesh did not converge within 10 s");

    // Every agent computed the same mesh.
    let first = leaders(agents[0].topology.as_ref().unwrap());
    assert_eq!(
        first,
        [
            ("aws".to_string(), "aws-1".to_string()),
            ("gcp".into(), "gcp-1".into())
        ]
    );
    for a in &agents {
        assert_eq!(leaders(a.topology.as_ref().unwrap()), first, "{}", a.name);
    }

    // What is in the API is what Kilo writes, in Kilo's formats.
    let ann = |n: &str| api.get("nodes", n).unwrap()["metadata"]["annotations"].clone();
    let aws1 = ann("aws-1");
    assert_eq!(
        aws1["kilo.squat.ai/key"],
        json!(agents[0].key.public_key().to_base64())
    );
    assert_eq!(aws1["kilo.squat.ai/endpoint"], "203.0.113.1:51820");
    assert_eq!(aws1["kilo.squat.ai/internal-ip"], "10.0.0.1/24");
    assert_eq!(aws1["kilo.squat.ai/granularity"], "location");
    assert_eq!(aws1["kilo.squat.ai/discovered-endpoints"], "");
    assert!(aws1["kilo.squat.ai/wireguard-ip"]
        .as_str()
        .unwrap()
        .ends_with("/16"));
    let last_seen: u64 = aws1["kilo.squat.ai/last-seen"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        now().abs_diff(last_seen) < 15,
        "last-seen is a recent unix time"
    );
    assert_eq!(
        ann("aws-2")["kilo.squat.ai/wireguard-ip"],
        "",
        "not a leader"
    );
    // k3s's own annotations are untouched.
    assert_eq!(aws1["k3s.io/hostname"], "aws-1");

    // The patches: JSON merge patches of kilo.squat.ai annotations only.
    let patches: Vec<_> = api
        .received()
        .into_iter()
        .filter(|r| r.method == http::Method::PATCH)
        .collect();
    assert!(!patches.is_empty());
    for p in &patches {
        assert_eq!(p.content_type, "application/merge-patch+json");
        let keys: Vec<&String> = p.body["metadata"]["annotations"]
            .as_object()
            .expect("only annotations")
            .keys()
            .collect();
        assert!(
            keys.iter().all(|k| k.starts_with("kilo.squat.ai/")),
            "{keys:?}"
        );
        assert_eq!(p.body.as_object().unwrap().len(), 1, "{}", p.body);
    }
    // The first patch of each node announces it completely...
    let first_of_aws2 = patches.iter().find(|p| p.path.ends_with("/aws-2")).unwrap();
    assert_eq!(
        first_of_aws2.body["metadata"]["annotations"]
            .as_object()
            .unwrap()
            .len(),
        7
    );
    // ...and later ones carry only what changed: the leader's WireGuard IP.
    let later_of_aws1: Vec<_> = patches
        .iter()
        .filter(|p| p.path.ends_with("/aws-1"))
        .skip(1)
        .collect();
    assert!(!later_of_aws1.is_empty());
    for p in later_of_aws1 {
        assert!(
            p.body["metadata"]["annotations"].as_object().unwrap().len() < 7,
            "{}",
            p.body
        );
    }

    // Nothing left to say: another round patches nothing (the check-in is
    // not due for 30 s).
    let before = api
        .received()
        .iter()
        .filter(|r| r.method == http::Method::PATCH)
        .count();
    for (i, a) in agents.iter_mut().enumerate() {
        a.pass_now(i as u8 + 1);
        let t = a.topology.as_ref().unwrap();
        assert!(t.desired_state(&a.name).is_some(), "{} in the mesh", a.name);
    }
    let after = api
        .received()
        .iter()
        .filter(|r| r.method == http::Method::PATCH)
        .count();
    assert_eq!(before, after, "a steady mesh writes nothing");
}

#[test]
fn bad_records_become_events_on_the_object() {
    let api = FakeApi::new();
    let mut a = k3s_node("a", "10.42.0.0/24");
    a["metadata"]["annotations"]["kilo.squat.ai/persistent-keepalive"] = json!("soon");
    api.put("nodes", a);
    api.put("nodes", k3s_node("b", "10.42.1.0/24"));
    let key = PrivateKey::generate().unwrap().public_key().to_base64();
    api.put(
        "peers",
        peer(
            "bad",
            json!({"allowedIPs": ["10.5.0.0/33"], "publicKey": key}),
        ),
    );
    let rt = runtime();
    // Node b's agent reports nothing: not its node, and the name-wise first
    // node's agent reports Peers.
    let mut b = backend(&api, &rt, "b");
    let l = observe_until(&mut b, "lists", |l| l.snapshot.nodes.len() == 2);
    let problems: Vec<_> = l.rejected.iter().chain(&l.warnings).cloned().collect();
    assert_eq!(problems.len(), 2, "{problems:?}");
    b.report_problems(&problems);
    assert!(events(&api).is_empty(), "{:?}", events(&api));

    let mut a = backend(&api, &rt, "a");
    observe_until(&mut a, "lists", |l| l.snapshot.nodes.len() == 2);
    a.report_problems(&problems);
    let ev = events(&api);
    assert_eq!(ev.len(), 2, "{ev:?}");
    let on_node = ev
        .iter()
        .find(|e| e["regarding"]["kind"] == "Node")
        .unwrap();
    assert_eq!(on_node["regarding"]["name"], "a");
    assert_eq!(on_node["type"], "Warning");
    assert_eq!(on_node["reason"], "InvalidAnnotation");
    assert_eq!(on_node["reportingController"], "weft-agent");
    let note = on_node["note"].as_str().unwrap();
    assert!(
        note.contains("kilo.squat.ai/persistent-keepalive") && note.contains("node a"),
        "{note}"
    );
    let on_peer = ev
        .iter()
        .find(|e| e["regarding"]["kind"] == "Peer")
        .unwrap();
    assert_eq!(on_peer["regarding"]["name"], "bad");
    assert_eq!(on_peer["regarding"]["apiVersion"], "kilo.squat.ai/v1alpha1");
    assert_eq!(on_peer["reason"], "InvalidPeer");
    assert!(on_peer["note"].as_str().unwrap().contains("allowedIPs"));
}

#[test]
fn api_failures_are_reported_not_fatal() {
    let api = FakeApi::new();
    api.put("nodes", k3s_node("a", "10.42.0.0/24"));
    let rt = runtime();
    let mut b = backend(&api, &rt, "a");
    observe_until(&mut b, "lists", |l| l.snapshot.nodes.len() == 1);
    let report = SelfReport {
        public_key: PrivateKey::generate().unwrap().public_key(),
        endpoint: "203.0.113.1:51820".into(),
        internal_ip: None,
        internal_ip6: None,
        wireguard_ip: None,
        granularity: Default::default(),
        discovered_endpoints: BTreeMap::new(),
        unreachable: None,
    };
    api.fail_patches(Some(403));
    let e = b.publish(&report).unwrap_err().to_string();
    assert!(
        e.contains("patching node a") && e.contains("injected failure"),
        "{e}"
    );
    // The mirror still answers with the last state.
    assert_eq!(b.observe().unwrap().snapshot.nodes.len(), 1);
    api.fail_patches(None);
    // The next try waits out the back-off, then goes through.
    assert!(
        testkit::wait_until(Duration::from_secs(3), Duration::from_millis(50), || b
            .publish(&report)
            .is_ok()),
        "publishing works again once the API does"
    );

    // An API server that takes the request and never answers holds the
    // agent loop for the call's timeout, not for good.
    api.hang_patches(true);
    let report = SelfReport {
        endpoint: "203.0.113.2:51820".into(),
        ..report
    };
    let t = Instant::now();
    let e = b.publish(&report).unwrap_err();
    assert!(matches!(e, BackendError::Unavailable), "{e}");
    assert!(t.elapsed() < Duration::from_secs(8), "{:?}", t.elapsed());
    api.hang_patches(false);

    // A name that is not a Node is a clear error.
    let mut stranger = backend(&api, &rt, "not-a-node");
    observe_until(&mut stranger, "lists", |l| l.snapshot.nodes.len() == 1);
    let e = stranger.publish(&report).unwrap_err().to_string();
    assert!(e.contains("not-a-node") && e.contains("NODE_NAME"), "{e}");
}

fn agent(api: &FakeApi, rt: &tokio::runtime::Runtime, name: &str) -> Agent {
    Agent {
        name: name.to_string(),
        key: PrivateKey::generate().unwrap(),
        backend: backend(api, rt, name),
        topology: None,
    }
}

/// A node that checked in at `last_seen`, with a key and an endpoint.
fn announced(name: &str, pod: &str, region: &str, last_seen: u64) -> Value {
    let mut n = with_region(k3s_node(name, pod), region);
    let a = &mut n["metadata"]["annotations"];
    a["kilo.squat.ai/key"] = json!(PrivateKey::generate().unwrap().public_key().to_base64());
    a["kilo.squat.ai/endpoint"] = json!("203.0.113.99:51820");
    a["kilo.squat.ai/last-seen"] = json!(last_seen.to_string());
    n
}

/// Runs `a` as weft-agent's loop does (a pass whenever the backend says
/// something changed) for `how_long`; returns the number of passes.
fn run_for(a: &mut Agent, index: u8, how_long: Duration) -> usize {
    let end = Instant::now() + how_long;
    let mut passes = 0;
    while Instant::now() < end {
        if a.backend.ready() && a.backend.pending() {
            a.pass_now(index);
            passes += 1;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    passes
}

fn check_ins(api: &FakeApi, node: &str) -> usize {
    api.received()
        .iter()
        .filter(|r| r.method == http::Method::PATCH && r.path.ends_with(node))
        .filter(|r| !r.body["metadata"]["annotations"]["kilo.squat.ai/last-seen"].is_null())
        .count()
}

#[test]
fn an_api_outage_costs_nothing_and_ends_with_a_check_in() {
    let api = FakeApi::new();
    api.put("nodes", with_region(k3s_node("a", "10.42.0.0/24"), "aws"));
    api.put("nodes", announced("b", "10.42.1.0/24", "gcp", now()));
    let rt = runtime();
    // Check-ins every second, so they fall due (and fail) during the outage.
    let mut settings = KubeSettings::new("a", MeshOptions::default(), REGION);
    settings.check_in_period = Duration::from_secs(1);
    let mut a = Agent {
        name: "a".into(),
        key: PrivateKey::generate().unwrap(),
        backend: backend_with(&api, &rt, settings),
        topology: None,
    };
    // The mirror reads events in batches (at most 250 ms late).
    run_for(&mut a, 1, Duration::from_millis(1500));
    assert!(check_ins(&api, "/a") >= 1, "checked in");
    let t = a.topology.as_ref().expect("a pass ran");
    assert_eq!(t.segments.len(), 2, "{:?}", t.excluded);

    api.set_reachable(false);
    let before = api.attempts();
    let passes = run_for(&mut a, 1, Duration::from_secs(4));
    let attempts = api.attempts() - before;
    eprintln!("during a 4 s outage: {passes} passes, {attempts} requests tried");
    // No storm: the check-in falls due and fails, and is tried again on
    // back-off (0.5, 1, 2 s...), as are the watches; the probe goes once a
    // second. Each try is one pass of the loop at most.
    assert!(passes <= 6, "{passes} passes during a 4 s outage");
    assert!(attempts <= 24, "{attempts} requests in a 4 s outage");
    // Both nodes stay in the mesh whatever the outage's length: the clock
    // of check-in ages stands still while the API is away.
    let clock = a.backend.liveness(now() + 600);
    assert!(
        !clock.is_stale(now()),
        "time away from the API does not count"
    );

    api.set_reachable(true);
    let back = Instant::now();
    let before = check_ins(&api, "/a");
    while check_ins(&api, "/a") == before {
        assert!(
            back.elapsed() < Duration::from_secs(2),
            "no check-in within 2 s of the API's return"
        );
        run_for(&mut a, 1, Duration::from_millis(20));
    }
    eprintln!("checked in {:?} after the API returned", back.elapsed());
    let t = a.topology.as_ref().unwrap();
    assert_eq!(
        t.segments.len(),
        2,
        "nobody left the mesh: {:?}",
        t.excluded
    );
}

#[test]
fn check_ins_of_other_nodes_wake_nothing() {
    let api = FakeApi::new();
    api.put("nodes", with_region(k3s_node("a", "10.42.0.0/24"), "aws"));
    // b's last check-in is 56 s old: it expires in 4 s unless it checks in.
    api.put("nodes", announced("b", "10.42.1.0/24", "gcp", now() - 56));
    let rt = runtime();
    let mut a = agent(&api, &rt, "a");
    // The mirror reads events in batches (at most 250 ms late).
    run_for(&mut a, 1, Duration::from_millis(1500));
    assert_eq!(a.topology.as_ref().unwrap().segments.len(), 2);
    assert!(!a.backend.pending(), "settled");

    // b checks in: only last-seen changes.
    for _ in 0..5 {
        api.patch(
            "nodes",
            "b",
            &json!({"metadata": {"annotations": {"kilo.squat.ai/last-seen": now().to_string()}}}),
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Not even when its old check-in would have expired.
    assert_eq!(
        run_for(&mut a, 1, Duration::from_millis(5000)),
        0,
        "check-ins cost no pass"
    );

    // A change the mesh reads wakes the agent.
    api.patch(
        "nodes",
        "b",
        &json!({"metadata": {"annotations": {"kilo.squat.ai/location": "azure"}}}),
    );
    assert_eq!(run_for(&mut a, 1, Duration::from_millis(1000)), 1);
    assert_eq!(a.topology.as_ref().unwrap().segments[1].location, "azure");

    // A node that stops checking in is left out when its check-in turns
    // 60 s old, though no event says so. (Its clock set back 57 s: it
    // expires in 3 s.)
    api.patch(
        "nodes",
        "b",
        &json!({"metadata": {"annotations": {"kilo.squat.ai/last-seen": (now() - 57).to_string()}}}),
    );
    let passes = run_for(&mut a, 1, Duration::from_millis(4500));
    assert!((1..=2).contains(&passes), "{passes} passes");
    let t = a.topology.as_ref().unwrap();
    assert!(
        t.excluded
            .iter()
            .any(|e| e.name == "b" && e.reason.contains("stale")),
        "{:?}",
        t.excluded
    );
    // And its next check-in brings it back at once.
    api.patch(
        "nodes",
        "b",
        &json!({"metadata": {"annotations": {"kilo.squat.ai/last-seen": now().to_string()}}}),
    );
    assert_eq!(run_for(&mut a, 1, Duration::from_millis(1000)), 1);
    assert_eq!(a.topology.as_ref().unwrap().segments.len(), 2);
}

#[test]
fn events_wait_for_the_api_and_every_problem_gets_its_own() {
    let api = FakeApi::new();
    let mut n = k3s_node("a", "10.42.0.0/24");
    n["metadata"]["annotations"]["kilo.squat.ai/persistent-keepalive"] = json!("soon");
    n["metadata"]["annotations"]["kilo.squat.ai/allowed-location-ips"] = json!("192.168.9.1");
    api.put("nodes", n);
    let rt = runtime();
    let mut a = agent(&api, &rt, "a");
    let l = observe_until(&mut a.backend, "lists", |l| l.snapshot.nodes.len() == 1);
    let problems: Vec<_> = l.rejected.iter().chain(&l.warnings).cloned().collect();
    assert_eq!(problems.len(), 2, "{problems:?}");
    a.backend.report_problems(&problems);
    let notes = |api: &FakeApi| -> Vec<String> {
        let mut v: Vec<String> = api
            .list("events")
            .iter()
            .filter_map(|e| e["note"].as_str().map(str::to_string))
            .collect();
        v.sort();
        v
    };
    let got = notes(&api);
    assert_eq!(got.len(), 2, "{got:?}");
    assert!(
        got[0].contains("allowed-location-ips") && got[1].contains("persistent-keepalive"),
        "{got:?}"
    );

    // A third problem seen while the API is away is recorded once it is back.
    api.set_reachable(false);
    let mut more = problems.clone();
    more.push(weft_agent::mesh::RecordError {
        kind: "node",
        name: "a".into(),
        field: "kilo.squat.ai/force-endpoint".into(),
        reason: "not HOST:PORT".into(),
    });
    a.backend.report_problems(&more);
    assert_eq!(notes(&api).len(), 2);
    std::thread::sleep(Duration::from_millis(700));
    api.set_reachable(true);
    let back = Instant::now();
    while notes(&api).len() < 3 {
        assert!(
            back.elapsed() < Duration::from_secs(3),
            "the waiting Event was not recorded"
        );
        run_for(&mut a, 1, Duration::from_millis(50));
    }
    // Problems already recorded are not recorded again.
    a.backend.report_problems(&more);
    run_for(&mut a, 1, Duration::from_millis(300));
    assert_eq!(notes(&api).len(), 3);
}

/// One person's typo in a node's `force-endpoint` keeps the node (and its
/// location) in the mesh at its announced endpoint, with an Event naming the
/// annotation; a Peer claiming this cluster's leaders' WireGuard IPs gets
/// those prefixes dropped and an Event naming the owner.
#[test]
fn a_typo_or_a_claim_never_takes_a_node_out_of_the_mesh() {
    let api = FakeApi::new();
    let t = now();
    let mut gcp = announced("gcp-1", "10.42.0.0/24", "gcp", t);
    gcp["metadata"]["annotations"]["kilo.squat.ai/force-endpoint"] = json!("not an endpoint");
    api.put("nodes", gcp);
    api.put("nodes", announced("aws-1", "10.42.1.0/24", "aws", t));
    let key = PrivateKey::generate().unwrap().public_key().to_base64();
    api.put(
        "peers",
        peer(
            "cluster-b",
            json!({"allowedIPs": ["10.4.0.1/32", "10.4.0.2/32", "10.52.0.0/16"], "publicKey": key}),
        ),
    );
    let rt = runtime();
    // aws-1's view: gcp-1 is in the mesh at its announced endpoint.
    let mut aws = backend(&api, &rt, "aws-1");
    let l = observe_until(&mut aws, "lists", |l| {
        l.snapshot.nodes.len() == 2 && !l.snapshot.peers.is_empty()
    });
    assert!(l.rejected.is_empty(), "{:?}", l.rejected);
    let gcp = l
        .snapshot
        .nodes
        .iter()
        .find(|n| n.name == "gcp-1")
        .expect("gcp-1 kept");
    assert_eq!(
        gcp.endpoint.as_ref().map(|e| e.to_string()).as_deref(),
        Some("203.0.113.99:51820")
    );
    let topology = Topology::new(&l.snapshot, &l.options, t).expect("topology");
    assert_eq!(topology.segments.len(), 2, "both locations: {topology:?}");
    let peer_ips: Vec<String> = topology.peers[0]
        .allowed_ips
        .iter()
        .map(|c| c.to_string())
        .collect();
    assert_eq!(peer_ips, ["10.52.0.0/16"]);

    // gcp-1's agent reports its own node's problem; the name-wise first
    // node's agent (aws-1) reports the Peer's.
    let problems: Vec<_> = l.warnings.iter().chain(&topology.claims).cloned().collect();
    aws.report_problems(&problems);
    let mut own = backend(&api, &rt, "gcp-1");
    observe_until(&mut own, "lists", |l| l.snapshot.nodes.len() == 2);
    own.report_problems(&problems);
    let ev = events(&api);
    let notes: Vec<(String, String)> = ev
        .iter()
        .map(|e| {
            (
                e["regarding"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                e["note"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    assert!(
        notes.iter().any(|(on, note)| on == "gcp-1"
            && note.contains("kilo.squat.ai/force-endpoint")
            && note.contains("using the announced endpoint")),
        "{notes:?}"
    );
    for leader in ["aws-1", "gcp-1"] {
        assert!(
            notes.iter().any(|(on, note)| on == "cluster-b"
                && note.contains(&format!("the WireGuard IP of node {leader}"))),
            "{notes:?}"
        );
    }
}
