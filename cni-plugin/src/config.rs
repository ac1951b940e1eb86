//! The network configuration a runtime hands the plugin on stdin, parsed once
//! and validated into types that say what they are. The keys are those of the
//! reference `bridge` and `host-local` plugins, so an existing conflist (Kilo's
//! among them) works by changing only `type`.

use crate::error::CniError;
use serde::Deserialize;
use serde_json::Value;

use std::net::IpAddr;
use std::path::PathBuf;

/// Spec versions this plugin speaks.
pub const SUPPORTED_VERSIONS: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// Addresses as integers, for range arithmetic.
pub use wgconf::prefix::{bits as to_u128, from_bits as from_u128};
/// An IP network in CIDR notation; the address may have host bits set (as in
/// an interface address such as 10.0.0.5/24). Written and read as its string.
pub use wgconf::Cidr;

/// A route as CNI writes it.
#[derive(Clone, Debug, Deserialize, serde::Serialize, PartialEq)]
pub struct Route {
    pub dst: Cidr,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<IpAddr>,
}

/// One host-local range, as written in the config.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RangeConf {
    pub subnet: Cidr,
    #[serde(default)]
    pub range_start: Option<IpAddr>,
    #[serde(default)]
    pub range_end: Option<IpAddr>,
    #[serde(default)]
    pub gateway: Option<IpAddr>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IpamConf {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub subnet: Option<Cidr>,
    #[serde(default)]
    pub range_start: Option<IpAddr>,
    #[serde(default)]
    pub range_end: Option<IpAddr>,
    #[serde(default)]
    pub gateway: Option<IpAddr>,
    #[serde(default)]
    pub ranges: Vec<Vec<RangeConf>>,
    #[serde(default)]
    pub routes: Vec<Route>,
    #[serde(default)]
    pub data_dir: Option<PathBuf>,
}

