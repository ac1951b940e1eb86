//! The mesh file: a YAML (or JSON) description of the mesh, for hosts
//! joined before any cluster exists and for the local demo (the agent's
//! file backend reads it).
//!
//! ```yaml
//! options: {granularity: location, subnet: 10.4.0.0/16, port: 51820}
//! nodes:
//!   - name: a1
//!     location: aws
//!     endpoint: 3.0.0.1:51820
//!     internalIP: 10.0.0.1/24
//!     podCIDRs: [10.42.0.0/24]
//!     publicKey: BASE64
//! peers:
//!   - {name: laptop, allowedIPs: [10.5.0.1/32], publicKey: BASE64}
//! ```
//!
//! A node or peer with a bad field is reported and left out; the rest of
//! the mesh stands.

use crate::{
    Encapsulate, Granularity, Loaded, MeshOptions, Mtu, RawNode, RawPeer, RecordError, Snapshot,
};
use serde::{Deserialize, Serialize};
use std::path::Path;

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RawOptions {
    #[serde(default)]
    pub granularity: Option<Granularity>,
    #[serde(default)]
    pub subnet: Option<String>,
    #[serde(default)]
    pub port: Option<u16>,
    #[serde(default)]
    pub encapsulate: Option<Encapsulate>,
    /// A number, or `auto` (the default).
    #[serde(default)]
    pub mtu: Option<RawMtu>,
    /// false: add-on mode, another CNI routes inside locations.
    #[serde(default)]
    pub local: Option<bool>,
    /// `flannel` (or `none`, the default).
    #[serde(default)]
    pub compatibility: Option<String>,
}

/// `mtu:` as written: a number or a word.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(untagged)]
pub enum RawMtu {
    Number(u16),
    Word(String),
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MeshFile {
    #[serde(default)]
    pub options: RawOptions,
    #[serde(default)]
    pub nodes: Vec<RawNode>,
    #[serde(default)]
    pub peers: Vec<RawPeer>,
}

#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    Syntax { path: String, reason: String },
    #[error("{path}: options.{field}: {reason}")]
    Option {
        path: String,
        field: &'static str,
        reason: String,
    },
}

