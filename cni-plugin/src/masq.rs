//! `ipMasq`: masquerade a pod's traffic that leaves its subnet, as the
//! reference bridge plugin does, with one nat chain per attachment:
//!
//!   POSTROUTING -s POD_IP -j CNI-xxxx
//!   CNI-xxxx -d POD_SUBNET -j ACCEPT
//!   CNI-xxxx ! -d 224.0.0.0/4 -j MASQUERADE      (ff00::/8 for IPv6)
//!
//! Through the iptables binaries (whichever backend the host uses), since
//! that is what portmap, kube-proxy and the reference plugins use too and the
//! rules must coexist with theirs.

use crate::config::Cidr;
use crate::error::CniError;
use std::process::Command;

/// The chain of one attachment: stable, and within iptables' 28 characters.
pub fn chain_name(network: &str, container_id: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in network.bytes().chain([0]).chain(container_id.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x100_0000_01b3);
    }
    format!("CNI-WEFT-{h:016x}")
}

fn iptables(v4: bool, args: &[&str]) -> Result<String, CniError> {
    let bin = if v4 { "iptables" } else { "ip6tables" };
    let out = Command::new(bin)
        .args(["-w", "5"])
        .args(args)
        .output()
        .map_err(|e| CniError::io(format!("cannot run {bin} (needed for ipMasq): {e}")))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(CniError::io(format!(
            "{bin} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// Installs the masquerade rules for `address` (a pod address with its prefix).
pub fn setup(network: &str, container_id: &str, address: Cidr) -> Result<(), CniError> {
    let v4 = address.addr.is_ipv4();
    let chain = chain_name(network, container_id);
    let comment = format!("name: {network} id: {container_id}");
    let subnet = Cidr {
        addr: address.network(),
        prefix: address.prefix,
    }
    .to_string();
    let multicast = if v4 { "224.0.0.0/4" } else { "ff00::/8" };
    let src = address.addr.to_string();
    // The chain may exist from an earlier, interrupted attempt: start clean.
    if iptables(v4, &["-t", "nat", "-N", &chain]).is_err() {
        iptables(v4, &["-t", "nat", "-F", &chain])?;
    }
    let append = |chain: &str, rule: &[&str]| -> Result<String, CniError> {
        let mut args = vec!["-t", "nat", "-A", chain];
        args.extend_from_slice(rule);
        args.extend_from_slice(&["-m", "comment", "--comment", &comment]);
        iptables(v4, &args)
    };
    append(&chain, &["-d", &subnet, "-j", "ACCEPT"])?;
    append(&chain, &["!", "-d", multicast, "-j", "MASQUERADE"])?;
    append("POSTROUTING", &["-s", &src, "-j", &chain])?;
    Ok(())
}

/// Removes the attachment's rules in both families; absent rules are fine.
pub fn teardown(network: &str, container_id: &str) -> Result<(), CniError> {
    let chain = chain_name(network, container_id);
    for v4 in [true, false] {
        let Ok(rules) = iptables(v4, &["-t", "nat", "-S", "POSTROUTING"]) else {
            continue;
        };
        for rule in rules
            .lines()
            .filter(|r| r.split_whitespace().any(|w| w == chain))
        {
            // "-A POSTROUTING ..." becomes "-D POSTROUTING ...".
            let mut args: Vec<String> = vec!["-t".into(), "nat".into()];
            let words = shell_words(rule);
            let Some((first, rest)) = words.split_first() else {
                continue;
            };
            if first != "-A" {
                continue;
            }
            args.push("-D".into());
            args.extend(rest.iter().cloned());
            let refs: Vec<&str> = args.iter().map(String::as_str).collect();
            iptables(v4, &refs)?;
        }
        if iptables(v4, &["-t", "nat", "-F", &chain]).is_ok() {
            iptables(v4, &["-t", "nat", "-X", &chain])?;
        }
    }
    Ok(())
}

/// Splits an `iptables -S` line, keeping double-quoted comments whole.
fn shell_words(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    for c in line.chars() {
        match c {
            '"' => quoted = !quoted,
            ' ' if !quoted => {
                if !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
            }
            c => cur.push(c),
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_names_fit_and_differ() {
        let a = chain_name("net", "c1");
        assert!(a.len() <= 28, "{a}");
        assert_ne!(a, chain_name("net", "c2"));
        assert_eq!(a, chain_name("net", "c1"));
    }

    #[test]
    fn splits_iptables_save_lines() {
        let w = shell_words(
            r#"-A POSTROUTING -s 10.0.0.2/32 -m comment --comment "name: n id: c" -j CNI-X"#,
        );
        assert_eq!(w[0], "-A");
        assert_eq!(w[7], "name: n id: c");
        assert_eq!(w.last().map(String::as_str), Some("CNI-X"));
    }
}
