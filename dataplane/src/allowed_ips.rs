//! AllowedIPs: the cryptokey routing table.
//!
//! Outbound, the longest prefix that contains a packet's destination picks the
//! peer; inbound, a decrypted packet is accepted only if its source falls in a
//! prefix owned by the peer that sent it. A prefix belongs to at most one peer:
//! inserting it for another peer moves it, as `wg` expects.
//!
//! Lookup walks the distinct prefix lengths from longest to shortest and probes a
//! hash map per length. Real tables have few distinct lengths (/32, /24, /16, /0),
//! so that is a handful of probes with no pointer chasing, and the structure stays
//! simple enough to check by eye.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub use wgconf::prefix::{mask128, mask32, IpPrefix, PrefixError};

/// One address family's table: a map per prefix length, longest first.
#[derive(Clone)]
struct FamilyTable<K, T> {
    by_len: Vec<(u8, HashMap<K, T>)>,
}

impl<K: std::hash::Hash + Eq + Copy, T: Clone> FamilyTable<K, T> {
    fn new() -> Self {
        Self { by_len: Vec::new() }
    }

    fn insert(&mut self, len: u8, key: K, value: T) -> Option<T> {
        let pos = match self.by_len.binary_search_by(|(l, _)| len.cmp(l)) {
            Ok(pos) => pos,
            Err(pos) => {
                self.by_len.insert(pos, (len, HashMap::new()));
                pos
            }
        };
        self.by_len[pos].1.insert(key, value)
    }

    fn remove(&mut self, len: u8, key: K) -> Option<T> {
        let pos = self.by_len.binary_search_by(|(l, _)| len.cmp(l)).ok()?;
        let old = self.by_len[pos].1.remove(&key);
        if self.by_len[pos].1.is_empty() {
            self.by_len.remove(pos);
        }
        old
    }

    fn get_exact(&self, len: u8, key: K) -> Option<&T> {
        let pos = self.by_len.binary_search_by(|(l, _)| len.cmp(l)).ok()?;
        self.by_len[pos].1.get(&key)
    }

    fn lookup(&self, masked: impl Fn(u8) -> K) -> Option<&T> {
        self.by_len
            .iter()
            .find_map(|(len, map)| map.get(&masked(*len)))
    }

    fn retain(&mut self, mut keep: impl FnMut(&T) -> bool) {
        for (_, map) in &mut self.by_len {
            map.retain(|_, v| keep(v));
        }
        self.by_len.retain(|(_, map)| !map.is_empty());
    }

    fn len(&self) -> usize {
        self.by_len.iter().map(|(_, m)| m.len()).sum()
    }
}

/// Longest-prefix-match table from IP prefixes to values (peer handles).
#[derive(Clone)]
pub struct AllowedIps<T> {
    v4: FamilyTable<u32, T>,
    v6: FamilyTable<u128, T>,
}

impl<T: Clone> Default for AllowedIps<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: Clone> AllowedIps<T> {
    pub fn new() -> Self {
        Self {
            v4: FamilyTable::new(),
            v6: FamilyTable::new(),
        }
    }

    /// Maps `prefix` to `value`, returning the value it replaced.
    pub fn insert(&mut self, prefix: IpPrefix, value: T) -> Option<T> {
        match prefix.addr() {
            IpAddr::V4(a) => self.v4.insert(prefix.len(), u32::from(a), value),
            IpAddr::V6(a) => self.v6.insert(prefix.len(), u128::from(a), value),
        }
    }

    pub fn remove(&mut self, prefix: IpPrefix) -> Option<T> {
        match prefix.addr() {
            IpAddr::V4(a) => self.v4.remove(prefix.len(), u32::from(a)),
            IpAddr::V6(a) => self.v6.remove(prefix.len(), u128::from(a)),
        }
    }

    /// The value stored for exactly this prefix.
    pub fn get(&self, prefix: IpPrefix) -> Option<&T> {
        match prefix.addr() {
            IpAddr::V4(a) => self.v4.get_exact(prefix.len(), u32::from(a)),
            IpAddr::V6(a) => self.v6.get_exact(prefix.len(), u128::from(a)),
        }
    }

    /// The value of the longest prefix containing `ip`.
    pub fn lookup(&self, ip: IpAddr) -> Option<&T> {
        match ip {
            IpAddr::V4(a) => {
                let a = u32::from(a);
                self.v4.lookup(|len| a & mask32(len))
            }
            IpAddr::V6(a) => {
                let a = u128::from(a);
                self.v6.lookup(|len| a & mask128(len))
            }
        }
    }

