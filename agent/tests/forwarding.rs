//! A node whose kernel does not forward (ip_forward=0, as a fresh host or
//! network namespace has it), with the agent unprivileged as the DaemonSet
//! runs it (/proc/sys read-only): the agent says so (an error line, a
//! failing /readyz) instead of looking healthy while pods cannot leave the
//! node; the init container's `weft-agent --enable-forwarding` fixes it,
//! and the pod's traffic then goes beyond the node. Nothing is said about
//! IPv6 in an IPv4-only mesh.

mod common;

use common::ip;
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use testkit::{Netns, TempDir};

const AGENT: &str = env!("CARGO_BIN_EXE_weft-agent");

/// A node namespace with a pod namespace on kube-bridge and an outside
/// host beyond the node's uplink; all removed on drop.
struct Scene {
    agent: Option<Child>,
    node_ns: Netns,
    pod_ns: Netns,
    outside_ns: Netns,
    dir: TempDir,
}

impl Scene {
    fn node(&self) -> String {
        self.node_ns.name.clone()
    }
    fn pod(&self) -> String {
        self.pod_ns.name.clone()
    }
    fn outside(&self) -> String {
        self.outside_ns.name.clone()
    }

    fn new() -> Self {
        let s = Self {
            agent: None,
            node_ns: Netns::with_prefix("wfn"),
            pod_ns: Netns::with_prefix("wfp"),
            outside_ns: Netns::with_prefix("wfo"),
            dir: TempDir::new("weft-forwarding"),
        };
        let (node, pod, outside) = (s.node(), s.pod(), s.outside());
        // The node's uplink to the outside host.
        ip(&[
            "-n", &node, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns",
            &outside,
        ]);
        ip(&["-n", &node, "addr", "add", "198.51.100.1/24", "dev", "eth0"]);
        ip(&["-n", &node, "link", "set", "eth0", "up"]);
        ip(&[
            "-n",
            &outside,
            "addr",
            "add",
            "198.51.100.2/24",
            "dev",
            "eth0",
        ]);
        ip(&["-n", &outside, "link", "set", "eth0", "up"]);
        // The pod on kube-bridge, as weft-cni wires it.
        ip(&["-n", &node, "link", "add", "kube-bridge", "type", "bridge"]);
        ip(&[
            "-n",
            &node,
            "addr",
            "add",
            "10.42.0.1/24",
            "dev",
            "kube-bridge",
        ]);
        ip(&["-n", &node, "link", "set", "kube-bridge", "up"]);
        ip(&[
            "-n", &node, "link", "add", "vpod", "type", "veth", "peer", "name", "eth0", "netns",
            &pod,
        ]);
        ip(&[
            "-n",
            &node,
            "link",
            "set",
            "vpod",
            "master",
            "kube-bridge",
            "up",
        ]);
        ip(&["-n", &pod, "addr", "add", "10.42.0.2/24", "dev", "eth0"]);
        ip(&["-n", &pod, "link", "set", "eth0", "up"]);
        ip(&["-n", &pod, "route", "add", "default", "via", "10.42.0.1"]);
        s
    }

    fn write_mesh(&self) {
        let (key, _) =
            weft_agent::reconcile::key::load_or_create(&self.dir.join("key")).expect("key");
        let mesh = format!(
            "nodes:\n- {{name: me, location: a, endpoint: '198.51.100.1:51820', \
             internalIP: 198.51.100.1/24, podCIDRs: [10.42.0.0/24], publicKey: {}}}\n",
            key.public_key()
        );
        std::fs::write(self.dir.join("mesh.yaml"), mesh).expect("mesh");
    }

    fn agent_args(&self) -> Vec<String> {
        let d = |p: &str| self.dir.join(p).display().to_string();
        vec![
            "--hostname".into(),
            "me".into(),
            "--mesh".into(),
            d("mesh.yaml"),
            "--state-dir".into(),
            d(""),
            "--cni-dir".into(),
            d("cni"),
            "--control-socket".into(),
            d("weft0.ctl"),
            "--uapi-dir".into(),
            d("run"),
            "--resync".into(),
            "2".into(),
            "--listen".into(),
            "127.0.0.1:1107".into(),
        ]
    }

