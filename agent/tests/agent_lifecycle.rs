//! weft-agent's lifecycle on one node in a namespace of its own: what it
//! applies, that a stop leaves the node's configuration in place, and that
//! `--clean-up` removes everything it created.

mod common;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const AGENT: &str = env!("CARGO_BIN_EXE_weft-agent");

/// Dropped in order: the tunnel stopped, the namespace deleted, the
/// directory removed.
struct Node {
    ns: testkit::Netns,
    dir: testkit::TempDir,
}

impl Node {
    fn new() -> Self {
        let ns = testkit::Netns::with_prefix("wl");
        ns.ip(&[
            "link", "add", "eth1", "type", "veth", "peer", "name", "eth1p",
        ]);
        ns.ip(&["addr", "add", "10.0.0.1/24", "dev", "eth1"]);
        ns.ip(&["link", "set", "eth1", "up"]);
        ns.ip(&["link", "set", "eth1p", "up"]);
        Self {
            ns,
            dir: testkit::TempDir::new("weft-lifecycle"),
        }
    }

    fn write_mesh(&self) {
        // "me" must know its own key: create it the way the agent would.
        let (key, _) =
            weft_agent::reconcile::key::load_or_create(&self.dir.join("key")).expect("key");
        let other = wgconf::PrivateKey([3; 32]).public_key();
        let mesh = format!(
            "nodes:\n\
             - {{name: me, location: a, endpoint: '10.0.0.1:51820', internalIP: 10.0.0.1/24, podCIDRs: [10.42.0.0/24], publicKey: {}}}\n\
             - {{name: other, location: b, endpoint: '10.0.0.2:51820', internalIP: 10.0.0.2/24, podCIDRs: [10.42.1.0/24], publicKey: {other}}}\n",
            key.public_key()
        );
        std::fs::write(self.dir.join("mesh.yaml"), mesh).expect("mesh");
    }

    /// Starts the agent with `extra` arguments and waits until it applied.
    fn start(&self, extra: &[&str]) -> Agent {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns.name, AGENT, "--hostname", "me"])
            .arg("--mesh")
            .arg(self.dir.join("mesh.yaml"))
            .arg("--state-dir")
            .arg(self.dir.path())
            .arg("--cni-dir")
            .arg(self.dir.join("cni"))
            .arg("--control-socket")
            .arg(self.control())
            .args(["--service-cidr", "10.43.0.0/16"])
            .stdin(Stdio::null())
            .stdout(self.log())
            .stderr(self.log());
        c.args(extra);
        let child = Agent(c.spawn().expect("start agent"));
        let conf = self.dir.join("cni/10-weft.conflist");
        let applied =
            testkit::wait_until(Duration::from_secs(10), Duration::from_millis(50), || {
                conf.exists()
            });
        assert!(applied, "the agent did not apply within 10 s");
        child
    }

    fn sh(&self, args: &[&str]) -> String {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.ns.name])
            .args(args)
            .output()
            .expect("run");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn cni_conf(&self) -> PathBuf {
        self.dir.join("cni/10-weft.conflist")
    }

    /// The tunnel process's control socket.
    fn control(&self) -> PathBuf {
        self.dir.join("weft0.ctl")
    }

    /// The agent's output (both streams), appended to one file.
    fn log(&self) -> std::fs::File {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("agent.log"))
            .expect("log file")
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        // The tunnel's process outlives agents by design: stop it too.
        let _ = wgconf::control::ControlClient::new(self.control()).stop();
    }
}

/// A running agent; killed if a failed assertion leaves it running.
struct Agent(Child);

