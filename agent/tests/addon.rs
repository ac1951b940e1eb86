//! Add-on mode over flannel (`--compatibility=flannel --local=false
//! --cni=false`, Kilo's flannel manifests' arguments): a cluster whose
//! pods flannel wires, spread over two locations whose private networks do
//! not reach each other, as k3s with its default flannel would run there.
//!
//! flannel cannot be built here, so each node is set up as flannel's VXLAN
//! backend sets itself up (its documentation and `backend/vxlan`): a
//! `flannel.1` VXLAN device (VNI 1, port 8472, no learning, local = the
//! node's IP) holding its pod subnet's network address as a /32; for every
//! other node a permanent neighbour (that node's VTEP address → its VTEP
//! MAC), a forwarding entry (that MAC → the node's IP) and a route to its
//! pod subnet via its VTEP address, on-link; pods on the `cni0` bridge
//! wired by the reference bridge plugin, as flannel's CNI delegates to it.
//!
//! Shown: flannel alone does not cross locations (its VXLAN goes to
//! private addresses the other location cannot reach); with Weft's agents
//! every pod reaches every other; traffic inside a location never enters
//! the tunnel; and flannel's routes, neighbours and forwarding entries are
//! exactly as before.

mod common;

use common::ip;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const AGENT: &str = env!("CARGO_BIN_EXE_weft-agent");
const BRIDGE_PLUGIN: &str = "/usr/lib/cni/bridge";

struct Node {
    name: &'static str,
    location: &'static str,
    /// On the internet bridge; only the locations' leaders have one.
    public: Option<&'static str>,
    private: &'static str,
    pod_cidr: &'static str,
}

const NODES: [Node; 4] = [
    Node {
        name: "e1",
        location: "east",
        public: Some("203.0.113.11"),
        private: "192.168.1.11",
        pod_cidr: "10.42.1.0/24",
    },
    Node {
        name: "e2",
        location: "east",
        public: None,
        private: "192.168.1.12",
        pod_cidr: "10.42.2.0/24",
    },
    Node {
        name: "w1",
        location: "west",
        public: Some("203.0.113.21"),
        private: "192.168.2.21",
        pod_cidr: "10.42.3.0/24",
    },
    Node {
        name: "w2",
        location: "west",
        public: None,
        private: "192.168.2.22",
        pod_cidr: "10.42.4.0/24",
    },
];

impl Node {
    /// flannel's VTEP address: the network address of the pod subnet.
    fn vtep(&self) -> &str {
        self.pod_cidr.split('/').next().unwrap_or_default()
    }

    fn vtep_mac(&self, i: usize) -> String {
        format!("0e:66:6c:00:00:{:02x}", i + 1)
    }

    fn lan(&self) -> &'static str {
        if self.location == "east" {
            "br-east"
        } else {
            "br-west"
        }
    }
}

/// Everything the test creates; removed on drop, failure or not.
struct World {
    tag: String,
    dir: PathBuf,
    agents: Vec<Child>,
    namespaces: Vec<String>,
    pods: Vec<String>,
}

