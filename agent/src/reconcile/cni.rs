//! The CNI configuration the agent writes for `weft-cni`: the node's pod
//! CIDRs as host-local ranges (one range set per family), Kilo's shape
//! otherwise (kube-bridge, default gateway, forced address, portmap). Written
//! atomically and only when it changes; `10-weft.conflist` sorts before
//! other files, and containerd loads only the first.

use ipnet::IpNet;
use serde_json::json;
use std::path::Path;

pub const FILE_NAME: &str = "10-weft.conflist";

pub fn conflist(pod_cidrs: &[IpNet], mtu: u16) -> String {
    let ranges: Vec<_> = pod_cidrs
        .iter()
        .map(|c| json!([{"subnet": c.trunc().to_string()}]))
        .collect();
    let v = json!({
        "cniVersion": "1.0.0",
        "name": "weft",
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
