//! IP prefixes in the two forms Weft's programs meet them: [`IpPrefix`], as
//! WireGuard's AllowedIPs hold them (canonical: host bits cleared, a bare
//! address is a host prefix), and [`Cidr`], as an interface address or a
//! CNI configuration writes them (`10.42.3.7/24`: the host bits are the
//! point). Both parse `ADDRESS/LENGTH` and refuse a length the family
//! cannot have.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// An IP prefix in canonical form (host bits cleared).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IpPrefix {
    addr: IpAddr,
    len: u8,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PrefixError {
    #[error("'{0}' is not an IP prefix (want ADDRESS/LENGTH)")]
    Syntax(String),
    #[error("prefix length {len} is too long for {addr}")]
    Length { addr: IpAddr, len: u8 },
}

impl IpPrefix {
    pub fn new(addr: IpAddr, len: u8) -> Result<Self, PrefixError> {
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if len > max {
            return Err(PrefixError::Length { addr, len });
        }
        let addr = match addr {
            IpAddr::V4(a) => IpAddr::V4(Ipv4Addr::from(u32::from(a) & mask32(len))),
            IpAddr::V6(a) => IpAddr::V6(Ipv6Addr::from(u128::from(a) & mask128(len))),
        };
        Ok(Self { addr, len })
    }
    pub fn addr(&self) -> IpAddr {
        self.addr
    }
    pub fn len(&self) -> u8 {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        false
    }
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(p), IpAddr::V4(a)) => u32::from(a) & mask32(self.len) == u32::from(p),
            (IpAddr::V6(p), IpAddr::V6(a)) => u128::from(a) & mask128(self.len) == u128::from(p),
            _ => false,
        }
    }
}

impl FromStr for IpPrefix {
    type Err = PrefixError;
    /// Parses `ADDR/LEN`, or a bare address as a host prefix.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let syntax = || PrefixError::Syntax(s.to_string());
        let (addr, len) = match s.split_once('/') {
            Some((a, l)) => {
                let addr: IpAddr = a.parse().map_err(|_| syntax())?;
                let len: u8 = l.parse().map_err(|_| syntax())?;
                (addr, len)
            }
            None => {
                let addr: IpAddr = s.parse().map_err(|_| syntax())?;
                (addr, if addr.is_ipv4() { 32 } else { 128 })
            }
        };
        Self::new(addr, len)
    }
}

impl fmt::Display for IpPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

impl fmt::Debug for IpPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// An address with its prefix length, host bits kept: an interface's address
/// (`10.42.3.1/24`) or a subnet as a configuration writes it.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, PartialOrd, Ord)]
pub struct Cidr {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl Cidr {
    /// The longest prefix `addr`'s family has (32 or 128).
    pub fn max_prefix(addr: IpAddr) -> u8 {
        if addr.is_ipv4() {
            32
        } else {
            128
        }
    }
    /// The netmask as an integer of the family's width (in the low bits for
    /// IPv4); a length beyond the family's counts as the full length.
    fn mask(&self) -> u128 {
        match self.addr {
            IpAddr::V4(_) => u128::from(mask32(self.prefix.min(32))),
            IpAddr::V6(_) => mask128(self.prefix.min(128)),
        }
    }
    /// Every bit of the family set.
    fn all(&self) -> u128 {
        match self.addr {
            IpAddr::V4(_) => u128::from(u32::MAX),
            IpAddr::V6(_) => u128::MAX,
        }
    }
    /// The network address (host bits cleared).
    pub fn network(&self) -> IpAddr {
        from_bits(self.addr.is_ipv4(), bits(self.addr) & self.mask())
    }
    /// The highest address in the network (broadcast for IPv4).
    pub fn last(&self) -> IpAddr {
        let net = bits(self.addr) & self.mask();
        from_bits(self.addr.is_ipv4(), net | (self.all() & !self.mask()))
    }
    /// Whether `ip` is inside this network.
    pub fn contains(&self, ip: IpAddr) -> bool {
        ip.is_ipv4() == self.addr.is_ipv4()
            && bits(ip) & self.mask() == bits(self.addr) & self.mask()
    }
}

/// An address as an integer (IPv4 in the low 32 bits).
pub fn bits(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    }
}