    /// The agent as the DaemonSet runs it: /proc/sys read-only.
    fn start_unprivileged_agent(&mut self) {
        let script = format!(
            "mount --bind /proc/sys /proc/sys && mount -o remount,ro,bind /proc/sys && exec {AGENT} \"$@\""
        );
        let log = std::fs::File::create(self.dir.join("agent.log")).expect("log");
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.node(),
                "unshare",
                "-m",
                "sh",
                "-c",
                &script,
                "agent",
            ])
            .args(self.agent_args())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("agent");
        self.agent = Some(child);
    }

    fn in_node(&self, args: &[&str]) -> std::process::Output {
        Command::new("ip")
            .args(["netns", "exec", &self.node()])
            .args(args)
            .output()
            .expect("run in node")
    }

    fn readyz(&self) -> String {
        let out = self.in_node(&[
            "bash",
            "-c",
            "exec 3<>/dev/tcp/127.0.0.1/1107 && printf 'GET /readyz HTTP/1.0\\r\\n\\r\\n' >&3 && timeout 3 cat <&3",
        ]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn pod_reaches_outside(&self) -> bool {
        Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.pod(),
                "ping",
                "-c",
                "1",
                "-W",
                "1",
                "198.51.100.2",
            ])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("agent.log")).unwrap_or_default()
    }
}

impl Drop for Scene {
    fn drop(&mut self) {
        if let Some(mut c) = self.agent.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = wgconf::control::ControlClient::new(self.dir.join("weft0.ctl")).stop();
        // The namespaces and the directory go with the fields.
    }
}

fn wait_for(what: &str, timeout: Duration, ok: impl FnMut() -> bool) {
    let done = testkit::wait_until(timeout, Duration::from_millis(100), ok);
    assert!(done, "within {timeout:?}: {what}");
}

#[test]
#[ignore = "needs root: network namespaces"]
fn forwarding_off_is_reported_and_the_init_step_fixes_it() {
    testkit::require_root("network namespaces");
    let mut s = Scene::new();
    s.write_mesh();
    let forward = |s: &Scene| {
        String::from_utf8_lossy(&s.in_node(&["cat", "/proc/sys/net/ipv4/ip_forward"]).stdout)
            .trim()
            .to_string()
    };
    assert_eq!(forward(&s), "0", "a fresh node does not forward");
    s.start_unprivileged_agent();
    wait_for(
        "the agent reports forwarding off",
        Duration::from_secs(15),
        || {
            s.readyz()
                .contains("[-] forwarding failed: IPv4 forwarding is off")
        },
    );
    let r = s.readyz();
    assert!(r.starts_with("HTTP/1.0 503"), "{r}");
    assert!(r.contains("[+] mesh ok") && r.contains("[+] cni ok"), "{r}");
    assert!(!s.pod_reaches_outside(), "no forwarding, no egress");
    let log = s.log();
    assert_eq!(
        log.matches("not ready: IPv4 forwarding is off").count(),
        1,
        "said once:\n{log}"
    );
    assert!(
        log.contains("--enable-forwarding"),
        "says what to do:\n{log}"
    );

    // The init container's step, privileged.
    let out = Command::new("ip")
        .args(["netns", "exec", &s.node(), AGENT, "--enable-forwarding"])
        .args(s.agent_args())
        .output()
        .expect("enable forwarding");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(forward(&s), "1");
    wait_for(
        "ready once forwarding is on",
        Duration::from_secs(10),
        || s.readyz().starts_with("HTTP/1.0 200"),
    );
    wait_for(
        "the pod reaches beyond the node",
        Duration::from_secs(10),
        || s.pod_reaches_outside(),
    );
    let ipv6 = String::from_utf8_lossy(
        &s.in_node(&["cat", "/proc/sys/net/ipv6/conf/all/forwarding"])
            .stdout,
    )
    .trim()
    .to_string();
    assert_eq!(ipv6, "0", "IPv6 forwarding left alone in an IPv4-only mesh");
    assert!(
        !s.log().contains("IPv6"),
        "nothing about IPv6:\n{}",
        s.log()
    );
}
