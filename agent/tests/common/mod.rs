//! Helpers the agent's integration tests share.
#![allow(dead_code, unused_imports)]

use std::path::{Path, PathBuf};

pub use testkit::ip;

/// Another package's binary, built with the same profile as this test.
pub fn sibling_binary(bin: &str, package: &str) -> PathBuf {
    testkit::sibling_binary(env!("CARGO_BIN_EXE_weft-agent"), bin, package)
}

/// Runs CNI `command` in the node namespace `node_ns` for the pod in
/// namespace `pod` with the first plugin of `conflist`, as libcni does
/// (that plugin plus the list's name and version), keeping the IPAM store
/// in `ipam_dir`. Fails the test if the plugin fails; returns its result
/// (Null when it printed none).
pub fn cni_call(
    node_ns: &str,
    plugin: &Path,
    command: &str,
    pod: &str,
    conflist: &serde_json::Value,
    ipam_dir: &Path,
) -> serde_json::Value {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut conf = conflist["plugins"][0].clone();
    conf["name"] = conflist["name"].clone();
    conf["cniVersion"] = conflist["cniVersion"].clone();
    conf["ipam"]["dataDir"] = serde_json::json!(ipam_dir);
    let mut child = Command::new("ip")
        .args(["netns", "exec", node_ns])
        .arg(plugin)
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", format!("ctr-{pod}"))
        .env("CNI_NETNS", format!("/var/run/netns/{pod}"))
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", plugin.parent().unwrap_or(Path::new("/")))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("plugin");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(conf.to_string().as_bytes())
        .expect("conf");
    let out = child.wait_with_output().expect("plugin output");
    assert!(
        out.status.success(),
        "{command} {pod} with {}: {}{}",
        plugin.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null)
}

/// The namespaces, agents and files of one networked test, removed on
/// drop, whether the test passed or not (the tunnels too, which outlive
/// their agents by design).
pub struct Lab {
    /// Prefixes every namespace of this lab (unique per process).
    pub tag: String,
    pub dir: PathBuf,
    agents: Vec<std::process::Child>,
    nodes: Vec<String>,
    namespaces: Vec<String>,
}

impl Lab {
    /// A lab named `name` (a few letters: namespace names are short).
    pub fn new(name: &str) -> Self {
        let tag = format!("{name}{}", std::process::id() % 10_000);
        let dir = std::env::temp_dir().join(format!("weft-{tag}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("lab directory");
        Lab {
            tag,
            dir,
            agents: Vec::new(),
            nodes: Vec::new(),
            namespaces: Vec::new(),
        }
    }

    /// The namespace called `what` in this lab.
    pub fn ns(&self, what: &str) -> String {
        format!("{}-{what}", self.tag)
    }

    /// Every namespace this lab made.
    pub fn namespaces(&self) -> &[String] {
        &self.namespaces
    }

    /// The namespace of `node`'s pod.
    pub fn pod_ns(&self, node: &str) -> String {
        self.ns(&format!("{node}-pod"))
    }

    /// Creates namespace `name` with its loopback up.
    pub fn add_ns(&mut self, name: &str) {
        ip(&["netns", "add", name]);
        ip(&["-n", name, "link", "set", "lo", "up"]);
        self.namespaces.push(name.to_string());
    }

    /// `node`'s directory: key, state, sockets, CNI and IPAM files, log.
    pub fn node_dir(&self, node: &str) -> PathBuf {
        let d = self.dir.join(node);
        std::fs::create_dir_all(&d).expect("node directory");
        d
    }

    /// A veth from namespace `ns` (as `ifname`, with `addrs`) to `bridge` in
    /// namespace `net` (as `port`), both ends up. IPv6 addresses skip
    /// duplicate address detection, so they work at once.
    pub fn plug(
        &self,
        ns: &str,
        ifname: &str,
        net: &str,
        bridge: &str,
        port: &str,
        addrs: &[&str],
    ) {
        ip(&[
            "link", "add", ifname, "netns", ns, "type", "veth", "peer", "name", port, "netns", net,
        ]);
        ip(&["-n", net, "link", "set", port, "master", bridge, "up"]);
        for a in addrs {
            ip(&["-n", ns, "addr", "add", a, "dev", ifname, "nodad"]);
        }
        ip(&["-n", ns, "link", "set", ifname, "up"]);
    }

    /// Starts weft-agent as `node` in namespace `ns(node)`, with its files
    /// in the node's directory (state, CNI configuration, control and UAPI
    /// sockets), a pass every second and `args` besides; it logs to
    /// `agent.log` there.
    pub fn start_agent(&mut self, node: &str, args: &[&std::ffi::OsStr]) {
        let dir = self.node_dir(node);
        let log = std::fs::File::create(dir.join("agent.log")).expect("log");
        let child = std::process::Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.ns(node),
                env!("CARGO_BIN_EXE_weft-agent"),
            ])
            .args(["--hostname", node, "--resync", "1"])
            .arg("--tunnel-binary")
            .arg(sibling_binary("weft-wg", "dataplane"))
            .arg("--state-dir")
            .arg(&dir)
            .arg("--cni-dir")
            .arg(dir.join("cni"))
            .arg("--control-socket")
            .arg(dir.join("weft0.ctl"))
            .arg("--uapi-dir")
            .arg(dir.join("run"))
            .args(args)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .expect("weft-agent starts");
        self.agents.push(child);
        if !self.nodes.iter().any(|n| n == node) {
            self.nodes.push(node.to_string());
        }
    }

