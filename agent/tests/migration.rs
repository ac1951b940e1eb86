//! Moving a node from Kilo to Weft in place. Kilo's conflist names its
//! network `kilo`, and host-local records its pods' addresses under that
//! name; a Weft network of another name would hand a new pod an address a
//! running pod holds. Pods wired by Kilo's CNI (the reference bridge and
//! host-local plugins, Kilo's conflist), then weft-agent installed on the
//! node: the running pods keep their addresses and reachability, new pods
//! get others, and deleting an old pod through Weft frees its address.

mod common;

use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use testkit::{Netns, TempDir};

const AGENT: &str = env!("CARGO_BIN_EXE_weft-agent");
const REFERENCE_PLUGINS: &str = "/usr/lib/cni";

/// Fails the test unless the reference CNI plugins (Kilo's bridge and
/// host-local) are installed.
fn require_reference_plugins() {
    assert!(
        Path::new(REFERENCE_PLUGINS).join("bridge").exists(),
        "the reference CNI plugins are missing: apt-get install containernetworking-plugins"
    );
}

/// Kilo's conflist as its manifests write it (its bridge and host-local
/// keep the pods' addresses under the network's name).
fn kilo_conflist(pod_cidr: &str) -> Value {
    json!({
        "cniVersion": "0.4.0",
        "name": "kilo",
        "plugins": [
            {"type": "bridge", "bridge": "kube-bridge", "isDefaultGateway": true,
             "forceAddress": true, "mtu": 1420,
             "ipam": {"type": "host-local", "ranges": [[{"subnet": pod_cidr}]]}},
            {"type": "portmap", "snat": true, "capabilities": {"portMappings": true}}
        ]
    })
}

/// Dropped in order: the agent and the tunnel stopped, then the pods'
/// and the node's namespaces deleted and the directory removed.
struct Node {
    agent: Option<Child>,
    pods: Vec<Netns>,
    node_ns: Netns,
    dir: TempDir,
}

impl Node {
    fn new() -> Self {
        let node_ns = Netns::with_prefix("wmn");
        node_ns.ip(&[
            "link", "add", "eth0", "type", "veth", "peer", "name", "eth0p",
        ]);
        node_ns.ip(&["addr", "add", "192.0.2.10/24", "dev", "eth0"]);
        node_ns.ip(&["link", "set", "eth0", "up"]);
        node_ns.ip(&["link", "set", "eth0p", "up"]);
        let dir = TempDir::new("weft-migration");
        std::fs::create_dir_all(dir.join("net.d")).expect("dir");
        Self {
            agent: None,
            pods: Vec::new(),
            node_ns,
            dir,
        }
    }

    fn ns(&self) -> String {
        self.node_ns.name.clone()
    }

    /// Where host-local and weft-cni keep allocations (the node's
    /// /var/lib/cni/networks).
    fn ipam_dir(&self) -> PathBuf {
        self.dir.join("networks")
    }

    /// Runs CNI `command` for pod `pod` with the first plugin of `conflist`
    /// (as libcni does: that plugin plus the list's name and version).
    fn cni(&self, plugin: &Path, command: &str, pod: &str, conflist: &Value) -> Value {
        common::cni_call(&self.ns(), plugin, command, pod, conflist, &self.ipam_dir())
    }

    /// A new pod namespace wired by `plugin`; its address.
    fn add_pod(&mut self, plugin: &Path, conflist: &Value) -> String {
        let pod_ns = Netns::with_prefix("wmp");
        let pod = pod_ns.name.clone();
        self.pods.push(pod_ns);
        let result = self.cni(plugin, "ADD", &pod, conflist);
        result["ips"][0]["address"]
            .as_str()
            .and_then(|a| a.split('/').next())
            .expect("an address")
            .to_string()
    }

    fn ping(&self, from_pod: &str, to: &str) -> bool {
        Command::new("ip")
            .args(["netns", "exec", from_pod, "ping", "-c", "1", "-W", "1", to])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    fn allocated(&self, network: &str) -> BTreeSet<String> {
        std::fs::read_dir(self.ipam_dir().join(network))
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.parse::<std::net::IpAddr>().is_ok())
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut c) = self.agent.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = wgconf::control::ControlClient::new(self.dir.join("weft0.ctl")).stop();
        // The namespaces and the directory go with the fields.
    }
}

