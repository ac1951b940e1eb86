//! CNI errors: the spec's codes, a message and details, printed as JSON on
//! stdout with a non-zero exit.

use serde::Serialize;

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct CniError {
    #[serde(rename = "cniVersion")]
    pub cni_version: String,
    pub code: u32,
    pub msg: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub details: String,
}

impl std::fmt::Display for CniError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (code {})", self.msg, self.code)?;
        if !self.details.is_empty() {
            write!(f, ": {}", self.details)?;
        }
        Ok(())
    }
}

impl std::error::Error for CniError {}

impl CniError {
    pub fn new(code: u32, msg: impl Into<String>) -> Self {
        Self {
            cni_version: "1.1.0".into(),
            code,
            msg: msg.into(),
            details: String::new(),
        }
    }
    pub fn with_details(mut self, details: impl Into<String>) -> Self {
        self.details = details.into();
        self
    }
    /// 1: the requested spec version is not supported; `supported` lists
    /// those that are.
    pub fn incompatible(version: &str, supported: &[&str]) -> Self {
        Self::new(1, format!("incompatible CNI version {version:?}"))
            .with_details(format!("supported: {}", supported.join(", ")))
    }
    /// 2: a field the plugin does not support.
    pub fn unsupported(msg: impl Into<String>) -> Self {
        Self::new(2, msg)
    }
    /// 3: the container is unknown.
    pub fn unknown_container(msg: impl Into<String>) -> Self {
        Self::new(3, msg)
    }
    /// 4: a required environment variable is missing or invalid.
    pub fn env(msg: impl Into<String>) -> Self {
        Self::new(4, msg)
    }
    /// 5: an I/O failure.
    pub fn io(msg: impl Into<String>) -> Self {
        Self::new(5, msg)
    }
    /// 6: stdin could not be decoded.
    pub fn decode(msg: impl Into<String>) -> Self {
        Self::new(6, msg)
    }
    /// 7: the configuration is invalid.
    pub fn invalid_config(msg: impl Into<String>) -> Self {
        Self::new(7, msg)
    }
    /// 11: try again later (e.g. no address left right now).
    pub fn try_later(msg: impl Into<String>) -> Self {
        Self::new(11, msg)
    }
    /// 50: the plugin cannot serve ADDs now (STATUS).
    pub fn unavailable(msg: impl Into<String>) -> Self {
        Self::new(50, msg)
    }
    /// 100+: plugin-specific; 100 is a failed CHECK.
    pub fn check_failed(msg: impl Into<String>) -> Self {
        Self::new(100, msg)
    }
    pub fn to_json(&self, version: &str) -> String {
        let mut e = self.clone();
        e.cni_version = version.to_string();
        serde_json::to_string(&e)
            .unwrap_or_else(|_| format!("{{\"code\":{},\"msg\":\"error\"}}", self.code))
    }
}

#[cfg(feature = "plugin")]
impl From<weft_netlink::NetlinkError> for CniError {
    fn from(e: weft_netlink::NetlinkError) -> Self {
        use weft_netlink::NetlinkError as N;
        match e {
            N::Failed(m) => CniError::io(m),
            N::Conflict(m) => CniError::invalid_config(m),
            N::Namespace(m) => CniError::unknown_container(m),
        }
    }
}