    /// What `node`'s agent has logged.
    pub fn log(&self, node: &str) -> String {
        std::fs::read_to_string(self.dir.join(node).join("agent.log")).unwrap_or_default()
    }

    /// The conflist `node`'s agent wrote, once `ready` accepts it (within
    /// 20 s, else the test fails with the agent's log).
    pub fn conflist(
        &self,
        node: &str,
        ready: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let path = self.dir.join(node).join("cni/10-weft.conflist");
        let found = testkit::wait_for(
            std::time::Duration::from_secs(20),
            std::time::Duration::from_millis(100),
            || {
                let v: serde_json::Value =
                    serde_json::from_str(&std::fs::read_to_string(&path).ok()?).ok()?;
                ready(&v).then_some(v)
            },
        );
        found.unwrap_or_else(|| {
            panic!(
                "{node}'s agent wrote no such conflist:\n{}\n{}",
                std::fs::read_to_string(&path).unwrap_or_default(),
                self.log(node)
            )
        })
    }

    /// A pod for `node` (namespace `pod_ns(node)`) wired by `plugin` with
    /// the first plugin of `conflist`; its addresses.
    pub fn add_pod(
        &mut self,
        node: &str,
        plugin: &Path,
        conflist: &serde_json::Value,
    ) -> Vec<std::net::IpAddr> {
        let pod = self.pod_ns(node);
        self.add_ns(&pod);
        let result = cni_call(
            &self.ns(node),
            plugin,
            "ADD",
            &pod,
            conflist,
            &self.node_dir(node).join("ipam"),
        );
        result["ips"]
            .as_array()
            .map(|ips| {
                ips.iter()
                    .filter_map(|i| i["address"].as_str()?.split('/').next()?.parse().ok())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Whether a ping from `node`'s pod to `to` is answered within 1 s.
    pub fn ping(&self, node: &str, to: &str) -> bool {
        testkit::try_run(&[
            "ip",
            "netns",
            "exec",
            &self.pod_ns(node),
            "ping",
            "-c",
            "1",
            "-W",
            "1",
            to,
        ])
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for mut a in self.agents.drain(..) {
            let _ = a.kill();
            let _ = a.wait();
        }
        for n in &self.nodes {
            let _ = wgconf::control::ControlClient::new(self.dir.join(n).join("weft0.ctl")).stop();
        }
        for ns in self.namespaces.drain(..).rev() {
            let _ = std::process::Command::new("ip")
                .args(["netns", "del", &ns])
                .status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
