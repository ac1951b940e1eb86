//! The Kubernetes backend itself: Nodes and Kilo Peers mirrored from
//! watches into stores ([`super::mirror`]); the mirror keeps the last good
//! state while the API is unreachable, so the mesh is never torn down for
//! it. The agent's own node
//! is written back with minimal merge patches (its key, endpoint, addresses
//! and a check-in every 30 s), and records left out of the mesh become
//! Kubernetes Events.
//!
//! Built to stay quiet and cheap when things break or when nothing changes:
//! - every call to the API backs off on failure (0.5 s doubling to 30 s) and
//!   the outage is logged once each way ([`super::health`]); a probe of the
//!   API while it is away brings everything back within a second of its
//!   return, with a check-in at once;
//! - a node's check-in (only `last-seen` changed) wakes nothing: the mirror
//!   compares what the mesh reads of each node, and a once-a-second look at
//!   the check-in ages wakes the agent only when a node crosses the
//!   staleness line;
//! - Events that could not be recorded wait and are recorded when the API
//!   answers again.

use super::annotations::{
    check_in_value, owned_annotations, owned_patch, raw_node, CHECK_IN_PERIOD, GRANULARITY,
    WIREGUARD_IP,
};
use super::check_in::{last_seen, next_expiry, CheckIn, Freshness};
use super::events::{event_key, Events};
use super::health::{unreachable, ApiHealth, Backoff};
use super::mirror::{mirror, node_digest, peer_digest, probe_while_down, Mirrored, Shared};
use super::node::MeshNode;
use super::peer::{raw_peer, Peer, PeerSpec};
use super::{API_CALL_TIMEOUT, FIELD_MANAGER};
use crate::backend::unix_now;
use crate::backend::{Backend, BackendError, Loaded, SelfReport, Waker};
use crate::mesh::{Announced, Limits, Liveness, MeshOptions, RecordError, Snapshot};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config, Resource};
use std::collections::{BTreeSet, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// An API away this long makes the agent not ready (its picture of the
/// mesh may be old): long enough to ride out an API server restart.
pub(super) const UNREADY_AFTER: Duration = Duration::from_secs(60);

/// How this backend is set up.
#[derive(Clone, Debug)]
pub struct KubeSettings {
    /// This node's name (the Node object the agent writes).
    pub node_name: String,
    pub options: MeshOptions,
    /// The label read as the location when there is no location annotation.
    pub topology_label: String,
    /// How often this node checks in: Kilo's 30 s ([`CHECK_IN_PERIOD`]),
    /// which Kilo nodes expect; tests shorten it.
    pub check_in_period: Duration,
    /// When a silent node is left out, and the grace after an outage
    /// (Kilo's 60 s and one check-in period by default).
    pub limits: Limits,
    /// How long the API may be unreachable before readiness fails.
    pub unready_after: Duration,
}

impl KubeSettings {
    /// Settings for `node_name` with Kilo's check-in period.
    pub fn new(node_name: &str, options: MeshOptions, topology_label: &str) -> Self {
        Self {
            node_name: node_name.to_string(),
            options,
            topology_label: topology_label.to_string(),
            check_in_period: Duration::from_secs(CHECK_IN_PERIOD),
            limits: Limits::default(),
            unready_after: UNREADY_AFTER,
        }
    }

    /// These settings with shorter (or longer) clocks: checking in every
    /// `check_in_period`, a node stale after `stale_after` of silence, the
    /// API's absence failing readiness after `unready_after`. Refuses limits
    /// under which a healthy node would go stale between two check-ins.
    pub fn with_timing(
        mut self,
        check_in_period: Duration,
        stale_after: Duration,
        unready_after: Duration,
    ) -> Result<Self, String> {
        if check_in_period.is_zero() || stale_after < 2 * check_in_period {
            return Err(format!(
                "the staleness limit ({} s) must be at least twice the check-in period ({} s), \
                 or healthy nodes drop out between check-ins",
                stale_after.as_secs(),
                check_in_period.as_secs()
            ));
        }
        self.check_in_period = check_in_period;
        self.limits = Limits {
            stale_after: stale_after.as_secs(),
            grace_after_outage: check_in_period.as_secs(),
        };
        self.unready_after = unready_after;
        Ok(self)
    }
}

pub struct KubeBackend {
    pub(super) rt: tokio::runtime::Runtime,
    pub(super) client: Client,
    pub(super) nodes: Arc<Mirrored<MeshNode>>,
    pub(super) peers: Arc<Mirrored<Peer>>,
    pub(super) shared: Arc<Shared>,
    pub(super) settings: KubeSettings,
    pub(super) check_in: CheckIn,
    /// The own Node as the last patch returned it, with the version the
    /// mirror had then: until the watch delivers the patched Node, diffs are
    /// taken against this, so a lagging mirror does not cause a second patch.
    pub(super) written: Option<(Option<String>, MeshNode)>,
    pub(super) events: Events,
    /// Which nodes counted as fresh at the last `observe`, and when the
    /// first of them turns stale if it does not check in.
    pub(super) freshness: Freshness,
    /// A pass is owed (the API came back).
    pub(super) pass_owed: bool,
}

fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("kube")
        .enable_all()
        .build()
}

