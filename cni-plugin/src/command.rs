//! The CNI verbs: ADD, DEL, CHECK, VERSION, STATUS, GC.
//!
//! ADD allocates addresses first (cheap to undo), then builds the network;
//! any failure after allocation undoes everything it did, so a failed ADD
//! leaves no veth and no reserved address. DEL releases whatever it still
//! finds and succeeds when things are already gone.

use crate::config::{Cidr, IpamConf, NetConf, Route, SUPPORTED_VERSIONS};
use crate::error::CniError;
use crate::ipam::{Allocation, Store};
use crate::result::{CniResult, Interface, IpConfig};
use serde_json::{json, Value};
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use weft_netlink::{in_netns, set_hairpin, Netlink};

/// What the runtime passes in the environment.
#[derive(Debug, Clone, Default)]
pub struct Env {
    pub command: String,
    pub container_id: String,
    pub netns: Option<PathBuf>,
    pub ifname: String,
    pub path: String,
}

impl Env {
    pub fn from_process() -> Self {
        let var = |k: &str| std::env::var(k).unwrap_or_default();
        let netns = var("CNI_NETNS");
        Self {
            command: var("CNI_COMMAND"),
            container_id: var("CNI_CONTAINERID"),
            netns: (!netns.is_empty()).then(|| PathBuf::from(netns)),
            ifname: var("CNI_IFNAME"),
            path: var("CNI_PATH"),
        }
    }

    fn require_attachment(&self) -> Result<(), CniError> {
        if self.container_id.is_empty() {
            return Err(CniError::env("CNI_CONTAINERID is required"));
        }
        if self.container_id.len() > 512
            || !self
                .container_id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            return Err(CniError::env(
                "CNI_CONTAINERID has characters other than [A-Za-z0-9_.-]",
            ));
        }
        if self.ifname.is_empty()
            || self.ifname.len() > 15
            || self.ifname.contains('/')
            || self.ifname.chars().any(char::is_whitespace)
            || self.ifname == "."
            || self.ifname == ".."
        {
            return Err(CniError::env(
                "CNI_IFNAME must be 1 to 15 characters, no '/' or spaces",
            ));
        }
        Ok(())
    }
}

/// Runs one command; returns what to print on success (possibly nothing).
pub fn run(env: &Env, stdin: &[u8]) -> Result<Option<String>, CniError> {
    match env.command.as_str() {
        "VERSION" => Ok(Some(
            json!({"cniVersion": "1.1.0", "supportedVersions": SUPPORTED_VERSIONS}).to_string(),
        )),
        "ADD" => {
            let conf = NetConf::parse(stdin)?;
            env.require_attachment()?;
            let netns = env
                .netns
                .as_deref()
                .ok_or_else(|| CniError::env("CNI_NETNS is required for ADD"))?;
            let result = add(&conf, env, netns, stdin)?;
            Ok(Some(result.render(&conf.cni_version).to_string()))
        }
        "DEL" => {
            let conf = NetConf::parse(stdin)?;
            env.require_attachment()?;
            del(&conf, env, stdin)?;
            Ok(None)
        }
        "CHECK" => {
            let conf = NetConf::parse(stdin)?;
            env.require_attachment()?;
            check(&conf, env)?;
            Ok(None)
        }
        "STATUS" => {
            let conf = NetConf::parse(stdin)?;
            status(&conf)?;
            Ok(None)
        }
        "GC" => {
            let conf = NetConf::parse(stdin)?;
            gc(&conf)?;
            Ok(None)
        }
        "" => Err(CniError::env("CNI_COMMAND is required")),
        other => Err(CniError::env(format!("unknown CNI_COMMAND {other:?}"))),
    }
}

/// A stable 32-bit tag of the attachment, so every command names its host
/// veth the same way (and concurrent ADDs never collide on names).
fn tag(env: &Env) -> String {
    let mut h: u32 = 0x811c_9dc5;
    for b in env
        .container_id
        .bytes()
        .chain([0])
        .chain(env.ifname.bytes())
    {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    format!("{h:08x}")
}

pub fn host_veth_name(env: &Env) -> String {
    format!("veth{}", tag(env))
}

/// Undo stack for a failing ADD.
struct Rollback<'a> {
    conf: &'a NetConf,
    env: &'a Env,
    stdin: &'a [u8],
    ipam_done: bool,
    masq_done: bool,
    host_veth: Option<String>,
    armed: bool,
}

