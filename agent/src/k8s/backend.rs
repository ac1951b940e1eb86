//! The Kubernetes backend: Nodes and Kilo Peers mirrored from watches into
//! stores; the mirror keeps the last good state while the API is
//! unreachable, so the mesh is never torn down for it. The agent's own node
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
    check_in_value, owned_annotations, owned_patch, raw_node, CHECK_IN_PERIOD, LAST_SEEN,
};
use super::health::{ApiHealth, Backoff};
use super::node::MeshNode;
use super::peer::{raw_peer, Peer};
use crate::backend::{Backend, BackendError, SelfReport};
use crate::file_backend::Loaded;
use crate::mesh::{Liveness, MeshOptions, RecordError, Snapshot};
use futures::{FutureExt, StreamExt};
use k8s_openapi::api::core::v1::ObjectReference;
use kube::api::{Patch, PatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::watcher;
use kube::{Api, Client, Config, Resource};
use serde::de::DeserializeOwned;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt::Debug;
use std::hash::{Hash, Hasher};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

/// How long the agent loop waits for one write to the API; a slow or absent
/// API must not hold up reconciling (or stopping).
pub const API_CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// An API away this long makes the agent not ready (its picture of the
/// mesh may be old): long enough to ride out an API server restart.
const UNREADY_AFTER: Duration = Duration::from_secs(60);

/// How often the API is probed while it is away.
const PROBE_PERIOD: Duration = Duration::from_secs(1);

/// How long the mirror rests between batches of watch events (the latency
/// this adds to every change is at most this).
const BATCH_PAUSE: Duration = Duration::from_millis(250);

/// How long our own check-in may take to come back through the watch of
/// Nodes before that watch is judged broken and restarted.
const WATCH_ECHO_TIMEOUT: Duration = Duration::from_secs(15);

/// The field manager named in the API's managedFields for our patches.
pub const FIELD_MANAGER: &str = "weft-agent";

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
}

impl KubeSettings {
    /// Settings for `node_name` with Kilo's check-in period.
    pub fn new(node_name: &str, options: MeshOptions, topology_label: &str) -> Self {
        Self {
            node_name: node_name.to_string(),
            options,
            topology_label: topology_label.to_string(),
            check_in_period: Duration::from_secs(CHECK_IN_PERIOD),
        }
    }
}

/// What the mirror tasks share with the backend.
struct Shared {
    /// Something the mesh reads changed since the last `observe`.
    changed: AtomicBool,
    health: ApiHealth,
    /// When our last patch succeeded and when the Nodes watch last brought
    /// our own node: a patch whose echo never comes means a broken watch.
    own_patch_at: Mutex<Option<Instant>>,
    own_event_at: Mutex<Option<Instant>>,
    /// The nodes stale at the last `observe`: a check-in from one of them
    /// is news (it comes back), from any other it is not.
    stale: Mutex<HashSet<String>>,
}

pub struct KubeBackend {
    rt: tokio::runtime::Runtime,
    client: Client,
    nodes: Arc<Mirrored<MeshNode>>,
    peers: Arc<Mirrored<Peer>>,
    shared: Arc<Shared>,
    settings: KubeSettings,
    check_in: CheckIn,
    /// The own Node as the last patch returned it, with the version the
    /// mirror had then: until the watch delivers the patched Node, diffs are
    /// taken against this, so a lagging mirror does not cause a second patch.
    written: Option<(Option<String>, MeshNode)>,
    events: Events,
    /// Which nodes counted as fresh at the last `observe`, and when the
    /// first of them turns stale if it does not check in.
    freshness: Freshness,
    /// A pass is owed (the API came back).
    pass_owed: bool,
}

/// When this node last checked in, and the back-off of failed attempts.
struct CheckIn {
    period: Duration,
    last: Option<Instant>,
    backoff: Backoff,
}

impl CheckIn {
    fn due(&self) -> bool {
        self.last.is_none_or(|t| t.elapsed() >= self.period)
    }
}

/// Problems to record as Events: the ones recorded (so each is recorded
/// once while it lasts) and the ones still waiting for the API.
#[derive(Default)]
struct Events {
    recorded: BTreeSet<(String, String, String)>,
    pending: Vec<RecordError>,
    backoff: Backoff,
}

fn event_key(e: &RecordError) -> (String, String, String) {
    (e.kind.to_string(), e.name.clone(), e.to_string())
}