impl World {
    fn new() -> Self {
        let tag = format!("wa{}", std::process::id() % 100_000);
        let dir = std::env::temp_dir().join(format!("weft-addon-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        let mut w = World {
            tag,
            dir,
            agents: Vec::new(),
            namespaces: Vec::new(),
            pods: Vec::new(),
        };
        let net = w.ns("net");
        w.add_ns(&net);
        for br in ["br-inet", "br-east", "br-west"] {
            ip(&["-n", &net, "link", "add", br, "type", "bridge"]);
            ip(&["-n", &net, "link", "set", br, "up"]);
        }
        for (i, n) in NODES.iter().enumerate() {
            let ns = w.ns(n.name);
            w.add_ns(&ns);
            let plug = |ifname: &str, bridge: &str, addr: &str, port: String| {
                ip(&[
                    "link", "add", ifname, "netns", &ns, "type", "veth", "peer", "name", &port,
                    "netns", &net,
                ]);
                ip(&["-n", &net, "link", "set", &port, "master", bridge, "up"]);
                ip(&["-n", &ns, "addr", "add", addr, "dev", ifname]);
                ip(&["-n", &ns, "link", "set", ifname, "up"]);
            };
            plug(
                "eth1",
                n.lan(),
                &format!("{}/24", n.private),
                format!("p{i}l"),
            );
            if let Some(public) = n.public {
                plug("eth0", "br-inet", &format!("{public}/24"), format!("p{i}i"));
            }
            w.sh(n, &["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
        }
        w
    }

    fn ns(&self, what: &str) -> String {
        format!("{}-{what}", self.tag)
    }

    fn add_ns(&mut self, name: &str) {
        ip(&["netns", "add", name]);
        ip(&["-n", name, "link", "set", "lo", "up"]);
        self.namespaces.push(name.to_string());
    }

    fn sh(&self, n: &Node, args: &[&str]) -> String {
        let ns = self.ns(n.name);
        let mut v = vec!["ip", "netns", "exec", ns.as_str()];
        v.extend_from_slice(args);
        testkit::run(&v)
    }

    /// flannel's VXLAN backend on every node, as flannel sets it up.
    fn flannel(&self) {
        for (i, n) in NODES.iter().enumerate() {
            let ns = self.ns(n.name);
            ip(&[
                "-n",
                &ns,
                "link",
                "add",
                "flannel.1",
                "address",
                &n.vtep_mac(i),
                "type",
                "vxlan",
                "id",
                "1",
                "local",
                n.private,
                "dev",
                "eth1",
                "dstport",
                "8472",
                "nolearning",
            ]);
            ip(&["-n", &ns, "link", "set", "flannel.1", "mtu", "1450", "up"]);
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{}/32", n.vtep()),
                "dev",
                "flannel.1",
            ]);
            for (j, other) in NODES.iter().enumerate().filter(|(j, _)| *j != i) {
                ip(&[
                    "-n",
                    &ns,
                    "neigh",
                    "replace",
                    other.vtep(),
                    "lladdr",
                    &other.vtep_mac(j),
                    "dev",
                    "flannel.1",
                    "nud",
                    "permanent",
                ]);
                testkit::run(&[
                    "ip",
                    "netns",
                    "exec",
                    &ns,
                    "bridge",
                    "fdb",
                    "replace",
                    &other.vtep_mac(j),
                    "dev",
                    "flannel.1",
                    "dst",
                    other.private,
                    "self",
                    "permanent",
                ]);
                ip(&[
                    "-n",
                    &ns,
                    "route",
                    "replace",
                    other.pod_cidr,
                    "via",
                    other.vtep(),
                    "dev",
                    "flannel.1",
                    "onlink",
                ]);
            }
        }
    }

    /// A pod on `n`, wired by the bridge plugin as flannel's CNI does
    /// (bridge cni0, the default gateway, no masquerade, host-local in the
    /// subnet).
    fn add_pod(&mut self, n: &Node) -> String {
        let pod = self.ns(&format!("{}-pod", n.name));
        self.add_ns(&pod);
        let conflist = json!({
            "cniVersion": "1.0.0",
            "name": "cbr0",
            "plugins": [{
                "type": "bridge", "bridge": "cni0", "isGateway": true, "isDefaultGateway": true,
                "ipMasq": false,
                "hairpinMode": true, "mtu": 1450,
                "ipam": {"type": "host-local", "ranges": [[{"subnet": n.pod_cidr}]]}
            }]
        });
        let result = common::cni_call(
            &self.ns(n.name),
            Path::new(BRIDGE_PLUGIN),
            "ADD",
            &pod,
            &conflist,
            &self.dir.join(n.name).join("ipam"),
        );
        self.pods.push(pod);
        result["ips"][0]["address"]
            .as_str()
            .and_then(|a| a.split('/').next())
            .expect("the pod's address")
            .to_string()
    }

    fn pod_ns(&self, n: &Node) -> String {
        self.ns(&format!("{}-pod", n.name))
    }

    fn ping(&self, from: &Node, to: &str) -> bool {
        testkit::try_run(&[
            "ip",
            "netns",
            "exec",
            &self.pod_ns(from),
            "ping",
            "-c",
            "1",
            "-W",
            "1",
            to,
        ])
    }

    /// What flannel made: the main table's routes (Weft's are elsewhere;
    /// the kernel's route for the tunnel's own address aside), flannel.1's
    /// neighbours and forwarding entries, on every node.
    fn flannels_state(&self) -> Vec<String> {
        NODES
            .iter()
            .map(|n| {
                let main: Vec<String> = self
                    .sh(n, &["ip", "route", "show", "table", "main"])
                    .lines()
                    .filter(|l| !l.contains(" dev weft0 "))
                    .map(str::to_string)
                    .collect();
                [
                    main.join("\n"),
                    self.sh(n, &["ip", "neigh", "show", "dev", "flannel.1"]),
                    self.sh(n, &["bridge", "fdb", "show", "dev", "flannel.1"]),
                ]
                .join("")
            })
            .collect()
    }

    fn mesh_file(&self) -> PathBuf {
        let mut yaml = String::from(
            "options: {local: false, compatibility: flannel, encapsulate: never}\nnodes:\n",
        );
        for n in &NODES {
            let dir = self.dir.join(n.name);
            std::fs::create_dir_all(&dir).expect("dir");
            let (key, _) =
                weft_agent::reconcile::key::load_or_create(&dir.join("key")).expect("key");
            let endpoint = n.public.unwrap_or(n.private);
            yaml.push_str(&format!(
                "  - {{name: {}, location: {}, endpoint: '{endpoint}:51820', internalIP: {}/24, podCIDRs: [{}], publicKey: {}}}\n",
                n.name,
                n.location,
                n.private,
                n.pod_cidr,
                key.public_key()
            ));
        }
        let path = self.dir.join("mesh.yaml");
        std::fs::write(&path, yaml).expect("mesh file");
        path
    }

    /// weft-agent on every node with Kilo's flannel add-on arguments.
    fn start_agents(&mut self) {
        let mesh = self.mesh_file();
        for n in &NODES {
            let dir = self.dir.join(n.name);
            let log = std::fs::File::create(dir.join("agent.log")).expect("log");
            let child = Command::new("ip")
                .args(["netns", "exec", &self.ns(n.name), AGENT])
                .args(["--hostname", n.name, "--resync", "1", "--listen", ""])
                .args(["--cni=false", "--compatibility=flannel", "--local=false"])
                .arg("--mesh")
                .arg(&mesh)
                .arg("--tunnel-binary")
                .arg(common::sibling_binary("weft-wg", "dataplane"))
                .arg("--state-dir")
                .arg(&dir)
                .arg("--control-socket")
                .arg(dir.join("weft0.ctl"))
                .arg("--uapi-dir")
                .arg(dir.join("run"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("agent");
            self.agents.push(child);
        }
    }

    fn log(&self, n: &Node) -> String {
        std::fs::read_to_string(self.dir.join(n.name).join("agent.log")).unwrap_or_default()
    }

    /// Packets the kernel sent into and received from a leader's tunnel.
    fn tunnel_packets(&self, n: &Node) -> u64 {
        ["tx_packets", "rx_packets"]
            .iter()
            .map(|c| {
                self.sh(n, &["cat", &format!("/sys/class/net/weft0/statistics/{c}")])
                    .trim()
                    .parse::<u64>()
                    .unwrap_or(0)
            })
            .sum()
    }
}

impl Drop for World {
    fn drop(&mut self) {
        for mut a in self.agents.drain(..) {
            let _ = a.kill();
            let _ = a.wait();
        }
        for n in &NODES {
            let _ =
                wgconf::control::ControlClient::new(self.dir.join(n.name).join("weft0.ctl")).stop();
        }
        for ns in self.namespaces.drain(..).rev() {
            let _ = Command::new("ip").args(["netns", "del", &ns]).status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
#[ignore = "needs root: network namespaces"]
fn weft_joins_flannels_locations_and_leaves_flannel_alone() {
    testkit::require_root("network namespaces");
    assert!(
        Path::new(BRIDGE_PLUGIN).exists(),
        "{BRIDGE_PLUGIN} missing (apt-get install containernetworking-plugins)"
    );
    let mut w = World::new();
    w.flannel();
    let pods: Vec<String> = NODES.iter().map(|n| w.add_pod(n)).collect();
    let (e1, e2, w1, w2) = (&NODES[0], &NODES[1], &NODES[2], &NODES[3]);
    // flannel alone: inside a location yes, across no.
    assert!(w.ping(e1, &pods[1]), "flannel inside east");
    assert!(w.ping(w2, &pods[2]), "flannel inside west");
    assert!(!w.ping(e2, &pods[3]), "flannel alone crossed locations");
    let flannel_before = w.flannels_state();

    w.start_agents();
    let started = Instant::now();
    let every_pair = || {
        let mut missing = Vec::new();
        for (i, from) in NODES.iter().enumerate() {
            for (j, to) in pods.iter().enumerate() {
                if i != j && !w.ping(from, to) {
                    missing.push(format!("{} -> {}", from.name, NODES[j].name));
                }
            }
        }
        missing
    };
    let joined = testkit::wait_until(Duration::from_secs(20), Duration::from_millis(200), || {
        w.ping(e2, &pods[3]) && w.ping(w2, &pods[1])
    });
    assert!(
        joined,
        "members' pods do not reach the other location:\n{}\n{}",
        w.log(e2),
        w.log(e1)
    );
    let missing = every_pair();
    assert!(missing.is_empty(), "unreachable: {missing:?}");
    eprintln!(
        "all 12 pod-to-pod paths answer {:?} after the agents started",
        started.elapsed()
    );
    // The member's way out is flannel's VXLAN to its leader's VTEP, from
    // Weft's table.
    let route = w.sh(e2, &["ip", "route", "get", &pods[3]]);
    assert!(
        route.contains("via 10.42.1.0 dev flannel.1") && route.contains("table 87"),
        "{route}"
    );
    let route = w.sh(e1, &["ip", "route", "get", &pods[3]]);
    assert!(route.contains("dev weft0"), "{route}");

    // Inside a location, nothing enters the tunnel.
    let (t_e1, t_w1) = (w.tunnel_packets(e1), w.tunnel_packets(w1));
    for _ in 0..3 {
        assert!(w.ping(e1, &pods[1]) && w.ping(e2, &pods[0]));
        assert!(w.ping(w1, &pods[3]) && w.ping(w2, &pods[2]));
    }
    assert_eq!(
        (w.tunnel_packets(e1), w.tunnel_packets(w1)),
        (t_e1, t_w1),
        "traffic inside a location went through the tunnel"
    );
    // And across, it does (the counters can see it).
    assert!(w.ping(e2, &pods[2]));
    assert!(w.tunnel_packets(e1) > t_e1);

    // flannel's routes, neighbours and forwarding entries: untouched.
    assert_eq!(w.flannels_state(), flannel_before);
}