impl Drop for Agent {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

fn stop(mut agent: Agent) {
    let child = &mut agent.0;
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let stopped = testkit::wait_until(Duration::from_secs(10), Duration::from_millis(20), || {
        matches!(child.try_wait(), Ok(Some(_)))
    });
    if stopped {
        return;
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("the agent did not stop within 10 s of SIGTERM");
}

#[test]
#[ignore = "needs root: network namespaces"]
fn applies_keeps_on_stop_and_cleans_up_on_request() {
    testkit::require_root("network namespaces");
    let node = Node::new();
    node.write_mesh();

    // Applied: tunnel address, a route tagged with our protocol, NAT chains,
    // the CNI conflist with the node's pod CIDR.
    let agent = node.start(&[]);
    assert!(node
        .sh(&["ip", "-4", "addr", "show", "weft0"])
        .contains("10.4.0.1/16"));
    let routes = node.sh(&["ip", "route", "show", "proto", "87"]);
    assert!(routes.contains("10.42.1.0/24 dev weft0"), "{routes}");
    let nat = node.sh(&["iptables", "-t", "nat", "-S", "WEFT-NAT"]);
    assert!(nat.contains("MASQUERADE"), "{nat}");
    // Traffic to Services keeps its source address (--service-cidr).
    assert!(
        nat.contains("-A WEFT-NAT -d 10.43.0.0/16 -j RETURN"),
        "{nat}"
    );
    let conf = std::fs::read_to_string(node.cni_conf()).expect("conflist");
    assert!(conf.contains("10.42.0.0/24"), "{conf}");
    // `wg show` reads the node's tunnel (weft-wg); `wg set` is refused.
    let show = node.sh(&["wg", "show", "weft0"]);
    assert!(show.contains("listening port: 51820"), "{show}");
    assert!(show.contains("10.42.1.0/24"), "{show}");
    let set = Command::new("ip")
        .args([
            "netns",
            "exec",
            &node.ns.name,
            "wg",
            "set",
            "weft0",
            "listen-port",
            "4000",
        ])
        .output()
        .expect("wg set");
    assert!(!set.status.success(), "wg set must be refused");
    assert!(node.sh(&["wg", "show", "weft0", "listen-port"]).trim() == "51820");
    // What `weftctl cni-config` prints (and the containerd CRI e2e runs
    // weft-cni on) is byte for byte what the agent wrote, given the MTU the
    // agent chose: its underlay is a 1500-byte IPv4 link (less 60).
    let printed = Command::new(env!("CARGO_BIN_EXE_weftctl"))
        .args(["cni-config", "--pod-cidr", "10.42.0.0/24", "--mtu", "1440"])
        .output()
        .expect("weftctl");
    assert_eq!(String::from_utf8_lossy(&printed.stdout), conf);
    assert_eq!(
        node.sh(&["cat", "/proc/sys/net/ipv4/ip_forward"]).trim(),
        "1"
    );
    // Metrics and health on the default listen address.
    let fetch = |path: &str| {
        node.sh(&[
            "bash",
            "-c",
            &format!("exec 3<>/dev/tcp/127.0.0.1/1107 && printf 'GET {path} HTTP/1.0\\r\\n\\r\\n' >&3 && timeout 3 cat <&3"),
        ])
    };
    // The gauges are set just after the pass that wrote the conflist.
    let mut metrics = String::new();
    testkit::wait_until(Duration::from_secs(5), Duration::from_millis(50), || {
        metrics = fetch("/metrics");
        metrics.contains("weft_leader 1")
    });
    for line in ["weft_nodes 2", "weft_peers 0", "weft_leader 1"] {
        assert!(
            metrics.lines().any(|l| l == line),
            "missing {line:?} in {metrics}"
        );
    }
    assert!(
        metrics.contains("weft_peer_tx_bytes_total{public_key="),
        "{metrics}"
    );
    // The same figures under the names Kilo's Grafana dashboard reads.
    for line in ["kilo_nodes 2", "kilo_peers 0", "kilo_leader 1"] {
        assert!(
            metrics.lines().any(|l| l == line),
            "missing {line:?} in {metrics}"
        );
    }
    for name in [
        "wireguard_sent_bytes_total",
        "wireguard_received_bytes_total",
        "wireguard_latest_handshake_seconds",
    ] {
        assert!(
            metrics
                .lines()
                .any(|l| l.starts_with(&format!("{name}{{public_key=\""))
                    && l.contains("10.42.1.0/24")),
            "missing {name} for the other node in {metrics}"
        );
    }
    assert!(fetch("/healthz").ends_with("ok\n"));
    // The private key shows nowhere: not in /metrics, the health answers or
    // the agent's log, in either encoding; the key file and the sockets that
    // can reconfigure the tunnel are root's alone.
    let key = wgconf::PrivateKey::from_base64(
        std::fs::read_to_string(node.dir.join("key"))
            .expect("key")
            .trim(),
    )
    .expect("a key");
    let shown = [
        metrics.clone(),
        fetch("/healthz"),
        fetch("/readyz"),
        std::fs::read_to_string(node.dir.join("agent.log")).expect("log"),
    ]
    .concat();
    assert!(shown.contains("weft"), "nothing was read");
    for secret in [key.to_base64(), key.to_hex()] {
        assert!(!shown.contains(&secret), "the private key was shown");
    }
    {
        use std::os::unix::fs::PermissionsExt;
        for path in [node.dir.join("key"), node.control()] {
            let mode = std::fs::metadata(&path).expect("stat").permissions().mode();
            assert_eq!(mode & 0o077, 0, "{} is {mode:o}", path.display());
        }
    }

    // A plain stop leaves the tunnel running (in its own process), the
    // rules and the CNI configuration: a restart is no outage.
    stop(agent);
    let show = node.sh(&["wg", "show", "weft0"]);
    assert!(
        show.contains("10.42.1.0/24"),
        "the tunnel outlives the agent: {show}"
    );
    assert!(node.cni_conf().exists());
    assert!(node
        .sh(&["iptables", "-t", "nat", "-S", "WEFT-NAT"])
        .contains("MASQUERADE"));

    // The same key comes back. Kilo's two flags: --clean-up removes the
    // routes, rules and conflist but leaves the tunnel running;
    // --clean-up-interface takes the tunnel too.
    let key_before = std::fs::read_to_string(node.dir.join("key")).expect("key");
    // Removed so that start() can tell when the new agent has applied.
    std::fs::remove_file(node.cni_conf()).expect("remove conflist");
    let agent = node.start(&["--clean-up"]);
    assert_eq!(
        std::fs::read_to_string(node.dir.join("key")).expect("key"),
        key_before
    );
    stop(agent);
    let network_gone = |node: &Node| {
        assert!(!node.cni_conf().exists(), "conflist left behind");
        assert!(node
            .sh(&["ip", "route", "show", "proto", "87"])
            .trim()
            .is_empty());
        assert!(
            !node.sh(&["iptables", "-t", "nat", "-S"]).contains("WEFT"),
            "NAT rules left"
        );
        assert!(
            !node.sh(&["iptables", "-S"]).contains("WEFT"),
            "filter rules left"
        );
    };
    network_gone(&node);
    assert!(
        !node.sh(&["ip", "link", "show", "weft0"]).is_empty(),
        "--clean-up alone keeps the tunnel"
    );
    let agent = node.start(&["--clean-up=true", "--clean-up-interface=true"]);
    stop(agent);
    network_gone(&node);
    assert!(
        node.sh(&["ip", "link", "show", "weft0"]).is_empty(),
        "weft0 left"
    );
    assert!(
        !std::path::Path::new("/var/run/wireguard/weft0.sock").exists(),
        "UAPI socket left behind"
    );
    assert!(!node.control().exists(), "control socket left behind");
}
