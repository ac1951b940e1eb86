//! Two clusters joined live, Kilo's multi-cluster recipe exactly as its
//! talk shows it: two in-memory API servers, one node in each (in network
//! namespaces on a shared "internet"), each running weft-agent against its
//! own cluster with a pod wired by weft-cni; cluster B's agents run on
//! another WireGuard subnet (10.14.0.0/16). Each cluster's node is exported
//! with `weftctl showconf node N --as-peer -o yaml --allowed-ips
//! SERVICECIDR`, given no mesh-wide flag (weftctl reads the cluster's
//! subnet from its leaders' annotations, as kgctl does), and applied as a
//! Peer in the other cluster; then a pod in cluster A reaches a pod in
//! cluster B and back, through the tunnel between the two leaders.

mod common;

use common::ip;
use fake_apiserver::{k3s_node, FakeApi, HttpServer};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const AGENT: &str = env!("CARGO_BIN_EXE_weft-agent");
const WEFTCTL: &str = env!("CARGO_BIN_EXE_weftctl");

/// One cluster of one node.
struct Cluster {
    name: &'static str,
    node: &'static str,
    /// The node's address on the internet.
    address: &'static str,
    api_address: &'static str,
    pod_cidr: &'static str,
    /// The cluster's service range and WireGuard pool, which must not
    /// overlap the other cluster's.
    service_cidr: &'static str,
    subnet: &'static str,
    /// The address its agent gives its leader (the pool's first).
    wireguard_ip: &'static str,
}

const A: Cluster = Cluster {
    name: "a",
    node: "a-1",
    address: "203.0.113.11",
    api_address: "203.0.113.1",
    pod_cidr: "10.42.1.0/24",
    service_cidr: "10.43.0.0/16",
    subnet: "10.4.0.0/16",
    wireguard_ip: "10.4.0.1",
};
const B: Cluster = Cluster {
    name: "b",
    node: "b-1",
    address: "203.0.113.21",
    api_address: "203.0.113.2",
    pod_cidr: "10.44.1.0/24",
    service_cidr: "10.45.0.0/16",
    subnet: "10.14.0.0/16",
    wireguard_ip: "10.14.0.1",
};

/// Everything the test creates; removed on drop, failure or not.
struct World {
    tag: String,
    dir: PathBuf,
    agents: Vec<Child>,
    namespaces: Vec<String>,
}