#[test]
#[ignore = "needs root: network namespaces"]
fn a_node_moved_from_kilo_keeps_its_pods_addresses() {
    testkit::require_root("network namespaces");
    require_reference_plugins();
    let weft_cni = common::sibling_binary("weft-cni", "cni-plugin");
    let mut node = Node::new();
    let pod_cidr = "10.42.7.0/24";
    // Kilo's CNI wires three pods.
    let kilo = kilo_conflist(pod_cidr);
    std::fs::write(node.dir.join("net.d/10-kilo.conflist"), kilo.to_string()).expect("conflist");
    let bridge = Path::new(REFERENCE_PLUGINS).join("bridge");
    let old: Vec<String> = (0..3).map(|_| node.add_pod(&bridge, &kilo)).collect();
    assert_eq!(node.allocated("kilo").len(), 3);

    // Weft takes over the node.
    let (key, _) = weft_agent::reconcile::key::load_or_create(&node.dir.join("key")).expect("key");
    std::fs::write(
        node.dir.join("mesh.yaml"),
        format!(
            "nodes:\n- {{name: me, location: a, endpoint: '192.0.2.10:51820', \
             internalIP: 192.0.2.10/24, podCIDRs: [{pod_cidr}], publicKey: {}}}\n",
            key.public_key()
        ),
    )
    .expect("mesh");
    let d = |p: &str| node.dir.join(p);
    let log = std::fs::File::create(d("agent.log")).expect("log");
    node.agent = Some(
        Command::new("ip")
            .args([
                "netns",
                "exec",
                &node.ns(),
                AGENT,
                "--hostname",
                "me",
                "--no-uapi",
            ])
            .arg("--mesh")
            .arg(d("mesh.yaml"))
            .arg("--state-dir")
            .arg(d(""))
            .arg("--cni-dir")
            .arg(d("net.d"))
            .arg("--ipam-dir")
            .arg(node.ipam_dir())
            .arg("--control-socket")
            .arg(d("weft0.ctl"))
            .args(["--listen", ""])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("agent"),
    );
    let ours = d("net.d/10-weft.conflist");
    let written = testkit::wait_until(Duration::from_secs(15), Duration::from_millis(50), || {
        ours.exists()
    });
    assert!(written, "the agent wrote no conflist");
    let weft: Value =
        serde_json::from_str(&std::fs::read_to_string(&ours).expect("read")).expect("JSON");
    assert_eq!(
        weft["name"], "kilo",
        "Kilo's network name, where its pods' addresses are"
    );
    assert_eq!(weft["plugins"][0]["type"], "weft-cni");
    assert!(
        !d("net.d/10-kilo.conflist").exists(),
        "Kilo's conflist moved aside"
    );
    assert!(d("net.d/10-kilo.conflist.weft-backup").exists());

    // New pods through Weft: other addresses, and they reach the old ones.
    let new: Vec<String> = (0..3).map(|_| node.add_pod(&weft_cni, &weft)).collect();
    let all: BTreeSet<&String> = old.iter().chain(&new).collect();
    assert_eq!(
        all.len(),
        6,
        "old {old:?}, new {new:?}: an address handed out twice"
    );
    assert_eq!(node.allocated("kilo").len(), 6);
    let first_new = node.pods[3].name.clone();
    for a in &old {
        assert!(node.ping(&first_new, a), "a new pod reaches old pod {a}");
    }
    // An old pod deleted through Weft frees its address.
    let first_old = node.pods[0].name.clone();
    node.cni(&weft_cni, "DEL", &first_old, &weft);
    assert!(
        !node.allocated("kilo").contains(&old[0]),
        "{} still held",
        old[0]
    );
    assert_eq!(node.allocated("kilo").len(), 5);
    eprintln!("Kilo's pods {old:?} kept their addresses; Weft's new pods got {new:?}");
}
