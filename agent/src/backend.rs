//! Where the mesh description comes from. The agent loop asks a backend
//! whether anything changed and, if so (or at every resync), for the current
//! snapshot. The file backend is here; the Kubernetes backend (Node
//! annotations and Kilo's Peer resource) implements the same trait.

use crate::file_backend::{FileError, Loaded, MeshFile};
use crate::mesh::{Granularity, Liveness, RecordError};
use dataplane::PublicKey;
use ipnet::IpNet;
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::SystemTime;

pub trait Backend {
    /// Cheap: whether the source changed since the last `observe`.
    fn changed(&mut self) -> bool;
    /// The current options, nodes and peers, and the records left out.
    fn observe(&mut self) -> Result<Loaded, BackendError>;
    /// For logs.
    fn describe(&self) -> String;
    /// Tells the other nodes what this node is (its key, endpoint, addresses,
    /// and that it is alive). A backend the agent cannot write to (a mesh
    /// file) ignores it.
    fn publish(&mut self, _report: &SelfReport) -> Result<(), BackendError> {
        Ok(())
    }
    /// Reports records left out of the mesh or read without a bad field,
    /// where users look for them. Called only when the set changes; logging
    /// is the agent's job.
    fn report_problems(&mut self, _problems: &[RecordError]) {}
    /// Whether the backend has a complete first picture; until then the
    /// agent leaves the node as it is.
    fn ready(&self) -> bool {
        true
    }
    /// Whether the backend is in sync with its source (for /readyz): why
    /// not, if it is not.
    fn health(&self) -> Result<(), String> {
        Ok(())
    }
    /// The clock check-in ages are judged by at `now` (unix seconds): a
    /// backend that could not observe check-ins for a while (the API was
    /// away) does not count that time against anyone.
    fn liveness(&self, now: u64) -> Liveness {
        Liveness::at(now)
    }
}

/// What a node announces about itself: Kilo's agent-owned annotations.
#[derive(Clone, Debug, PartialEq)]
pub struct SelfReport {
    pub public_key: PublicKey,
    /// `host:port` as others should dial it.
    pub endpoint: String,
    /// The private address with its interface prefix, if the node has one.
    pub internal_ip: Option<IpNet>,
    /// Set while this node leads its segment.
    pub wireguard_ip: Option<IpNet>,
    pub granularity: Granularity,
    /// NAT endpoints this node learned from handshakes of roaming peers.
    pub discovered_endpoints: BTreeMap<PublicKey, SocketAddr>,
    /// The segment members this node's probes find unreachable; `None`
    /// when this node cannot probe (then it does not report at all).
    pub unreachable: Option<BTreeSet<String>>,
}

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error(transparent)]
    File(#[from] FileError),
    /// The API refused a call; the message says which and why.
    #[error("{0}")]
    Api(String),
    /// The API could not be reached; the backend has logged the outage
    /// already (once, not per call).
    #[error("the Kubernetes API is unreachable")]
    Unavailable,
}

/// A YAML/JSON file, re-read when its modification time changes.
pub struct FileBackend {
    path: PathBuf,
    /// The modification time at the last `observe`; `None` inside means the
    /// file was missing then (so a missing file is not re-read every time).
    seen: Option<Option<SystemTime>>,
    /// What went wrong at the last `observe`.
    problem: Option<String>,
}

impl FileBackend {
    pub fn new(path: PathBuf) -> Self {
        Self {
            path,
            seen: None,
            problem: None,
        }
    }

    fn modified(&self) -> Option<SystemTime> {
        std::fs::metadata(&self.path)
            .and_then(|m| m.modified())
            .ok()
    }
}

impl Backend for FileBackend {
    fn changed(&mut self) -> bool {
        self.seen != Some(self.modified())
    }

    fn observe(&mut self) -> Result<Loaded, BackendError> {
        self.seen = Some(self.modified());
        let read = MeshFile::read(&self.path);
        self.problem = read.as_ref().err().map(|e| e.to_string());
        Ok(read?)
    }

    fn health(&self) -> Result<(), String> {
        match &self.problem {
            None => Ok(()),
            Some(p) => Err(format!("{p} (the last good mesh stays applied)")),
        }
    }

    fn describe(&self) -> String {
        format!("file {}", self.path.display())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notices_changes_to_the_file() {
        let dir = std::env::temp_dir().join(format!("weft-backend-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("mesh.yaml");
        std::fs::write(&path, "nodes: []\n").unwrap();
        let mut b = FileBackend::new(path.clone());
        assert!(b.changed(), "the first look is always a change");
        assert!(b.observe().unwrap().snapshot.nodes.is_empty());
        assert!(!b.changed());
        // Make sure the new mtime differs even on coarse clocks.
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(&path, "nodes: [{name: a}]\n").unwrap();
        let t = std::time::SystemTime::now() + std::time::Duration::from_secs(1);
        let f = std::fs::File::options().write(true).open(&path).unwrap();
        f.set_modified(t).unwrap();
        assert!(b.changed());
        assert_eq!(b.observe().unwrap().snapshot.nodes.len(), 1);
        // A missing file is an error once, not at every look.
        std::fs::remove_file(&path).unwrap();
        assert!(b.changed());
        assert!(b.observe().is_err());
        assert!(!b.changed());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
