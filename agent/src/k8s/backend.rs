//! The Kubernetes backend: Nodes and Kilo Peers mirrored by reflectors (list,
//! then watch, with back-off on API errors); the mirror keeps the last good
//! state while the API is unreachable, so the mesh is never torn down for it.
//! The agent's own node is written back with minimal merge patches (its key,
//! endpoint, addresses and a check-in every 30 s), and records left out of
//! the mesh become Kubernetes Events.

use super::annotations::{
    check_in_value, owned_annotations, owned_patch, raw_node, CHECK_IN_PERIOD,
};
use super::peer::{raw_peer, Peer};
use crate::backend::{Backend, BackendError, SelfReport};
use crate::file_backend::Loaded;
use crate::mesh::{MeshOptions, RecordError, Snapshot};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, ObjectReference};
use kube::api::{Patch, PatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client, Config, Resource};
use serde::de::DeserializeOwned;
use std::fmt::Debug;
use std::hash::Hash;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

/// How long the agent loop waits for one write to the API; a slow or absent
/// API must not hold up reconciling (or stopping).
pub const API_CALL_TIMEOUT: Duration = Duration::from_secs(5);

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
}

pub struct KubeBackend {
    rt: tokio::runtime::Runtime,
    client: Client,
    nodes: Store<Node>,
    peers: Store<Peer>,
    changed: Arc<AtomicBool>,
    settings: KubeSettings,
    recorder: Recorder,
    /// When this agent last wrote its `last-seen`.
    last_check_in: Option<Instant>,
    /// The own Node as the last patch returned it, with the version the
    /// mirror had then: until the watch delivers the patched Node, diffs are
    /// taken against this, so a lagging mirror does not cause a second patch.
    written: Option<(Option<String>, Node)>,
}

async fn mirror<K>(
    api: Api<K>,
    writer: reflector::store::Writer<K>,
    changed: Arc<AtomicBool>,
    what: &'static str,
) where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + Hash + Clone,
{
    let stream = reflector::reflector(
        writer,
        watcher(api, watcher::Config::default()).default_backoff(),
    );
    futures::pin_mut!(stream);
    while let Some(event) = stream.next().await {
        match event {
            Ok(_) => changed.store(true, Ordering::SeqCst),
            Err(e) => tracing::warn!(
                "watching {what}: {e}; retrying with back-off, keeping the last state{}",
                if what == "peers" {
                    " (is manifests/crds.yaml applied?)"
                } else {
                    ""
                }
            ),
        }
    }
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

impl KubeBackend {
    /// Connects with `kubeconfig`, or else as Kubernetes clients do by
    /// default (`$KUBECONFIG`, `~/.kube/config`, then the in-cluster
    /// service account), and starts mirroring Nodes and Peers.
    pub fn connect(
        kubeconfig: Option<&Path>,
        settings: KubeSettings,
    ) -> Result<Self, BackendError> {
        let rt = runtime().map_err(|e| BackendError::Api(format!("runtime: {e}")))?;
        let client = rt
            .block_on(async {
                let config = match kubeconfig {
                    Some(path) => {
                        let kc = Kubeconfig::read_from(path)
                            .map_err(|e| format!("reading {}: {e}", path.display()))?;
                        Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
                            .await
                            .map_err(|e| format!("kubeconfig {}: {e}", path.display()))?
                    }
                    None => Config::infer().await.map_err(|e| {
                        format!("no Kubernetes API configuration found (give --kubeconfig): {e}")
                    })?,
                };
                Client::try_from(config).map_err(|e| format!("Kubernetes client: {e}"))
            })
            .map_err(BackendError::Api)?;
        Ok(Self::start(rt, client, settings))
    }

    /// Starts mirroring Nodes and Peers through an existing client (tests
    /// hand in a mock API server here).
    pub fn from_client(client: Client, settings: KubeSettings) -> std::io::Result<Self> {
        Ok(Self::start(runtime()?, client, settings))
    }

    fn start(rt: tokio::runtime::Runtime, client: Client, settings: KubeSettings) -> Self {
        let (nodes, node_writer) = reflector::store();
        let (peers, peer_writer) = reflector::store();
        let changed = Arc::new(AtomicBool::new(false));
        rt.spawn(mirror(
            Api::<Node>::all(client.clone()),
            node_writer,
            changed.clone(),
            "nodes",
        ));
        rt.spawn(mirror(
            Api::<Peer>::all(client.clone()),
            peer_writer,
            changed.clone(),
            "peers",
        ));
        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: FIELD_MANAGER.into(),
                instance: Some(settings.node_name.clone()),
            },
        );
        Self {
            rt,
            client,
            nodes,
            peers,
            changed,
            settings,
            recorder,
            last_check_in: None,
            written: None,
        }
    }

    fn check_in_due(&self) -> bool {
        self.last_check_in
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(CHECK_IN_PERIOD))
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
            "node" => self
                .nodes
                .get(&ObjectRef::new(&e.name))
                .map(|n| n.object_ref(&())),
            "peer" => self
                .peers
                .get(&ObjectRef::new(&e.name))
                .map(|p| p.object_ref(&())),
            _ => None,
        }
    }
}