impl MeshFile {
    pub fn read(path: &Path) -> Result<Loaded, FileError> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| FileError::Read {
            path: name.clone(),
            source,
        })?;
        Self::parse(&text, &name)
    }

    /// Parses YAML or JSON (JSON is YAML).
    pub fn parse(text: &str, name: &str) -> Result<Loaded, FileError> {
        let file: MeshFile = serde_yaml::from_str(text).map_err(|e| FileError::Syntax {
            path: name.to_string(),
            reason: e.to_string(),
        })?;
        file.load(name)
    }

    fn load(&self, name: &str) -> Result<Loaded, FileError> {
        let mut options = MeshOptions::default();
        let o = &self.options;
        if let Some(g) = o.granularity {
            options.granularity = g;
        }
        if let Some(s) = &o.subnet {
            options.subnet = s.parse().map_err(|_| FileError::Option {
                path: name.to_string(),
                field: "subnet",
                reason: format!("{s:?} is not a CIDR"),
            })?;
            options.subnet = options.subnet.trunc();
        }
        if let Some(p) = o.port {
            if p == 0 {
                return Err(FileError::Option {
                    path: name.to_string(),
                    field: "port",
                    reason: "must be 1..65535".into(),
                });
            }
            options.port = p;
        }
        if let Some(e) = o.encapsulate {
            options.encapsulate = e;
        }
        match &o.mtu {
            None => {}
            Some(RawMtu::Number(m)) if (Mtu::MIN..=9000).contains(m) => {
                options.mtu = Mtu::Fixed(*m)
            }
            Some(RawMtu::Word(w)) if w == "auto" => options.mtu = Mtu::Auto,
            Some(other) => {
                let shown = match other {
                    RawMtu::Number(m) => m.to_string(),
                    RawMtu::Word(w) => format!("{w:?}"),
                };
                return Err(FileError::Option {
                    path: name.to_string(),
                    field: "mtu",
                    reason: format!("{shown} is neither auto nor within 1280..9000"),
                });
            }
        }
        if let Some(l) = o.local {
            options.local = l;
        }
        if let Some(c) = &o.compatibility {
            options.compatibility = c.parse().map_err(|reason| FileError::Option {
                path: name.to_string(),
                field: "compatibility",
                reason,
            })?;
        }
        let mut snapshot = Snapshot::default();
        let mut rejected = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for raw in &self.nodes {
            if !seen.insert(raw.name.clone()) {
                rejected.push(RecordError {
                    kind: "node",
                    name: raw.name.clone(),
                    field: "name".into(),
                    reason: "appears more than once; the first is kept".into(),
                });
                continue;
            }
            match raw.parse() {
                Ok(n) => snapshot.nodes.push(n),
                Err(e) => rejected.push(e),
            }
        }
        for raw in &self.peers {
            match raw.parse() {
                Ok(p) => snapshot.peers.push(p),
                Err(e) => rejected.push(e),
            }
        }
        Ok(Loaded {
            options,
            snapshot,
            rejected,
            warnings: Vec::new(),
            announced: Default::default(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "jYkfTPBnJTk8ehUeUMvJjwWShRJD4ls1YrtIl0pZuXY=";

    #[test]
    fn yaml_and_json_with_one_bad_node() {
        let yaml = format!(
            "options: {{granularity: cross, subnet: 10.9.0.7/24, port: 5000}}\n\
             nodes:\n\
             - {{name: a, location: x, endpoint: '1.1.1.1:5000', internalIP: 10.0.0.1/24, podCIDRs: [10.42.0.0/24], publicKey: {KEY}}}\n\
             - {{name: b, endpoint: 'not an endpoint', podCIDRs: [10.42.1.0/24], publicKey: {KEY}}}\n\
             peers:\n\
             - {{name: p, allowedIPs: [10.5.0.1/32], publicKey: {KEY}}}\n"
        );
        let l = MeshFile::parse(&yaml, "mesh.yaml").unwrap();
        assert_eq!(l.options.granularity, Granularity::Cross);
        assert_eq!(l.options.subnet.to_string(), "10.9.0.0/24");
        assert_eq!(l.options.port, 5000);
        assert_eq!(l.snapshot.nodes.len(), 1);
        assert_eq!(l.snapshot.peers.len(), 1);
        assert_eq!(l.rejected.len(), 1);
        assert_eq!(
            l.rejected[0].to_string(),
            "node b: endpoint: \"not an endpoint\" is not HOST:PORT"
        );

        let json = format!(
            r#"{{"nodes":[{{"name":"a","podCIDRs":["10.42.0.0/24"],"publicKey":"{KEY}"}}]}}"#
        );
        assert_eq!(
            MeshFile::parse(&json, "m.json")
                .unwrap()
                .snapshot
                .nodes
                .len(),
            1
        );
    }

    #[test]
    fn file_level_errors() {
        for (text, needle) in [
            ("nodes: [", "m"),
            ("bogus: 1", "unknown field"),
            ("options: {subnet: nope}", "options.subnet"),
            ("options: {port: 0}", "options.port"),
            ("options: {mtu: 100}", "options.mtu"),
            ("options: {mtu: big}", "options.mtu"),
            ("options: {compatibility: cilium}", "options.compatibility"),
            ("options: {granularity: mesh}", "unknown variant"),
            ("nodes: [{name: a, colour: red}]", "unknown field"),
        ] {
            let e = MeshFile::parse(text, "m").unwrap_err().to_string();
            assert!(e.contains(needle), "{text}: {e}");
        }
        let dup = format!("nodes: [{{name: a, publicKey: {KEY}}}, {{name: a, publicKey: {KEY}}}]");
        let l = MeshFile::parse(&dup, "m").unwrap();
        assert_eq!(
            l.rejected[0].reason,
            "appears more than once; the first is kept"
        );
    }
}