/// Whether an error means the API could not be reached (as opposed to an
/// answer, such as "forbidden", which proves it is there).
fn unreachable(e: &kube::Error) -> bool {
    match e {
        kube::Error::Api(status) => status.code >= 500 || status.code == 429,
        kube::Error::SerdeError(_) | kube::Error::BuildRequest(_) => false,
        _ => true,
    }
}

/// The API's answer inside a watch error, if there was one.
fn watch_answer(e: &watcher::Error) -> Option<&kube::Error> {
    match e {
        watcher::Error::InitialListFailed(e)
        | watcher::Error::WatchStartFailed(e)
        | watcher::Error::WatchFailed(e) => Some(e),
        watcher::Error::WatchError(_) | watcher::Error::NoResourceVersion => None,
    }
}

fn watch_unreachable(e: &watcher::Error) -> bool {
    match e {
        watcher::Error::WatchError(s) => s.code >= 500 || s.code == 429,
        watcher::Error::NoResourceVersion => false,
        _ => watch_answer(e).is_some_and(unreachable),
    }
}

/// The objects of one kind as the watch last said, by name. Each object is
/// kept as the watch delivered it (no copy per event), and the store counts
/// as ready once the first complete list has arrived.
struct Mirrored<K> {
    objects: std::sync::RwLock<HashMap<String, Arc<K>>>,
    /// A list being received (after `Init`), swapped in at `InitDone`.
    listing: Mutex<Option<HashMap<String, Arc<K>>>>,
    ready: AtomicBool,
}

impl<K> Default for Mirrored<K> {
    fn default() -> Self {
        Self {
            objects: Default::default(),
            listing: Mutex::new(None),
            ready: AtomicBool::new(false),
        }
    }
}

impl<K: Resource> Mirrored<K> {
    fn apply(&self, event: watcher::Event<K>) {
        let name = |o: &K| o.meta().name.clone().unwrap_or_default();
        match event {
            watcher::Event::Apply(o) => {
                self.write().insert(name(&o), Arc::new(o));
            }
            watcher::Event::Delete(o) => {
                self.write().remove(&name(&o));
            }
            watcher::Event::Init => {
                *self.listing.lock().unwrap_or_else(|e| e.into_inner()) = Some(HashMap::new())
            }
            watcher::Event::InitApply(o) => {
                if let Some(l) = self
                    .listing
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .as_mut()
                {
                    l.insert(name(&o), Arc::new(o));
                }
            }
            watcher::Event::InitDone => {
                if let Some(l) = self
                    .listing
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .take()
                {
                    *self.write() = l;
                }
                self.ready.store(true, Ordering::SeqCst);
            }
        }
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, Arc<K>>> {
        self.objects.write().unwrap_or_else(|e| e.into_inner())
    }

    fn state(&self) -> Vec<Arc<K>> {
        self.objects
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect()
    }

    fn get(&self, name: &str) -> Option<Arc<K>> {
        self.objects
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .cloned()
    }

    fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }
}

/// Says which object is this agent's own node.
type IsOwn<K> = Box<dyn Fn(&K) -> bool + Send>;

