//! In-process IPAM with the reference host-local plugin's on-disk layout, so
//! that both can serve the same network (and a node can switch plugins)
//! without ever handing out one address twice:
//!
//! - `DATADIR/NETWORK/IP`: one file per reserved address, holding
//!   `CONTAINERID\r\nIFNAME`;
//! - `DATADIR/NETWORK/last_reserved_ip.N`: the last address handed out from
//!   range set N, where the next search starts;
//! - `DATADIR/NETWORK/lock`: an exclusive flock held for every operation.

use crate::config::{from_u128, to_u128, Cidr, Range};
use crate::error::CniError;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

const LAST_RESERVED: &str = "last_reserved_ip.";
const LINE_BREAK: &str = "\r\n";

/// An address handed out, with the range it came from.
#[derive(Clone, Debug, PartialEq)]
pub struct Allocation {
    pub address: Cidr,
    pub gateway: IpAddr,
}

/// The locked store of one network. The lock is released on drop.
pub struct Store {
    dir: PathBuf,
    _lock: File,
}

fn io_err(what: &str, path: &Path, e: std::io::Error) -> CniError {
    CniError::io(format!("{what} {}: {e}", path.display()))
}

impl Store {
    /// Opens (creating if needed) and locks the store of `network`.
    pub fn lock(data_dir: &Path, network: &str) -> Result<Self, CniError> {
        let dir = data_dir.join(network);
        fs::create_dir_all(&dir).map_err(|e| io_err("cannot create", &dir, e))?;
        let lock_path = dir.join("lock");
        let lock = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&lock_path)
            .map_err(|e| io_err("cannot open", &lock_path, e))?;
        loop {
            // SAFETY: flock on a descriptor we own.
            let rc = unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) };
            if rc == 0 {
                break;
            }
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(io_err("cannot lock", &lock_path, e));
            }
        }
        Ok(Self { dir, _lock: lock })
    }

    fn ip_path(&self, ip: IpAddr) -> PathBuf {
        self.dir.join(ip.to_string())
    }

    /// Claims `ip` for the attachment; false if someone holds it already.
    fn reserve(&self, ip: IpAddr, id: &str, ifname: &str, set: usize) -> Result<bool, CniError> {
        let path = self.ip_path(ip);
        let mut f = match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(&path)
        {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Ok(false),
            Err(e) => return Err(io_err("cannot create", &path, e)),
        };
        if let Err(e) = f.write_all(format!("{}{LINE_BREAK}{ifname}", id.trim()).as_bytes()) {
            let _ = fs::remove_file(&path);
            return Err(io_err("cannot write", &path, e));
        }
        let last = self.dir.join(format!("{LAST_RESERVED}{set}"));
        fs::write(&last, ip.to_string()).map_err(|e| io_err("cannot write", &last, e))?;
        Ok(true)
    }

    fn last_reserved(&self, set: usize) -> Option<IpAddr> {
        fs::read_to_string(self.dir.join(format!("{LAST_RESERVED}{set}")))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// Every reservation: (address, container id, ifname). Files that are not
    /// reservations (the lock, last_reserved_ip.N) are skipped.
    pub fn entries(&self) -> Vec<(IpAddr, String, String)> {
        let Ok(rd) = fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        rd.filter_map(|e| {
            let e = e.ok()?;
            let ip: IpAddr = e.file_name().to_str()?.parse().ok()?;
            let content = fs::read_to_string(e.path()).ok()?;
            let mut parts = content.splitn(2, LINE_BREAK);
            let id = parts.next()?.trim().to_string();
            let ifname = parts.next().unwrap_or("").trim().to_string();
            Some((ip, id, ifname))
        })
        .collect()
    }

    /// Addresses held by this attachment. A file with only an id (the older
    /// host-local format) matches any ifname.
    pub fn by_attachment(&self, id: &str, ifname: &str) -> Vec<IpAddr> {
        self.entries()
            .into_iter()
            .filter(|(_, i, n)| i == id.trim() && (n.is_empty() || n == ifname))
            .map(|(ip, _, _)| ip)
            .collect()
    }

    /// Releases this attachment's addresses; returns them.
    pub fn release(&self, id: &str, ifname: &str) -> Result<Vec<IpAddr>, CniError> {
        let ips = self.by_attachment(id, ifname);
        for ip in &ips {
            let p = self.ip_path(*ip);
            match fs::remove_file(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err("cannot remove", &p, e)),
            }
        }
        Ok(ips)
    }

    /// Releases every reservation whose attachment is not in `keep`.
    pub fn release_all_but(&self, keep: &[(String, String)]) -> Result<usize, CniError> {
        let mut n = 0;
        for (ip, id, ifname) in self.entries() {
            let kept = keep
                .iter()
                .any(|(k, f)| *k == id && (ifname.is_empty() || *f == ifname));
            if !kept {
                let p = self.ip_path(ip);
                fs::remove_file(&p).map_err(|e| io_err("cannot remove", &p, e))?;
                n += 1;
            }
        }
        Ok(n)
    }

    /// Allocates one address from each range set for the attachment, as
    /// host-local does: the search in each set starts after the set's last
    /// reserved address and wraps once around all its ranges, skipping
    /// gateways and reserved addresses. All-or-nothing.
    pub fn allocate(
        &self,
        sets: &[Vec<Range>],
        id: &str,
        ifname: &str,
    ) -> Result<Vec<Allocation>, CniError> {
        if let Some(ip) = self.by_attachment(id, ifname).first() {
            return Err(CniError::invalid_config(format!(
                "{ip} is already allocated to container {id} interface {ifname}; duplicate allocation is not allowed"
            )));
        }
        let mut done = Vec::new();
        for (i, set) in sets.iter().enumerate() {
            match self.allocate_in_set(i, set, id, ifname) {
                Ok(a) => done.push(a),
                Err(e) => {
                    for a in &done {
                        let _ = fs::remove_file(self.ip_path(a.address.addr));
                    }
                    return Err(e);
                }
            }
        }
        Ok(done)
    }

    fn allocate_in_set(
        &self,
        set_index: usize,
        set: &[Range],
        id: &str,
        ifname: &str,
    ) -> Result<Allocation, CniError> {
        // The set's ranges laid end to end as positions 0..total.
        let sizes: Vec<u128> = set
            .iter()
            .map(|r| to_u128(r.end) - to_u128(r.start) + 1)
            .collect();
        let total = sizes.iter().fold(0u128, |a, b| a.saturating_add(*b));
        let position = |ip: IpAddr| -> Option<u128> {
            let mut base = 0u128;
            for (r, size) in set.iter().zip(&sizes) {
                if in_range(r, ip) {
                    return Some(base + (to_u128(ip) - to_u128(r.start)));
                }
                base = base.saturating_add(*size);
            }
            None
        };
        let address_at = |mut pos: u128| -> (&Range, IpAddr) {
            for (r, size) in set.iter().zip(&sizes) {
                if pos < *size {
                    return (r, from_u128(r.start.is_ipv4(), to_u128(r.start) + pos));
                }
                pos -= size;
            }
            let r = &set[0];
            (r, r.start)
        };
        // Start just after the last reservation, as host-local does.
        let first = self
            .last_reserved(set_index)
            .and_then(position)
            .map_or(0, |p| (p + 1) % total);
        // Every address once, but never more than 2^20 probes, so that a huge
        // IPv6 range that is somehow full cannot keep us busy for ever.
        for k in 0..total.min(1 << 20) {
            let (range, ip) = address_at((first + k) % total);
            if ip == range.gateway {
                continue;
            }
            if self.reserve(ip, id, ifname, set_index)? {
                return Ok(Allocation {
                    address: Cidr {
                        addr: ip,
                        prefix: range.subnet.prefix,
                    },
                    gateway: range.gateway,
                });
            }
        }
        Err(CniError::try_later(format!(
            "no IP addresses available in range set {}",
            set.iter()
                .map(|r| format!("{}-{}", r.start, r.end))
                .collect::<Vec<_>>()
                .join(", ")
        )))
    }
}

