//! Netfilter: masquerade pod (and, on a leader, peer) traffic that leaves the
//! mesh, and accept forwarding between mesh prefixes.
//!
//! Through `iptables-restore`/`ip6tables-restore` rather than a netfilter
//! crate: the host's kube-proxy, portmap and the reference CNI plugins all go
//! through the iptables binaries (legacy or nft, whichever the host uses), and
//! our rules must live in the same tables as theirs. Our rules sit in chains
//! of our own (WEFT-POSTROUTING, WEFT-NAT, WEFT-FORWARD), each rebuilt in one
//! atomic restore, reached by one jump each from the built-in chains.

use crate::mesh::desired::Masquerade;
use ipnet::IpNet;
use std::io::Write;
use std::process::{Command, Stdio};

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct NatError(pub String);

const COMMENT: &str = "weft: mesh";

/// What the rules say.
#[derive(Clone, Copy, Debug)]
pub struct Rules<'a> {
    pub masquerade: &'a Masquerade,
    /// The cluster's service CIDRs (Kilo's `--service-cidr`): traffic to
    /// them keeps its source address too, so a Service sees which pod or
    /// peer called.
    pub services: &'a [IpNet],
    /// FORWARD accepts to and from the mesh's prefixes (Kilo's
    /// `--iptables-forward-rules`, which Weft has on by default: hosts
    /// whose FORWARD policy is DROP, as Docker sets it, drop pods'
    /// traffic otherwise).
    pub accept_forward: bool,
}

/// The `*-restore --noflush` input for one family. Declaring a chain flushes
/// it, so each apply replaces exactly our rules and nobody else's.
pub fn ruleset(rules: &Rules, v4: bool) -> String {
    let (masq, services) = (rules.masquerade, rules.services);
    let family = |c: &&IpNet| c.addr().is_ipv4() == v4;
    let mut out = String::from("*nat\n:WEFT-POSTROUTING - [0:0]\n:WEFT-NAT - [0:0]\n");
    for s in masq.sources.iter().filter(family) {
        out.push_str(&format!("-A WEFT-POSTROUTING -s {s} -j WEFT-NAT\n"));
    }
    for d in masq.mesh.iter().chain(services).filter(family) {
        out.push_str(&format!("-A WEFT-NAT -d {d} -j RETURN\n"));
    }
    out.push_str("-A WEFT-NAT -j MASQUERADE\nCOMMIT\n*filter\n:WEFT-FORWARD - [0:0]\n");
    for c in masq
        .mesh
        .iter()
        .filter(family)
        .filter(|_| rules.accept_forward)
    {
        out.push_str(&format!(
            "-A WEFT-FORWARD -s {c} -j ACCEPT\n-A WEFT-FORWARD -d {c} -j ACCEPT\n"
        ));
    }
    out.push_str("COMMIT\n");
    out
}