impl Drop for Rollback<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        if let Some(name) = &self.host_veth {
            if let Ok(nl) = Netlink::new() {
                if let Ok(Some(l)) = nl.link(name) {
                    let _ = nl.delete(l.index, name);
                }
            }
        }
        if self.masq_done {
            let _ = crate::masq::teardown(&self.conf.name, &self.env.container_id);
        }
        if self.ipam_done {
            if let Ok(ipam) = self.conf.ipam() {
                let _ = ipam_release(ipam, self.conf, self.env, self.stdin);
            }
        }
    }
}

fn add(conf: &NetConf, env: &Env, netns: &Path, stdin: &[u8]) -> Result<CniResult, CniError> {
    let ns_file = std::fs::File::open(netns).map_err(|e| {
        CniError::unknown_container(format!("cannot open netns {}: {e}", netns.display()))
    })?;
    let ipam = conf.ipam()?;
    let mut rollback = Rollback {
        conf,
        env,
        stdin,
        ipam_done: false,
        masq_done: false,
        host_veth: None,
        armed: true,
    };
    let (allocations, mut routes, dns) = ipam_add(ipam, conf, env, stdin)?;
    rollback.ipam_done = true;
    let mtu = conf.mtu();

    let nl = Netlink::new()?;
    let bridge = nl.ensure_bridge(&conf.bridge, mtu)?;
    if conf.is_gateway() {
        for a in &allocations {
            let gw = Cidr {
                addr: a.gateway,
                prefix: a.address.prefix,
            };
            nl.ensure_address(bridge.index, gw, conf.force_address, &conf.bridge)?;
        }
    }
    let host_name = host_veth_name(env);
    // A leftover of an earlier attempt with the same attachment would collide.
    if let Some(l) = nl.link(&host_name)? {
        nl.delete(l.index, &host_name)?;
    }
    nl.create_veth_into(&host_name, &env.ifname, ns_file.as_raw_fd(), mtu)?;
    rollback.host_veth = Some(host_name.clone());
    let host = nl
        .link(&host_name)?
        .ok_or_else(|| CniError::io(format!("veth {host_name} vanished")))?;
    nl.attach_to_bridge(host.index, bridge.index, mtu, &host_name)?;
    if conf.hairpin_mode {
        set_hairpin(&host_name, true)?;
    }

    if conf.is_default_gateway {
        for a in &allocations {
            let unspecified: IpAddr = if a.address.addr.is_ipv4() {
                Ipv4Addr::UNSPECIFIED.into()
            } else {
                Ipv6Addr::UNSPECIFIED.into()
            };
            let dst = Cidr {
                addr: unspecified,
                prefix: 0,
            };
            if !routes.iter().any(|r| r.dst == dst) {
                routes.push(Route {
                    dst,
                    gw: Some(a.gateway),
                });
            }
        }
    }
    let ifname = env.ifname.clone();
    let pod_routes = routes.clone();
    let pod_ips = allocations.clone();
    let pod_mac = in_netns::<_, CniError>(netns, move |pn| {
        let l = pn
            .link(&ifname)?
            .ok_or_else(|| CniError::io(format!("{ifname} did not appear in the container")))?;
        if pod_ips.iter().any(|a| a.address.addr.is_ipv6()) {
            // The address is ours alone (IPAM says so): skip duplicate address
            // detection, which would hold it "tentative" for a second or two.
            // This thread is in the pod's namespace, so /proc/sys/net is the pod's.
            let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{ifname}/accept_dad"), "0");
        }
        pn.set_up(l.index, &ifname)?;
        for a in &pod_ips {
            pn.ensure_address(l.index, a.address, true, &ifname)?;
        }
        for r in &pod_routes {
            let gw = r.gw.or_else(|| {
                pod_ips
                    .iter()
                    .find(|a| a.address.addr.is_ipv4() == r.dst.addr.is_ipv4())
                    .map(|a| a.gateway)
            });
            pn.add_route(r.dst, gw, l.index)?;
        }
        Ok(pn.link(&ifname)?.map(|l| l.mac).unwrap_or_default())
    })?;
    if conf.ip_masq {
        rollback.masq_done = true;
        for a in &allocations {
            crate::masq::setup(&conf.name, &env.container_id, a.address)?;
        }
    }
    let host = nl.link(&host_name)?.unwrap_or(host);
    rollback.armed = false;

    Ok(CniResult {
        interfaces: vec![
            Interface {
                name: conf.bridge.clone(),
                mac: bridge.mac,
                sandbox: None,
                mtu: Some(mtu),
            },
            Interface {
                name: host_name,
                mac: host.mac,
                sandbox: None,
                mtu: Some(mtu),
            },
            Interface {
                name: env.ifname.clone(),
                mac: pod_mac,
                sandbox: Some(netns.display().to_string()),
                mtu: Some(mtu),
            },
        ],
        ips: allocations
            .iter()
            .map(|a| IpConfig {
                address: a.address,
                gateway: Some(a.gateway),
                interface: Some(2),
            })
            .collect(),
        routes,
        dns: conf.dns.clone().or(dns).unwrap_or(Value::Null),
    })
}

