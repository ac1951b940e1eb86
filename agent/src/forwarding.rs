//! IP forwarding: a node whose kernel does not forward drops its pods'
//! traffic to anything beyond the node, while everything else looks fine.
//! The agent needs it for the families of its pod CIDRs (IPv6 only where
//! the node has IPv6 pods: turning on IPv6 forwarding stops the kernel from
//! taking router advertisements, which would break IPv6 hosts that rely on
//! them). The shipped DaemonSet is not privileged, so /proc/sys is read-only
//! to the agent: a small privileged init container (`weft-agent
//! --enable-forwarding`) turns forwarding on, and the agent checks it on
//! every pass, tries to turn it on itself, and otherwise says so (an error
//! in the log, a failing /readyz).

use ipnet::IpNet;
use std::path::{Path, PathBuf};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub fn name(self) -> &'static str {
        match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        }
    }

    fn sysctl(self) -> &'static str {
        match self {
            Family::V4 => "net/ipv4/ip_forward",
            Family::V6 => "net/ipv6/conf/all/forwarding",
        }
    }
}

/// The families this node must forward: those of its pod CIDRs.
pub fn needed(pod_cidrs: &[IpNet]) -> Vec<Family> {
    let mut v = Vec::new();
    if pod_cidrs.iter().any(|c| matches!(c, IpNet::V4(_))) {
        v.push(Family::V4);
    }
    if pod_cidrs.iter().any(|c| matches!(c, IpNet::V6(_))) {
        v.push(Family::V6);
    }
    v
}

/// Where the sysctls are read and written (`/proc/sys`; tests use a
/// directory of their own).
#[derive(Clone, Debug)]
pub struct Sysctls {
    root: PathBuf,
}

impl Default for Sysctls {
    fn default() -> Self {
        Self {
            root: PathBuf::from("/proc/sys"),
        }
    }
}

impl Sysctls {
    pub fn at(root: &Path) -> Self {
        Self {
            root: root.to_path_buf(),
        }
    }

    fn path(&self, f: Family) -> PathBuf {
        self.root.join(f.sysctl())
    }

    pub fn is_on(&self, f: Family) -> bool {
        std::fs::read_to_string(self.path(f)).is_ok_and(|v| v.trim() == "1")
    }

    /// Turns forwarding on for `families` where it is off. Returns the
    /// families it turned on, or what is still off and why, with what to do.
    pub fn ensure(&self, families: &[Family]) -> Result<Vec<Family>, String> {
        let mut turned_on = Vec::new();
        let mut problems = Vec::new();
        for &f in families {
            if self.is_on(f) {
                continue;
            }
            let path = self.path(f);
            match std::fs::write(&path, "1") {
                Ok(()) if self.is_on(f) => turned_on.push(f),
                Ok(()) => problems.push(format!(
                    "{} forwarding stays off ({})",
                    f.name(),
                    path.display()
                )),
                Err(e) => problems.push(format!(
                    "{} forwarding is off and this agent cannot turn it on ({}: {e})",
                    f.name(),
                    path.display()
                )),
            }
        }
        if problems.is_empty() {
            return Ok(turned_on);
        }
        let by_hand: Vec<String> = families
            .iter()
            .map(|f| format!("sysctl -w {}=1", f.sysctl().replace('/', ".")))
            .collect();
        Err(format!(
            "{}: pods cannot reach anything beyond this node. The DaemonSet's init container \
             `forwarding` turns it on (weft-agent --enable-forwarding, privileged); by hand: {}",
            problems.join("; "),
            by_hand.join(" and ")
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree() -> (PathBuf, Sysctls) {
        let dir = std::env::temp_dir().join(format!(
            "weft-sysctl-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        std::fs::create_dir_all(dir.join("net/ipv4")).unwrap();
        std::fs::create_dir_all(dir.join("net/ipv6/conf/all")).unwrap();
        std::fs::write(dir.join("net/ipv4/ip_forward"), "0\n").unwrap();
        std::fs::write(dir.join("net/ipv6/conf/all/forwarding"), "0\n").unwrap();
        let s = Sysctls::at(&dir);
        (dir, s)
    }

    #[test]
    fn only_the_families_of_the_pod_cidrs() {
        let v4: IpNet = "10.42.0.0/24".parse().unwrap();
        let v6: IpNet = "fd00:42::/64".parse().unwrap();
        assert_eq!(needed(&[v4]), [Family::V4]);
        assert_eq!(needed(&[v4, v6]), [Family::V4, Family::V6]);
        assert!(needed(&[]).is_empty());
        let (dir, s) = tree();
        assert_eq!(s.ensure(&needed(&[v4])).unwrap(), [Family::V4]);
        assert!(s.is_on(Family::V4));
        assert!(!s.is_on(Family::V6), "IPv6 left alone in an IPv4 cluster");
        assert!(s.ensure(&needed(&[v4])).unwrap().is_empty(), "already on");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn says_what_to_do_when_it_cannot() {
        let (dir, _) = tree();
        // A tree the agent cannot write: a missing directory.
        let s = Sysctls::at(&dir.join("missing"));
        let e = s.ensure(&[Family::V4]).unwrap_err();
        assert!(e.contains("IPv4 forwarding is off"), "{e}");
        assert!(e.contains("--enable-forwarding"), "{e}");
        let _ = std::fs::remove_dir_all(dir);
    }
}