/// What to tell an operator whose agent cannot reach `server`.
fn unreachable_hint(server: &str, in_cluster: bool) -> String {
    if in_cluster {
        format!(
            "{server} is the cluster's kubernetes Service address, which only works once \
             kube-proxy (or a replacement) runs on this node; without it, give the API \
             server's own address (WEFT_API_SERVER in the manifest, see the README)"
        )
    } else {
        format!("check that this node reaches {server} (firewall, address in the kubeconfig)")
    }
}

impl KubeBackend {
    /// Connects with `kubeconfig`, or else as Kubernetes clients do by
    /// default (`$KUBECONFIG`, `~/.kube/config`, then the in-cluster
    /// service account), and starts mirroring Nodes and Peers.
    /// `server`, when given, replaces the API address the configuration
    /// names (nodes without kube-proxy cannot use the Service address).
    pub fn connect(
        kubeconfig: Option<&Path>,
        server: Option<&str>,
        settings: KubeSettings,
        waker: Waker,
    ) -> Result<Self, BackendError> {
        let rt = runtime().map_err(|e| BackendError::Api(format!("runtime: {e}")))?;
        let (client, hint) = rt
            .block_on(async {
                let (mut config, in_cluster) = match kubeconfig {
                    Some(path) => {
                        let kc = Kubeconfig::read_from(path)
                            .map_err(|e| format!("reading {}: {e}", path.display()))?;
                        let c = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
                            .await
                            .map_err(|e| format!("kubeconfig {}: {e}", path.display()))?;
                        (c, false)
                    }
                    None => {
                        let in_cluster = std::env::var_os("KUBERNETES_SERVICE_HOST").is_some()
                            && std::env::var_os("KUBECONFIG").is_none();
                        let c = Config::infer().await.map_err(|e| {
                            format!(
                                "no Kubernetes API configuration found (give --kubeconfig): {e}"
                            )
                        })?;
                        (c, in_cluster)
                    }
                };
                if let Some(s) = server {
                    config.cluster_url = s
                        .parse()
                        .map_err(|e| format!("--api-server {s:?} is not a URL: {e}"))?;
                }
                let shown = config.cluster_url.to_string();
                let hint = unreachable_hint(&shown, in_cluster && server.is_none());
                tracing::info!(server = %shown, "using the Kubernetes API");
                let client =
                    Client::try_from(config).map_err(|e| format!("Kubernetes client: {e}"))?;
                Ok::<_, String>((client, (shown, hint)))
            })
            .map_err(BackendError::Api)?;
        Ok(Self::start(rt, client, hint, settings, waker))
    }

