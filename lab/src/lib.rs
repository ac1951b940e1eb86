//! A multi-cloud cluster on one Linux host, no Kubernetes needed: network
//! namespaces play the nodes, the clouds' private networks and the internet.
//!
//! ```text
//!   internet 203.0.113.0/24 (a bridge)
//!     |-- aws-1 .11 ---+                    location aws: two nodes on one
//!     |-- aws-2 .12 ---+-- 172.31.0.0/24     private subnet; aws-1 leads
//!     |-- gcp-1 .21 ------ 10.128.0.0/24     location gcp
//!     `-- home router .31 (NAT, forwards udp/51820)
//!                     `--- 192.168.1.0/24 -- home-1 (endpoint forced to .31)
//! ```
//!
//! Every node runs `weft-agent` with the file backend; a leader's agent
//! starts the node's userspace tunnel (`weft-wg`, a process of its own that
//! outlives agent restarts); every node has a pod wired by `weft-cni` into
//! `kube-bridge` from the conflist the agent wrote. All traffic stays inside
//! namespaces the demo creates (the addresses are documentation and private
//! ranges), and everything is removed on the way out.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use weft_agent::backend::file::MeshFile;
use weft_agent::mesh::{Encapsulate, Topology};

/// Every namespace the demo creates starts with this.
pub const PREFIX: &str = "wd-";
/// The namespace that holds the demo's bridges (the internet and the
/// locations' private networks).
pub const NET: &str = "wd-net";
const ROUTER: &str = "wd-home-router";

/// One node of the demo.
#[derive(Clone, Debug)]
pub struct DemoNode {
    pub name: &'static str,
    pub location: &'static str,
    /// Address on the internet bridge (None: behind the home router).
    pub public: Option<&'static str>,
    pub private: &'static str,
    pub lan: &'static str,
    pub pod_cidr: &'static str,
    /// The endpoint others use (forced for the node behind NAT).
    pub endpoint: &'static str,
    /// In the dual-stack demo: the IPv6 pod CIDR, the IPv6 address on the
    /// location's network, and on the internet (behind the home router:
    /// routed, not translated).
    pub pod_cidr6: &'static str,
    pub private6: &'static str,
    pub public6: &'static str,
}

pub fn nodes() -> Vec<DemoNode> {
    vec![
        DemoNode {
            name: "aws-1",
            location: "aws",
            public: Some("203.0.113.11/24"),
            private: "172.31.0.11/24",
            lan: "br-aws",
            pod_cidr: "10.42.1.0/24",
            endpoint: "203.0.113.11:51820",
            pod_cidr6: "fd42:0:0:1::/64",
            private6: "fd00:a::11/64",
            public6: "2001:db8:1::11/64",
        },
        DemoNode {
            name: "aws-2",
            location: "aws",
            public: Some("203.0.113.12/24"),
            private: "172.31.0.12/24",
            lan: "br-aws",
            pod_cidr: "10.42.2.0/24",
            endpoint: "203.0.113.12:51820",
            pod_cidr6: "fd42:0:0:2::/64",
            private6: "fd00:a::12/64",
            public6: "2001:db8:1::12/64",
        },
        DemoNode {
            name: "gcp-1",
            location: "gcp",
            public: Some("203.0.113.21/24"),
            private: "10.128.0.21/24",
            lan: "br-gcp",
            pod_cidr: "10.42.3.0/24",
            endpoint: "203.0.113.21:51820",
            pod_cidr6: "fd42:0:0:3::/64",
            private6: "fd00:b::21/64",
            public6: "2001:db8:1::21/64",
        },
        DemoNode {
            name: "home-1",
            location: "home",
            public: None,
            private: "192.168.1.10/24",
            lan: "br-home",
            pod_cidr: "10.42.4.0/24",
            endpoint: "203.0.113.31:51820",
            pod_cidr6: "fd42:0:0:4::/64",
            private6: "fd00:c::10/64",
            public6: "2001:db8:31::10/64",
        },
    ]
}

pub fn node_ns(name: &str) -> String {
    format!("{PREFIX}{name}")
}

