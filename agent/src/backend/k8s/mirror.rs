//! The mirror: a watch per kind (Nodes, Peers) kept in a store for as long
//! as the backend lives. The store keeps the last good state while the API
//! is unreachable, so the mesh is never torn down for it. An event that
//! changes nothing the mesh reads (a check-in) wakes nobody; events already
//! waiting are read in batches.

use super::annotations::LAST_SEEN;
use super::check_in::last_seen;
use super::health::{watch_answer, watch_unreachable, ApiHealth, Backoff};
use super::node::MeshNode;
use super::peer::Peer;
use crate::backend::Waker;
use futures::{FutureExt, StreamExt};
use kube::runtime::watcher;
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;
use std::collections::{HashMap, HashSet};
use std::fmt::Debug;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How often the API is probed while it is away.
pub(super) const PROBE_PERIOD: Duration = Duration::from_secs(1);

/// How long the mirror rests between batches of watch events (the latency
/// this adds to every change is at most this).
pub(super) const BATCH_PAUSE: Duration = Duration::from_millis(250);

/// How long our own check-in may take to come back through the watch of
/// Nodes before that watch is judged broken and restarted.
pub(super) const WATCH_ECHO_TIMEOUT: Duration = Duration::from_secs(15);

/// What the mirror tasks share with the backend.
pub(super) struct Shared {
    /// Wakes the agent's loop when something the mesh reads changed.
    pub(super) waker: Waker,
    pub(super) health: ApiHealth,
    /// When our last patch succeeded and when the Nodes watch last brought
    /// our own node: a patch whose echo never comes means a broken watch.
    pub(super) own_patch_at: Mutex<Option<Instant>>,
    pub(super) own_event_at: Mutex<Option<Instant>>,
    /// The nodes stale at the last `observe`: a check-in from one of them
    /// is news (it comes back), from any other it is not.
    pub(super) stale: Mutex<HashSet<String>>,
}

/// The objects of one kind as the watch last said, by name. Each object is
/// kept as the watch delivered it (no copy per event), and the store counts
/// as ready once the first complete list has arrived.
pub(super) struct Mirrored<K> {
    pub(super) objects: std::sync::RwLock<HashMap<String, Arc<K>>>,
    /// A list being received (after `Init`), swapped in at `InitDone`.
    pub(super) listing: Mutex<Option<HashMap<String, Arc<K>>>>,
    pub(super) ready: AtomicBool,
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
    pub(super) fn apply(&self, event: watcher::Event<K>) {
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

    pub(super) fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, Arc<K>>> {
        self.objects.write().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn state(&self) -> Vec<Arc<K>> {
        self.objects
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect()
    }

    pub(super) fn get(&self, name: &str) -> Option<Arc<K>> {
        self.objects
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .cloned()
    }

    pub(super) fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }
}

/// Says which object is this agent's own node.
pub(super) type IsOwn<K> = Box<dyn Fn(&K) -> bool + Send>;

/// Mirrors one kind of object into `writer` for as long as the backend
/// lives. `digest` says what of an object the mesh reads: an event that
/// leaves it unchanged (a check-in) wakes nobody. The watch that
/// carries our own node (`is_own` says which object that is) is restarted
/// when our check-in does not come back through it.
pub(super) async fn mirror<K>(
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
                shared.waker.wake();
            }
        }
    }
}

/// Whether our last patch is older than the echo timeout and the watch has
/// not brought our node since.
pub(super) fn echo_overdue(shared: &Shared) -> bool {
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
pub(super) struct RefusalLog {
    pub(super) last: Option<String>,
}

impl RefusalLog {
    pub(super) fn log(&mut self, what: &str, e: &watcher::Error) {
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

    pub(super) fn clear(&mut self) {
        self.last = None;
    }
}

/// Probes the API while it is away, so that every back-off is cut short as
/// soon as it answers again.
pub(super) async fn probe_while_down(client: Client, shared: Arc<Shared>) {
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
pub(super) fn node_digest(node: &MeshNode, topology_label: &str) -> (u64, Option<u64>) {
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

pub(super) fn peer_digest(peer: &Peer) -> (u64, Option<u64>) {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    serde_json::to_string(&peer.spec)
        .unwrap_or_default()
        .hash(&mut h);
    (h.finish(), None)
}
