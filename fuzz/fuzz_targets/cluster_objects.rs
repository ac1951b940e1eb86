//! Nodes and Peers as the API server returns them (JSON), with annotations
//! and specs anyone with write access may have filled: read into mesh
//! records, parsed, and built into a topology and every node's desired
//! state. Input: a Node, a NUL byte, a Peer.
#![no_main]

use k8s_openapi::api::core::v1::Node;
use libfuzzer_sys::fuzz_target;
use weft_mesh::objects::annotations::{raw_node, DEFAULT_TOPOLOGY_LABEL};
use weft_mesh::objects::peer::{raw_peer, Peer};
use weft_mesh::{MeshOptions, Snapshot, Topology};

fuzz_target!(|data: &[u8]| {
    let mut parts = data.splitn(2, |b| *b == 0);
    let node = parts.next().unwrap_or_default();
    let peer = parts.next().unwrap_or_default();
    let mut snapshot = Snapshot::default();
    if let Ok(n) = serde_json::from_slice::<Node>(node) {
        let (raw, _) = raw_node(&n, DEFAULT_TOPOLOGY_LABEL);
        if let Ok(n) = raw.parse() {
            snapshot.nodes.push(n);
        }
    }
    if let Ok(p) = serde_json::from_slice::<Peer>(peer) {
        if let Ok(p) = raw_peer(&p).and_then(|r| r.parse()) {
            snapshot.peers.push(p);
        }
    }
    if let Ok(t) = Topology::new(&snapshot, &MeshOptions::default(), 1_700_000_000) {
        for n in &snapshot.nodes {
            let _ = t.desired_state(&n.name);
        }
    }
});
