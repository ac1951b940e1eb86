//! weft-cni executed as a runtime executes it (environment, stdin, stdout),
//! with the "host" and every "pod" in network namespaces made by the test and
//! removed on drop, even when an assertion fails.

use serde_json::{json, Value};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

const PLUGIN: &str = env!("CARGO_BIN_EXE_weft-cni");
const REFERENCE_DIR: &str = "/usr/lib/cni";

/// A network namespace (testkit's, deleted on drop) whose commands' whole
/// output the tests look at.
struct Ns(testkit::Netns);

impl Ns {
    fn new() -> Self {
        Self(testkit::Netns::with_prefix("wc"))
    }
    fn name(&self) -> &str {
        &self.0.name
    }
    fn path(&self) -> PathBuf {
        self.0.path()
    }
    fn exec(&self, args: &[&str]) -> Output {
        let (program, rest) = args.split_first().expect("a command");
        self.0
            .command(program)
            .args(rest)
            .stdin(Stdio::null())
            .output()
            .expect("ip netns exec")
    }
    fn ok(&self, args: &[&str]) -> bool {
        self.exec(args).status.success()
    }
}

/// One node: a host namespace (bridge, veths live there) and an IPAM dir.
struct Node {
    host: Ns,
    data: testkit::TempDir,
    subnet: String,
}

impl Node {
    fn new(subnet: &str) -> Self {
        Self {
            host: Ns::new(),
            data: testkit::TempDir::new("weft-cni-test-"),
            subnet: subnet.to_string(),
        }
    }

    fn conf(&self, version: &str, ipam_type: &str) -> Value {
        json!({
            "cniVersion": version, "name": "weftnet", "type": "weft-cni",
            "bridge": "kube-bridge", "isDefaultGateway": true, "forceAddress": true, "mtu": 1420,
            "ipam": {"type": ipam_type, "ranges": [[{"subnet": self.subnet}]],
                     "dataDir": self.data.path().to_str().unwrap_or_default()}
        })
    }

