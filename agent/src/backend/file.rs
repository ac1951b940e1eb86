//! The file backend: the mesh file ([`weft_mesh::file`]), re-read when it
//! changes.

use super::{Backend, BackendError, Loaded};
use std::path::PathBuf;
use std::time::SystemTime;
pub use weft_mesh::file::{FileError, MeshFile, RawOptions};

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
    /// A file gives no events: its modification time is compared instead.
    fn due(&mut self) -> bool {
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
        assert!(b.due(), "the first look is always a change");
        assert!(b.observe().unwrap().snapshot.nodes.is_empty());
        assert!(!b.due());
        // Make sure the new mtime differs even on coarse clocks.
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(&path, "nodes: [{name: a}]\n").unwrap();
        let t = std::time::SystemTime::now() + std::time::Duration::from_secs(1);
        let f = std::fs::File::options().write(true).open(&path).unwrap();
        f.set_modified(t).unwrap();
        assert!(b.due());
        assert_eq!(b.observe().unwrap().snapshot.nodes.len(), 1);
        // A missing file is an error once, not at every look.
        std::fs::remove_file(&path).unwrap();
        assert!(b.due());
        assert!(b.observe().is_err());
        assert!(!b.due());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
