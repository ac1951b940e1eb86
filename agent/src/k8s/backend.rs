//! The Kubernetes backend: Nodes and Kilo Peers mirrored by reflectors (list,
//! then watch, with back-off on API errors); the mirror keeps the last good
//! state while the API is unreachable, so the mesh is never torn down for it.

use super::annotations::raw_node;
use super::peer::{raw_peer, Peer};
use crate::backend::{Backend, BackendError};
use crate::file_backend::Loaded;
use crate::mesh::{MeshOptions, RecordError, Snapshot};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Node;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;
use std::fmt::Debug;
use std::hash::Hash;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

pub struct KubeBackend {
    // Keeps the watch tasks alive.
    _rt: tokio::runtime::Runtime,
    nodes: Store<Node>,
    peers: Store<Peer>,
    changed: Arc<AtomicBool>,
    options: MeshOptions,
    topology_label: String,
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
                "watching {what}: {e}; retrying with back-off, keeping the last state"
            ),
        }
    }
}

impl KubeBackend {
    /// Starts mirroring Nodes and Peers through `client`.
    pub fn new(
        client: Client,
        options: MeshOptions,
        topology_label: String,
    ) -> std::io::Result<Self> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("kube")
            .enable_all()
            .build()?;
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
            Api::<Peer>::all(client),
            peer_writer,
            changed.clone(),
            "peers",
        ));
        Ok(Self {
            _rt: rt,
            nodes,
            peers,
            changed,
            options,
            topology_label,
        })
    }
}

impl Backend for KubeBackend {
    fn changed(&mut self) -> bool {
        self.changed.load(Ordering::SeqCst)
    }

    fn observe(&mut self) -> Result<Loaded, BackendError> {
        self.changed.store(false, Ordering::SeqCst);
        let mut snapshot = Snapshot::default();
        let mut rejected = Vec::new();
        let mut nodes = self.nodes.state();
        nodes.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
        for node in nodes {
            let (raw, warnings) = raw_node(&node, &self.topology_label);
            for w in warnings {
                tracing::warn!(node = %w.node, field = %w.field, "{}", w.reason);
            }
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
            options: self.options.clone(),
            snapshot,
            rejected,
        })
    }

    fn describe(&self) -> String {
        "the Kubernetes API (Nodes, kilo.squat.ai/v1alpha1 Peers)".into()
    }
}

/// A rejected record reported the way a Kubernetes Event would name it.
pub fn event_message(e: &RecordError) -> String {
    format!(
        "weft: {} {} ignored: {}: {}",
        e.kind, e.name, e.field, e.reason
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{Request, Response};
    use kube::client::Body;
    use serde_json::json;
    use std::time::{Duration, Instant};

    const KEY_A: &str = "jYkfTPBnJTk8ehUeUMvJjwWShRJD4ls1YrtIl0pZuXY=";
    const KEY_B: &str = "CtSz0h5pUnM7LuFEIUyP3igPtAHcVj+PSMKR2f/zqz0=";

    fn node(name: &str, endpoint: &str, pod: &str, key: &str) -> serde_json::Value {
        json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {
                "name": name, "resourceVersion": "10",
                "labels": {"topology.kubernetes.io/region": "eu-west-1"},
                "annotations": {
                    "kilo.squat.ai/endpoint": endpoint,
                    "kilo.squat.ai/internal-ip": "10.0.0.5/24",
                    "kilo.squat.ai/key": key,
                    "kilo.squat.ai/last-seen": "1795000000"
                }
            },
            "spec": {"podCIDR": pod, "podCIDRs": [pod]}
        })
    }

    /// Answers the reflectors as an API server would: a list of each kind,
    /// then for nodes one watch event (a node joins); later watches are left
    /// pending, as a quiet API server leaves them.
    async fn api_server(mut handle: tower_test::mock::Handle<Request<Body>, Response<Body>>) {
        let mut held = Vec::new();
        let mut node_watches = 0;
        while let Some((req, send)) = handle.next_request().await {
            let uri = req.uri().to_string();
            let body = if uri.starts_with("/api/v1/nodes") && !uri.contains("watch=") {
                json!({
                    "kind": "NodeList", "apiVersion": "v1", "metadata": {"resourceVersion": "10"},
                    "items": [
                        node("a", "3.0.0.1:51820", "10.42.0.0/24", KEY_A),
                        node("broken", "no port here", "10.42.9.0/24", KEY_A)
                    ]
                })
                .to_string()
            } else if uri.starts_with("/apis/kilo.squat.ai/v1alpha1/peers")
                && !uri.contains("watch=")
            {
                json!({
                    "kind": "PeerList", "apiVersion": "kilo.squat.ai/v1alpha1", "metadata": {"resourceVersion": "10"},
                    "items": [
                        {"apiVersion": "kilo.squat.ai/v1alpha1", "kind": "Peer",
                         "metadata": {"name": "laptop", "resourceVersion": "10"},
                         "spec": {"allowedIPs": ["10.5.0.1/32"], "publicKey": KEY_B, "persistentKeepalive": 10}},
                        {"apiVersion": "kilo.squat.ai/v1alpha1", "kind": "Peer",
                         "metadata": {"name": "bad", "resourceVersion": "10"},
                         "spec": {"allowedIPs": ["not-a-cidr"], "publicKey": KEY_B}}
                    ]
                })
                .to_string()
            } else if uri.starts_with("/api/v1/nodes") && node_watches == 0 {
                node_watches += 1;
                let added = json!({"type": "ADDED", "object": node("b", "34.0.0.1:51820", "10.42.1.0/24", KEY_B)});
                format!("{added}\n")
            } else {
                held.push(send);
                continue;
            };
            send.send_response(Response::new(Body::from(body.into_bytes())));
        }
    }

    #[test]
    fn mirrors_nodes_and_peers_and_reports_bad_records() {
        let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let server_rt = tokio::runtime::Runtime::new().expect("runtime");
        server_rt.spawn(api_server(handle));
        let client = server_rt.block_on(async { Client::new(service, "default") });
        let mut backend = KubeBackend::new(
            client,
            MeshOptions::default(),
            "topology.kubernetes.io/region".into(),
        )
        .expect("backend");

        // Bounded wait for the lists and the watch event to arrive.
        let end = Instant::now() + Duration::from_secs(10);
        let loaded = loop {
            if backend.changed() {
                let l = backend.observe().expect("observe");
                if l.snapshot.nodes.len() == 2 && l.snapshot.peers.len() == 1 {
                    break l;
                }
            }
            assert!(Instant::now() < end, "the mirror did not fill within 10 s");
            std::thread::sleep(Duration::from_millis(20));
        };
        let names: Vec<&str> = loaded
            .snapshot
            .nodes
            .iter()
            .map(|n| n.name.as_str())
            .collect();
        assert_eq!(names, ["a", "b"], "the listed node and the one that joined");
        assert_eq!(loaded.snapshot.nodes[0].location, "eu-west-1");
        assert_eq!(loaded.snapshot.peers[0].name, "laptop");
        let rejected: Vec<String> = loaded.rejected.iter().map(event_message).collect();
        assert!(
            rejected
                .iter()
                .any(|m| m.contains("node broken ignored: endpoint")),
            "{rejected:?}"
        );
        assert!(
            rejected
                .iter()
                .any(|m| m.contains("peer bad ignored: spec.allowedIPs")),
            "{rejected:?}"
        );
        // Nothing new: no change reported.
        assert!(!backend.changed());
        drop(backend);
        drop(server_rt);
    }
}