fn del(conf: &NetConf, env: &Env, stdin: &[u8]) -> Result<(), CniError> {
    // Release addresses first: they are what leaks if a DEL is cut short.
    let ipam_result = match conf.ipam() {
        Ok(ipam) => ipam_release(ipam, conf, env, stdin),
        Err(_) => Ok(()),
    };
    if let Some(netns) = &env.netns {
        // The netns may already be gone; then so is the veth.
        if netns.exists() {
            let ifname = env.ifname.clone();
            let r = in_netns::<_, CniError>(netns, move |pn| {
                if let Some(l) = pn.link(&ifname)? {
                    pn.delete(l.index, &ifname)?;
                }
                Ok(())
            });
            if let Err(e) = r {
                if e.code != 3 {
                    return Err(e);
                }
            }
        }
    }
    if conf.ip_masq {
        crate::masq::teardown(&conf.name, &env.container_id)?;
    }
    // A host end left behind (its pod end was moved away or never moved).
    let nl = Netlink::new()?;
    let host_name = host_veth_name(env);
    if let Some(l) = nl.link(&host_name)? {
        nl.delete(l.index, &host_name)?;
    }
    ipam_result
}

fn check(conf: &NetConf, env: &Env) -> Result<(), CniError> {
    let prev = conf
        .prev_result
        .as_ref()
        .ok_or_else(|| CniError::invalid_config("prevResult is required for CHECK"))?;
    let prev = CniResult::parse(prev)?;
    let netns = env
        .netns
        .as_deref()
        .ok_or_else(|| CniError::env("CNI_NETNS is required for CHECK"))?;
    let nl = Netlink::new()?;
    if nl.link(&conf.bridge)?.is_none() {
        return Err(CniError::check_failed(format!(
            "bridge {} is missing",
            conf.bridge
        )));
    }
    let ifname = env.ifname.clone();
    in_netns::<_, CniError>(netns, move |pn| {
        let l = pn.link(&ifname)?.ok_or_else(|| {
            CniError::check_failed(format!("interface {ifname} is missing in the container"))
        })?;
        let have = pn.addresses(l.index)?;
        for ip in &prev.ips {
            let ours = ip
                .interface
                .and_then(|i| prev.interfaces.get(i))
                .is_none_or(|i| i.name == ifname);
            if ours && !have.contains(&ip.address) {
                return Err(CniError::check_failed(format!(
                    "{ifname} lacks address {}",
                    ip.address
                )));
            }
        }
        for r in &prev.routes {
            let table = pn.routes(r.dst.addr.is_ipv4())?;
            let found = table.iter().any(|(dst, gw, _)| {
                dst.prefix == r.dst.prefix
                    && dst.addr == r.dst.network()
                    && (r.gw.is_none() || *gw == r.gw)
            });
            if !found {
                return Err(CniError::check_failed(format!(
                    "route to {} {} is missing in the container",
                    r.dst,
                    r.gw.map(|g| format!("via {g}")).unwrap_or_default()
                )));
            }
        }
        Ok(())
    })
}

fn status(conf: &NetConf) -> Result<(), CniError> {
    let ipam = conf.ipam()?;
    if ipam.is_host_local() {
        ipam.range_sets()?;
        let dir = ipam.data_dir().join(&conf.name);
        std::fs::create_dir_all(&dir).map_err(|e| {
            CniError::unavailable(format!("IPAM store {} is not writable: {e}", dir.display()))
        })?;
    }
    Ok(())
}

fn gc(conf: &NetConf) -> Result<(), CniError> {
    let ipam = conf.ipam()?;
    if !ipam.is_host_local() {
        return Ok(());
    }
    let keep: Vec<(String, String)> = conf
        .valid_attachments
        .iter()
        .flatten()
        .map(|a| (a.container_id.clone(), a.ifname.clone()))
        .collect();
    let store = Store::lock(&ipam.data_dir(), &conf.name)?;
    store.release_all_but(&keep)?;
    Ok(())
}

type IpamOutcome = (Vec<Allocation>, Vec<Route>, Option<Value>);