impl World {
    fn new() -> Self {
        let tag = format!("wx{}", std::process::id() % 100_000);
        let dir = std::env::temp_dir().join(format!("weft-multicluster-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        let mut w = Self {
            tag,
            dir,
            agents: Vec::new(),
            namespaces: Vec::new(),
        };
        let inet = w.ns("inet");
        w.add_ns(&inet);
        ip(&["-n", &inet, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", &inet, "link", "set", "br0", "up"]);
        for c in [&A, &B] {
            ip(&[
                "-n",
                &inet,
                "addr",
                "add",
                &format!("{}/24", c.api_address),
                "dev",
                "br0",
            ]);
            let node = w.ns(c.node);
            w.add_ns(&node);
            let port = format!("{}{}", w.tag, c.name);
            ip(&[
                "link", "add", "eth0", "netns", &node, "type", "veth", "peer", "name", &port,
                "netns", &inet,
            ]);
            ip(&["-n", &inet, "link", "set", &port, "master", "br0", "up"]);
            ip(&[
                "-n",
                &node,
                "addr",
                "add",
                &format!("{}/24", c.address),
                "dev",
                "eth0",
            ]);
            ip(&["-n", &node, "link", "set", "eth0", "up"]);
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

    fn node_dir(&self, c: &Cluster) -> PathBuf {
        self.dir.join(c.node)
    }

    /// The cluster's API server, listening in the internet namespace.
    fn api(&self, c: &Cluster) -> (FakeApi, HttpServer, PathBuf) {
        let api = FakeApi::new();
        let mut node = k3s_node(c.node, c.pod_cidr);
        node["metadata"]["annotations"]["kilo.squat.ai/location"] = json!(c.name);
        api.put("nodes", node);
        let listener = weft_netlink::in_netns(
            Path::new(&format!("/var/run/netns/{}", self.ns("inet"))),
            |_| {
                std::net::TcpListener::bind(format!("{}:6443", c.api_address))
                    .map_err(|e| weft_netlink::NetlinkError::Failed(e.to_string()))
            },
        )
        .expect("listen");
        let server = api.serve_http(listener);
        let kubeconfig = self.dir.join(format!("kubeconfig-{}", c.name));
        std::fs::write(
            &kubeconfig,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: {0}\n  cluster: {{server: 'http://{1}:6443'}}\n\
                 users:\n- name: u\n  user: {{}}\ncontexts:\n- name: {0}\n  context: {{cluster: {0}, user: u}}\n\
                 current-context: {0}\n",
                c.name, c.api_address
            ),
        )
        .expect("kubeconfig");
        (api, server, kubeconfig)
    }

    fn start_agent(&mut self, c: &Cluster, kubeconfig: &Path) {
        let dir = self.node_dir(c);
        std::fs::create_dir_all(&dir).expect("dir");
        let log = std::fs::File::create(dir.join("agent.log")).expect("log");
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns(c.node), AGENT])
            .args([
                "--hostname",
                c.node,
                "--backend",
                "kubernetes",
                "--kubeconfig",
            ])
            .arg(kubeconfig)
            .args([
                "--subnet",
                c.subnet,
                "--encapsulate",
                "never",
                "--listen",
                "",
            ])
            .arg("--tunnel-binary")
            .arg(common::sibling_binary("weft-wg", "dataplane"))
            .arg("--state-dir")
            .arg(&dir)
            .arg("--cni-dir")
            .arg(dir.join("cni"))
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

    /// A pod on `c`'s node wired by weft-cni from the conflist the agent
    /// wrote; its address.
    fn add_pod(&mut self, c: &Cluster) -> String {
        let conflist_path = self.node_dir(c).join("cni/10-weft.conflist");
        let applied =
            testkit::wait_until(Duration::from_secs(20), Duration::from_millis(100), || {
                conflist_path.exists()
            });
        assert!(
            applied,
            "{}'s agent did not apply:\n{}",
            c.node,
            std::fs::read_to_string(self.node_dir(c).join("agent.log")).unwrap_or_default()
        );
        let conflist: Value =
            serde_json::from_str(&std::fs::read_to_string(&conflist_path).expect("read"))
                .expect("JSON");
        let pod = self.ns(&format!("{}-pod", c.node));
        self.add_ns(&pod);
        let cni = common::sibling_binary("weft-cni", "cni-plugin");
        let result = common::cni_call(
            &self.ns(c.node),
            &cni,
            "ADD",
            &pod,
            &conflist,
            &self.node_dir(c).join("ipam"),
        );
        result["ips"][0]["address"]
            .as_str()
            .and_then(|a| a.split('/').next())
            .expect("address")
            .to_string()
    }

    /// weftctl against `c`'s API, run where the API is reachable (on the
    /// cluster's node), with no mesh-wide flag: what it prints, and what it
    /// said on stderr.
    fn weftctl(&self, c: &Cluster, kubeconfig: &Path, args: &[&str]) -> (String, String) {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.ns(c.node), WEFTCTL])
            .args(["--backend", "kubernetes", "--kubeconfig"])
            .arg(kubeconfig)
            .args(args)
            .output()
            .expect("weftctl");
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "weftctl {args:?}: {stderr}");
        (String::from_utf8_lossy(&out.stdout).into_owned(), stderr)
    }

    /// `weftctl showconf node N --as-peer -o yaml --allowed-ips SERVICECIDR`:
    /// the Peer the other cluster applies (`| kubectl apply -f -`).
    fn export_as_peer(&self, c: &Cluster, kubeconfig: &Path) -> Value {
        let (yaml, stderr) = self.weftctl(
            c,
            kubeconfig,
            &[
                "showconf",
                "node",
                c.node,
                "--as-peer",
                "-o",
                "yaml",
                "--allowed-ips",
                c.service_cidr,
            ],
        );
        assert!(
            stderr.is_empty(),
            "weftctl had to guess or found a dispute: {stderr}"
        );
        let yaml: serde_yaml::Value = serde_yaml::from_str(&yaml).expect("weftctl prints YAML");
        serde_json::to_value(yaml).expect("JSON-shaped")
    }

    fn ping(&self, from: &Cluster, to: &str) -> bool {
        Command::new("ip")
            .args(["netns", "exec", &self.ns(&format!("{}-pod", from.node))])
            .args(["ping", "-c", "1", "-W", "1", to])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }
}