    /// Runs `plugin` (a path) in the host namespace.
    fn call(
        &self,
        plugin: &str,
        command: &str,
        id: &str,
        netns: Option<&Path>,
        conf: &Value,
    ) -> Output {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", self.host.name(), plugin])
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", id)
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", REFERENCE_DIR)
            .env(
                "CNI_NETNS",
                netns.map(|p| p.to_str().unwrap_or_default()).unwrap_or(""),
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = c.spawn().expect("spawn plugin");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(conf.to_string().as_bytes())
            .expect("write config");
        child.wait_with_output().expect("plugin output")
    }

    fn add(&self, id: &str, pod: &Ns) -> Value {
        let out = self.call(
            PLUGIN,
            "ADD",
            id,
            Some(&pod.path()),
            &self.conf("1.0.0", "host-local"),
        );
        assert!(
            out.status.success(),
            "ADD failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("ADD result is JSON")
    }

    fn del(&self, id: &str, netns: Option<&Path>) -> Output {
        self.call(PLUGIN, "DEL", id, netns, &self.conf("1.0.0", "host-local"))
    }

    /// Every veth on the node was removed.
    fn assert_no_veths(&self) {
        let veths = self
            .host
            .exec(&["ip", "-o", "link", "show", "type", "veth"]);
        assert!(
            veths.stdout.is_empty(),
            "veths left: {}",
            String::from_utf8_lossy(&veths.stdout)
        );
    }

    fn reserved(&self) -> Vec<String> {
        let dir = self.data.join("weftnet");
        let mut v: Vec<String> = std::fs::read_dir(&dir)
            .map(|rd| {
                rd.filter_map(|e| e.ok()?.file_name().into_string().ok())
                    .filter(|n| n.parse::<std::net::IpAddr>().is_ok())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }
}

fn ip_of(result: &Value) -> String {
    let a = result["ips"][0]["address"].as_str().expect("address");
    a.split('/').next().unwrap_or_default().to_string()
}

#[test]
#[ignore = "needs root: network namespaces"]
fn two_pods_talk_through_the_bridge() {
    testkit::require_root("network namespaces");
    let node = Node::new("10.60.0.0/24");
    let (p1, p2) = (Ns::new(), Ns::new());
    let r1 = node.add("pod-one", &p1);
    let r2 = node.add("pod-two", &p2);
    let (ip1, ip2) = (ip_of(&r1), ip_of(&r2));
    assert_ne!(ip1, ip2);
    assert_eq!(r1["cniVersion"], "1.0.0");
    assert_eq!(r1["ips"][0]["gateway"], "10.60.0.1");
    assert_eq!(r1["interfaces"][2]["name"], "eth0");
    assert_eq!(
        r1["interfaces"][2]["sandbox"],
        p1.path().to_str().unwrap_or_default()
    );
    assert!(r1["interfaces"][2]["mac"]
        .as_str()
        .is_some_and(|m| m.len() == 17));
    assert_eq!(r1["routes"][0]["dst"], "0.0.0.0/0");
    let mtu = p1.exec(&["cat", "/sys/class/net/eth0/mtu"]);
    assert_eq!(String::from_utf8_lossy(&mtu.stdout).trim(), "1420");
    let bmtu = node.host.exec(&["cat", "/sys/class/net/kube-bridge/mtu"]);
    assert_eq!(String::from_utf8_lossy(&bmtu.stdout).trim(), "1420");
    assert!(p1.ok(&["ping", "-c", "1", "-W", "2", &ip2]), "pod1 -> pod2");
    assert!(p2.ok(&["ping", "-c", "1", "-W", "2", &ip1]), "pod2 -> pod1");
    assert!(
        p1.ok(&["ping", "-c", "1", "-W", "2", "10.60.0.1"]),
        "pod1 -> gateway"
    );
    assert!(
        node.host.ok(&["ping", "-c", "1", "-W", "2", &ip1]),
        "node -> pod1"
    );

    // CHECK passes on the real state, then fails clearly once a route is gone.
    let mut conf = node.conf("1.0.0", "host-local");
    conf["prevResult"] = r1.clone();
    let out = node.call(PLUGIN, "CHECK", "pod-one", Some(&p1.path()), &conf);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(p1.ok(&["ip", "route", "del", "default"]));
    let out = node.call(PLUGIN, "CHECK", "pod-one", Some(&p1.path()), &conf);
    assert!(!out.status.success());
    let err: Value = serde_json::from_slice(&out.stdout).expect("error JSON");
    assert_eq!(err["code"], 100);
    assert!(
        err["msg"]
            .as_str()
            .unwrap_or_default()
            .contains("route to 0.0.0.0/0"),
        "{err}"
    );

    // DEL twice; then DEL after the netns is gone.
    assert!(node.del("pod-one", Some(&p1.path())).status.success());
    assert!(node.del("pod-one", Some(&p1.path())).status.success());
    assert!(!p1.ok(&["ip", "link", "show", "eth0"]));
    drop(p2);
    assert!(node
        .del("pod-two", Some(Path::new("/var/run/netns/gone-already")))
        .status
        .success());
    assert!(node.del("pod-two", None).status.success());
    assert!(node.reserved().is_empty(), "left: {:?}", node.reserved());
    node.assert_no_veths();
}

#[test]
#[ignore = "needs root: network namespaces"]
fn results_follow_the_requested_spec_version() {
    testkit::require_root("network namespaces");
    let node = Node::new("10.61.0.0/24");
    for (i, version) in ["0.3.1", "0.4.0", "1.0.0", "1.1.0"].iter().enumerate() {
        let pod = Ns::new();
        let id = format!("v{i}");
        let out = node.call(
            PLUGIN,
            "ADD",
            &id,
            Some(&pod.path()),
            &node.conf(version, "host-local"),
        );
        assert!(
            out.status.success(),
            "{version}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let r: Value = serde_json::from_slice(&out.stdout).expect("json");
        assert_eq!(r["cniVersion"], *version);
        let legacy = version.starts_with("0.");
        assert_eq!(
            r["ips"][0].get("version").is_some(),
            legacy,
            "{version}: {r}"
        );
        assert_eq!(
            r["interfaces"][2].get("mtu").is_some(),
            *version == "1.1.0",
            "{version}"
        );
        assert!(node.del(&id, Some(&pod.path())).status.success());
    }
    let status = node.call(
        PLUGIN,
        "STATUS",
        "",
        None,
        &node.conf("1.1.0", "host-local"),
    );
    assert!(status.status.success());
}

/// Our IPAM and the reference host-local take turns on one data dir.
#[test]
#[ignore = "needs root: network namespaces"]
fn ipam_interoperates_with_reference_host_local() {
    testkit::require_root("network namespaces");
    let reference = format!("{REFERENCE_DIR}/host-local");
    assert!(
        Path::new(&reference).exists(),
        "containernetworking-plugins is not installed"
    );
    let node = Node::new("10.62.0.0/24");
    let conf = node.conf("1.0.0", "host-local");
    let ipam_conf = {
        // host-local reads its keys under "ipam" of the same document.
        conf.clone()
    };
    let mut seen = std::collections::HashSet::new();
    let mut pods = Vec::new();
    for i in 0..6 {
        let id = format!("mix{i}");
        let ip = if i % 2 == 0 {
            let pod = Ns::new();
            let r = node.add(&id, &pod);
            pods.push(pod);
            ip_of(&r)
        } else {
            let out = node.call(
                &reference,
                "ADD",
                &id,
                Some(Path::new("/dev/null")),
                &ipam_conf,
            );
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stdout)
            );
            let r: Value = serde_json::from_slice(&out.stdout).expect("json");
            ip_of(&r)
        };
        assert!(seen.insert(ip.clone()), "{ip} handed out twice");
    }
    assert_eq!(node.reserved().len(), 6);
    // Each releases the other's reservations.
    for i in 0..6 {
        let id = format!("mix{i}");
        let out = if i % 2 == 1 {
            node.del(&id, None)
        } else {
            node.call(&reference, "DEL", &id, None, &ipam_conf)
        };
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    assert!(node.reserved().is_empty(), "left: {:?}", node.reserved());
}

#[test]
#[ignore = "needs root: network namespaces"]
fn fifty_concurrent_adds_get_distinct_addresses() {
    testkit::require_root("network namespaces");
    let node = std::sync::Arc::new(Node::new("10.63.0.0/24"));
    let pods: Vec<std::sync::Arc<Ns>> = (0..50).map(|_| std::sync::Arc::new(Ns::new())).collect();
    let handles: Vec<_> = pods
        .iter()
        .enumerate()
        .map(|(i, pod)| {
            let (node, pod) = (node.clone(), pod.clone());
            std::thread::spawn(move || ip_of(&node.add(&format!("c{i}"), &pod)))
        })
        .collect();
    let ips: std::collections::HashSet<String> = handles
        .into_iter()
        .map(|h| h.join().expect("ADD thread"))
        .collect();
    assert_eq!(ips.len(), 50, "duplicate addresses");
    assert_eq!(node.reserved().len(), 50);
    let handles: Vec<_> = pods
        .iter()
        .enumerate()
        .map(|(i, pod)| {
            let (node, pod) = (node.clone(), pod.clone());
            std::thread::spawn(move || {
                node.del(&format!("c{i}"), Some(&pod.path()))
                    .status
                    .success()
            })
        })
        .collect();
    assert!(handles.into_iter().all(|h| h.join().unwrap_or(false)));
    assert!(node.reserved().is_empty(), "left: {:?}", node.reserved());
}

/// A failed ADD leaves nothing behind.
#[test]
#[ignore = "needs root: network namespaces"]
fn failed_add_rolls_back() {
    testkit::require_root("network namespaces");
    let node = Node::new("10.64.0.0/24");
    let pod = Ns::new();
    // An interface named eth0 already in the pod makes the ADD fail late,
    // after the address is reserved and the veth created.
    assert!(pod.ok(&["ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth0peer"]));
    let out = node.call(
        PLUGIN,
        "ADD",
        "doomed",
        Some(&pod.path()),
        &node.conf("1.0.0", "host-local"),
    );
    assert!(!out.status.success());
    let err: Value = serde_json::from_slice(&out.stdout).expect("error JSON");
    assert!(
        err["msg"].as_str().unwrap_or_default().contains("eth0"),
        "{err}"
    );
    assert!(node.reserved().is_empty(), "leaked {:?}", node.reserved());
    node.assert_no_veths();
}

/// The IPAM store directories a configuration names that do not exist yet;
/// removed on drop if the plugin created them.
struct StrayStores(Vec<PathBuf>);

impl StrayStores {
    fn before(input: &[u8]) -> Self {
        let Ok(conf) = serde_json::from_slice::<Value>(input) else {
            return Self(Vec::new());
        };
        let name = conf["name"].as_str().unwrap_or_default();
        let plain = !name.is_empty() && name != "." && name != ".." && !name.contains('/');
        let mut paths = Vec::new();
        match conf["ipam"]["dataDir"].as_str() {
            Some(dir) if !dir.is_empty() => {
                // A relative one is taken from the plugin's working
                // directory, which is ours.
                let dir = std::env::current_dir().unwrap_or_default().join(dir);
                if plain {
                    paths.push(dir.join(name));
                }
                paths.push(dir);
            }
            _ if plain => paths.push(Path::new("/var/lib/cni/networks").join(name)),
            _ => {}
        }
        // Only what is new: nothing that existed is ever removed.
        paths.retain(|p| p.is_absolute() && !p.exists());
        Self(paths)
    }
}

impl Drop for StrayStores {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = std::fs::remove_dir_all(p);
        }
    }
}

/// Malformed configurations and environments: an error JSON with a code and a
/// message, never a panic (exit 101) or a hang.
#[test]
#[ignore = "needs root: network namespaces"]
fn malformed_input_gets_error_json() {
    testkit::require_root("network namespaces");
    let node = Node::new("10.65.0.0/24");
    let base = node.conf("1.0.0", "host-local").to_string();
    let mut inputs: Vec<Vec<u8>> = vec![
        b"".to_vec(),
        b"{".to_vec(),
        b"null".to_vec(),
        b"[]".to_vec(),
        br#"{"cniVersion":"1.0.0"}"#.to_vec(),
        br#"{"cniVersion":"9.9.9","name":"x"}"#.to_vec(),
        br#"{"cniVersion":"1.0.0","name":"x","ipam":{"type":"host-local"}}"#.to_vec(),
        br#"{"cniVersion":"1.0.0","name":"x","ipam":{"type":"no-such-plugin"}}"#.to_vec(),
        br#"{"cniVersion":"1.0.0","name":"x","ipam":{"type":"../../bin/sh"}}"#.to_vec(),
        br#"{"cniVersion":"1.0.0","name":"x","mtu":"big"}"#.to_vec(),
        vec![0xff, 0xfe, 0x00, 0x01],
    ];
    // Deterministic mutations of a valid config: cut, flip and splice bytes.
    let mut seed = 0xdead_beef_u64;
    for _ in 0..60 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let mut b = base.as_bytes().to_vec();
        let pos = (seed as usize) % b.len();
        match seed % 3 {
            0 => b.truncate(pos),
            1 => b[pos] = (seed >> 8) as u8,
            _ => b.insert(pos, b"{}[],:\"0"[(seed >> 16) as usize % 8]),
        }
        inputs.push(b);
    }
    let pod = Ns::new();
    for input in &inputs {
        // A mutation may point the IPAM store elsewhere (a flipped byte in
        // dataDir or the name): remove what the plugin created there.
        let _stray = StrayStores::before(input);
        for command in ["ADD", "DEL", "CHECK"] {
            let mut child = Command::new("ip")
                .args(["netns", "exec", node.host.name(), PLUGIN])
                .env("CNI_COMMAND", command)
                .env("CNI_CONTAINERID", "fuzz")
                .env("CNI_IFNAME", "eth0")
                .env("CNI_NETNS", pod.path())
                .env("CNI_PATH", REFERENCE_DIR)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn");
            let _ = child.stdin.take().expect("stdin").write_all(input);
            let out = child.wait_with_output().expect("output");
            assert_ne!(
                out.status.code(),
                Some(101),
                "panic on {:?}",
                String::from_utf8_lossy(input)
            );
            if !out.status.success() {
                let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
                    panic!(
                        "not error JSON ({e}): {}",
                        String::from_utf8_lossy(&out.stdout)
                    )
                });
                assert!(v["code"].as_u64().is_some_and(|c| c > 0), "{v}");
                assert!(v["msg"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
            } else {
                // A mutation that is still a valid config: clean up after it.
                let _ = node.del("fuzz", Some(&pod.path()));
            }
        }
    }
    // Bad environment with a good config.
    for (k, v) in [
        ("CNI_COMMAND", "BOGUS"),
        ("CNI_IFNAME", ""),
        ("CNI_CONTAINERID", ""),
    ] {
        let mut c = Command::new(PLUGIN);
        c.env("CNI_COMMAND", "ADD")
            .env("CNI_CONTAINERID", "x")
            .env("CNI_IFNAME", "eth0")
            .env("CNI_NETNS", pod.path())
            .env(k, v)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped());
        let mut child = c.spawn().expect("spawn");
        let _ = child
            .stdin
            .take()
            .expect("stdin")
            .write_all(base.as_bytes());
        let out = child.wait_with_output().expect("output");
        let e: Value = serde_json::from_slice(&out.stdout).expect("error JSON");
        assert_eq!(e["code"], 4, "{k}={v}: {e}");
    }
}