fn ipam_add(
    ipam: &IpamConf,
    conf: &NetConf,
    env: &Env,
    stdin: &[u8],
) -> Result<IpamOutcome, CniError> {
    if ipam.is_host_local() {
        let sets = ipam.range_sets()?;
        let store = Store::lock(&ipam.data_dir(), &conf.name)?;
        let allocations = store.allocate(&sets, &env.container_id, &env.ifname)?;
        return Ok((allocations, ipam.routes.clone(), None));
    }
    let out = delegate(&ipam.kind, "ADD", env, stdin)?;
    let value: Value = serde_json::from_str(&out)
        .map_err(|e| CniError::decode(format!("result of IPAM plugin {}: {e}", ipam.kind)))?;
    let result = CniResult::parse(&value)?;
    let allocations = result
        .ips
        .iter()
        .map(|ip| Allocation {
            address: ip.address,
            gateway: ip.gateway.unwrap_or_else(|| first_host(ip.address)),
        })
        .collect();
    let dns = (!result.dns.is_null()).then_some(result.dns);
    Ok((allocations, result.routes, dns))
}

fn first_host(c: Cidr) -> IpAddr {
    crate::config::from_u128(c.addr.is_ipv4(), crate::config::to_u128(c.network()) + 1)
}

fn ipam_release(ipam: &IpamConf, conf: &NetConf, env: &Env, stdin: &[u8]) -> Result<(), CniError> {
    if ipam.is_host_local() {
        let store = Store::lock(&ipam.data_dir(), &conf.name)?;
        store.release(&env.container_id, &env.ifname)?;
        return Ok(());
    }
    delegate(&ipam.kind, "DEL", env, stdin).map(|_| ())
}

/// Runs another plugin from CNI_PATH with our stdin, as libcni would.
fn delegate(kind: &str, command: &str, env: &Env, stdin: &[u8]) -> Result<String, CniError> {
    if kind.is_empty() || kind.contains('/') {
        return Err(CniError::invalid_config(format!(
            "ipam.type {kind:?} is not a plugin name"
        )));
    }
    let bin = env
        .path
        .split(':')
        .filter(|d| !d.is_empty())
        .map(|d| Path::new(d).join(kind))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            CniError::invalid_config(format!(
                "IPAM plugin {kind} not found in CNI_PATH {:?}",
                env.path
            ))
        })?;
    let mut child = Command::new(&bin)
        .env("CNI_COMMAND", command)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| CniError::io(format!("cannot run {}: {e}", bin.display())))?;
    if let Some(mut i) = child.stdin.take() {
        i.write_all(stdin)
            .map_err(|e| CniError::io(format!("writing to {}: {e}", bin.display())))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| CniError::io(format!("waiting for {}: {e}", bin.display())))?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if out.status.success() {
        return Ok(text);
    }
    match serde_json::from_str::<Value>(&text) {
        Ok(v) => Err(CniError::new(
            v["code"].as_u64().unwrap_or(5) as u32,
            format!(
                "IPAM plugin {kind}: {}",
                v["msg"].as_str().unwrap_or("failed")
            ),
        )
        .with_details(v["details"].as_str().unwrap_or_default().to_string())),
        Err(_) => Err(CniError::io(format!("IPAM plugin {kind} failed: {text}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_lists_what_we_speak() {
        let env = Env {
            command: "VERSION".into(),
            ..Default::default()
        };
        let out = run(&env, b"").unwrap().unwrap();
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(
            v["supportedVersions"].as_array().unwrap().len(),
            SUPPORTED_VERSIONS.len()
        );
    }

    #[test]
    fn bad_environment_is_error_4() {
        let conf = br#"{"cniVersion":"1.0.0","name":"n","ipam":{"type":"host-local","subnet":"10.0.0.0/24"}}"#;
        for (cmd, id, ifname) in [
            ("", "c", "eth0"),
            ("FROB", "c", "eth0"),
            ("ADD", "", "eth0"),
            ("ADD", "c", ""),
            ("ADD", "c/../x", "eth0"),
            ("ADD", "c", "a-very-long-interface"),
            ("ADD", "c", "eth0"), // no CNI_NETNS
        ] {
            let env = Env {
                command: cmd.into(),
                container_id: id.into(),
                ifname: ifname.into(),
                ..Default::default()
            };
            assert_eq!(run(&env, conf).unwrap_err().code, 4, "{cmd} {id} {ifname}");
        }
    }

    #[test]
    fn veth_names_are_stable_and_short() {
        let env = Env {
            container_id: "abc".into(),
            ifname: "eth0".into(),
            ..Default::default()
        };
        assert_eq!(host_veth_name(&env), host_veth_name(&env.clone()));
        assert!(host_veth_name(&env).len() <= 15);
        let other = Env {
            ifname: "eth1".into(),
            ..env.clone()
        };
        assert_ne!(host_veth_name(&env), host_veth_name(&other));
    }
}
