//! The node's WireGuard key: generated on first start, kept 0600 in the
//! state directory, reused on every start after (so a restart keeps the
//! node's identity and its peers keep working). Stored in base64, as
//! `wg genkey` writes it.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;
use wgconf::PrivateKey;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read the key {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("the key {path} is not a base64 WireGuard key")]
    Invalid { path: String },
    #[error("the key {path} is readable by others (mode {mode:o}); make it 0600")]
    Permissions { path: String, mode: u32 },
    #[error("cannot create the key {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot generate a key: {0}")]
    Generate(String),
}

/// Loads the key at `path`, creating it (and its directory) if missing.
/// Returns the key and whether it was created now.
pub fn load_or_create(path: &Path) -> Result<(PrivateKey, bool), KeyError> {
    let name = path.display().to_string();
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let mode = std::fs::metadata(path)
                .map(|m| m.permissions().mode() & 0o777)
                .unwrap_or(0);
            if mode & 0o077 != 0 {
                return Err(KeyError::Permissions { path: name, mode });
            }
            let key = PrivateKey::from_base64(text.trim())
                .map_err(|_| KeyError::Invalid { path: name })?;
            Ok((key, false))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(|source| KeyError::Write {
                    path: name.clone(),
                    source,
                })?;
            }
            let key = PrivateKey::generate().map_err(|e| KeyError::Generate(e.to_string()))?;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .map_err(|source| KeyError::Write {
                    path: name.clone(),
                    source,
                })?;
            writeln!(f, "{}", key.to_base64())
                .map_err(|source| KeyError::Write { path: name, source })?;
            Ok((key, true))
        }
        Err(source) => Err(KeyError::Read { path: name, source }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_once_private_and_reused() {
        let dir = std::env::temp_dir().join(format!("weft-key-test-{}", std::process::id()));
        let path = dir.join("state/key");
        let (k1, created) = load_or_create(&path).unwrap();
        assert!(created);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let (k2, created) = load_or_create(&path).unwrap();
        assert!(!created);
        assert_eq!(k1, k2);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            load_or_create(&path),
            Err(KeyError::Permissions { .. })
        ));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::write(&path, "garbage").unwrap();
        assert!(matches!(
            load_or_create(&path),
            Err(KeyError::Invalid { .. })
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