/// The plugin's configuration (one entry of a conflist, with `name` and
/// `cniVersion` filled in by the runtime).
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetConf {
    pub cni_version: String,
    pub name: String,
    #[serde(rename = "type", default)]
    pub kind: String,
    #[serde(default = "default_bridge")]
    pub bridge: String,
    #[serde(default)]
    pub is_gateway: bool,
    #[serde(default)]
    pub is_default_gateway: bool,
    #[serde(default)]
    pub force_address: bool,
    #[serde(default)]
    pub ip_masq: bool,
    #[serde(default)]
    pub mtu: Option<u32>,
    #[serde(default)]
    pub hairpin_mode: bool,
    #[serde(default)]
    pub promisc_mode: bool,
    #[serde(default)]
    pub vlan: Option<u32>,
    pub ipam: Option<IpamConf>,
    #[serde(default)]
    pub prev_result: Option<Value>,
    #[serde(default)]
    pub dns: Option<Value>,
    /// GC: the attachments the runtime still knows about.
    #[serde(rename = "cni.dev/valid-attachments", default)]
    pub valid_attachments: Option<Vec<Attachment>>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Attachment {
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub ifname: String,
}

fn default_bridge() -> String {
    "cni0".to_string()
}

/// Largest MTU a bridge accepts; anything above is certainly a typo.
const MAX_MTU: u32 = 65_535;

/// A canonical host-local range: every bound filled in and checked.
#[derive(Clone, Debug, PartialEq)]
pub struct Range {
    pub subnet: Cidr,
    pub start: IpAddr,
    pub end: IpAddr,
    pub gateway: IpAddr,
}

impl NetConf {
    /// Parses and validates stdin. Every error names the field.
    pub fn parse(bytes: &[u8]) -> Result<Self, CniError> {
        let conf: NetConf = serde_json::from_slice(bytes)
            .map_err(|e| CniError::decode(format!("network configuration: {e}")))?;
        if conf.name.trim().is_empty() || conf.name.contains('/') || conf.name.contains('\0') {
            return Err(CniError::invalid_config(
                "name must be non-empty and contain no '/'",
            ));
        }
        if !SUPPORTED_VERSIONS.contains(&conf.cni_version.as_str()) {
            return Err(CniError::incompatible(
                &conf.cni_version,
                SUPPORTED_VERSIONS,
            ));
        }
        if conf.bridge.is_empty() || conf.bridge.len() > 15 || conf.bridge.contains('/') {
            return Err(CniError::invalid_config(
                "bridge: 1 to 15 characters, no '/'",
            ));
        }
        if let Some(mtu) = conf.mtu {
            if !(68..=MAX_MTU).contains(&mtu) {
                return Err(CniError::invalid_config(format!(
                    "mtu: {mtu} is outside 68..65535"
                )));
            }
        }
        if conf.vlan.is_some() {
            return Err(CniError::unsupported("vlan is not supported by weft-cni"));
        }
        Ok(conf)
    }

    pub fn mtu(&self) -> u32 {
        self.mtu.unwrap_or(1500)
    }

    pub fn is_gateway(&self) -> bool {
        self.is_gateway || self.is_default_gateway
    }

    pub fn ipam(&self) -> Result<&IpamConf, CniError> {
        self.ipam
            .as_ref()
            .ok_or_else(|| CniError::invalid_config("ipam: missing"))
    }
}

impl IpamConf {
    pub fn is_host_local(&self) -> bool {
        self.kind == "host-local"
    }

    pub fn data_dir(&self) -> PathBuf {
        self.data_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from("/var/lib/cni/networks"))
    }

    /// The range sets, canonicalised: the legacy single `subnet` becomes one
    /// set, missing bounds default as host-local's do (start: network + 1,
    /// end: last address - 1 for IPv4, gateway: network + 1).
    pub fn range_sets(&self) -> Result<Vec<Vec<Range>>, CniError> {
        let mut sets: Vec<Vec<RangeConf>> = self.ranges.clone();
        if let Some(subnet) = self.subnet {
            sets.insert(
                0,
                vec![RangeConf {
                    subnet,
                    range_start: self.range_start,
                    range_end: self.range_end,
                    gateway: self.gateway,
                }],
            );
        }
        if sets.is_empty() || sets.iter().any(Vec::is_empty) {
            return Err(CniError::invalid_config(
                "ipam: no address ranges: this node has no pod CIDR yet (weft-agent writes \
                 the Node's spec.podCIDRs into ipam.ranges once Kubernetes assigns them; \
                 check `kubectl get node NAME -o jsonpath={.spec.podCIDRs}`), or set \
                 ipam.ranges / ipam.subnet by hand",
            ));
        }
        let mut out = Vec::new();
        for (i, set) in sets.iter().enumerate() {
            let mut ranges = Vec::new();
            for r in set {
                ranges.push(canonical_range(r).map_err(|e| {
                    CniError::invalid_config(format!("ipam.ranges[{i}] {}: {e}", r.subnet))
                })?);
            }
            let v4 = ranges[0].subnet.addr.is_ipv4();
            if ranges.iter().any(|r| r.subnet.addr.is_ipv4() != v4) {
                return Err(CniError::invalid_config(format!(
                    "ipam.ranges[{i}]: a range set mixes IPv4 and IPv6"
                )));
            }
            out.push(ranges);
        }
        Ok(out)
    }
}

