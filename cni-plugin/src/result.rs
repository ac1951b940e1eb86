//! The ADD result, rendered for the spec version the runtime asked for.

use crate::config::{Cidr, Route};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::net::IpAddr;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Interface {
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub mac: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<String>,
    /// Spec 1.1.0: the interface's MTU.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct IpConfig {
    pub address: Cidr,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<IpAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<usize>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct CniResult {
    #[serde(default)]
    pub interfaces: Vec<Interface>,
    #[serde(default)]
    pub ips: Vec<IpConfig>,
    #[serde(default)]
    pub routes: Vec<Route>,
    #[serde(default)]
    pub dns: Value,
}

impl CniResult {
    /// The JSON for `version`: 0.3.x/0.4.0 carry a "version" per IP; 1.x do not;
    /// only 1.1.0 may carry interface MTUs.
    pub fn render(&self, version: &str) -> Value {
        let legacy = version.starts_with("0.");
        let ips: Vec<Value> = self
            .ips
            .iter()
            .map(|ip| {
                let mut v = json!({ "address": ip.address });
                if let Some(gw) = ip.gateway {
                    v["gateway"] = json!(gw);
                }
                if let Some(i) = ip.interface {
                    v["interface"] = json!(i);
                }
                if legacy {
                    v["version"] = json!(if ip.address.addr.is_ipv4() { "4" } else { "6" });
                }
                v
            })
            .collect();
        let interfaces: Vec<Value> = self
            .interfaces
            .iter()
            .map(|i| {
                let mut v = json!({ "name": i.name, "mac": i.mac });
                if let Some(s) = &i.sandbox {
                    v["sandbox"] = json!(s);
                }
                if version == "1.1.0" {
                    if let Some(m) = i.mtu {
                        v["mtu"] = json!(m);
                    }
                }
                v
            })
            .collect();
        let mut out = json!({
            "cniVersion": version,
            "interfaces": interfaces,
            "ips": ips,
            "routes": self.routes,
        });
        if !self.dns.is_null() {
            out["dns"] = self.dns.clone();
        } else {
            out["dns"] = json!({});
        }
        out
    }

    /// Reads a prevResult (any supported version) or a delegated IPAM result.
    pub fn parse(value: &Value) -> Result<Self, crate::error::CniError> {
        serde_json::from_value(value.clone())
            .map_err(|e| crate::error::CniError::decode(format!("prevResult: {e}")))
    }
}