/// Mirrors one kind of object into `writer` for as long as the backend
/// lives. `digest` says what of an object the mesh reads: an event that
/// leaves it unchanged (a check-in) sets no change flag. The watch that
/// carries our own node (`is_own` says which object that is) is restarted
/// when our check-in does not come back through it.
async fn mirror<K>(
    api: Api<K>,
    store: Arc<Mirrored<K>>,
    shared: Arc<Shared>,
    what: &'static str,
    digest: impl Fn(&K) -> (u64, Option<u64>),
    is_own: Option<IsOwn<K>>,
) where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + Hash + Clone,
{
    let watches_own_node = is_own.is_some();
    let mut digests: HashMap<String, (u64, Option<u64>)> = HashMap::new();
    let mut relisted: HashMap<String, (u64, Option<u64>)> = HashMap::new();
    let mut backoff = Backoff::default();
    let mut refused = RefusalLog::default();
    loop {
        let stream = watcher(api.clone(), watcher::Config::default());
        futures::pin_mut!(stream);
        let mut watchdog = tokio::time::interval(Duration::from_secs(5));
        watchdog.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut rested = true;
        loop {
            // Events already here are taken at once; when none is, the
            // mirror rests a moment before it waits, so that a busy
            // cluster's events (33 check-ins a second per 1,000 nodes) are
            // read in batches rather than with a wake-up each.
            let mut ready = stream.next().now_or_never();
            // The HTTP connection hands the body over chunk by chunk, each
            // from a task of its own: let it run before concluding that
            // nothing is there.
            for _ in 0..3 {
                if ready.is_some() {
                    break;
                }
                tokio::task::yield_now().await;
                ready = stream.next().now_or_never();
            }
            if ready.is_none() && !rested {
                tokio::time::sleep(BATCH_PAUSE).await;
                rested = true;
                continue;
            }
            let event = match ready {
                Some(e) => e,
                None => tokio::select! {
                e = stream.next() => e,
                _ = watchdog.tick() => {
                    if watches_own_node && echo_overdue(&shared) {
                        tracing::warn!(
                            "our own check-in did not come back through the watch of {what} \
                             within {} s; restarting that watch",
                            WATCH_ECHO_TIMEOUT.as_secs()
                        );
                        *shared.own_patch_at.lock().unwrap_or_else(|e| e.into_inner()) = None;
                        break;
                    }
                    continue;
                }
                },
            };
            rested = false;
            let Some(event) = event else { break };
            let event = match event {
                Ok(event) => event,
                Err(e) => {
                    if watch_unreachable(&e) {
                        shared.health.failed(&format!("watching {what}"), &e);
                    } else {
                        shared.health.succeeded();
                        refused.log(what, &e);
                    }
                    let wait = backoff.failed();
                    shared.health.wait(wait).await;
                    continue;
                }
            };
            // `Init` only announces a list about to be asked for; every other
            // event came from the API.
            if !matches!(event, watcher::Event::Init) {
                shared.health.succeeded();
                backoff.reset();
                refused.clear();
            }
            if let watcher::Event::Apply(o) | watcher::Event::InitApply(o) = &event {
                if is_own.as_ref().is_some_and(|own| own(o)) {
                    *shared
                        .own_event_at
                        .lock()
                        .unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
                }
            }
            let mut relevant = false;
            match &event {
                watcher::Event::Apply(o) => {
                    let name = o.meta().name.clone().unwrap_or_default();
                    let (d, seen) = digest(o);
                    let before = digests.insert(name.clone(), (d, seen));
                    relevant = match before {
                        Some((was, was_seen)) if was == d => {
                            // Only a check-in: news if the node was stale,
                            // or if its clock went back (it may expire
                            // sooner than the next look expects).
                            was_seen != seen
                                && (seen < was_seen
                                    || shared
                                        .stale
                                        .lock()
                                        .unwrap_or_else(|e| e.into_inner())
                                        .contains(&name))
                        }
                        _ => true,
                    };
                }
                watcher::Event::Delete(o) => {
                    digests.remove(o.meta().name.as_deref().unwrap_or_default());
                    relevant = true;
                }
                watcher::Event::Init => relisted.clear(),
                watcher::Event::InitApply(o) => {
                    relisted.insert(o.meta().name.clone().unwrap_or_default(), digest(o));
                }
                watcher::Event::InitDone => {
                    // A relist (after an outage): news if anything the mesh
                    // reads changed; check-ins are judged by the next look.
                    let what = |m: &HashMap<String, (u64, Option<u64>)>| -> HashMap<String, u64> {
                        m.iter().map(|(k, (d, _))| (k.clone(), *d)).collect()
                    };
                    relevant = what(&relisted) != what(&digests);
                    digests = std::mem::take(&mut relisted);
                }
            }
            store.apply(event);
            if relevant {
                shared.changed.store(true, Ordering::SeqCst);
            }
        }
    }
}

/// Whether our last patch is older than the echo timeout and the watch has
/// not brought our node since.
fn echo_overdue(shared: &Shared) -> bool {
    let patched = *shared
        .own_patch_at
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let seen = *shared
        .own_event_at
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    match patched {
        Some(p) => p.elapsed() >= WATCH_ECHO_TIMEOUT && seen.is_none_or(|s| s < p),
        None => false,
    }
}

/// Logs API refusals of a watch (forbidden, not found) once per distinct
/// message, with what to do about them.
#[derive(Default)]
struct RefusalLog {
    last: Option<String>,
}

impl RefusalLog {
    fn log(&mut self, what: &str, e: &watcher::Error) {
        let text = e.to_string();
        if self.last.as_deref() == Some(text.as_str()) {
            return;
        }
        let code = match e {
            watcher::Error::WatchError(s) => Some(s.code),
            _ => match watch_answer(e) {
                Some(kube::Error::Api(s)) => Some(s.code),
                _ => None,
            },
        };
        match code {
            // The watch's resource version expired: the watcher re-lists.
            Some(410) => tracing::debug!("watching {what}: {text}; listing again"),
            Some(404) if what == "peers" => tracing::warn!(
                "watching peers: the API has no kilo.squat.ai/v1alpha1 Peer resource ({text}); \
                 apply manifests/crds.yaml. Waiting for it, the mesh as it is"
            ),
            Some(401) | Some(403) => tracing::warn!(
                "watching {what}: the API refused ({text}); check the agent's ServiceAccount \
                 and RBAC (manifests/weft-*.yaml). Retrying with back-off"
            ),
            _ => tracing::warn!("watching {what}: {text}; retrying with back-off"),
        }
        self.last = Some(text);
    }

