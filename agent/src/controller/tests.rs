//! The loop in memory: a scripted backend and a recording node network,
//! so that the order of a pass, its error policy and its wake-ups are
//! tested without root, sockets or a clock of their own.

use super::announce::{AddressSource, Announcer};
use super::*;
use crate::backend::{BackendError, Loaded, SelfReport, Waker};
use crate::discover::Discovered;
use crate::mesh::testing::{key_for, node, snapshot};
use crate::mesh::{MeshOptions, Snapshot};
use crate::mtu::Underlay;
use crate::probe::SegmentWatch;
use std::sync::Mutex;

/// What the fakes saw, in order.
#[derive(Default)]
struct Journal {
    steps: Vec<String>,
    /// The far ends the underlay was last measured towards.
    measured_towards: Vec<Endpoint>,
    published: Vec<SelfReport>,
    applied: Vec<DesiredState>,
    problems: Vec<Vec<RecordError>>,
}

type Shared = Arc<Mutex<Journal>>;

fn journal(j: &Shared) -> std::sync::MutexGuard<'_, Journal> {
    j.lock().unwrap()
}

struct ScriptedBackend {
    journal: Shared,
    rejected: Arc<Mutex<Vec<RecordError>>>,
    snapshot: Arc<Mutex<Result<Snapshot, String>>>,
    ready: Arc<AtomicBool>,
}

impl Backend for ScriptedBackend {
    fn due(&mut self) -> bool {
        false
    }
    fn observe(&mut self) -> Result<Loaded, BackendError> {
        journal(&self.journal).steps.push("observe".into());
        let snapshot = self
            .snapshot
            .lock()
            .unwrap()
            .clone()
            .map_err(BackendError::Api)?;
        Ok(Loaded {
            options: MeshOptions::default(),
            snapshot,
            rejected: self.rejected.lock().unwrap().clone(),
            warnings: Vec::new(),
            announced: Default::default(),
        })
    }
    fn describe(&self) -> String {
        "a script".into()
    }
    fn publish(&mut self, report: &SelfReport) -> Result<(), BackendError> {
        let mut j = journal(&self.journal);
        j.steps.push("publish".into());
        j.published.push(report.clone());
        Ok(())
    }
    fn report_problems(&mut self, problems: &[RecordError]) {
        journal(&self.journal).problems.push(problems.to_vec());
    }
    fn ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }
}

struct RecordingNetwork {
    journal: Shared,
    /// The next applies fail with this.
    failing: Arc<Mutex<Option<String>>>,
    /// What measuring the underlay finds.
    underlay: Arc<Mutex<Vec<Underlay>>>,
}

impl NodeNetwork for RecordingNetwork {
    fn public_key(&self) -> PublicKey {
        key_for("a")
    }
    fn ensure_forwarding(&mut self, _: &[Family]) -> Result<Vec<Family>, String> {
        Ok(Vec::new())
    }
    fn apply(&mut self, desired: &DesiredState) -> Result<Changes, ReconcileError> {
        let mut j = journal(&self.journal);
        j.steps.push("apply".into());
        if let Some(why) = self.failing.lock().unwrap().clone() {
            return Err(ReconcileError::Other(why));
        }
        j.applied.push(desired.clone());
        Ok(Changes::default())
    }
    fn cni_status(&self, _: &DesiredState) -> Result<(), String> {
        Ok(())
    }
    fn tunnel_peers(&self) -> Vec<PeerInfo> {
        Vec::new()
    }
    fn underlay(&self, towards: &[Endpoint]) -> Vec<Underlay> {
        journal(&self.journal).measured_towards = towards.to_vec();
        self.underlay.lock().unwrap().clone()
    }
    fn clean_up(&mut self, what: CleanUp) -> Result<(), ReconcileError> {
        let parts: Vec<&str> = [("network", what.network), ("interface", what.interface)]
            .iter()
            .filter(|(_, on)| *on)
            .map(|(name, _)| *name)
            .collect();
        journal(&self.journal)
            .steps
            .push(format!("clean up: {}", parts.join(", ")));
        Ok(())
    }
}

struct FixedAddresses;

impl AddressSource for FixedAddresses {
    fn find(&mut self) -> Result<Discovered, String> {
        Ok(Discovered {
            internal_ip: Some("10.0.0.1/24".parse().unwrap()),
            internal_ip6: None,
            public_ip: "203.0.113.1".parse().unwrap(),
        })
    }
}

struct Rig {
    controller: Controller,
    journal: Shared,
    snapshot: Arc<Mutex<Result<Snapshot, String>>>,
    rejected: Arc<Mutex<Vec<RecordError>>>,
    ready: Arc<AtomicBool>,
    failing: Arc<Mutex<Option<String>>>,
    underlay: Arc<Mutex<Vec<Underlay>>>,
    waker: Waker,
    status: Arc<Status>,
    metrics: Arc<Metrics>,
}

