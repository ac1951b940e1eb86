//! The agent's loop, in the manner of a Kubernetes controller:
//! observe -> desired -> apply -> publish, again whenever the backend wakes
//! it, when its own clock says so, and every resync period.
//!
//! A pass:
//! 1. *observe*: the backend's snapshot (a failure keeps what is applied);
//! 2. *desired*: the mesh core's topology and this node's [`DesiredState`];
//!    records left out or values ignored are logged and reported once per
//!    change of the set;
//! 3. *apply*: [`NodeNetwork::apply`] (tunnel, addresses, routes, netfilter,
//!    CNI) and forwarding; a failure retries with back-off ([`Schedule`]);
//! 4. *publish*: this node's report, built from what was applied and what
//!    the tunnel reported after applying.
//!
//! Readiness checks and metrics are fed from each step's outcome. The loop
//! itself ([`Controller::run`]) only decides when to pass; everything it
//! touches comes in through traits, so it is unit-tested in memory below.

pub mod announce;
pub mod schedule;

use crate::backend::{unix_now, Backend};
use crate::forwarding::{self, Family, Sysctls};
use crate::mesh::{DesiredState, Endpoint, Mtu, RecordError, Topology};
use crate::metrics::{ErrorStage, Metrics, PeerIdentity, PeerStat};
use crate::mtu::{self, Underlay};
use crate::reconcile::{Changes, CleanUp, ReconcileError, Reconciler};
use crate::status::Status;
use announce::Announcer;
use schedule::Schedule;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Receiver;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use wgconf::{PeerInfo, PublicKey};

/// How often the loop looks at what only a clock tells (the backend's
/// [`Backend::due`], the probes' verdicts, a stop request) when nothing
/// wakes it.
pub const TURN: Duration = Duration::from_millis(200);

/// What the loop changes on this node, and reads back from it.
pub trait NodeNetwork {
    fn public_key(&self) -> PublicKey;
    /// Turns on forwarding for `families`; returns those it turned on.
    fn ensure_forwarding(&mut self, families: &[Family]) -> Result<Vec<Family>, String>;
    /// Makes the node match `desired`; says what it changed.
    fn apply(&mut self, desired: &DesiredState) -> Result<Changes, ReconcileError>;
    /// Whether the CNI configuration for `desired` is in place (for /readyz).
    fn cni_status(&self, desired: &DesiredState) -> Result<(), String>;
    /// The tunnel's peers as reported after the last apply.
    fn tunnel_peers(&self) -> Vec<PeerInfo>;
    /// The underlay's paths towards `towards` (see `Reconciler::underlay`).
    fn underlay(&self, towards: &[Endpoint]) -> Vec<Underlay>;
    /// Removes what the agent created (`--clean-up`).
    fn clean_up(&mut self, what: CleanUp) -> Result<(), ReconcileError>;
}

/// The real node: the reconciler and the forwarding sysctls.
pub struct HostNetwork {
    pub reconciler: Reconciler,
    pub sysctls: Sysctls,
}

impl NodeNetwork for HostNetwork {
    fn public_key(&self) -> PublicKey {
        self.reconciler.public_key()
    }
    fn ensure_forwarding(&mut self, families: &[Family]) -> Result<Vec<Family>, String> {
        self.sysctls.ensure(families)
    }
    fn apply(&mut self, desired: &DesiredState) -> Result<Changes, ReconcileError> {
        self.reconciler.apply(desired)
    }
    fn cni_status(&self, desired: &DesiredState) -> Result<(), String> {
        self.reconciler.cni_status(desired)
    }
    fn tunnel_peers(&self) -> Vec<PeerInfo> {
        self.reconciler.tunnel_peers().to_vec()
    }
    fn underlay(&self, towards: &[Endpoint]) -> Vec<Underlay> {
        self.reconciler.underlay(towards)
    }
    fn clean_up(&mut self, what: CleanUp) -> Result<(), ReconcileError> {
        self.reconciler.clean_up(what)
    }
}

/// What the loop remembers between passes, so that a lasting condition is
/// logged once and not at every pass.
#[derive(Default)]
struct Memory {
    problems: Vec<RecordError>,
    /// Why this node was last out of the mesh.
    absence: Option<String>,
    /// The last failure to apply.
    failure: Option<String>,
    /// The state the last successful apply made; what is published.
    applied: Option<DesiredState>,
    /// Whether the wait for the backend's first picture was logged.
    waiting_logged: bool,
    /// Mesh-wide options other nodes announce differently, as last logged.
    disagreements: Vec<String>,
    /// The tunnel's MTU as last chosen (and logged).
    mtu: Option<u16>,
}