pub fn pod_ns(name: &str) -> String {
    format!("{PREFIX}{name}-pod")
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct DemoError(pub String);

fn sh(args: &[&str]) -> Result<String, DemoError> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| DemoError(format!("cannot run {}: {e}", args[0])))?;
    if !out.status.success() {
        return Err(DemoError(format!(
            "{} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn ns_exec(ns: &str, args: &[&str]) -> Result<String, DemoError> {
    let mut v = vec!["ip", "netns", "exec", ns];
    v.extend_from_slice(args);
    sh(&v)
}

fn ip_n(ns: &str, args: &[&str]) -> Result<String, DemoError> {
    let mut v = vec!["ip", "-n", ns];
    v.extend_from_slice(args);
    sh(&v)
}

/// Where the binaries are, and where the demo keeps its files.
#[derive(Clone, Debug)]
pub struct DemoPaths {
    pub agent: PathBuf,
    pub cni: PathBuf,
    /// weft-wg, which runs each leader's tunnel.
    pub tunnel: PathBuf,
    pub work: PathBuf,
}

impl DemoPaths {
    /// The agent and plugin next to the running executable.
    pub fn beside_current_exe() -> Result<Self, DemoError> {
        let exe = std::env::current_exe().map_err(|e| DemoError(e.to_string()))?;
        let dir = exe
            .parent()
            .ok_or_else(|| DemoError("no executable dir".into()))?;
        Ok(Self::in_dir(dir))
    }
    pub fn in_dir(dir: &Path) -> Self {
        Self {
            agent: dir.join("weft-agent"),
            cni: dir.join("weft-cni"),
            tunnel: dir.join("weft-wg"),
            work: std::env::temp_dir().join("weft-demo"),
        }
    }
}

/// Where the demo's agents read the mesh from.
#[derive(Clone, Debug)]
pub enum MeshSource {
    /// A mesh file the demo writes with every node's key and addresses.
    File,
    /// A Kubernetes API server holding the demo's Nodes (the tests run one
    /// in the demo's internet namespace); the agents announce themselves.
    Kubernetes { kubeconfig: PathBuf, clocks: Clocks },
}

/// The agents' liveness clocks under the Kubernetes backend, in seconds
/// (`--check-in-period`, `--stale-after`, `--unready-after`). The default
/// is Kilo's; a lab shortens them so that an API outage longer than the
/// staleness limit takes seconds.
#[derive(Clone, Copy, Debug)]
pub struct Clocks {
    pub check_in_period: u64,
    pub stale_after: u64,
    pub unready_after: u64,
}

impl Default for Clocks {
    fn default() -> Self {
        Self {
            check_in_period: 30,
            stale_after: 60,
            unready_after: 60,
        }
    }
}

/// A running demo; everything is removed on drop.
pub struct Demo {
    pub paths: DemoPaths,
    agents: Vec<(String, Child)>,
    encapsulate: Encapsulate,
    source: MeshSource,
    dual_stack: bool,
}

/// In the dual-stack demo, the node whose location is reached over an
/// IPv6-only underlay: it has no public IPv4 address.
pub const IPV6_ONLY: &str = "gcp-1";
/// The home router's IPv6: it routes the home network's /64, no NAT.
const ROUTER_WAN6: &str = "2001:db8:1::31";
const HOME_NET6: &str = "2001:db8:31::/64";
const HOME_GW6: &str = "2001:db8:31::1";

/// One row of the reachability table.
#[derive(Clone, Debug)]
pub struct Reach {
    pub from: String,
    pub to: String,
    pub target: String,
    pub path: &'static str,
    pub rtt_ms: Option<f64>,
}

impl Demo {
    /// Builds the whole scenario and waits until every agent has applied it.
    pub fn up(paths: DemoPaths, progress: &dyn Fn(&str)) -> Result<Self, DemoError> {
        Self::up_with(paths, Encapsulate::Never, progress)
    }

    /// As [`Demo::up`], with traffic inside a location encapsulated as asked.
    pub fn up_with(
        paths: DemoPaths,
        encapsulate: Encapsulate,
        progress: &dyn Fn(&str),
    ) -> Result<Self, DemoError> {
        let mut demo = Self::networks(paths, encapsulate, progress)?;
        demo.start(MeshSource::File, progress)?;
        Ok(demo)
    }

    /// The dual-stack demo (mesh file): every node with an IPv4 and an IPv6
    /// pod CIDR and internal address, the nodes with public addresses
    /// dialled over IPv6, gcp reached over an IPv6-only underlay, home
    /// behind NAT for IPv4 and routed for IPv6.
    pub fn up_dual_stack(
        paths: DemoPaths,
        encapsulate: Encapsulate,
        progress: &dyn Fn(&str),
    ) -> Result<Self, DemoError> {
        let mut demo = Self::networks_of(paths, encapsulate, true, progress)?;
        demo.start(MeshSource::File, progress)?;
        Ok(demo)
    }

    /// The namespaces and networks only, no agents yet (see [`Demo::start`]).
    pub fn networks(
        paths: DemoPaths,
        encapsulate: Encapsulate,
        progress: &dyn Fn(&str),
    ) -> Result<Self, DemoError> {
        Self::networks_of(paths, encapsulate, false, progress)
    }

    fn networks_of(
        paths: DemoPaths,
        encapsulate: Encapsulate,
        dual_stack: bool,
        progress: &dyn Fn(&str),
    ) -> Result<Self, DemoError> {
        for (what, p) in [
            ("weft-agent", &paths.agent),
            ("weft-cni", &paths.cni),
            ("weft-wg", &paths.tunnel),
        ] {
            if !p.is_file() {
                return Err(DemoError(format!(
                    "{what} not found at {} (build with: cargo build --release --workspace)",
                    p.display()
                )));
            }
        }
        down(&paths.work);
        let demo = Demo {
            paths,
            agents: Vec::new(),
            encapsulate,
            source: MeshSource::File,
            dual_stack,
        };
        progress("creating the internet, three clouds' networks and a home router");
        demo.build_networks()?;
        Ok(demo)
    }

    /// Starts an agent on every node reading from `source`, waits until all
    /// have applied, then wires a pod on every node.
    pub fn start(&mut self, source: MeshSource, progress: &dyn Fn(&str)) -> Result<(), DemoError> {
        let demo = self;
        demo.source = source;
        if let MeshSource::File = demo.source {
            progress("writing keys and the mesh description");
            demo.write_mesh()?;
        } else {
            for n in nodes() {
                let dir = demo.paths.work.join(n.name);
                std::fs::create_dir_all(&dir)
                    .map_err(|e| DemoError(format!("{}: {e}", dir.display())))?;
            }
        }
        progress("starting a weft-agent on every node");
        for n in nodes() {
            demo.start_agent(n.name)?;
        }
        demo.wait_applied(Duration::from_secs(20))?;
        progress("wiring a pod on every node with weft-cni");
        for n in nodes() {
            demo.add_pod(n.name)?;
        }
        Ok(())
    }

    fn build_networks(&self) -> Result<(), DemoError> {
        sh(&["ip", "netns", "add", NET])?;
        for br in ["br-inet", "br-aws", "br-gcp", "br-home"] {
            ip_n(NET, &["link", "add", br, "type", "bridge"])?;
            ip_n(NET, &["link", "set", br, "up"])?;
        }
        let mut port = 0;
        let mut plug =
            |ns: &str, ifname: &str, bridge: &str, addr: &str| -> Result<(), DemoError> {
                port += 1;
                let peer = format!("p{port}");
                sh(&[
                    "ip", "link", "add", ifname, "netns", ns, "type", "veth", "peer", "name",
                    &peer, "netns", NET,
                ])?;
                ip_n(NET, &["link", "set", &peer, "master", bridge, "up"])?;
                ip_n(ns, &["addr", "add", addr, "dev", ifname])?;
                ip_n(ns, &["link", "set", ifname, "up"]).map(|_| ())
            };
        // The home router: NAT for the home LAN, udp/51820 forwarded to home-1.
        sh(&["ip", "netns", "add", ROUTER])?;
        ip_n(ROUTER, &["link", "set", "lo", "up"])?;
        plug(ROUTER, "wan", "br-inet", "203.0.113.31/24")?;
        plug(ROUTER, "lan", "br-home", "192.168.1.1/24")?;
        ns_exec(
            ROUTER,
            &["sh", "-c", "echo 1 > /proc/sys/net/ipv4/ip_forward"],
        )?;
        ns_exec(
            ROUTER,
            &[
                "iptables",
                "-t",
                "nat",
                "-A",
                "POSTROUTING",
                "-o",
                "wan",
                "-j",
                "MASQUERADE",
            ],
        )?;
        ns_exec(
            ROUTER,
            &[
                "iptables",
                "-t",
                "nat",
                "-A",
                "PREROUTING",
                "-i",
                "wan",
                "-p",
                "udp",
                "--dport",
                "51820",
                "-j",
                "DNAT",
                "--to-destination",
                "192.168.1.10:51820",
            ],
        )?;
        let v6 = |ns: &str, addr: &str, dev: &str| {
            ip_n(ns, &["addr", "add", addr, "dev", dev, "nodad"]).map(|_| ())
        };
        if self.dual_stack {
            v6(ROUTER, &format!("{ROUTER_WAN6}/64"), "wan")?;
            v6(ROUTER, &format!("{HOME_GW6}/64"), "lan")?;
            ns_exec(ROUTER, &["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"])?;
        }
        for n in nodes() {
            let ns = node_ns(n.name);
            sh(&["ip", "netns", "add", &ns])?;
            ip_n(&ns, &["link", "set", "lo", "up"])?;
            if let Some(public) = n.public {
                if self.dual_stack && n.name == IPV6_ONLY {
                    plug(&ns, "eth0", "br-inet", n.public6)?;
                } else {
                    plug(&ns, "eth0", "br-inet", public)?;
                    if self.dual_stack {
                        v6(&ns, n.public6, "eth0")?;
                    }
                }
                if self.dual_stack {
                    ip_n(&ns, &["-6", "route", "add", HOME_NET6, "via", ROUTER_WAN6])?;
                }
            }
            plug(&ns, "eth1", n.lan, n.private)?;
            if self.dual_stack {
                v6(&ns, n.private6, "eth1")?;
            }
            if n.public.is_none() {
                ip_n(&ns, &["route", "add", "default", "via", "192.168.1.1"])?;
                if self.dual_stack {
                    v6(&ns, n.public6, "eth1")?;
                    ip_n(&ns, &["-6", "route", "add", "default", "via", HOME_GW6])?;
                }
            }
        }
        Ok(())
    }

    fn mesh_path(&self) -> PathBuf {
        self.paths.work.join("mesh.yaml")
    }

    fn write_mesh(&self) -> Result<(), DemoError> {
        let io = |e: std::io::Error| DemoError(format!("{}: {e}", self.paths.work.display()));
        std::fs::create_dir_all(&self.paths.work).map_err(io)?;
        let encapsulate = self.encapsulate;
        let mut yaml = format!(
            "# Written by weft-lab.\noptions: {{granularity: location, encapsulate: {encapsulate}}}\nnodes:\n"
        );
        for n in nodes() {
            let dir = self.paths.work.join(n.name);
            let (key, _) = weft_agent::reconcile::key::load_or_create(&dir.join("key"))
                .map_err(|e| DemoError(e.to_string()))?;
            // Dual stack: the nodes with public addresses are dialled over
            // IPv6; home keeps its forced IPv4 endpoint (its router's NAT),
            // and a node that cannot reach it there (IPv6 only) answers the
            // handshakes its keepalive starts, at their IPv6 source.
            let (endpoint, pods, internal6) = if self.dual_stack {
                let endpoint = match n.public {
                    Some(_) => format!("'[{}]:51820'", n.public6.split('/').next().unwrap_or("")),
                    None => n.endpoint.to_string(),
                };
                (
                    endpoint,
                    format!("'{}', '{}'", n.pod_cidr, n.pod_cidr6),
                    format!("\n    internalIP6: '{}'", n.private6),
                )
            } else {
                (
                    n.endpoint.to_string(),
                    n.pod_cidr.to_string(),
                    String::new(),
                )
            };
            let _ = writeln!(
                yaml,
                "  - name: {}\n    location: {}\n    endpoint: {endpoint}\n    internalIP: {}{internal6}\n    podCIDRs: [{pods}]\n    publicKey: {}{}",
                n.name,
                n.location,
                n.private,
                key.public_key(),
                if n.public.is_none() { "\n    persistentKeepalive: \"25\"" } else { "" }
            );
        }
        std::fs::write(self.mesh_path(), yaml).map_err(io)
    }

    /// Starts (or restarts) the agent of `node`.
    pub fn start_agent(&mut self, node: &str) -> Result<(), DemoError> {
        let dir = self.paths.work.join(node);
        let log =
            std::fs::File::create(dir.join("agent.log")).map_err(|e| DemoError(e.to_string()))?;
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &node_ns(node)])
            .arg(&self.paths.agent)
            .args(["--hostname", node, "--resync", "5", "--interface", "weft0"])
            .arg("--tunnel-binary")
            .arg(&self.paths.tunnel)
            // Every node's tunnel is weft0 and the namespaces share one
            // file system: each node keeps its sockets in its own directory.
            .arg("--control-socket")
            .arg(dir.join("weft0.ctl"))
            .arg("--uapi-dir")
            .arg(dir.join("run"));
        match &self.source {
            MeshSource::File => cmd.arg("--mesh").arg(self.mesh_path()),
            MeshSource::Kubernetes { kubeconfig, clocks } => cmd
                .args(["--backend", "kubernetes", "--kubeconfig"])
                .arg(kubeconfig)
                .args(["--encapsulate", &self.encapsulate.to_string()])
                .args(["--check-in-period", &clocks.check_in_period.to_string()])
                .args(["--stale-after", &clocks.stale_after.to_string()])
                .args(["--unready-after", &clocks.unready_after.to_string()]),
        };
        let child = cmd
            .arg("--state-dir")
            .arg(&dir)
            .arg("--cni-dir")
            .arg(dir.join("cni"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| DemoError(format!("cannot start weft-agent: {e}")))?;
        self.agents.push((node.to_string(), child));
        Ok(())
    }

    /// Stops the agent of `node` (SIGTERM; its network state stays).
    pub fn stop_agent(&mut self, node: &str) {
        if let Some(pos) = self.agents.iter().position(|(n, _)| n == node) {
            let (_, mut child) = self.agents.remove(pos);
            // SAFETY: kill(2) on our own child.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let end = Instant::now() + Duration::from_secs(5);
            while Instant::now() < end && matches!(child.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The process id of a node's running agent.
    pub fn agent_pid(&self, node: &str) -> Option<u32> {
        self.agents
            .iter()
            .find(|(n, _)| n == node)
            .map(|(_, c)| c.id())
    }

    /// The lines a node's agent has logged so far.
    pub fn log_lines(&self, node: &str) -> usize {
        self.log_from(node, 0).len()
    }

    /// A node's agent log from line `first` on.
    pub fn log_from(&self, node: &str, first: usize) -> Vec<String> {
        std::fs::read_to_string(self.paths.work.join(node).join("agent.log"))
            .map(|s| s.lines().skip(first).map(str::to_string).collect())
            .unwrap_or_default()
    }

    /// What a node runs: the routes the agent owns and its tunnel's peers
    /// (public key and allowed IPs), to compare before and after a fault.
    pub fn state(&self, node: &str) -> (Vec<String>, Vec<String>) {
        let mut routes: Vec<String> = ip_n(&node_ns(node), &["route", "show", "proto", "87"])
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect();
        routes.sort();
        let control = self.paths.work.join(node).join("weft0.ctl");
        let peers = wgconf::control::ControlClient::new(control)
            .get()
            .map(|(info, _)| {
                info.peers
                    .iter()
                    .map(|p| format!("{} {:?}", p.public_key, p.allowed_ips))
                    .collect()
            })
            .unwrap_or_default();
        (routes, peers)
    }

    /// Takes a node down as a crash would: its agent and tunnel killed, its
    /// links down.
    pub fn kill_node(&mut self, node: &str) {
        if let Some(pos) = self.agents.iter().position(|(n, _)| n == node) {
            let (_, mut child) = self.agents.remove(pos);
            let _ = child.kill();
            let _ = child.wait();
        }
        let control = self.paths.work.join(node).join("weft0.ctl");
        if let Ok((_, host)) = wgconf::control::ControlClient::new(control).get() {
            if let Some(pid) = host.pid {
                // SAFETY: kill(2) on the tunnel process this node runs.
                unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            }
        }
        for link in ["eth0", "eth1"] {
            let _ = ip_n(&node_ns(node), &["link", "set", link, "down"]);
        }
    }

    /// Sets one of a node's links down or up.
    pub fn set_link(&self, node: &str, link: &str, up: bool) -> Result<(), DemoError> {
        ip_n(
            &node_ns(node),
            &["link", "set", link, if up { "up" } else { "down" }],
        )
        .map(|_| ())
    }

    /// Waits until every agent has written its CNI configuration, which it
    /// does after applying the tunnel and routes.
    pub fn wait_applied(&mut self, timeout: Duration) -> Result<(), DemoError> {
        let end = Instant::now() + timeout;
        for n in nodes() {
            let conf = self
                .paths
                .work
                .join(n.name)
                .join("cni")
                .join(weft_agent::reconcile::cni::FILE_NAME);
            while !conf.exists() {
                for (name, child) in &mut self.agents {
                    if let Ok(Some(status)) = child.try_wait() {
                        return Err(DemoError(format!(
                            "weft-agent on {name} exited ({status}); see {}",
                            self.paths
                                .work
                                .join(name.as_str())
                                .join("agent.log")
                                .display()
                        )));
                    }
                }
                if Instant::now() > end {
                    let log =
                        std::fs::read_to_string(self.paths.work.join(n.name).join("agent.log"))
                            .unwrap_or_default();
                    let mut tail: Vec<&str> = log.lines().rev().take(5).collect();
                    tail.reverse();
                    return Err(DemoError(format!(
                        "weft-agent on {} did not apply within {timeout:?}; its log ends:\n{}",
                        n.name,
                        tail.join("\n")
                    )));
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        Ok(())
    }

    fn add_pod(&self, node: &str) -> Result<(), DemoError> {
        let pod = pod_ns(node);
        sh(&["ip", "netns", "add", &pod])?;
        ip_n(&pod, &["link", "set", "lo", "up"])?;
        let conflist_path = self
            .paths
            .work
            .join(node)
            .join("cni")
            .join(weft_agent::reconcile::cni::FILE_NAME);
        let conflist: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(&conflist_path).map_err(|e| DemoError(e.to_string()))?,
        )
        .map_err(|e| DemoError(format!("{}: {e}", conflist_path.display())))?;
        // As libcni does: the plugin's entry plus the list's name and version.
        let mut conf = conflist["plugins"][0].clone();
        conf["name"] = conflist["name"].clone();
        conf["cniVersion"] = conflist["cniVersion"].clone();
        conf["ipam"]["dataDir"] = serde_json::json!(self.paths.work.join(node).join("ipam"));
        let mut child = Command::new("ip")
            .args(["netns", "exec", &node_ns(node)])
            .arg(&self.paths.cni)
            .env("CNI_COMMAND", "ADD")
            .env("CNI_CONTAINERID", format!("demo-{node}"))
            .env("CNI_NETNS", format!("/var/run/netns/{pod}"))
            .env("CNI_IFNAME", "eth0")
            .env(
                "CNI_PATH",
                self.paths.cni.parent().unwrap_or(Path::new("/")),
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| DemoError(format!("cannot run weft-cni: {e}")))?;
        if let Some(mut i) = child.stdin.take() {
            use std::io::Write;
            i.write_all(conf.to_string().as_bytes())
                .map_err(|e| DemoError(e.to_string()))?;
        }
        let out = child
            .wait_with_output()
            .map_err(|e| DemoError(e.to_string()))?;
        if !out.status.success() {
            return Err(DemoError(format!(
                "weft-cni ADD on {node}: {}",
                String::from_utf8_lossy(&out.stdout)
            )));
        }
        Ok(())
    }

    /// The pod's address on `node` (the first host of its CIDR after the gateway).
    pub fn pod_ip(node: &str) -> String {
        let n = nodes()
            .into_iter()
            .find(|n| n.name == node)
            .map(|n| n.pod_cidr)
            .unwrap_or("0.0.0.0/0");
        let base = n.split('/').next().unwrap_or("0.0.0.0");
        let mut parts: Vec<&str> = base.split('.').collect();
        parts.truncate(3);
        format!("{}.2", parts.join("."))
    }

    /// The pod's IPv6 address on `node` in the dual-stack demo.
    pub fn pod_ip6(node: &str) -> String {
        let cidr = nodes()
            .into_iter()
            .find(|n| n.name == node)
            .map_or("::/64", |n| n.pod_cidr6);
        format!("{}2", cidr.split('/').next().unwrap_or("::"))
    }

    /// Pings from every pod to every other pod (in both families in the
    /// dual-stack demo) and to every other node's private address, waiting
    /// up to `settle` for tunnels to come up.
    pub fn check(&self, settle: Duration) -> Vec<Reach> {
        let all = nodes();
        let mut rows = Vec::new();
        let end = Instant::now() + settle;
        for a in &all {
            for b in all.iter().filter(|b| b.name != a.name) {
                let path = |target: &str| match (a.location == b.location, self.encapsulate) {
                    (false, _) => "encrypted",
                    // VXLAN runs over IPv4: IPv6 goes plain.
                    (true, Encapsulate::Always) if !target.contains(':') => "vxlan",
                    (true, _) => "private",
                };
                let mut targets = vec![
                    (format!("pod@{}", b.name), Self::pod_ip(b.name)),
                    (
                        format!("node {}", b.name),
                        b.private.split('/').next().unwrap_or("").to_string(),
                    ),
                ];
                if self.dual_stack {
                    targets.insert(1, (format!("pod@{}", b.name), Self::pod_ip6(b.name)));
                }
                for (to, target) in targets {
                    let mut rtt = ping(&pod_ns(a.name), &target);
                    while rtt.is_none() && Instant::now() < end {
                        rtt = ping(&pod_ns(a.name), &target);
                    }
                    rows.push(Reach {
                        from: format!("pod@{}", a.name),
                        to,
                        path: path(&target),
                        target,
                        rtt_ms: rtt,
                    });
                }
            }
        }
        rows
    }

    /// The mesh as weftctl draws it.
    pub fn graph(&self) -> Result<String, DemoError> {
        let loaded = MeshFile::read(&self.mesh_path()).map_err(|e| DemoError(e.to_string()))?;
        let t = Topology::new(&loaded.snapshot, &loaded.options, 0)
            .map_err(|e| DemoError(e.to_string()))?;
        Ok(weft_agent::render::graph(&t))
    }

    /// The WireGuard address on a node's weft0, if it has one.
    pub fn wireguard_address(node: &str) -> Option<String> {
        let out = ip_n(
            &node_ns(node),
            &["-o", "-4", "addr", "show", "dev", "weft0"],
        )
        .ok()?;
        out.split_whitespace()
            .skip_while(|w| *w != "inet")
            .nth(1)
            .map(str::to_string)
    }

    pub fn public_key(&self, node: &str) -> Option<String> {
        weft_agent::reconcile::key::load_or_create(&self.paths.work.join(node).join("key"))
            .ok()
            .map(|(k, _)| k.public_key().to_string())
    }
}

/// What a stream of probes saw: the sequence numbers answered, of `sent`.
#[derive(Clone, Debug)]
pub struct Probes {
    pub answered: Vec<u32>,
    pub sent: u32,
    pub interval: Duration,
}

impl Probes {
    pub fn lost(&self) -> u32 {
        self.sent - self.answered.len() as u32
    }

    /// The longest run of unanswered probes between answered ones, as time.
    pub fn longest_gap(&self) -> Duration {
        let mut seqs = self.answered.clone();
        seqs.sort_unstable();
        seqs.dedup();
        let gap = seqs.windows(2).map(|w| w[1] - w[0] - 1).max().unwrap_or(0);
        self.interval * gap
    }
}

/// Pings `target` from namespace `ns` every `interval`, `count` times,
/// doing `during` after `after`; each probe waits up to a second.
pub fn probe_during(
    ns: &str,
    target: &str,
    interval: Duration,
    count: u32,
    after: Duration,
    during: impl FnOnce(),
) -> Result<Probes, DemoError> {
    let child = Command::new("ip")
        .args(["netns", "exec", ns, "ping", "-n", "-W", "1", "-i"])
        .arg(format!("{:.3}", interval.as_secs_f64()))
        .args(["-c", &count.to_string(), target])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| DemoError(format!("cannot run ping: {e}")))?;
    std::thread::sleep(after);
    during();
    let out = child
        .wait_with_output()
        .map_err(|e| DemoError(format!("ping: {e}")))?;
    let answered = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split("icmp_seq=").nth(1))
        .filter_map(|rest| rest.split_whitespace().next()?.parse().ok())
        .collect();
    Ok(Probes {
        answered,
        sent: count,
        interval,
    })
}

/// CPU time (user and system) a process has used so far.
pub fn cpu_time(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The fields after the command name, which may hold spaces.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Some(Duration::from_millis((utime + stime) * 1000 / hz))
}

/// One ping; the RTT in ms if it was answered within a second.
pub fn ping(ns: &str, target: &str) -> Option<f64> {
    let out = ns_exec(ns, &["ping", "-c", "1", "-W", "1", target]).ok()?;
    let t = out.split("time=").nth(1)?;
    t.split_whitespace().next()?.parse().ok()
}

/// Renders the reachability table.
pub fn table(rows: &[Reach]) -> String {
    let mut out = format!(
        "{:<12} {:<14} {:<17} {:<10} {}\n",
        "from", "to", "address", "path", "rtt"
    );
    for r in rows {
        let rtt = r
            .rtt_ms
            .map_or("UNREACHABLE".to_string(), |t| format!("{t:.3} ms"));
        let _ = writeln!(
            out,
            "{:<12} {:<14} {:<17} {:<10} {rtt}",
            r.from, r.to, r.target, r.path
        );
    }
    out
}

impl Drop for Demo {
    fn drop(&mut self) {
        for n in nodes() {
            let control = self.paths.work.join(n.name).join("weft0.ctl");
            let _ = wgconf::control::ControlClient::new(control).stop();
        }
        for (_, mut child) in self.agents.drain(..) {
            // SAFETY: kill(2) on our own child.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let end = Instant::now() + Duration::from_secs(3);
            while Instant::now() < end && matches!(child.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        down(&self.paths.work);
    }
}

/// Removes every trace of a demo: its agents and tunnels, namespaces and files.
pub fn down(work: &Path) {
    // Processes of an earlier demo that was killed hard: every agent and
    // tunnel names a file in the demo's directory on its command line.
    if let Ok(rd) = std::fs::read_dir("/proc") {
        let marker = format!("{}/", work.display());
        for e in rd.flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
                continue;
            };
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            if (cmd.contains("weft-agent") || cmd.contains("weft-wg")) && cmd.contains(&marker) {
                // SAFETY: kill(2) on a process we identified as the demo's.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
    if let Ok(list) = sh(&["ip", "netns", "list"]) {
        for name in list.lines().filter_map(|l| l.split_whitespace().next()) {
            if name.starts_with(PREFIX) {
                let _ = sh(&["ip", "netns", "del", name]);
            }
        }
    }
    let _ = std::fs::remove_dir_all(work);
}