    /// Keeps only the entries whose value passes `keep`.
    pub fn retain(&mut self, mut keep: impl FnMut(&T) -> bool) {
        self.v4.retain(&mut keep);
        self.v6.retain(&mut keep);
    }

    /// All entries, IPv4 first, each family longest prefix first.
    pub fn iter(&self) -> impl Iterator<Item = (IpPrefix, &T)> {
        let v4 = self.v4.by_len.iter().flat_map(|(len, map)| {
            // Stored keys are canonical and their lengths valid for the
            // family (they came from an IpPrefix), so `new` never refuses.
            map.iter().filter_map(move |(a, v)| {
                let prefix = IpPrefix::new(IpAddr::V4(Ipv4Addr::from(*a)), *len).ok()?;
                Some((prefix, v))
            })
        });
        let v6 = self.v6.by_len.iter().flat_map(|(len, map)| {
            // Stored keys are canonical and their lengths valid for the
            // family (they came from an IpPrefix), so `new` never refuses.
            map.iter().filter_map(move |(a, v)| {
                let prefix = IpPrefix::new(IpAddr::V6(Ipv6Addr::from(*a)), *len).ok()?;
                Some((prefix, v))
            })
        });
        v4.chain(v6)
    }

    pub fn len(&self) -> usize {
        self.v4.len() + self.v6.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> IpPrefix {
        s.parse().unwrap()
    }
    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn longest_prefix_wins() {
        let mut t = AllowedIps::new();
        t.insert(p("0.0.0.0/0"), "default");
        t.insert(p("10.0.0.0/8"), "a");
        t.insert(p("10.1.0.0/16"), "b");
        t.insert(p("10.1.2.3/32"), "c");
        t.insert(p("::/0"), "v6default");
        t.insert(p("fd00::/64"), "v6a");
        assert_eq!(t.lookup(ip("10.1.2.3")), Some(&"c"));
        assert_eq!(t.lookup(ip("10.1.2.4")), Some(&"b"));
        assert_eq!(t.lookup(ip("10.2.0.1")), Some(&"a"));
        assert_eq!(t.lookup(ip("192.168.0.1")), Some(&"default"));
        assert_eq!(t.lookup(ip("fd00::5")), Some(&"v6a"));
        assert_eq!(t.lookup(ip("fd01::5")), Some(&"v6default"));
        t.remove(p("0.0.0.0/0"));
        assert_eq!(t.lookup(ip("192.168.0.1")), None);
        assert_eq!(t.len(), 5);
    }

    #[test]
    fn families_do_not_mix() {
        let mut t = AllowedIps::new();
        t.insert(p("0.0.0.0/0"), 1);
        assert_eq!(t.lookup(ip("::1")), None);
        assert_eq!(t.lookup(ip("::ffff:10.0.0.1")), None);
    }

    #[test]
    fn insert_moves_prefix_and_retain_drops_owner() {
        let mut t = AllowedIps::new();
        t.insert(p("10.0.0.0/24"), 1);
        assert_eq!(t.insert(p("10.0.0.0/24"), 2), Some(1));
        t.insert(p("10.0.1.0/24"), 1);
        t.insert(p("fd00::/8"), 1);
        t.retain(|v| *v != 1);
        let left: Vec<_> = t.iter().map(|(pf, v)| (pf.to_string(), *v)).collect();
        assert_eq!(left, vec![("10.0.0.0/24".to_string(), 2)]);
    }

    /// Compare against a brute-force scan over a pseudo-random table.
    #[test]
    fn matches_linear_scan() {
        let mut next = crate::test_rng(0x1234_5678);
        let mut t = AllowedIps::new();
        let mut entries = Vec::new();
        for i in 0..300u32 {
            let len = (next() % 33) as u8;
            // Keep addresses in a small space so prefixes overlap.
            let addr = Ipv4Addr::from(0x0a00_0000 | (next() as u32 & 0x00ff_ffff));
            let pf = IpPrefix::new(IpAddr::V4(addr), len).unwrap();
            t.insert(pf, i);
            entries.retain(|(q, _)| *q != pf);
            entries.push((pf, i));
        }
        for _ in 0..5000 {
            let a = IpAddr::V4(Ipv4Addr::from(0x0a00_0000 | (next() as u32 & 0x00ff_ffff)));
            let want = entries
                .iter()
                .filter(|(pf, _)| pf.contains(a))
                .max_by_key(|(pf, _)| pf.len())
                .map(|(_, v)| *v);
            assert_eq!(t.lookup(a).copied(), want, "lookup {a}");
        }
    }
}