/// The address of the given family whose integer is `n` (IPv4: its low 32 bits).
pub fn from_bits(v4: bool, n: u128) -> IpAddr {
    if v4 {
        IpAddr::V4(Ipv4Addr::from(n as u32))
    } else {
        IpAddr::V6(Ipv6Addr::from(n))
    }
}

impl FromStr for Cidr {
    type Err = PrefixError;
    /// Parses `ADDRESS/LENGTH`; the length is required.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let syntax = || PrefixError::Syntax(s.to_string());
        let (a, l) = s.split_once('/').ok_or_else(syntax)?;
        let addr: IpAddr = a.parse().map_err(|_| syntax())?;
        let prefix: u8 = l.parse().map_err(|_| syntax())?;
        if prefix > Self::max_prefix(addr) {
            return Err(PrefixError::Length { addr, len: prefix });
        }
        Ok(Self { addr, prefix })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// As the string it is written as, for configurations (CNI's JSON).
#[cfg(feature = "serde")]
impl<'de> serde::Deserialize<'de> for Cidr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(feature = "serde")]
impl serde::Serialize for Cidr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// The netmask of a `len`-bit IPv4 prefix, as an integer.
pub fn mask32(len: u8) -> u32 {
    if len == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(len))
    }
}

/// The netmask of a `len`-bit IPv6 prefix, as an integer.
pub fn mask128(len: u8) -> u128 {
    if len == 0 {
        0
    } else {
        u128::MAX << (128 - u32::from(len))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> IpPrefix {
        s.parse().unwrap()
    }

    #[test]
    fn prefixes_are_canonical() {
        assert_eq!(p("10.1.2.3/16").to_string(), "10.1.0.0/16");
        assert_eq!(p("10.1.2.3").to_string(), "10.1.2.3/32");
        assert_eq!(p("fd00::1:2/64").to_string(), "fd00::/64");
        assert_eq!(p("0.0.0.0/0").to_string(), "0.0.0.0/0");
        assert!("10.0.0.0/33".parse::<IpPrefix>().is_err());
        assert!("::/129".parse::<IpPrefix>().is_err());
        assert!("10.0.0/8".parse::<IpPrefix>().is_err());
        assert!("10.0.0.0/x".parse::<IpPrefix>().is_err());
        assert!("".parse::<IpPrefix>().is_err());
    }

    #[test]
    fn cidrs_keep_their_host_bits() {
        let c: Cidr = "10.42.3.7/22".parse().unwrap();
        assert_eq!(c.to_string(), "10.42.3.7/22");
        assert_eq!(c.network().to_string(), "10.42.0.0");
        assert_eq!(c.last().to_string(), "10.42.3.255");
        assert!(c.contains("10.42.1.1".parse().unwrap()));
        assert!(!c.contains("10.42.4.1".parse().unwrap()));
        let z: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(z.contains("1.2.3.4".parse().unwrap()));
        assert!(!z.contains("::1".parse().unwrap()));
        assert_eq!(z.last().to_string(), "255.255.255.255");
        let h: Cidr = "fd00::5/128".parse().unwrap();
        assert_eq!(h.network(), h.last());
        let v6: Cidr = "fd00:1::9/64".parse().unwrap();
        assert_eq!(v6.network().to_string(), "fd00:1::");
        assert_eq!(v6.last().to_string(), "fd00:1::ffff:ffff:ffff:ffff");
        let all6: Cidr = "::/0".parse().unwrap();
        assert!(all6.contains("2001:db8::1".parse().unwrap()));
        for bad in [
            "10.0.0.1",
            "10.0.0.0/33",
            "::/129",
            "10.0.0/8",
            "x/8",
            "10.0.0.0/",
        ] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
    }
}