impl Backend for KubeBackend {
    fn changed(&mut self) -> bool {
        self.changed.load(Ordering::SeqCst) || self.check_in_due()
    }

    fn ready(&self) -> bool {
        // Both lists must have arrived: acting on half a picture would drop
        // routes and tunnels that are fine.
        self.rt.block_on(async {
            let t = Duration::from_millis(1);
            tokio::time::timeout(t, self.nodes.wait_until_ready())
                .await
                .is_ok_and(|r| r.is_ok())
                && tokio::time::timeout(t, self.peers.wait_until_ready())
                    .await
                    .is_ok_and(|r| r.is_ok())
        })
    }

    fn observe(&mut self) -> Result<Loaded, BackendError> {
        self.changed.store(false, Ordering::SeqCst);
        let mut snapshot = Snapshot::default();
        let mut rejected = Vec::new();
        let mut warnings = Vec::new();
        let mut nodes = self.nodes.state();
        nodes.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
        for node in nodes {
            let (raw, w) = raw_node(&node, &self.settings.topology_label);
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

    fn publish(&mut self, report: &SelfReport) -> Result<(), BackendError> {
        let name = self.settings.node_name.clone();
        let node = self.nodes.get(&ObjectRef::new(&name)).ok_or_else(|| {
            BackendError::Api(format!(
                "node {name:?} is not in the API; is --hostname (NODE_NAME) the Node's name?"
            ))
        })?;
        let base = match &self.written {
            Some((seen, patched)) if *seen == node.metadata.resource_version => patched.clone(),
            _ => (*node).clone(),
        };
        let now = unix_now();
        let due = self.check_in_due();
        let last_seen = if due { now } else { check_in_value(&base, now) };
        let want = owned_annotations(report, last_seen);
        if let Some(patch) = owned_patch(&base, &want) {
            let api = Api::<Node>::all(self.client.clone());
            let params = PatchParams {
                field_manager: Some(FIELD_MANAGER.into()),
                ..PatchParams::default()
            };
            let patched = self
                .rt
                .block_on(async {
                    tokio::time::timeout(
                        API_CALL_TIMEOUT,
                        api.patch(&name, &params, &Patch::Merge(&patch)),
                    )
                    .await
                })
                .map_err(|_| {
                    BackendError::Api(format!(
                        "patching node {name}: no answer within {API_CALL_TIMEOUT:?}"
                    ))
                })?
                .map_err(|e| BackendError::Api(format!("patching node {name}: {e}")))?;
            tracing::debug!(%patch, "patched node {name}");
            self.written = Some((node.metadata.resource_version.clone(), patched));
        }
        if due {
            self.last_check_in = Some(Instant::now());
        }
        Ok(())
    }

    fn report_problems(&mut self, problems: &[RecordError]) {
        let reports_peers = self.reports_peers();
        for e in problems {
            let mine = match e.kind {
                "node" => e.name == self.settings.node_name,
                _ => reports_peers,
            };
            let Some(reference) = mine.then(|| self.reference(e)).flatten() else {
                continue;
            };
            let event = Event {
                type_: EventType::Warning,
                reason: match e.kind {
                    "peer" => "InvalidPeer",
                    _ => "InvalidAnnotation",
                }
                .into(),
                note: Some(event_message(e)),
                action: "Read".into(),
                secondary: None,
            };
            let published = self.rt.block_on(async {
                tokio::time::timeout(API_CALL_TIMEOUT, self.recorder.publish(&event, &reference))
                    .await
            });
            match published {
                Ok(Ok(())) => {}
                Ok(Err(err)) => {
                    tracing::warn!("cannot record an Event for {} {}: {err}", e.kind, e.name)
                }
                Err(_) => tracing::warn!(
                    "cannot record an Event for {} {}: no answer within {API_CALL_TIMEOUT:?}",
                    e.kind,
                    e.name
                ),
            }
        }
    }
}

/// A record's problem as the Event's message names it.
pub fn event_message(e: &RecordError) -> String {
    format!("weft: {} {}: {}: {}", e.kind, e.name, e.field, e.reason)
}

// Tested in tests/kube_backend.rs against an in-memory API server.