fn in_range(r: &Range, ip: IpAddr) -> bool {
    ip.is_ipv4() == r.start.is_ipv4()
        && to_u128(ip) >= to_u128(r.start)
        && to_u128(ip) <= to_u128(r.end)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RangeConf;

    fn range(subnet: &str, start: Option<&str>, end: Option<&str>) -> Range {
        let conf = crate::config::IpamConf {
            kind: "host-local".into(),
            subnet: None,
            range_start: None,
            range_end: None,
            gateway: None,
            ranges: vec![vec![RangeConf {
                subnet: subnet.parse().unwrap(),
                range_start: start.map(|s| s.parse().unwrap()),
                range_end: end.map(|s| s.parse().unwrap()),
                gateway: None,
            }]],
            routes: vec![],
            data_dir: None,
        };
        conf.range_sets().unwrap().remove(0).remove(0)
    }

    fn tempdir() -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "weft-ipam-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn allocates_in_order_skipping_gateway_and_writes_host_local_files() {
        let dir = tempdir();
        let set = vec![vec![range("10.0.0.0/29", None, None)]];
        let s = Store::lock(&dir, "net").unwrap();
        let a = s.allocate(&set, "c1", "eth0").unwrap();
        assert_eq!(a[0].address.to_string(), "10.0.0.2/29");
        assert_eq!(a[0].gateway.to_string(), "10.0.0.1");
        assert_eq!(
            fs::read_to_string(dir.join("net/10.0.0.2")).unwrap(),
            "c1\r\neth0"
        );
        assert_eq!(
            fs::read_to_string(dir.join("net/last_reserved_ip.0")).unwrap(),
            "10.0.0.2"
        );
        let ips: Vec<String> = (2..=5)
            .map(|i| {
                s.allocate(&set, &format!("c{i}"), "eth0").unwrap()[0]
                    .address
                    .addr
                    .to_string()
            })
            .collect();
        assert_eq!(ips, ["10.0.0.3", "10.0.0.4", "10.0.0.5", "10.0.0.6"]);
        // .7 is broadcast: the /29 is full.
        let e = s.allocate(&set, "c6", "eth0").unwrap_err();
        assert_eq!(e.code, 11);
        // Release one; the search continues after the last reservation and wraps.
        assert_eq!(s.release("c2", "eth0").unwrap().len(), 1);
        assert_eq!(
            s.allocate(&set, "c7", "eth0").unwrap()[0]
                .address
                .addr
                .to_string(),
            "10.0.0.3"
        );
        // Duplicate attachment is refused.
        assert_eq!(s.allocate(&set, "c7", "eth0").unwrap_err().code, 7);
        drop(s);
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn dual_stack_is_all_or_nothing_and_gc_keeps_valid() {
        let dir = tempdir();
        let sets = vec![
            vec![range("10.1.0.0/24", None, None)],
            vec![range("fd00::/120", Some("fd00::10"), Some("fd00::10"))],
        ];
        let s = Store::lock(&dir, "n").unwrap();
        let a = s.allocate(&sets, "a", "eth0").unwrap();
        assert_eq!(a[1].address.to_string(), "fd00::10/120");
        // The IPv6 range has one address: a second container fails and keeps no IPv4.
        assert!(s.allocate(&sets, "b", "eth0").is_err());
        assert!(s.by_attachment("b", "eth0").is_empty());
        let released = s.release_all_but(&[("a".into(), "eth0".into())]).unwrap();
        assert_eq!(released, 0);
        assert_eq!(s.release_all_but(&[]).unwrap(), 2);
        assert!(s.entries().is_empty());
        drop(s);
        let _ = fs::remove_dir_all(&dir);
    }
}