pub struct Controller {
    hostname: String,
    backend: Box<dyn Backend>,
    network: Box<dyn NodeNetwork>,
    /// `None` with a backend nobody reads (a mesh file).
    announcer: Option<Announcer>,
    metrics: Arc<Metrics>,
    status: Arc<Status>,
    schedule: Schedule,
    wake: Receiver<()>,
    /// A wake arrived and no pass has run since.
    woken: bool,
    memory: Memory,
}

/// The checks every start fails for a moment (no first list of Nodes and
/// Peers yet; this node not announced yet).
const START_STATES: [&str; 2] = ["backend", "mesh"];

/// Records a readiness verdict; a change is logged once, at the level an
/// operator needs: a start's passage through not-ready is INFO (an alert
/// on WARN and ERROR lines stays quiet on a healthy install); losing
/// readiness after passing is WARN; a check that fails for a reason no
/// start has (forwarding off, no CNI configuration) is ERROR, as is what
/// breaks a pass (logged where it happens).
fn check(status: &Status, name: &'static str, verdict: Result<(), String>) {
    let passed_before = status.has_passed(name);
    if status.set(name, verdict.clone()) {
        match verdict {
            Ok(()) => tracing::info!(check = name, "ready: {name} ok"),
            Err(why) if passed_before => tracing::warn!(check = name, "not ready: {why}"),
            Err(why) if START_STATES.contains(&name) => {
                tracing::info!(check = name, "not ready yet: {why}")
            }
            Err(why) => tracing::error!(check = name, "not ready: {why}"),
        }
    }
}

/// Everything a controller is made of.
pub struct Parts {
    pub hostname: String,
    pub backend: Box<dyn Backend>,
    /// The receiving end of the waker the backend was given.
    pub wake: Receiver<()>,
    pub network: Box<dyn NodeNetwork>,
    pub announcer: Option<Announcer>,
    pub metrics: Arc<Metrics>,
    pub status: Arc<Status>,
    pub resync: Duration,
}

impl Controller {
    pub fn new(parts: Parts) -> Self {
        Self {
            hostname: parts.hostname,
            backend: parts.backend,
            network: parts.network,
            announcer: parts.announcer,
            metrics: parts.metrics,
            status: parts.status,
            schedule: Schedule::new(parts.resync, Instant::now()),
            wake: parts.wake,
            woken: false,
            memory: Memory::default(),
        }
    }

    /// Turns until `stop` is set; then, with `clean_up`, removes what the
    /// agent created.
    pub fn run(&mut self, stop: &AtomicBool, clean_up: CleanUp) -> Result<(), ReconcileError> {
        while !stop.load(Ordering::SeqCst) {
            self.turn(Instant::now());
        }
        match (clean_up.network, clean_up.interface) {
            (false, false) => tracing::info!("stopping; the node's network stays as it is"),
            (true, false) => tracing::info!("cleaning up; the tunnel stays"),
            (false, true) => tracing::info!("stopping the tunnel; routes and rules stay"),
            (true, true) => tracing::info!("cleaning up, tunnel included"),
        }
        if clean_up != CleanUp::default() {
            self.network.clean_up(clean_up)?;
        }
        Ok(())
    }

    /// One turn: a pass if one is owed, else a wait of up to [`TURN`] for
    /// a wake. Returns whether a pass ran.
    pub fn turn(&mut self, now: Instant) -> bool {
        self.status.beat();
        self.metrics
            .set_api_reachable(self.backend.health().is_ok());
        // A leader candidate stopped or started answering: report it now.
        let verdict = self.announcer.as_mut().is_some_and(|a| a.watch.tick());
        // Asked every turn: the backend's clock runs whether or not a
        // wake or the schedule already owes a pass.
        let backend_due = self.backend.due();
        let owed = self.woken || verdict || backend_due || self.schedule.due(now);
        if !owed {
            self.wait(self.schedule.until_due(now).min(TURN));
            return false;
        }
        if !self.backend.ready() {
            if !self.memory.waiting_logged {
                tracing::info!(
                    "waiting for a first complete picture from {}",
                    self.backend.describe()
                );
                self.memory.waiting_logged = true;
            }
            check(&self.status, "backend", self.backend.health());
            self.woken = true;
            self.wait(TURN);
            return false;
        }
        self.woken = false;
        self.schedule.started(now);
        self.pass(now);
        true
    }

