//! The CNI configuration the agent writes for `weft-cni`: the node's pod
//! CIDRs as host-local ranges (one range set per family), Kilo's shape
//! otherwise (kube-bridge, default gateway, forced address, portmap). Written
//! atomically and only when it changes; containerd loads only the first
//! file in the directory.
//!
//! The network's name is also where host-local keeps its allocations
//! (`/var/lib/cni/networks/NAME`). On a node that ran Kilo, the running
//! pods' addresses are recorded under `kilo`: the agent then keeps that
//! name, so new pods get addresses next to theirs, never the same, and
//! deleting an old pod frees its address; Kilo's own conflist is moved
//! aside so that the runtime reads ours.

use ipnet::IpNet;
use serde_json::json;
use std::path::{Path, PathBuf};

pub const FILE_NAME: &str = "10-weft.conflist";
/// Kilo's conflist, in the same directory.
pub const KILO_FILE_NAME: &str = "10-kilo.conflist";
/// Where host-local (and weft-cni) keep allocations by default.
pub const IPAM_DIR: &str = "/var/lib/cni/networks";
/// The network's own name, and Kilo's.
pub const WEFT_NETWORK: &str = "weft";
pub const KILO_NETWORK: &str = "kilo";

/// The conflist for `pod_cidrs` under the default network name.
pub fn conflist(pod_cidrs: &[IpNet], mtu: u16) -> String {
    conflist_named(WEFT_NETWORK, pod_cidrs, mtu)
}

/// Which network name this node's conflist carries: the one it carries
/// already; else Kilo's where Kilo left its conflist or its allocations on
/// the node (a migration in place); else Weft's.
pub fn network_name(cni_dir: &Path, ipam_dir: &Path) -> &'static str {
    let current = std::fs::read_to_string(cni_dir.join(FILE_NAME))
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|v| v["name"].as_str().map(str::to_string));
    match current.as_deref() {
        Some(KILO_NETWORK) => KILO_NETWORK,
        Some(_) => WEFT_NETWORK,
        None if cni_dir.join(KILO_FILE_NAME).exists() || ipam_dir.join(KILO_NETWORK).is_dir() => {
            KILO_NETWORK
        }
        None => WEFT_NETWORK,
    }
}

/// Moves Kilo's conflist aside (to `10-kilo.conflist.weft-backup`) so that
/// the runtime reads Weft's; the path it went to, if there was one.
pub fn retire_kilo_conflist(cni_dir: &Path) -> std::io::Result<Option<PathBuf>> {
    let kilo = cni_dir.join(KILO_FILE_NAME);
    if !kilo.exists() {
        return Ok(None);
    }
    let backup = cni_dir.join(format!("{KILO_FILE_NAME}.weft-backup"));
    std::fs::rename(&kilo, &backup)?;
    Ok(Some(backup))
}

pub fn conflist_named(name: &str, pod_cidrs: &[IpNet], mtu: u16) -> String {
    let ranges: Vec<_> = pod_cidrs
        .iter()
        .map(|c| json!([{"subnet": c.trunc().to_string()}]))
        .collect();
    let v = json!({
        "cniVersion": "1.0.0",
        "name": name,
        "plugins": [
            {
                "type": "weft-cni",
                "bridge": "kube-bridge",
                "isDefaultGateway": true,
                "forceAddress": true,
                "mtu": mtu,
                "ipam": {"type": "host-local", "ranges": ranges}
            },
            {"type": "portmap", "snat": true, "capabilities": {"portMappings": true}}
        ]
    });
    let mut s = serde_json::to_string_pretty(&v).unwrap_or_default();
    s.push('\n');
    s
}

/// Writes `content` to `dir/10-weft.conflist` if it differs; true if written.
pub fn write_if_changed(dir: &Path, content: &str) -> std::io::Result<bool> {
    let path = dir.join(FILE_NAME);
    if std::fs::read_to_string(&path).ok().as_deref() == Some(content) {
        return Ok(false);
    }
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(".{FILE_NAME}.tmp"));
    std::fs::write(&tmp, content)?;
    std::fs::rename(&tmp, &path)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_that_ran_kilo_keeps_kilos_network() {
        let base = std::env::temp_dir().join(format!("weft-cni-name-{}", std::process::id()));
        let (cni, ipam) = (base.join("net.d"), base.join("networks"));
        std::fs::create_dir_all(&cni).unwrap();
        std::fs::create_dir_all(&ipam).unwrap();
        assert_eq!(network_name(&cni, &ipam), WEFT_NETWORK, "a fresh node");
        std::fs::create_dir_all(ipam.join("kilo")).unwrap();
        assert_eq!(
            network_name(&cni, &ipam),
            KILO_NETWORK,
            "Kilo's allocations"
        );
        std::fs::write(cni.join(KILO_FILE_NAME), "{}").unwrap();
        let moved = retire_kilo_conflist(&cni).unwrap().unwrap();
        assert!(moved.exists() && !cni.join(KILO_FILE_NAME).exists());
        // Once written, the name stays, whatever else is on the node.
        write_if_changed(&cni, &conflist_named(KILO_NETWORK, &[], 1420)).unwrap();
        std::fs::remove_dir_all(ipam.join("kilo")).unwrap();
        assert_eq!(network_name(&cni, &ipam), KILO_NETWORK);
        write_if_changed(&cni, &conflist(&[], 1420)).unwrap();
        std::fs::create_dir_all(ipam.join("kilo")).unwrap();
        assert_eq!(network_name(&cni, &ipam), WEFT_NETWORK);
        let _ = std::fs::remove_dir_all(&base);
    }

    #[test]
    fn dual_stack_conflist_and_atomic_write() {
        let c = conflist(
            &[
                "10.42.3.0/24".parse().unwrap(),
                "fd42:3::/64".parse().unwrap(),
            ],
            1420,
        );
        let v: serde_json::Value = serde_json::from_str(&c).unwrap();
        assert_eq!(v["cniVersion"], "1.0.0");
        assert_eq!(v["plugins"][0]["type"], "weft-cni");
        assert_eq!(v["plugins"][0]["mtu"], 1420);
        assert_eq!(
            v["plugins"][0]["ipam"]["ranges"][1][0]["subnet"],
            "fd42:3::/64"
        );
        let dir = std::env::temp_dir().join(format!("weft-cni-conf-{}", std::process::id()));
        assert!(write_if_changed(&dir, &c).unwrap());
        assert!(!write_if_changed(&dir, &c).unwrap());
        assert_eq!(std::fs::read_to_string(dir.join(FILE_NAME)).unwrap(), c);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