impl Drop for World {
    fn drop(&mut self) {
        for mut a in self.agents.drain(..) {
            let _ = a.kill();
            let _ = a.wait();
        }
        for c in [&A, &B] {
            let _ = wgconf::control::ControlClient::new(self.node_dir(c).join("weft0.ctl")).stop();
        }
        for ns in self.namespaces.drain(..).rev() {
            let _ = Command::new("ip").args(["netns", "del", &ns]).status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
#[ignore = "needs root: network namespaces"]
fn two_clusters_joined_by_peers_reach_each_others_pods() {
    testkit::require_root("network namespaces");
    let mut w = World::new();
    let (api_a, _server_a, kube_a) = w.api(&A);
    let (api_b, _server_b, kube_b) = w.api(&B);
    w.start_agent(&A, &kube_a);
    w.start_agent(&B, &kube_b);
    let pod_a = w.add_pod(&A);
    let pod_b = w.add_pod(&B);
    assert!(!w.ping(&A, &pod_b), "not joined yet");

    // Each cluster's node, as a Peer of the other: its segment (pods,
    // node, leader's WireGuard IP in its own cluster's pool) plus the
    // cluster's services.
    let started = Instant::now();
    let peer_a = w.export_as_peer(&A, &kube_a);
    let peer_b = w.export_as_peer(&B, &kube_b);
    for (peer, c, api) in [(&peer_a, &A, &api_a), (&peer_b, &B, &api_b)] {
        let announced = &api.get("nodes", c.node).expect("node")["metadata"]["annotations"];
        // The agent leads its one-node cluster at its pool's first address.
        assert_eq!(
            announced["kilo.squat.ai/wireguard-ip"],
            json!(format!("{}/16", c.wireguard_ip))
        );
        let key = announced["kilo.squat.ai/key"].clone();
        // kgctl's manifest, field for field: what the API machinery prints
        // for a Peer with no keepalive. (The node has a public address only,
        // so no internal IP to route.)
        let expected = json!({
            "apiVersion": "kilo.squat.ai/v1alpha1",
            "kind": "Peer",
            "metadata": {"creationTimestamp": null, "name": c.node},
            "spec": {
                "allowedIPs": [c.pod_cidr, format!("{}/32", c.wireguard_ip), c.service_cidr],
                "endpoint": {"dnsOrIP": {"ip": c.address}, "port": 51820},
                "publicKey": key,
            },
        });
        assert_eq!(*peer, expected, "{}'s Peer", c.node);
    }
    api_b.put("peers", peer_a);
    api_a.put("peers", peer_b);
    // Each cluster's weftctl shows the other's leader at the address its
    // tunnel holds, in the other's pool.
    for (c, kube, other) in [(&A, &kube_a, &B), (&B, &kube_b, &A)] {
        let shown = testkit::wait_for(Duration::from_secs(10), Duration::from_millis(100), || {
            let (conf, _) = w.weftctl(c, kube, &["showconf", "node", c.node]);
            conf.contains(&format!("{}/32", other.wireguard_ip))
                .then_some(conf)
        });
        assert!(
            shown.is_some(),
            "{}: weftctl showconf does not list {}'s leader at {}",
            c.node,
            other.node,
            other.wireguard_ip
        );
    }

    let reached = testkit::wait_until(Duration::from_secs(20), Duration::from_millis(100), || {
        w.ping(&A, &pod_b) && w.ping(&B, &pod_a)
    });
    assert!(
        reached,
        "the clusters' pods do not reach each other:\n{}\n{}",
        std::fs::read_to_string(w.node_dir(&A).join("agent.log")).unwrap_or_default(),
        std::fs::read_to_string(w.node_dir(&B).join("agent.log")).unwrap_or_default()
    );
    eprintln!(
        "pod {pod_a} (cluster a) and pod {pod_b} (cluster b) reach each other {:?} after the Peers were applied",
        started.elapsed()
    );
    // Through the tunnel between the two nodes: each sees the other as a
    // peer with a handshake.
    for (c, other) in [(&A, &B), (&B, &A)] {
        let (info, _) = wgconf::control::ControlClient::new(w.node_dir(c).join("weft0.ctl"))
            .get()
            .expect("tunnel");
        assert_eq!(info.peers.len(), 1, "{}: {:?}", c.node, info.peers);
        assert!(info.peers[0].last_handshake.is_some(), "{}", c.node);
        assert!(
            info.peers[0]
                .allowed_ips
                .iter()
                .any(|p| p.to_string() == other.service_cidr),
            "{}: {:?}",
            c.node,
            info.peers[0].allowed_ips
        );
    }
}