    /// Starts mirroring Nodes and Peers through an existing client (tests
    /// hand in a mock API server here).
    pub fn from_client(
        client: Client,
        settings: KubeSettings,
        waker: Waker,
    ) -> std::io::Result<Self> {
        let server = client.default_namespace().to_string();
        Ok(Self::start(
            runtime()?,
            client,
            (format!("(client for namespace {server})"), String::new()),
            settings,
            waker,
        ))
    }

    fn start(
        rt: tokio::runtime::Runtime,
        client: Client,
        (server, hint): (String, String),
        settings: KubeSettings,
        waker: Waker,
    ) -> Self {
        let nodes = Arc::new(Mirrored::default());
        let peers = Arc::new(Mirrored::default());
        let shared = Arc::new(Shared {
            waker,
            health: ApiHealth::new(server, hint),
            own_patch_at: Mutex::new(None),
            own_event_at: Mutex::new(None),
            stale: Mutex::new(HashSet::new()),
        });
        let label = settings.topology_label.clone();
        let own = settings.node_name.clone();
        rt.spawn(mirror(
            Api::<MeshNode>::all(client.clone()),
            nodes.clone(),
            shared.clone(),
            "nodes",
            move |n: &MeshNode| node_digest(n, &label),
            Some(Box::new(move |n: &MeshNode| {
                n.metadata.name.as_deref() == Some(own.as_str())
            })),
        ));
        rt.spawn(mirror(
            Api::<Peer>::all(client.clone()),
            peers.clone(),
            shared.clone(),
            "peers",
            peer_digest,
            None,
        ));
        rt.spawn(probe_while_down(client.clone(), shared.clone()));
        // The API's return is news: a check-in goes out at once.
        let back = shared.clone();
        rt.spawn(async move {
            loop {
                back.health.next_return().await;
                back.waker.wake();
            }
        });
        let check_in_period = settings.check_in_period;
        Self {
            rt,
            client,
            nodes,
            peers,
            shared,
            settings,
            check_in: CheckIn {
                period: check_in_period,
                last: None,
                backoff: Backoff::default(),
            },
            written: None,
            events: Events::default(),
            freshness: Freshness::default(),
            pass_owed: false,
        }
    }

    /// The agent of the name-wise first node reports bad Peers, so a bad
    /// Peer makes one Event, not one per node.
    fn reports_peers(&self) -> bool {
        self.nodes
            .state()
            .iter()
            .filter_map(|n| n.metadata.name.clone())
            .min()
            .is_some_and(|first| first == self.settings.node_name)
    }

    /// Records the Events waiting, unless the API is away or backing off.
    fn record_events(&mut self) {
        let (nodes, peers) = (&self.nodes, &self.peers);
        self.events.record(
            &self.rt,
            &self.client,
            &self.shared.health,
            &self.settings.node_name,
            |e| match e.kind {
                "node" => nodes.get(&e.name).map(|n| n.object_ref(&())),
                "peer" => peers.get(&e.name).map(|p| p.object_ref(&())),
                _ => None,
            },
        );
    }

    /// Creates the Peer `name` with `spec`, or, if it exists, sets its spec
    /// to `spec` (`weftctl connect`; the agents themselves only read Peers).
    pub fn put_peer(&self, name: &str, spec: PeerSpec) -> Result<(), BackendError> {
        let api = Api::<Peer>::all(self.client.clone());
        let peer = Peer::new(name, spec.clone());
        self.rt.block_on(async {
            match tokio::time::timeout(API_CALL_TIMEOUT, api.create(&PostParams::default(), &peer))
                .await
            {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(kube::Error::Api(e))) if e.code == 409 => {
                    let patch = Patch::Merge(serde_json::json!({ "spec": spec }));
                    tokio::time::timeout(
                        API_CALL_TIMEOUT,
                        api.patch(name, &PatchParams::default(), &patch),
                    )
                    .await
                    .map_err(|_| BackendError::Api(format!("updating Peer {name}: no answer")))?
                    .map(|_| ())
                    .map_err(|e| BackendError::Api(format!("updating Peer {name}: {e}")))
                }
                Ok(Err(e)) => Err(BackendError::Api(format!("creating Peer {name}: {e}"))),
                Err(_) => Err(BackendError::Api(format!(
                    "creating Peer {name}: no answer"
                ))),
            }
        })
    }

    /// Deletes the Peer `name`; one already gone is fine.
    pub fn delete_peer(&self, name: &str) -> Result<(), BackendError> {
        let api = Api::<Peer>::all(self.client.clone());
        self.rt.block_on(async {
            match tokio::time::timeout(API_CALL_TIMEOUT, api.delete(name, &DeleteParams::default()))
                .await
            {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(kube::Error::Api(e))) if e.code == 404 => Ok(()),
                Ok(Err(e)) => Err(BackendError::Api(format!("deleting Peer {name}: {e}"))),
                Err(_) => Err(BackendError::Api(format!(
                    "deleting Peer {name}: no answer"
                ))),
            }
        })
    }
}