/// Node a leads location aws; b is in gcp.
fn two_locations() -> Snapshot {
    snapshot(
        vec![
            node(
                "a",
                "aws",
                "203.0.113.1:51820",
                Some("10.0.0.1/24"),
                "10.42.0.0/24",
                false,
            ),
            node(
                "b",
                "gcp",
                "198.51.100.1:51820",
                Some("10.1.0.1/24"),
                "10.42.1.0/24",
                false,
            ),
        ],
        vec![],
    )
}

fn rig(resync: Duration) -> Rig {
    let journal = Shared::default();
    let snapshot = Arc::new(Mutex::new(Ok(two_locations())));
    let rejected = Arc::new(Mutex::new(Vec::new()));
    let ready = Arc::new(AtomicBool::new(true));
    let failing = Arc::new(Mutex::new(None));
    let underlay = Arc::new(Mutex::new(Vec::new()));
    let metrics = Metrics::new();
    let status = Arc::new(Status::default());
    let (waker, wake) = Waker::new();
    let controller = Controller::new(Parts {
        hostname: "a".into(),
        backend: Box::new(ScriptedBackend {
            journal: journal.clone(),
            rejected: rejected.clone(),
            snapshot: snapshot.clone(),
            ready: ready.clone(),
        }),
        wake,
        network: Box::new(RecordingNetwork {
            journal: journal.clone(),
            failing: failing.clone(),
            underlay: underlay.clone(),
        }),
        announcer: Some(Announcer::new(
            Box::new(FixedAddresses),
            SegmentWatch::without_probes(),
        )),
        metrics: metrics.clone(),
        status: status.clone(),
        resync,
    });
    Rig {
        controller,
        journal,
        snapshot,
        rejected,
        ready,
        failing,
        underlay,
        waker,
        status,
        metrics,
    }
}

const MINUTE: Duration = Duration::from_secs(60);

#[test]
fn a_pass_observes_applies_then_publishes_what_it_applied() {
    let mut r = rig(MINUTE);
    assert!(
        r.controller.turn(Instant::now()),
        "the first pass is due at once"
    );
    let j = journal(&r.journal);
    assert_eq!(j.steps, ["observe", "apply", "publish"]);
    let applied = &j.applied[0];
    assert!(applied.is_leader);
    assert_eq!(applied.pod_cidrs, ["10.42.0.0/24".parse().unwrap()]);
    assert_eq!(applied.mtu, 1420, "nothing measured: WireGuard's usual MTU");
    let report = &j.published[0];
    assert_eq!(report.public_key, key_for("a"));
    assert_eq!(report.endpoint, "203.0.113.1:51820");
    assert_eq!(
        report.wireguard_ip,
        applied.wireguard.as_ref().map(|w| w.address),
        "the address of the tunnel that was applied"
    );
    assert_eq!(
        report.unreachable, None,
        "a watch without probes reports nothing"
    );
    drop(j);
    let (ready, why) = r.status.ready();
    assert!(
        ready,
        "backend, mesh, cni and forwarding all checked and passing: {why}"
    );
}

#[test]
fn a_failed_apply_publishes_no_tunnel_address_and_retries_with_back_off() {
    let mut r = rig(MINUTE);
    *r.failing.lock().unwrap() = Some("netlink said no".into());
    let t0 = Instant::now();
    r.controller.turn(t0);
    {
        let j = journal(&r.journal);
        assert_eq!(j.steps, ["observe", "apply", "publish"]);
        assert_eq!(
            j.published[0].wireguard_ip, None,
            "nothing was applied: no address is announced for it"
        );
    }
    assert_eq!(r.controller.next_pass_in(t0), Duration::from_secs(1));
    let t1 = t0 + Duration::from_secs(1);
    assert!(r.controller.turn(t1), "the retry is due");
    assert_eq!(
        r.controller.next_pass_in(t1),
        Duration::from_secs(2),
        "backing off"
    );
    *r.failing.lock().unwrap() = None;
    let t2 = t1 + Duration::from_secs(2);
    assert!(r.controller.turn(t2));
    assert_eq!(
        r.controller.next_pass_in(t2),
        MINUTE,
        "back to the resync period"
    );
    let j = journal(&r.journal);
    assert!(j.published.last().unwrap().wireguard_ip.is_some());
    let mesh = r.status.ready().1;
    assert!(!mesh.contains("reconcile failed"), "{mesh}");
}

