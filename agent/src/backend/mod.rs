//! Where the mesh description comes from. A backend wakes the agent's loop
//! through a [`Waker`] when something arrives (a watch event, the API coming
//! back), answers [`Backend::due`] for what only its own clock knows (a
//! check-in falling due, a file's new modification time), and hands the
//! current snapshot to [`Backend::observe`]. The file backend is here; the
//! Kubernetes backend (Node annotations and Kilo's Peer resource) implements
//! the same trait.

use crate::mesh::{Liveness, RecordError};

/// Wakes the agent's loop: a backend keeps one and calls [`Waker::wake`]
/// when its picture changed. Wakes that arrive while one is pending fold
/// into it, so a burst of events costs one pass.
#[derive(Clone, Debug)]
pub struct Waker(std::sync::mpsc::SyncSender<()>);

impl Waker {
    /// A waker and the receiving end the loop waits on.
    pub fn new() -> (Self, std::sync::mpsc::Receiver<()>) {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        (Self(tx), rx)
    }

    pub fn wake(&self) {
        // Full: a wake is pending already. Disconnected: the loop is gone.
        let _ = self.0.try_send(());
    }
}

pub mod file;
pub mod k8s;

pub use file::FileBackend;
pub use k8s::KubeBackend;
pub use weft_mesh::{Loaded, SelfReport};

pub trait Backend {
    /// Cheap, called on every turn of the loop: whether a pass is owed for a
    /// reason only the backend's own clock knows (a check-in due, a node
    /// crossing the staleness line, a file's new modification time). Events
    /// from the source come through the [`Waker`] instead.
    fn due(&mut self) -> bool;
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

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error(transparent)]
    File(#[from] file::FileError),
    /// The API refused a call; the message says which and why.
    #[error("{0}")]
    Api(String),
    /// The API could not be reached; the backend has logged the outage
    /// already (once, not per call).
    #[error("the Kubernetes API is unreachable")]
    Unavailable,
}

/// The wall clock in whole seconds since the Unix epoch (0 before it): the
/// time the mesh core is given and check-ins are stamped with.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