impl Backend for KubeBackend {
    fn due(&mut self) -> bool {
        if self.shared.health.take_came_back() {
            // Check in at once, and record what waited.
            self.check_in.last = None;
            self.check_in.backoff.allow_now();
            self.events.backoff.allow_now();
            self.pass_owed = true;
        }
        let api_up = !self.shared.health.is_down();
        self.pass_owed
            || (self.check_in.due() && self.check_in.backoff.ready())
            || (api_up && !self.events.pending.is_empty() && self.events.backoff.ready())
            || {
                let now = unix_now();
                let (health, limits, nodes) =
                    (&self.shared.health, self.settings.limits, &self.nodes);
                self.freshness
                    .moved(now, || health.liveness(now, limits), || nodes.state())
            }
    }

    fn ready(&self) -> bool {
        // Both lists must have arrived: acting on half a picture would drop
        // routes and tunnels that are fine.
        self.nodes.is_ready() && self.peers.is_ready()
    }

    fn observe(&mut self) -> Result<Loaded, BackendError> {
        self.pass_owed = false;
        let clock = self.liveness(unix_now());
        let mut snapshot = Snapshot::default();
        let mut rejected = Vec::new();
        let mut warnings = Vec::new();
        let mut nodes = self.nodes.state();
        nodes.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
        self.freshness.fresh.clear();
        let mut stale = HashSet::new();
        for node in &nodes {
            let name = node.metadata.name.clone().unwrap_or_default();
            let fresh = last_seen(node).is_some_and(|t| !clock.is_stale(t));
            if !fresh {
                stale.insert(name.clone());
            }
            self.freshness.fresh.insert(name, fresh);
        }
        self.freshness.next_expiry = next_expiry(nodes.iter().filter_map(|n| last_seen(n)), &clock);
        *self.shared.stale.lock().unwrap_or_else(|e| e.into_inner()) = stale;
        let mut announced = Announced::default();
        for node in nodes {
            let meta = node.as_ref().meta();
            let annotation = |key| meta.annotations.as_ref()?.get(key).map(String::as_str);
            announced.add(
                meta.name.as_deref().unwrap_or_default(),
                annotation(WIREGUARD_IP),
                annotation(GRANULARITY),
            );
            let (raw, w) = raw_node(node.as_ref(), &self.settings.topology_label);
            warnings.extend(w);
            match raw.parse() {
                Ok(n) => snapshot.nodes.push(n),
                Err(e) => rejected.push(e),
            }
        }
        let mut peers = self.peers.state();
        peers.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
        for peer in peers {
            match raw_peer(&peer).and_then(|r| r.parse()) {
                Ok(p) => snapshot.peers.push(p),
                Err(e) => rejected.push(e),
            }
        }
        Ok(Loaded {
            options: self.settings.options.clone(),
            snapshot,
            rejected,
            warnings,
            announced,
        })
    }

    fn describe(&self) -> String {
        "the Kubernetes API (Nodes, kilo.squat.ai/v1alpha1 Peers)".into()
    }

    fn liveness(&self, now: u64) -> Liveness {
        self.shared.health.liveness(now, self.settings.limits)
    }