    fn clear(&mut self) {
        self.last = None;
    }
}

/// Probes the API while it is away, so that every back-off is cut short as
/// soon as it answers again.
async fn probe_while_down(client: Client, shared: Arc<Shared>) {
    loop {
        tokio::time::sleep(PROBE_PERIOD).await;
        if !shared.health.is_down() {
            continue;
        }
        if let Ok(Ok(_)) = tokio::time::timeout(PROBE_PERIOD, client.apiserver_version()).await {
            shared.health.succeeded();
        }
    }
}

/// What the mesh reads of a Node, apart from its check-in, and the
/// check-in: a new `last-seen` alone leaves the digest unchanged. It covers
/// every Kilo and Weft annotation (a superset of what `raw_node` reads),
/// the topology label and the pod CIDRs, hashed in place: this runs for
/// every watch event.
fn node_digest(node: &MeshNode, topology_label: &str) -> (u64, Option<u64>) {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    let meta = &node.metadata;
    meta.name.hash(&mut h);
    for (k, v) in meta.annotations.iter().flatten() {
        if (k.starts_with("kilo.squat.ai/") || k.starts_with("weft.dev/")) && k != LAST_SEEN {
            k.hash(&mut h);
            v.hash(&mut h);
        }
    }
    meta.labels
        .as_ref()
        .and_then(|l| l.get(topology_label))
        .hash(&mut h);
    node.spec.hash(&mut h);
    (h.finish(), last_seen(node))
}

fn peer_digest(peer: &Peer) -> (u64, Option<u64>) {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    serde_json::to_string(&peer.spec)
        .unwrap_or_default()
        .hash(&mut h);
    (h.finish(), None)
}

fn last_seen(node: &MeshNode) -> Option<u64> {
    node.metadata
        .annotations
        .as_ref()?
        .get(LAST_SEEN)?
        .trim()
        .parse()
        .ok()
}

/// Which nodes were fresh at the last `observe`, and when the first fresh
/// one expires without a check-in.
#[derive(Default)]
struct Freshness {
    fresh: HashMap<String, bool>,
    /// Unix seconds; `None` when no node is fresh.
    next_expiry: Option<u64>,
}

impl Freshness {
    fn expired(&self, now: u64) -> bool {
        self.next_expiry.is_some_and(|t| now >= t)
    }
}

/// When the first of the fresh check-ins `last_seen` turns stale, on
/// `clock`, if no node checks in again (a clock stopped by an outage only
/// makes this early, never late: then the nodes are looked at again).
fn next_expiry(last_seen: impl Iterator<Item = u64>, clock: &Liveness) -> Option<u64> {
    last_seen
        .filter(|t| !clock.is_stale(*t))
        .map(|t| clock.now() + (crate::mesh::Node::STALE_AFTER - clock.age(t)))
        .min()
}

fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("kube")
        .enable_all()
        .build()
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
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
        Ok(Self::start(rt, client, hint, settings))
    }

    /// Starts mirroring Nodes and Peers through an existing client (tests
    /// hand in a mock API server here).
    pub fn from_client(client: Client, settings: KubeSettings) -> std::io::Result<Self> {
        let server = client.default_namespace().to_string();
        Ok(Self::start(
            runtime()?,
            client,
            (format!("(client for namespace {server})"), String::new()),
            settings,
        ))
    }

    fn start(
        rt: tokio::runtime::Runtime,
        client: Client,
        (server, hint): (String, String),
        settings: KubeSettings,
    ) -> Self {
        let nodes = Arc::new(Mirrored::default());
        let peers = Arc::new(Mirrored::default());
        let shared = Arc::new(Shared {
            changed: AtomicBool::new(false),
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

    fn reference(&self, e: &RecordError) -> Option<ObjectReference> {
        match e.kind {
            "node" => self.nodes.get(&e.name).map(|n| n.object_ref(&())),
            "peer" => self.peers.get(&e.name).map(|p| p.object_ref(&())),
            _ => None,
        }
    }

    /// Whether some node crossed the staleness line since the last
    /// `observe`. Going stale needs no event, so the nodes are looked at
    /// when the first fresh one would expire (about once per check-in
    /// period, not per event); coming back is an event (see `mirror`).
    fn staleness_moved(&mut self) -> bool {
        let now = unix_now();
        if !self.freshness.expired(now) {
            return false;
        }
        let clock = self.liveness(now);
        let nodes = self.nodes.state();
        let moved = nodes.iter().any(|n| {
            let fresh = last_seen(n).is_some_and(|t| !clock.is_stale(t));
            let name = n.metadata.name.as_deref().unwrap_or_default();
            self.freshness.fresh.get(name) != Some(&fresh)
        });
        if !moved {
            // Nobody expired: they checked in since. Look again when the
            // next one would.
            self.freshness.next_expiry =
                next_expiry(nodes.iter().filter_map(|n| last_seen(n)), &clock);
        }
        moved
    }

    /// Records the waiting Events, unless the API is away or backing off.
    fn record_events(&mut self) {
        if self.events.pending.is_empty() || !self.events.backoff.ready() {
            return;
        }
        if self.shared.health.is_down() {
            return;
        }
        while let Some(e) = self.events.pending.first().cloned() {
            let Some(reference) = self.reference(&e) else {
                // The object is gone: nothing to attach an Event to.
                self.events.pending.remove(0);
                continue;
            };
            let event = Event {
                type_: EventType::Warning,
                reason: match e.kind {
                    "peer" => "InvalidPeer",
                    _ => "InvalidAnnotation",
                }
                .into(),
                note: Some(event_message(&e)),
                action: "Read".into(),
                secondary: None,
            };
            // A recorder of its own per Event: kube's recorder folds Events
            // about one object with one reason into a series and would show
            // only the first problem's message.
            let recorder = Recorder::new(
                self.client.clone(),
                Reporter {
                    controller: FIELD_MANAGER.into(),
                    instance: Some(self.settings.node_name.clone()),
                },
            );
            let published = self.rt.block_on(async {
                tokio::time::timeout(API_CALL_TIMEOUT, recorder.publish(&event, &reference)).await
            });
            match published {
                Ok(Ok(())) => {
                    self.shared.health.succeeded();
                    self.events.backoff.reset();
                    self.events.recorded.insert(event_key(&e));
                    self.events.pending.remove(0);
                }
                Ok(Err(err)) if !unreachable(&err) => {
                    self.shared.health.succeeded();
                    tracing::warn!(
                        "cannot record an Event for {} {}: the API refused: {err}",
                        e.kind,
                        e.name
                    );
                    self.events.recorded.insert(event_key(&e));
                    self.events.pending.remove(0);
                }
                Ok(Err(err)) => {
                    self.shared.health.failed("recording an Event", &err);
                    self.events.backoff.failed();
                    return;
                }
                Err(_) => {
                    self.shared.health.failed(
                        "recording an Event",
                        &format!("no answer within {API_CALL_TIMEOUT:?}"),
                    );
                    self.events.backoff.failed();
                    return;
                }
            }
        }
    }
}

impl Backend for KubeBackend {
    fn changed(&mut self) -> bool {
        if self.shared.health.take_came_back() {
            // Check in at once, and record what waited.
            self.check_in.last = None;
            self.check_in.backoff.allow_now();
            self.events.backoff.allow_now();
            self.pass_owed = true;
        }
        let api_up = !self.shared.health.is_down();
        self.pass_owed
            || self.shared.changed.load(Ordering::SeqCst)
            || (self.check_in.due() && self.check_in.backoff.ready())
            || (api_up && !self.events.pending.is_empty() && self.events.backoff.ready())
            || self.staleness_moved()
    }

    fn ready(&self) -> bool {
        // Both lists must have arrived: acting on half a picture would drop
        // routes and tunnels that are fine.
        self.nodes.is_ready() && self.peers.is_ready()
    }

    fn observe(&mut self) -> Result<Loaded, BackendError> {
        self.shared.changed.store(false, Ordering::SeqCst);
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
        for node in nodes {
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
        })
    }

    fn describe(&self) -> String {
        "the Kubernetes API (Nodes, kilo.squat.ai/v1alpha1 Peers)".into()
    }

    fn liveness(&self, now: u64) -> Liveness {
        self.shared.health.liveness(now)
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
            Some((away, error)) if away >= UNREADY_AFTER => Err(format!(
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

/// A record's problem as the Event's message names it.
pub fn event_message(e: &RecordError) -> String {
    format!("weft: {} {}: {}: {}", e.kind, e.name, e.field, e.reason)
}

// Tested in tests/kube_backend.rs against an in-memory API server.