fn canonical_range(r: &RangeConf) -> Result<Range, String> {
    let subnet = Cidr {
        addr: r.subnet.network(),
        prefix: r.subnet.prefix,
    };
    if r.subnet.addr != subnet.addr {
        return Err("subnet has host bits set".into());
    }
    let v4 = subnet.addr.is_ipv4();
    let bits = Cidr::max_prefix(subnet.addr);
    if bits - subnet.prefix < 2 {
        return Err("subnet is too small".into());
    }
    let net = to_u128(subnet.addr);
    let last = to_u128(subnet.last());
    let start = r.range_start.unwrap_or(from_u128(v4, net + 1));
    let end = r
        .range_end
        .unwrap_or(from_u128(v4, if v4 { last - 1 } else { last }));
    let gateway = r.gateway.unwrap_or(from_u128(v4, net + 1));
    for (what, ip) in [
        ("rangeStart", start),
        ("rangeEnd", end),
        ("gateway", gateway),
    ] {
        if !subnet.contains(ip) {
            return Err(format!("{what} {ip} is outside the subnet"));
        }
    }
    if to_u128(start) > to_u128(end) {
        return Err(format!("rangeStart {start} is after rangeEnd {end}"));
    }
    if to_u128(start) == net || (v4 && to_u128(end) == last) {
        return Err("range includes the network or broadcast address".into());
    }
    Ok(Range {
        subnet,
        start,
        end,
        gateway,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kilo_conf() -> String {
        r#"{"cniVersion":"1.0.0","name":"kilo","type":"weft-cni","bridge":"kube-bridge",
            "isDefaultGateway":true,"forceAddress":true,"mtu":1420,
            "ipam":{"type":"host-local","ranges":[[{"subnet":"10.42.0.0/24"}]]}}"#
            .to_string()
    }

    #[test]
    fn parses_kilos_conflist_entry() {
        let c = NetConf::parse(kilo_conf().as_bytes()).unwrap();
        assert_eq!(c.bridge, "kube-bridge");
        assert_eq!(c.mtu(), 1420);
        assert!(c.is_gateway());
        let sets = c.ipam().unwrap().range_sets().unwrap();
        assert_eq!(
            sets,
            vec![vec![Range {
                subnet: "10.42.0.0/24".parse().unwrap(),
                start: "10.42.0.1".parse().unwrap(),
                end: "10.42.0.254".parse().unwrap(),
                gateway: "10.42.0.1".parse().unwrap(),
            }]]
        );
    }

    #[test]
    fn legacy_subnet_and_ipv6() {
        let c = NetConf::parse(
            br#"{"cniVersion":"0.3.1","name":"n","ipam":{"type":"host-local","subnet":"10.1.0.0/16",
                 "ranges":[[{"subnet":"fd00:42::/64"}]]}}"#,
        )
        .unwrap();
        let sets = c.ipam().unwrap().range_sets().unwrap();
        assert_eq!(sets.len(), 2);
        assert_eq!(sets[1][0].start.to_string(), "fd00:42::1");
        assert_eq!(sets[1][0].end.to_string(), "fd00:42::ffff:ffff:ffff:ffff");
    }

    #[test]
    fn bad_configs_name_the_field() {
        let cases: &[(&str, u32, &str)] = &[
            ("not json", 6, "network configuration"),
            (r#"{"name":"n"}"#, 6, "cniVersion"),
            (r#"{"cniVersion":"0.1.0","name":"n"}"#, 1, "0.1.0"),
            (r#"{"cniVersion":"1.0.0","name":""}"#, 7, "name"),
            (r#"{"cniVersion":"1.0.0","name":"n","mtu":10}"#, 7, "mtu"),
            (
                r#"{"cniVersion":"1.0.0","name":"n","bridge":"a-very-long-bridge-name"}"#,
                7,
                "bridge",
            ),
            (r#"{"cniVersion":"1.0.0","name":"n","vlan":5}"#, 2, "vlan"),
            (
                r#"{"cniVersion":"1.0.0","name":"n","ipam":{"type":"host-local","subnet":"10.0.0.0/33"}}"#,
                6,
                "33",
            ),
        ];
        for (input, code, needle) in cases {
            let e = NetConf::parse(input.as_bytes()).unwrap_err();
            assert_eq!(e.code, *code, "{input}: {e:?}");
            assert!(
                e.msg.contains(needle) || e.details.contains(needle),
                "{input}: {e:?}"
            );
        }
        let range_cases = [
            r#"{"type":"host-local"}"#,
            r#"{"type":"host-local","subnet":"10.0.0.5/24"}"#,
            r#"{"type":"host-local","subnet":"10.0.0.0/31"}"#,
            r#"{"type":"host-local","subnet":"10.0.0.0/24","rangeStart":"10.0.1.1"}"#,
            r#"{"type":"host-local","subnet":"10.0.0.0/24","rangeStart":"10.0.0.9","rangeEnd":"10.0.0.2"}"#,
            r#"{"type":"host-local","ranges":[[{"subnet":"10.0.0.0/24"},{"subnet":"fd00::/64"}]]}"#,
            r#"{"type":"host-local","ranges":[[]]}"#,
        ];
        for ipam in range_cases {
            let input = format!(r#"{{"cniVersion":"1.0.0","name":"n","ipam":{ipam}}}"#);
            let c = NetConf::parse(input.as_bytes()).unwrap();
            let e = c.ipam().unwrap().range_sets().unwrap_err();
            assert_eq!(e.code, 7, "{ipam}");
            assert!(e.msg.contains("ipam"), "{ipam}: {e:?}");
        }
    }
}