    fn health(&self) -> Result<(), String> {
        if !self.ready() {
            return Err(match self.shared.health.outage() {
                Some((_, error)) => format!(
                    "no first list of Nodes and Peers yet: {error}. {}",
                    self.shared.health.hint()
                ),
                None => "waiting for the first list of Nodes and Peers".into(),
            });
        }
        match self.shared.health.outage() {
            Some((away, error)) if away >= self.settings.unready_after => Err(format!(
                "the Kubernetes API at {} has been unreachable for {} s ({error}); the mesh \
                 stays as it was. {}",
                self.shared.health.server(),
                away.as_secs(),
                self.shared.health.hint()
            )),
            _ => Ok(()),
        }
    }

    fn publish(&mut self, report: &SelfReport) -> Result<(), BackendError> {
        self.record_events();
        let name = self.settings.node_name.clone();
        let node = self.nodes.get(&name).ok_or_else(|| {
            BackendError::Api(format!(
                "node {name:?} is not in the API; is --hostname (NODE_NAME) the Node's name?"
            ))
        })?;
        let base = match &self.written {
            Some((seen, patched)) if *seen == node.metadata.resource_version => patched.clone(),
            _ => (*node).clone(),
        };
        let now = unix_now();
        let due = self.check_in.due();
        let last_seen = if due { now } else { check_in_value(&base, now) };
        let want = owned_annotations(report, last_seen);
        let Some(patch) = owned_patch(&base, &want) else {
            if due {
                self.check_in.last = Some(Instant::now());
            }
            return Ok(());
        };
        if !self.check_in.backoff.ready() {
            // Waiting out a failure: the outage is logged already.
            return Err(BackendError::Unavailable);
        }
        let api = Api::<MeshNode>::all(self.client.clone());
        let params = PatchParams {
            field_manager: Some(FIELD_MANAGER.into()),
            ..PatchParams::default()
        };
        // Taken before the request: the watch may bring the patched node
        // before the answer to the patch is back.
        let sent_at = Instant::now();
        let result = self.rt.block_on(async {
            tokio::time::timeout(
                API_CALL_TIMEOUT,
                api.patch(&name, &params, &Patch::Merge(&patch)),
            )
            .await
        });
        let patched = match result {
            Ok(Ok(p)) => p,
            Ok(Err(e)) if !unreachable(&e) => {
                self.shared.health.succeeded();
                self.check_in.backoff.failed();
                return Err(BackendError::Api(format!("patching node {name}: {e}")));
            }
            Ok(Err(e)) => {
                self.shared
                    .health
                    .failed(&format!("patching node {name}"), &e);
                self.check_in.backoff.failed();
                return Err(BackendError::Unavailable);
            }
            Err(_) => {
                self.shared.health.failed(
                    &format!("patching node {name}"),
                    &format!("no answer within {API_CALL_TIMEOUT:?}"),
                );
                self.check_in.backoff.failed();
                return Err(BackendError::Unavailable);
            }
        };
        self.shared.health.succeeded();
        self.check_in.backoff.reset();
        *self
            .shared
            .own_patch_at
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(sent_at);
        tracing::debug!(%patch, "patched node {name}");
        self.written = Some((node.metadata.resource_version.clone(), patched));
        if due {
            self.check_in.last = Some(Instant::now());
        }
        Ok(())
    }

    fn report_problems(&mut self, problems: &[RecordError]) {
        let reports_peers = self.reports_peers();
        let mine: Vec<RecordError> = problems
            .iter()
            .filter(|e| match e.kind {
                "node" => e.name == self.settings.node_name,
                _ => reports_peers,
            })
            .cloned()
            .collect();
        let keys: BTreeSet<_> = mine.iter().map(event_key).collect();
        // A problem that went away and comes back is recorded again.
        self.events.recorded.retain(|k| keys.contains(k));
        self.events.pending = mine
            .into_iter()
            .filter(|e| !self.events.recorded.contains(&event_key(e)))
            .collect();
        self.record_events();
    }
}