fn run(bin: &str, args: &[&str], stdin: Option<&str>) -> Result<(), NatError> {
    let mut child = Command::new(bin)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| NatError(format!("cannot run {bin}: {e}")))?;
    if let (Some(text), Some(mut i)) = (stdin, child.stdin.take()) {
        i.write_all(text.as_bytes())
            .map_err(|e| NatError(format!("{bin}: {e}")))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| NatError(format!("{bin}: {e}")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(NatError(format!(
            "{bin} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// The jumps from the built-in chains into ours: (table, chain, target).
const JUMPS: [(&str, &str, &str); 2] = [
    ("nat", "POSTROUTING", "WEFT-POSTROUTING"),
    ("filter", "FORWARD", "WEFT-FORWARD"),
];

/// `iptables` arguments for one jump rule with `op` (-C, -I or -D).
fn jump<'a>(op: &'a str, (table, chain, target): (&'a str, &'a str, &'a str)) -> [&'a str; 12] {
    [
        "-w",
        "5",
        "-t",
        table,
        op,
        chain,
        "-m",
        "comment",
        "--comment",
        COMMENT,
        "-j",
        target,
    ]
}

fn binaries(v4: bool) -> (&'static str, &'static str) {
    if v4 {
        ("iptables-restore", "iptables")
    } else {
        ("ip6tables-restore", "ip6tables")
    }
}

/// Applies the rules of both families and makes sure the jumps exist.
pub fn apply(rules: &Rules) -> Result<(), NatError> {
    let masq = rules.masquerade;
    for v4 in [true, false] {
        let has_any = masq
            .sources
            .iter()
            .chain(&masq.mesh)
            .any(|c| c.addr().is_ipv4() == v4);
        if !has_any {
            continue;
        }
        let (restore, tables) = binaries(v4);
        let text = ruleset(rules, v4);
        run(restore, &["-w", "5", "--noflush"], Some(&text))?;
        for j in JUMPS {
            if run(tables, &jump("-C", j), None).is_err() {
                run(tables, &jump("-I", j), None)?;
            }
        }
    }
    Ok(())
}

/// Removes everything `apply` created (for --clean-up); absent rules are fine.
pub fn remove() {
    for v4 in [true, false] {
        let (_, tables) = binaries(v4);
        for j in JUMPS {
            let _ = run(tables, &jump("-D", j), None);
        }
        for (table, chain) in [
            ("nat", "WEFT-POSTROUTING"),
            ("nat", "WEFT-NAT"),
            ("filter", "WEFT-FORWARD"),
        ] {
            let _ = run(tables, &["-w", "5", "-t", table, "-F", chain], None);
            let _ = run(tables, &["-w", "5", "-t", table, "-X", chain], None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ruleset_per_family() {
        let m = Masquerade {
            sources: vec![
                "10.42.0.0/24".parse().unwrap(),
                "fd42::/64".parse().unwrap(),
            ],
            mesh: vec![
                "10.42.1.0/24".parse().unwrap(),
                "10.4.0.0/16".parse().unwrap(),
            ],
        };
        let rules = |accept_forward| Rules {
            masquerade: &m,
            services: &[],
            accept_forward,
        };
        let v4 = ruleset(&rules(true), true);
        assert_eq!(
            v4,
            "*nat\n:WEFT-POSTROUTING - [0:0]\n:WEFT-NAT - [0:0]\n\
             -A WEFT-POSTROUTING -s 10.42.0.0/24 -j WEFT-NAT\n\
             -A WEFT-NAT -d 10.42.1.0/24 -j RETURN\n-A WEFT-NAT -d 10.4.0.0/16 -j RETURN\n\
             -A WEFT-NAT -j MASQUERADE\nCOMMIT\n*filter\n:WEFT-FORWARD - [0:0]\n\
             -A WEFT-FORWARD -s 10.42.1.0/24 -j ACCEPT\n-A WEFT-FORWARD -d 10.42.1.0/24 -j ACCEPT\n\
             -A WEFT-FORWARD -s 10.4.0.0/16 -j ACCEPT\n-A WEFT-FORWARD -d 10.4.0.0/16 -j ACCEPT\nCOMMIT\n"
        );
        let v6 = ruleset(&rules(true), false);
        assert!(v6.contains("-A WEFT-POSTROUTING -s fd42::/64 -j WEFT-NAT"));
        assert!(!v6.contains("10.42"));
        // --iptables-forward-rules=false: the chain stays, empty.
        let quiet = ruleset(&rules(false), true);
        assert!(quiet.contains(":WEFT-FORWARD - [0:0]\nCOMMIT"), "{quiet}");
        assert!(!quiet.contains("-A WEFT-FORWARD"), "{quiet}");
    }

    #[test]
    fn service_cidrs_keep_the_source_address_and_are_not_forwarded() {
        let m = Masquerade {
            sources: vec!["10.42.0.0/24".parse().unwrap()],
            mesh: vec!["10.4.0.0/16".parse().unwrap()],
        };
        let services: Vec<IpNet> = vec![
            "10.43.0.0/16".parse().unwrap(),
            "fd43::/112".parse().unwrap(),
        ];
        let rules = Rules {
            masquerade: &m,
            services: &services,
            accept_forward: true,
        };
        let v4 = ruleset(&rules, true);
        let ret = v4
            .find("-A WEFT-NAT -d 10.43.0.0/16 -j RETURN\n")
            .expect("RETURN");
        assert!(ret < v4.find("-A WEFT-NAT -j MASQUERADE").expect("MASQUERADE"));
        assert!(!v4.contains("WEFT-FORWARD -d 10.43.0.0/16"), "{v4}");
        assert!(!v4.contains("fd43"), "{v4}");
        let v6 = ruleset(&rules, false);
        assert!(v6.contains("-A WEFT-NAT -d fd43::/112 -j RETURN"), "{v6}");
    }
}