    /// How long until the schedule owes a pass (zero when it does).
    pub fn next_pass_in(&self, now: Instant) -> Duration {
        self.schedule.until_due(now)
    }

    fn wait(&mut self, most: Duration) {
        if self.wake.recv_timeout(most).is_ok() {
            self.woken = true;
        }
    }

    /// One pass: observe, compute, apply, publish; readiness updated.
    pub fn pass(&mut self, now: Instant) {
        check(&self.status, "backend", self.backend.health());
        let loaded = match self.backend.observe() {
            Ok(l) => l,
            Err(e) => {
                // Keep what is applied: a broken file is not a reason for an outage.
                tracing::error!("{e}; keeping the current state");
                self.metrics.error(ErrorStage::Backend);
                check(&self.status, "backend", self.backend.health());
                return;
            }
        };
        let disagreements = loaded
            .announced
            .disagreements(&loaded.options, &self.hostname);
        if disagreements != self.memory.disagreements {
            for d in &disagreements {
                tracing::warn!("{d}");
            }
            self.memory.disagreements = disagreements;
        }
        let clock = self.backend.liveness(unix_now());
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
        if problems != self.memory.problems {
            for r in &loaded.rejected {
                tracing::warn!(kind = r.kind, name = %r.name, field = %r.field, "left out: {r}");
            }
            for w in loaded.warnings.iter().chain(claims) {
                tracing::warn!(kind = w.kind, name = %w.name, field = %w.field, "ignored a value: {w}");
            }
            self.backend.report_problems(&problems);
            self.memory.problems = problems;
        }
        let topology = match topology {
            Ok(t) => t,
            Err(e) => {
                tracing::error!("{e}; keeping the current state");
                self.metrics.error(ErrorStage::Topology);
                check(&self.status, "mesh", Err(e.to_string()));
                return;
            }
        };
        let nodes = topology.segments.iter().map(|s| s.nodes.len()).sum();
        let mut desired = topology.desired_state(&self.hostname);
        if let Some(d) = desired.as_mut() {
            d.set_mtu(self.choose_mtu(loaded.options.mtu, &topology));
        }
        if let Some(a) = self.announcer.as_mut() {
            a.watch.follow(&topology, &self.hostname);
        }
        match &desired {
            Some(desired) => self.apply(desired, now),
            None => self.absent(&topology),
        }
        self.metrics.set_mesh(
            nodes,
            topology.peers.len(),
            self.memory.applied.as_ref().is_some_and(|d| d.is_leader),
        );
        self.name_in_metrics(&topology);
        // Published after applying, whatever its outcome: a node outside
        // the mesh (no key announced yet) gets in only by announcing.
        self.publish(&topology);
    }

    /// The tunnel's and pods' MTU: fixed, or measured on the underlay
    /// towards the tunnels' far ends (every pass, so a changed underlay is
    /// followed). Logged when it changes.
    fn choose_mtu(&mut self, policy: Mtu, topology: &Topology) -> u16 {
        let measured = match policy {
            Mtu::Auto => self
                .network
                .underlay(&topology.underlay_targets(&self.hostname)),
            Mtu::Fixed(_) => Vec::new(),
        };
        let choice = mtu::choose(policy, &measured);
        if self.memory.mtu != Some(choice.mtu) {
            match &choice.problem {
                Some(_) => tracing::warn!(mtu = choice.mtu, "tunnel and pod MTU {choice}"),
                None => tracing::info!(mtu = choice.mtu, "tunnel and pod MTU {choice}"),
            }
            self.metrics.set_mtu(choice.mtu);
            self.memory.mtu = Some(choice.mtu);
        }
        choice.mtu
    }

    /// This node's location and who each tunnel peer is, for the metrics'
    /// labels.
    fn name_in_metrics(&self, topology: &Topology) {
        let nodes = topology.segments.iter().flat_map(|s| &s.nodes);
        if let Some(me) = nodes.clone().find(|n| n.name == self.hostname) {
            self.metrics.set_node(&me.name, &me.location);
        }
        let mut identities = BTreeMap::new();
        for n in nodes {
            if let Some(key) = &n.public_key {
                let who = PeerIdentity {
                    name: n.name.clone(),
                    location: n.location.clone(),
                };
                identities.insert(key.to_base64(), who);
            }
        }
        for p in &topology.peers {
            let who = PeerIdentity {
                name: p.name.clone(),
                location: String::new(),
            };
            identities.insert(p.public_key.to_base64(), who);
        }
        self.metrics.set_peer_identities(identities);
    }

