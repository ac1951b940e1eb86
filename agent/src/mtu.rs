//! The tunnel's MTU under `--mtu auto`: the largest inner packet that fits,
//! once WireGuard has wrapped it, through the underlay towards every far
//! end of this node's tunnels. A fixed 1420 does not fit a 1460-byte VPC
//! (GCP) and wastes most of a 9001-byte one (AWS jumbo frames); too large
//! an MTU shows as connections that hang on large responses, since the
//! encrypted packets are dropped or fragmented on the way.
//!
//! The agent measures (the kernel's route to each far end, and that
//! route's or its link's MTU); [`choose`] decides, without I/O.

use std::fmt;
use std::net::IpAddr;
use weft_mesh::Mtu;

/// What WireGuard adds to an inner packet over an IPv4 underlay: the outer
/// IPv4 (20) and UDP (8) headers, the data message's header (16) and its
/// authentication tag (16).
pub const OVERHEAD_V4: u32 = 60;
/// The same over IPv6, whose header is 40 bytes.
pub const OVERHEAD_V6: u32 = 80;

/// One path this node's tunnel traffic takes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Underlay {
    /// The far end (an endpoint's address).
    pub towards: IpAddr,
    /// The link the kernel sends it out of.
    pub interface: String,
    /// The path's MTU: the route's where it has one, else the link's.
    pub mtu: u32,
}

impl Underlay {
    fn overhead(&self) -> u32 {
        if self.towards.is_ipv4() {
            OVERHEAD_V4
        } else {
            OVERHEAD_V6
        }
    }

    /// The largest inner packet that fits this path.
    pub fn room(&self) -> u32 {
        self.mtu.saturating_sub(self.overhead())
    }
}

/// The MTU chosen, and why, for the log and the metrics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Choice {
    pub mtu: u16,
    /// The path that decided it (`None`: fixed, or nothing measured).
    pub decided_by: Option<Underlay>,
    /// Set when the measured value could not be used as it is (nothing
    /// measured is no problem: a node may have no far end yet).
    pub problem: Option<String>,
    pub fixed: bool,
}

impl fmt::Display for Choice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.fixed {
            return write!(f, "{} (fixed by --mtu)", self.mtu);
        }
        match &self.decided_by {
            Some(u) => write!(
                f,
                "{} (auto: {}-byte underlay on {} towards {}, less {} bytes of WireGuard over IPv{})",
                self.mtu,
                u.mtu,
                u.interface,
                u.towards,
                u.overhead(),
                if u.towards.is_ipv4() { 4 } else { 6 }
            )?,
            None => write!(
                f,
                "{} (auto: no route to measure the underlay by yet; WireGuard's usual value)",
                self.mtu
            )?,
        }
        if let Some(p) = &self.problem {
            write!(f, "; {p}")?;
        }
        Ok(())
    }
}

/// The MTU for `policy`, from the paths measured towards the tunnels' far
/// ends (or, where there are none, towards the default route): the
/// smallest room among them, never below IPv6's 1280. With nothing
/// measured, WireGuard's customary 1420.
pub fn choose(policy: Mtu, measured: &[Underlay]) -> Choice {
    if let Mtu::Fixed(m) = policy {
        return Choice {
            mtu: m,
            decided_by: None,
            problem: None,
            fixed: true,
        };
    }
    let Some(tightest) = measured.iter().min_by_key(|u| u.room()) else {
        return Choice {
            mtu: Mtu::FALLBACK,
            decided_by: None,
            problem: None,
            fixed: false,
        };
    };
    let room = tightest.room();
    let (mtu, problem) = if room < u32::from(Mtu::MIN) {
        (
            Mtu::MIN,
            Some(format!(
                "the underlay leaves only {room} bytes; using IPv6's minimum {}, so the \
                 encrypted packets will be fragmented",
                Mtu::MIN
            )),
        )
    } else {
        (u16::try_from(room).unwrap_or(u16::MAX), None)
    };
    Choice {
        mtu,
        decided_by: Some(tightest.clone()),
        problem,
        fixed: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(towards: &str, interface: &str, mtu: u32) -> Underlay {
        Underlay {
            towards: towards.parse().unwrap(),
            interface: interface.into(),
            mtu,
        }
    }

    #[test]
    fn the_tightest_path_decides() {
        // GCP's 1460 over IPv4, AWS jumbo frames, an IPv6 underlay.
        let gcp = choose(Mtu::Auto, &[path("203.0.113.21", "eth0", 1460)]);
        assert_eq!(gcp.mtu, 1400);
        let aws = choose(Mtu::Auto, &[path("203.0.113.11", "eth0", 9001)]);
        assert_eq!(aws.mtu, 8941);
        let v6 = choose(Mtu::Auto, &[path("2001:db8::21", "eth0", 1500)]);
        assert_eq!(v6.mtu, 1420);
        // Different underlays: the smallest room wins, by family.
        let mixed = choose(
            Mtu::Auto,
            &[
                path("203.0.113.11", "eth0", 9001),
                path("2001:db8::21", "eth1", 1490),
                path("203.0.113.21", "eth0", 1460),
            ],
        );
        assert_eq!(mixed.mtu, 1400, "{mixed}");
        assert_eq!(
            mixed.to_string(),
            "1400 (auto: 1460-byte underlay on eth0 towards 203.0.113.21, less 60 bytes of \
             WireGuard over IPv4)"
        );
    }

    #[test]
    fn fixed_nothing_measured_and_too_small() {
        let fixed = choose(Mtu::Fixed(1380), &[path("203.0.113.21", "eth0", 9001)]);
        assert_eq!(
            (fixed.mtu, fixed.to_string().as_str()),
            (1380, "1380 (fixed by --mtu)")
        );
        let none = choose(Mtu::Auto, &[]);
        assert_eq!(none.mtu, 1420);
        assert!(none.problem.is_none(), "a node alone is not a problem");
        assert!(none.to_string().contains("no route"), "{none}");
        let tiny = choose(Mtu::Auto, &[path("2001:db8::1", "ppp0", 1300)]);
        assert_eq!(tiny.mtu, 1280);
        assert!(tiny.to_string().contains("only 1220 bytes"), "{tiny}");
    }
}
