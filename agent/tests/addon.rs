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

use common::{ip, Lab};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

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

/// The four nodes, their networks and what runs on them.
struct World {
    lab: Lab,
}

impl World {
    fn new() -> Self {
        let mut lab = Lab::new("wa");
        let net = lab.ns("net");
        lab.add_ns(&net);
        for br in ["br-inet", "br-east", "br-west"] {
            ip(&["-n", &net, "link", "add", br, "type", "bridge"]);
            ip(&["-n", &net, "link", "set", br, "up"]);
        }
        for (i, n) in NODES.iter().enumerate() {
            let ns = lab.ns(n.name);
            lab.add_ns(&ns);
            let private = format!("{}/24", n.private);
            lab.plug(&ns, "eth1", &net, n.lan(), &format!("p{i}l"), &[&private]);
            if let Some(public) = n.public {
                let public = format!("{public}/24");
                lab.plug(&ns, "eth0", &net, "br-inet", &format!("p{i}i"), &[&public]);
            }
        }
        let w = World { lab };
        for n in &NODES {
            w.sh(n, &["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
        }
        w
    }

    fn sh(&self, n: &Node, args: &[&str]) -> String {
        let ns = self.lab.ns(n.name);
        let mut v = vec!["ip", "netns", "exec", ns.as_str()];
        v.extend_from_slice(args);
        testkit::run(&v)
    }

    /// flannel's VXLAN backend on every node, as flannel sets it up.
    fn flannel(&self) {
        for (i, n) in NODES.iter().enumerate() {
            let ns = self.lab.ns(n.name);
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
        let addrs = self
            .lab
            .add_pod(n.name, Path::new(BRIDGE_PLUGIN), &conflist);
        addrs.first().expect("the pod's address").to_string()
    }

    fn ping(&self, from: &Node, to: &str) -> bool {
        self.lab.ping(from.name, to)
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
            let dir = self.lab.node_dir(n.name);
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
        let path = self.lab.dir.join("mesh.yaml");
        std::fs::write(&path, yaml).expect("mesh file");
        path
    }

    /// weft-agent on every node with Kilo's flannel add-on arguments.
    fn start_agents(&mut self) {
        let mesh = self.mesh_file();
        for n in &NODES {
            let args = [
                "--listen",
                "",
                "--cni=false",
                "--compatibility=flannel",
                "--local=false",
            ];
            let mut args: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_ref()).collect();
            args.extend(["--mesh".as_ref(), mesh.as_os_str()]);
            self.lab.start_agent(n.name, &args);
        }
    }

    fn log(&self, n: &Node) -> String {
        self.lab.log(n.name)
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

    // --cni=false: the pods are flannel's to masquerade, not Weft's (its
    // chain masquerades nothing from the pod CIDR).
    let nat = w.sh(e1, &["iptables", "-t", "nat", "-S", "WEFT-POSTROUTING"]);
    assert!(!nat.contains(e1.pod_cidr), "{nat}");

    // flannel's routes, neighbours and forwarding entries: untouched.
    assert_eq!(w.flannels_state(), flannel_before);
}