/// Chained with the reference portmap: the result we return is the
/// prevResult it builds on, and a host port reaches the pod.
#[test]
#[ignore = "needs root: network namespaces"]
fn chains_with_reference_portmap() {
    testkit::require_root("network namespaces");
    let portmap = format!("{REFERENCE_DIR}/portmap");
    assert!(
        Path::new(&portmap).exists(),
        "containernetworking-plugins is not installed"
    );
    let node = Node::new("10.66.0.0/24");
    let pod = Ns::new();
    let result = node.add("web", &pod);
    let pod_ip = ip_of(&result);

    // A TCP server in the pod on port 80 that answers "hello".
    let pod_path = pod.path();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let server = std::thread::spawn(move || {
        let f = std::fs::File::open(&pod_path).expect("netns");
        // SAFETY: setns for this thread only.
        let rc = unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&f), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0);
        let l = std::net::TcpListener::bind("0.0.0.0:80").expect("bind :80 in pod");
        l.set_nonblocking(true).expect("nonblocking");
        ready_tx.send(()).expect("ready");
        // Bounded: give up after 5 s so a broken mapping fails the test
        // instead of hanging it.
        let end = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while std::time::Instant::now() < end {
            if let Ok((mut s, _)) = l.accept() {
                let _ = s.write_all(b"hello");
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    });
    ready_rx.recv().expect("server ready");

    let mut conf = json!({
        "cniVersion": "1.0.0", "name": "weftnet", "type": "portmap", "snat": true,
        "capabilities": {"portMappings": true},
        "runtimeConfig": {"portMappings": [{"hostPort": 18090, "containerPort": 80, "protocol": "tcp"}]},
    });
    conf["prevResult"] = result.clone();
    let out = node.call(&portmap, "ADD", "web", Some(&pod.path()), &conf);
    assert!(
        out.status.success(),
        "portmap ADD: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let chained: Value = serde_json::from_slice(&out.stdout).expect("portmap result");
    assert_eq!(ip_of(&chained), pod_ip, "portmap passes our result through");

    // From the node, the bridge address's port 18090 lands in the pod.
    let got = node.host.exec(&[
        "bash",
        "-c",
        "exec 3<>/dev/tcp/10.66.0.1/18090 && timeout 3 cat <&3",
    ]);
    let _ = server.join();
    assert_eq!(
        String::from_utf8_lossy(&got.stdout),
        "hello",
        "{}",
        String::from_utf8_lossy(&got.stderr)
    );

    let out = node.call(&portmap, "DEL", "web", Some(&pod.path()), &conf);
    assert!(out.status.success());
    assert!(node.del("web", Some(&pod.path())).status.success());
}

/// Dual stack: one IPv4 and one IPv6 range set; both addresses, both
/// default routes, reachable at once.
#[test]
#[ignore = "needs root: network namespaces"]
fn dual_stack_pods() {
    testkit::require_root("network namespaces");
    let node = Node::new("10.67.0.0/24");
    let conf = json!({
        "cniVersion": "1.0.0", "name": "weftnet", "type": "weft-cni",
        "bridge": "kube-bridge", "isDefaultGateway": true, "forceAddress": true, "mtu": 1420,
        "ipam": {"type": "host-local",
                 "ranges": [[{"subnet": "10.67.0.0/24"}], [{"subnet": "fd00:67::/64"}]],
                 "dataDir": node.data.path().to_str().unwrap_or_default()}
    });
    let (p1, p2) = (Ns::new(), Ns::new());
    let mut v6 = Vec::new();
    for (id, pod) in [("d1", &p1), ("d2", &p2)] {
        let out = node.call(PLUGIN, "ADD", id, Some(&pod.path()), &conf);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
        let r: Value = serde_json::from_slice(&out.stdout).expect("json");
        assert_eq!(r["ips"].as_array().map(Vec::len), Some(2), "{r}");
        assert_eq!(r["ips"][1]["gateway"], "fd00:67::1");
        let routes: Vec<&str> = r["routes"]
            .as_array()
            .map(|a| a.iter().filter_map(|x| x["dst"].as_str()).collect())
            .unwrap_or_default();
        assert!(
            routes.contains(&"0.0.0.0/0") && routes.contains(&"::/0"),
            "{routes:?}"
        );
        let a = r["ips"][1]["address"].as_str().unwrap_or_default();
        v6.push(a.split('/').next().unwrap_or_default().to_string());
    }
    assert!(
        p1.ok(&["ping", "-6", "-c", "1", "-W", "3", &v6[1]]),
        "pod1 -> pod2 over IPv6"
    );
    assert!(
        p2.ok(&["ping", "-6", "-c", "1", "-W", "3", "fd00:67::1"]),
        "pod2 -> IPv6 gateway"
    );
    for (id, pod) in [("d1", &p1), ("d2", &p2)] {
        assert!(node
            .call(PLUGIN, "DEL", id, Some(&pod.path()), &conf)
            .status
            .success());
    }
    assert!(node.reserved().is_empty(), "left: {:?}", node.reserved());
}

/// ipMasq: traffic leaving the pod subnet is masqueraded; DEL removes the rules.
#[test]
#[ignore = "needs root: network namespaces"]
fn ip_masq_rules_follow_the_pod() {
    testkit::require_root("network namespaces");
    let node = Node::new("10.68.0.0/24");
    let pod = Ns::new();
    let mut conf = node.conf("1.0.0", "host-local");
    conf["ipMasq"] = json!(true);
    let out = node.call(PLUGIN, "ADD", "masq", Some(&pod.path()), &conf);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let r: Value = serde_json::from_slice(&out.stdout).expect("json");
    let ip = ip_of(&r);
    let rules = node.host.exec(&["iptables", "-t", "nat", "-S"]);
    let rules = String::from_utf8_lossy(&rules.stdout).into_owned();
    assert!(
        rules.contains(&format!("-A POSTROUTING -s {ip}/32")),
        "{rules}"
    );
    assert!(
        rules.contains("-d 10.68.0.0/24") && rules.contains("MASQUERADE"),
        "{rules}"
    );
    assert!(node
        .call(PLUGIN, "DEL", "masq", Some(&pod.path()), &conf)
        .status
        .success());
    let after = node.host.exec(&["iptables", "-t", "nat", "-S"]);
    let after = String::from_utf8_lossy(&after.stdout).into_owned();
    assert!(!after.contains("CNI-WEFT"), "rules left after DEL: {after}");
    // DEL again (rules already gone) still succeeds.
    assert!(node
        .call(PLUGIN, "DEL", "masq", Some(&pod.path()), &conf)
        .status
        .success());
}

/// An `ipam.type` other than host-local is delegated to that plugin from
/// CNI_PATH (here the reference `static`).
#[test]
#[ignore = "needs root: network namespaces"]
fn delegates_other_ipam_plugins() {
    testkit::require_root("network namespaces");
    let node = Node::new("10.69.0.0/24");
    let pod = Ns::new();
    let conf = json!({
        "cniVersion": "1.0.0", "name": "weftnet", "type": "weft-cni", "bridge": "kube-bridge",
        "isGateway": true, "mtu": 1420,
        "ipam": {"type": "static", "addresses": [{"address": "10.69.0.5/24", "gateway": "10.69.0.1"}]}
    });
    let out = node.call(PLUGIN, "ADD", "st", Some(&pod.path()), &conf);
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let r: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(r["ips"][0]["address"], "10.69.0.5/24");
    assert!(pod.ok(&["ping", "-c", "1", "-W", "2", "10.69.0.1"]));
    assert!(node
        .call(PLUGIN, "DEL", "st", Some(&pod.path()), &conf)
        .status
        .success());
    assert!(!pod.ok(&["ip", "link", "show", "eth0"]));
}

/// The conflist weft-agent writes before Kubernetes gave the node a pod
/// CIDR has no ranges: ADD fails with a CNI error that says so, and leaves
/// nothing behind.
#[test]
#[ignore = "needs root: network namespaces"]
fn add_before_the_node_has_a_pod_cidr_is_a_clear_error() {
    testkit::require_root("network namespaces");
    let node = Node::new("10.65.0.0/24");
    let pod = Ns::new();
    let mut conf = node.conf("1.0.0", "host-local");
    conf["ipam"]["ranges"] = json!([]);
    let out = node.call(PLUGIN, "ADD", "early", Some(&pod.path()), &conf);
    assert!(!out.status.success());
    assert_ne!(out.status.code(), Some(101), "not a panic");
    let err: Value = serde_json::from_slice(&out.stdout).expect("error JSON");
    assert_eq!(err["code"], 7, "invalid network configuration: {err}");
    assert!(
        err["msg"]
            .as_str()
            .unwrap_or_default()
            .contains("no pod CIDR yet"),
        "{err}"
    );
    node.assert_no_veths();
    assert!(node.reserved().is_empty());
}