#[test]
fn the_mtu_follows_the_underlay_towards_the_tunnels_far_ends() {
    let mut r = rig(MINUTE);
    let path = |mtu| Underlay {
        towards: "198.51.100.1".parse().unwrap(),
        interface: "eth0".into(),
        mtu,
    };
    *r.underlay.lock().unwrap() = vec![path(1460)];
    let t0 = Instant::now();
    assert!(r.controller.turn(t0));
    {
        let j = journal(&r.journal);
        assert_eq!(
            j.measured_towards,
            ["198.51.100.1:51820".parse().unwrap()],
            "b's endpoint, the far end of a's one tunnel"
        );
        let applied = &j.applied[0];
        assert_eq!(applied.mtu, 1400, "1460 less 60 over IPv4: pods too");
        assert_eq!(applied.wireguard.as_ref().map(|w| w.mtu), Some(1400));
    }
    assert!(r.metrics.render().contains("weft_mtu_bytes 1400"));
    // The underlay changes (jumbo frames): the next pass follows.
    *r.underlay.lock().unwrap() = vec![path(9001)];
    r.waker.wake();
    let passed = (0..2).any(|_| r.controller.turn(t0));
    assert!(passed);
    let j = journal(&r.journal);
    assert_eq!(j.applied.last().map(|d| d.mtu), Some(8941));
    assert!(r.metrics.render().contains("weft_mtu_bytes 8941"));
}

#[test]
fn a_wake_runs_a_pass_before_the_resync_period() {
    let mut r = rig(MINUTE);
    let t0 = Instant::now();
    assert!(r.controller.turn(t0));
    assert!(
        !r.controller.turn(t0),
        "nothing owed: the turn waits (up to TURN) and passes not"
    );
    r.waker.wake();
    r.waker.wake();
    // The first turn takes the (folded) wake in, the next passes.
    let passes = (0..3).filter(|_| r.controller.turn(t0)).count();
    assert_eq!(passes, 1, "two wakes in a row cost one pass");
    assert_eq!(
        journal(&r.journal)
            .steps
            .iter()
            .filter(|s| *s == "observe")
            .count(),
        2
    );
}

#[test]
fn nothing_is_applied_until_the_backend_has_a_complete_picture() {
    let mut r = rig(MINUTE);
    r.ready.store(false, Ordering::SeqCst);
    let t0 = Instant::now();
    assert!(!r.controller.turn(t0));
    assert!(journal(&r.journal).steps.is_empty());
    assert!(r.status.ready().1.contains("backend"));
    r.ready.store(true, Ordering::SeqCst);
    assert!(
        r.controller.turn(t0),
        "the owed pass runs as soon as it is ready"
    );
}

#[test]
fn a_node_outside_the_mesh_keeps_its_state_and_still_announces_itself() {
    let mut r = rig(MINUTE);
    *r.snapshot.lock().unwrap() = Ok(snapshot(
        vec![node(
            "b",
            "gcp",
            "198.51.100.1:51820",
            None,
            "10.42.1.0/24",
            false,
        )],
        vec![],
    ));
    r.controller.turn(Instant::now());
    let j = journal(&r.journal);
    assert_eq!(j.steps, ["observe", "publish"], "no apply");
    assert_eq!(j.published[0].wireguard_ip, None);
    drop(j);
    let (ready, why) = r.status.ready();
    assert!(!ready);
    assert!(why.contains("this node is not in the mesh"), "{why}");
}

#[test]
fn a_backend_that_cannot_observe_changes_nothing() {
    let mut r = rig(MINUTE);
    r.controller.turn(Instant::now());
    *r.snapshot.lock().unwrap() = Err("the file is not YAML".into());
    r.waker.wake();
    let t = Instant::now();
    r.controller.turn(t);
    r.controller.turn(t);
    let j = journal(&r.journal);
    assert_eq!(j.steps, ["observe", "apply", "publish", "observe"]);
}

#[test]
fn problems_are_reported_once_per_change_of_the_set() {
    let mut r = rig(Duration::ZERO);
    *r.rejected.lock().unwrap() = vec![RecordError {
        kind: "node",
        name: "c".into(),
        field: "kilo.squat.ai/key".into(),
        reason: "not a key".into(),
    }];
    let t = Instant::now();
    for _ in 0..3 {
        r.controller.turn(t);
    }
    r.rejected.lock().unwrap().clear();
    r.controller.turn(t);
    r.controller.turn(t);
    let j = journal(&r.journal);
    let sizes: Vec<usize> = j.problems.iter().map(Vec::len).collect();
    assert_eq!(
        sizes.len(),
        2,
        "reported when it appeared and when it went: {sizes:?}"
    );
    assert!(sizes[0] > 0 && sizes[1] == 0, "{sizes:?}");
}

#[test]
fn stopping_cleans_up_only_when_asked() {
    let mut r = rig(MINUTE);
    let stop = AtomicBool::new(true);
    r.controller.run(&stop, CleanUp::default()).unwrap();
    assert!(journal(&r.journal).steps.is_empty());
    let interface_only = CleanUp {
        network: false,
        interface: true,
    };
    for what in [interface_only, CleanUp::EVERYTHING] {
        r.controller.run(&stop, what).unwrap();
    }
    assert_eq!(
        journal(&r.journal).steps,
        ["clean up: interface", "clean up: network, interface"]
    );
}