    /// This node is not in the mesh: what is applied stays.
    fn absent(&mut self, topology: &Topology) {
        let why = topology
            .excluded
            .iter()
            .find(|e| e.name == self.hostname)
            .map(|e| e.reason.clone())
            .unwrap_or_else(|| "not in the mesh description".into());
        if self.memory.absence.as_ref() != Some(&why) {
            if self.memory.applied.is_some() {
                tracing::warn!(node = %self.hostname, "this node is not in the mesh ({why}); keeping the current state");
            } else {
                // A first start: the node joins once it has announced itself.
                tracing::info!(node = %self.hostname, "this node is not in the mesh yet ({why})");
            }
            self.memory.absence = Some(why.clone());
        }
        check(
            &self.status,
            "mesh",
            Err(format!("this node is not in the mesh: {why}")),
        );
    }

    fn apply(&mut self, desired: &DesiredState, started: Instant) {
        if self.memory.absence.take().is_some() {
            if self.memory.applied.is_some() {
                tracing::info!(node = %self.hostname, "this node is in the mesh again");
            } else {
                tracing::info!(node = %self.hostname, "this node is in the mesh");
            }
        }
        match self
            .network
            .ensure_forwarding(&forwarding::needed(&desired.pod_cidrs))
        {
            Ok(on) => {
                for f in on {
                    tracing::info!("turned on {} forwarding", f.name());
                }
                check(&self.status, "forwarding", Ok(()));
            }
            Err(why) => check(&self.status, "forwarding", Err(why)),
        }
        let result = self.network.apply(desired);
        self.metrics.reconciled(started.elapsed().as_secs_f64());
        let now = SystemTime::now();
        self.metrics.set_peers(
            self.network
                .tunnel_peers()
                .iter()
                .map(|p| PeerStat::from_tunnel(p, now))
                .collect(),
        );
        match result {
            Ok(c) => {
                if self.memory.failure.take().is_some() {
                    tracing::info!("reconcile succeeded again");
                }
                self.schedule.succeeded();
                self.memory.applied = Some(desired.clone());
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
                self.metrics.error(ErrorStage::Reconcile);
                let text = e.to_string();
                let wait = self.schedule.failed(started);
                if self.memory.failure.as_ref() != Some(&text) {
                    tracing::error!(
                        "reconcile failed: {text}; retrying in {} s, backing off",
                        wait.as_secs_f64()
                    );
                    self.memory.failure = Some(text.clone());
                }
                check(
                    &self.status,
                    "mesh",
                    Err(format!("reconcile failed: {text}")),
                );
            }
        }
        check(&self.status, "cni", self.network.cni_status(desired));
    }

    fn publish(&mut self, topology: &Topology) {
        let Some(a) = self.announcer.as_mut() else {
            return;
        };
        let peers = self.network.tunnel_peers();
        if let Err(e) = a.announce(
            self.backend.as_mut(),
            self.network.public_key(),
            topology,
            self.memory.applied.as_ref(),
            &peers,
        ) {
            self.metrics.error(ErrorStage::Announce);
            tracing::error!("{e}");
        }
    }
}

/// Finds this node's pod CIDRs through `backend` (waiting up to `patience`
/// for its first picture) and turns on forwarding for their families, IPv4
/// alone when they are not known: what the DaemonSet's privileged init
/// container runs, so that the agent itself needs no privileges for it.
pub fn enable_forwarding(
    backend: &mut dyn Backend,
    hostname: &str,
    sysctls: &Sysctls,
    patience: Duration,
) -> Result<Vec<Family>, String> {
    let end = Instant::now() + patience;
    while !backend.ready() && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(100));
    }
    let pod_cidrs = if backend.ready() {
        backend
            .observe()
            .map_err(|e| e.to_string())?
            .snapshot
            .nodes
            .into_iter()
            .find(|n| n.name == hostname)
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
        vec![Family::V4]
    } else {
        forwarding::needed(&pod_cidrs)
    };
    sysctls.ensure(&families)?;
    Ok(families)
}

#[cfg(test)]
mod tests;
