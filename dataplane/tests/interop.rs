//! weft-wg against real peers (Debian's wireguard-go and wg), in network
//! namespaces this test creates and always removes.

mod support;

use std::time::Duration;
use support::*;

fn pair_works(ia: Implementation, ib: Implementation) {
    testkit::require_root("network namespaces and TUN devices");
    require("wg");
    let t = Tunnel::new(ia, ib);
    assert!(
        t.pair.a.ping_within(TB, Duration::from_secs(10)),
        "{ia:?} -> {ib:?}: no ping through the tunnel"
    );
    // Both ends report the handshake.
    for w in [&t.wa, &t.wb] {
        let hs: u64 = peer_dump_field(w, DUMP_LATEST_HANDSHAKE)
            .parse()
            .expect("number");
        assert!(hs > 0, "{:?} shows no handshake", w.implementation);
    }
    // Both ways, over IPv4 and over IPv6 inside the tunnel (segmented,
    // sealed and coalesced the same way), with digests of what arrived.
    let (ab, ba) = (format!("{ia:?} -> {ib:?}"), format!("{ib:?} -> {ia:?}"));
    for (from, to, addr, bytes, way) in [
        (&t.pair.a, &t.pair.b, TB, 100 << 20, &ab),
        (&t.pair.b, &t.pair.a, TA, 20 << 20, &ba),
        (&t.pair.a, &t.pair.b, TB6, 20 << 20, &ab),
        (&t.pair.b, &t.pair.a, TA6, 20 << 20, &ba),
    ] {
        let (sent, received) = tcp_transfer(from, to, addr, bytes);
        assert_eq!(sent, received, "{way}: data corrupted in transit ({addr})");
    }
    // UDP datagrams, which are coalesced too (where the TUN takes USO).
    for (from, to, addr) in [(&t.pair.a, &t.pair.b, TB), (&t.pair.b, &t.pair.a, TA6)] {
        let (intact, changed) = udp_transfer(from, to, addr, 2000);
        assert_eq!(
            changed, 0,
            "{ia:?} <-> {ib:?}: UDP datagrams changed in transit ({addr})"
        );
        assert!(
            intact >= 1000,
            "{ia:?} <-> {ib:?}: only {intact} of 2000 datagrams ({addr})"
        );
    }
    // Counters: the sender's tx covers 100 MiB of payload plus overhead, and
    // the receiver saw at least that much.
    let tx: u64 = peer_dump_field(&t.wa, DUMP_TX).parse().expect("number");
    let rx: u64 = peer_dump_field(&t.wb, DUMP_RX).parse().expect("number");
    assert!(tx > 100 << 20, "tx counter {tx} too small");
    assert!(rx > 100 << 20, "rx counter {rx} too small");
}

#[test]
#[ignore = "needs root: network namespaces and TUN devices"]
fn weft_with_weft() {
    pair_works(Implementation::Weft, Implementation::Weft);
}

#[test]
#[ignore = "needs root: network namespaces and TUN devices"]
fn weft_initiates_to_wireguard_go() {
    pair_works(Implementation::Weft, Implementation::WireguardGo);
}

#[test]
#[ignore = "needs root: network namespaces and TUN devices"]
fn wireguard_go_initiates_to_weft() {
    pair_works(Implementation::WireguardGo, Implementation::Weft);
}

/// Either end restarts with its old key: the tunnel comes back by itself.
#[test]
#[ignore = "needs root: network namespaces and TUN devices"]
fn peer_restart_rehandshakes() {
    testkit::require_root("network namespaces and TUN devices");
    for restarted_weft in [true, false] {
        let (ia, ib) = if restarted_weft {
            (Implementation::WireguardGo, Implementation::Weft)
        } else {
            (Implementation::Weft, Implementation::WireguardGo)
        };
        let mut t = Tunnel::new(ia, ib);
        assert!(t.pair.a.ping_within(TB, Duration::from_secs(10)));
        let name = t.wb.name.clone();
        t.wb.stop();
        assert!(!t.pair.a.ping(TB), "ping must fail while b is down");
        t.wb = WgInterface::start_named(&t.pair.b, ib, &name);
        t.configure_b();
        t.pair
            .b
            .ip(&["addr", "add", &format!("{TB}/24"), "dev", &name]);
        t.pair.b.ip(&["link", "set", &name, "up"]);
        // a still has the old session and b drops what it sends. A restarted
        // weft-wg greets its peers as soon as it is configured, so the tunnel
        // is back within a round trip; wireguard-go does not, and then a
        // notices only after 15 s of unanswered traffic (KEEPALIVE +
        // REKEY_TIMEOUT) and re-handshakes.
        let limit = if ib == Implementation::Weft { 3 } else { 25 };
        assert!(
            t.pair.a.ping_within(TB, Duration::from_secs(limit)),
            "no re-handshake within {limit} s after {ib:?} restarted"
        );
        assert!(t.pair.b.ping_within(TA, Duration::from_secs(5)));
    }
}

/// b moves to another port; a follows it after b's next authenticated packet.
#[test]
#[ignore = "needs root: network namespaces and TUN devices"]
fn endpoint_roaming() {
    testkit::require_root("network namespaces and TUN devices");
    for ib in [Implementation::Weft, Implementation::WireguardGo] {
        let t = Tunnel::new(Implementation::Weft, ib);
        assert!(t.pair.a.ping_within(TB, Duration::from_secs(10)));
        assert_eq!(
            peer_dump_field(&t.wa, DUMP_ENDPOINT),
            format!("{}:{PORT_B}", t.pair.b_addr)
        );
        t.wb.wg(&["set", &t.wb.name, "listen-port", "51999"]);
        assert!(t.pair.b.ping_within(TA, Duration::from_secs(10)));
        assert_eq!(
            peer_dump_field(&t.wa, DUMP_ENDPOINT),
            format!("{}:51999", t.pair.b_addr),
            "a did not follow {ib:?} to its new port"
        );
        // And a's replies now reach b at the new port.
        assert!(t.pair.a.ping_within(TB, Duration::from_secs(5)));
    }
}

/// A persistent keepalive shows in `wg show` and keeps packets flowing on an
/// idle tunnel.
#[test]
#[ignore = "needs root: network namespaces and TUN devices"]
fn persistent_keepalive() {
    testkit::require_root("network namespaces and TUN devices");
    let t = Tunnel::new(Implementation::Weft, Implementation::WireguardGo);
    t.wa.wg(&[
        "set",
        &t.wa.name,
        "peer",
        &t.kb.public,
        "persistent-keepalive",
        "1",
    ]);
    assert_eq!(peer_dump_field(&t.wa, DUMP_KEEPALIVE), "1");
    let show = t.wa.wg(&["show", &t.wa.name]);
    assert!(
        show.contains("persistent keepalive: every 1 second"),
        "{show}"
    );
    // Setting it sends a keepalive at once, which starts the handshake.
    assert!(
        wait_until(Duration::from_secs(10), Duration::from_millis(100), || {
            peer_dump_field(&t.wb, DUMP_LATEST_HANDSHAKE) != "0"
        }),
        "keepalive did not start a handshake"
    );
    let before: u64 = peer_dump_field(&t.wb, DUMP_RX).parse().expect("number");
    std::thread::sleep(Duration::from_millis(3500));
    let after: u64 = peer_dump_field(&t.wb, DUMP_RX).parse().expect("number");
    // Each keepalive is a 32-byte data message; 3.5 s at 1/s gives at least 3.
    assert!(
        after - before >= 3 * 32,
        "only {} bytes of keepalive in 3.5 s",
        after - before
    );
    t.wa.wg(&[
        "set",
        &t.wa.name,
        "peer",
        &t.kb.public,
        "persistent-keepalive",
        "off",
    ]);
    assert_eq!(peer_dump_field(&t.wa, DUMP_KEEPALIVE), "off");
}

/// wg-quick drives weft-wg as it drives wireguard-go.
#[test]
#[ignore = "needs root: network namespaces and TUN devices"]
fn wg_quick_up_and_down() {
    testkit::require_root("network namespaces and TUN devices");
    require("wg-quick");
    let pair = Pair::new();
    let wb = WgInterface::start(&pair.b, Implementation::WireguardGo);
    let (ka, kb) = (genkey(), genkey());
    let fb = key_file(&kb.private);
    wb.wg(&[
        "set",
        &wb.name,
        "private-key",
        fb.as_str(),
        "listen-port",
        "51821",
        "peer",
        &ka.public,
        "allowed-ips",
        "10.78.0.1/32",
    ]);
    pair.b.ip(&["addr", "add", "10.78.0.2/24", "dev", &wb.name]);
    pair.b.ip(&["link", "set", &wb.name, "up"]);

    let name = unique("wq");
    let dir = std::env::temp_dir().join(unique("weft-wgq-"));
    std::fs::create_dir_all(&dir).expect("dir");
    let conf = dir.join(format!("{name}.conf"));
    std::fs::write(
        &conf,
        format!(
            "[Interface]\nPrivateKey = {}\nAddress = 10.78.0.1/24\nListenPort = 51820\n\n\
             [Peer]\nPublicKey = {}\nAllowedIPs = 10.78.0.2/32\nEndpoint = {}:51821\n",
            ka.private, kb.public, pair.b_addr
        ),
    )
    .expect("write conf");
    let bin_dir = std::path::Path::new(Implementation::Weft.program())
        .parent()
        .expect("bin dir")
        .to_path_buf();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let up = pair
        .a
        .command("wg-quick")
        .args(["up", conf.to_str().unwrap_or_default()])
        .env("WG_QUICK_USERSPACE_IMPLEMENTATION", "weft-wg")
        .env("PATH", &path)
        .output()
        .expect("wg-quick up");
    let cleanup = |ok: bool| {
        let _ = pair
            .a
            .command("wg-quick")
            .args(["down", conf.to_str().unwrap_or_default()])
            .env("PATH", &path)
            .output();
        let _ = std::fs::remove_dir_all(&dir);
        ok
    };
    assert!(
        cleanup_if_failed(up.status.success(), &cleanup),
        "wg-quick up failed: {}",
        String::from_utf8_lossy(&up.stderr)
    );
    let works = pair.a.ping_within("10.78.0.2", Duration::from_secs(10));
    let shown = pair.a.exec(&["wg", "show", &name]);
    let down = pair
        .a
        .command("wg-quick")
        .args(["down", conf.to_str().unwrap_or_default()])
        .env("PATH", &path)
        .output()
        .expect("wg-quick down");
    let _ = std::fs::remove_dir_all(&dir);
    assert!(works, "no ping through an interface brought up by wg-quick");
    assert!(shown.contains("latest handshake"), "{shown}");
    assert!(
        down.status.success(),
        "{}",
        String::from_utf8_lossy(&down.stderr)
    );
    let sock = std::path::Path::new("/var/run/wireguard").join(format!("{name}.sock"));
    assert!(
        wait_until(Duration::from_secs(5), Duration::from_millis(50), || !sock
            .exists()),
        "socket left behind after wg-quick down"
    );
    assert!(
        !pair.a.try_exec(&["ip", "link", "show", &name]),
        "interface left behind"
    );
}

fn cleanup_if_failed(ok: bool, cleanup: &dyn Fn(bool) -> bool) -> bool {
    if ok {
        true
    } else {
        cleanup(false)
    }
}

/// Everything `wg` can set comes back from `wg showconf` as it was set, and
/// replace-peers, remove and the zero key behave as with the kernel module.
#[test]
#[ignore = "needs root: network namespaces and TUN devices"]
fn wg_configuration_round_trip() {
    testkit::require_root("network namespaces and TUN devices");
    let ns = Netns::new();
    let w = WgInterface::start(&ns, Implementation::Weft);
    let k = genkey();
    let (p1, p2, p3) = (genkey(), genkey(), genkey());
    let psk = run(&["wg", "genpsk"]).trim().to_string();
    let conf_dir = std::env::temp_dir().join(unique("weft-conf-"));
    std::fs::create_dir_all(&conf_dir).expect("dir");
    let conf = conf_dir.join("wg.conf");
    std::fs::write(
        &conf,
        format!(
            "[Interface]\nPrivateKey = {}\nListenPort = 51999\nFwMark = 0x1234\n\n\
             [Peer]\nPublicKey = {}\nPresharedKey = {psk}\nAllowedIPs = 10.1.0.0/16, fd00:1::/64\n\
             Endpoint = 192.0.2.1:51820\nPersistentKeepalive = 25\n\n\
             [Peer]\nPublicKey = {}\nAllowedIPs = 10.2.0.0/24\nEndpoint = [2001:db8::1]:51820\n",
            k.private, p1.public, p2.public
        ),
    )
    .expect("write conf");
    let result = std::panic::catch_unwind(|| {
        w.wg(&["setconf", &w.name, conf.to_str().unwrap_or_default()]);
        let shown = w.wg(&["showconf", &w.name]);
        for want in [
            format!("PrivateKey = {}", k.private),
            "ListenPort = 51999".to_string(),
            "FwMark = 0x1234".to_string(),
            format!("PublicKey = {}", p1.public),
            format!("PresharedKey = {psk}"),
            "AllowedIPs = 10.1.0.0/16, fd00:1::/64".to_string(),
            "Endpoint = 192.0.2.1:51820".to_string(),
            "PersistentKeepalive = 25".to_string(),
            format!("PublicKey = {}", p2.public),
            "Endpoint = [2001:db8::1]:51820".to_string(),
        ] {
            assert!(shown.contains(&want), "missing {want:?} in\n{shown}");
        }
        assert_eq!(w.wg(&["show", &w.name, "public-key"]).trim(), k.public);

        // An allowed IP moves to the peer that claims it last.
        w.wg(&[
            "set",
            &w.name,
            "peer",
            &p2.public,
            "allowed-ips",
            "10.2.0.0/24,10.1.0.0/16",
        ]);
        let ips = w.wg(&["show", &w.name, "allowed-ips"]);
        let p1_line = ips.lines().find(|l| l.starts_with(&p1.public)).expect("p1");
        assert!(!p1_line.contains("10.1.0.0/16"), "{ips}");
        // remove, then setconf with a single peer replaces all peers.
        w.wg(&["set", &w.name, "peer", &p1.public, "remove"]);
        assert!(!w.wg(&["show", &w.name, "peers"]).contains(&p1.public));
        std::fs::write(
            &conf,
            format!(
                "[Interface]\nPrivateKey = {}\n\n[Peer]\nPublicKey = {}\nAllowedIPs = 10.3.0.1/32\n",
                k.private, p3.public
            ),
        )
        .expect("rewrite conf");
        w.wg(&["setconf", &w.name, conf.to_str().unwrap_or_default()]);
        let peers = w.wg(&["show", &w.name, "peers"]);
        assert_eq!(peers.trim(), p3.public, "setconf must replace peers");
        // Rejected input leaves the configuration as it was.
        assert!(!ns.try_exec(&["wg", "set", &w.name, "peer", "not-a-key"]));
        // Straight to the socket, past wg's own checks.
        // Errors are negative errnos, as wireguard-go sends them.
        let reply = uapi_request(&w.name, "set=1\nlisten_port=99999\n\n");
        assert_eq!(reply, "errno=-22\n\n");
        let reply = uapi_request(&w.name, "set=1\nreplace_peers=true\npublic_key=zz\n\n");
        assert_eq!(reply, "errno=-22\n\n");
        assert_eq!(w.wg(&["show", &w.name, "peers"]).trim(), p3.public);
        // The real wg names the error (with a positive errno it printed
        // "Unknown error -98").
        let busy = ns.run_in(|| std::net::UdpSocket::bind("0.0.0.0:51777").expect("bind"));
        let _busy = busy.join().expect("bound");
        let out = ns
            .command("wg")
            .args(["set", &w.name, "listen-port", "51777"])
            .output()
            .expect("wg");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(err.contains("Address already in use"), "{err}");
        assert_eq!(w.wg(&["show", &w.name, "listen-port"]).trim(), "51999");
    });
    let _ = std::fs::remove_dir_all(&conf_dir);
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
}

fn uapi_request(ifname: &str, request: &str) -> String {
    use std::io::{Read, Write};
    let mut s =
        std::os::unix::net::UnixStream::connect(format!("/var/run/wireguard/{ifname}.sock"))
            .expect("connect to UAPI socket");
    s.write_all(request.as_bytes()).expect("write");
    s.shutdown(std::net::Shutdown::Write).expect("shutdown");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("read");
    out
}

/// Runs `ping -i 0.05` from `from` to `to` for `count` probes, doing `during`
/// after `after`; returns the probes answered (by sequence number) and how
/// many were sent.
fn probe_while(
    from: &Netns,
    to: &str,
    count: u32,
    after: Duration,
    during: impl FnOnce(),
) -> (Vec<u32>, u32) {
    let child = from
        .command("ping")
        .args(["-n", "-i", "0.05", "-W", "1", "-c", &count.to_string(), to])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("ping");
    std::thread::sleep(after);
    during();
    let out = child.wait_with_output().expect("ping output");
    let answered = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split("icmp_seq=").nth(1))
        .filter_map(|rest| rest.split_whitespace().next()?.parse().ok())
        .collect();
    (answered, count)
}

/// The longest run of unanswered probes between the first and the last
/// answered one.
fn longest_gap(answered: &[u32]) -> u32 {
    let mut seqs = answered.to_vec();
    seqs.sort_unstable();
    seqs.dedup();
    seqs.windows(2).map(|w| w[1] - w[0] - 1).max().unwrap_or(0)
}

/// wireguard-go forgets every session when its peers are replaced (`wg
/// setconf`, which Kilo does on every change). Weft notices that its data
/// goes unanswered and starts a new handshake within a second, instead of
/// after the protocol's 15 s.
#[test]
#[ignore = "needs root: network namespaces and TUN devices"]
fn a_peer_that_forgot_the_session_is_back_within_two_seconds() {
    testkit::require_root("network namespaces and TUN devices");
    require("wg");
    let t = Tunnel::new(Implementation::Weft, Implementation::WireguardGo);
    assert!(t.pair.a.ping_within(TB, Duration::from_secs(10)));
    let conf = t.wb.wg(&["showconf", &t.wb.name]);
    let file = testkit::SecretFile::with_contents(&conf);
    // 50 ms probes for 8 s; the configuration is replaced after 1.5 s.
    let (answered, sent) = probe_while(&t.pair.a, TB, 160, Duration::from_millis(1500), || {
        t.wb.wg(&["setconf", &t.wb.name, file.as_str()]);
    });
    let gap = longest_gap(&answered);
    let blackout = Duration::from_millis(50 * u64::from(gap));
    eprintln!(
        "wireguard-go's peers replaced: {} of {sent} probes answered, longest gap {gap} probes \
         ({blackout:?})",
        answered.len()
    );
    assert!(
        answered.iter().any(|s| *s > 140),
        "the tunnel did not come back: answered {answered:?}"
    );
    assert!(
        blackout <= Duration::from_secs(2),
        "a forgotten session took {blackout:?} to recover"
    );
}

/// A child process killed (and reaped) on drop, so a failing test leaves
/// no daemon behind.
struct Daemon(std::process::Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// An upgrade of weft-wg: a new process takes the running interface over
/// (`--take-over`), joining it with queues of its own and taking the UDP
/// sockets; the interface, its address and routes never go away, and
/// traffic pauses for about one handshake. The successor runs more workers
/// than sockets come with it (3 against 2): the third sends but does not
/// receive.
#[test]
#[ignore = "needs root: network namespaces and TUN devices"]
fn an_upgrade_takes_the_running_interface_over() {
    use dataplane::control::ControlClient;
    use dataplane::{DeviceUpdate, PeerUpdate, PrivateKey, PublicKey};
    testkit::require_root("network namespaces and TUN devices");
    require("wg");
    let pair = Pair::new();
    let name = unique("wu");
    let dir = std::env::temp_dir().join(unique("weft-handoff-"));
    std::fs::create_dir_all(&dir).expect("dir");
    let control = dir.join("tunnel.ctl");
    let uapi_dir = dir.join("uapi");
    let start = |take_over: bool, workers: &str| {
        let mut c = pair.a.command(Implementation::Weft.program());
        c.args(["-f", "--workers", workers, "--control"])
            .arg(&control)
            .arg("--uapi-dir")
            .arg(&uapi_dir);
        if take_over {
            c.arg("--take-over");
        }
        Daemon(
            c.arg(&name)
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .spawn()
                .expect("weft-wg"),
        )
    };
    let mut old = start(false, "2");
    let client = ControlClient::new(&control);
    assert!(
        wait_until(Duration::from_secs(10), Duration::from_millis(20), || {
            client.is_alive()
        }),
        "no control socket"
    );
    let (ka, kb) = (genkey(), genkey());
    let mut peer = PeerUpdate::new(PublicKey::from_base64(&kb.public).expect("key"));
    peer.endpoint = Some(
        format!("{}:{PORT_B}", pair.b_addr)
            .parse()
            .expect("endpoint"),
    );
    peer.allowed_ips = vec![format!("{TB}/32").parse().expect("prefix")];
    client
        .set(&DeviceUpdate {
            private_key: Some(PrivateKey::from_base64(&ka.private).expect("key")),
            listen_port: Some(PORT_A),
            peers: vec![peer],
            ..Default::default()
        })
        .expect("configure through the control socket");
    pair.a
        .ip(&["addr", "add", &format!("{TA}/24"), "dev", &name]);
    pair.a.ip(&["link", "set", &name, "up"]);
    let wb = WgInterface::start(&pair.b, Implementation::WireguardGo);
    let f = key_file(&kb.private);
    wb.wg(&[
        "set",
        &wb.name,
        "private-key",
        f.as_str(),
        "listen-port",
        &PORT_B.to_string(),
        "peer",
        &ka.public,
        "allowed-ips",
        &format!("{TA}/32"),
        "endpoint",
        &format!("{}:{PORT_A}", pair.a_addr),
    ]);
    pair.b
        .ip(&["addr", "add", &format!("{TB}/24"), "dev", &wb.name]);
    pair.b.ip(&["link", "set", &wb.name, "up"]);
    assert!(pair.b.ping_within(TA, Duration::from_secs(10)));
    let link_before = pair.a.ip(&["-o", "link", "show", &name]);
    // The interface's attached queues, as sysfs shows them in its namespace.
    let queues = || {
        pair.a
            .exec(&["ls", &format!("/sys/class/net/{name}/queues")])
            .split_whitespace()
            .filter(|q| q.starts_with("tx-"))
            .count()
    };
    assert_eq!(queues(), 2, "one queue per worker");
    let index = |l: &str| l.split(':').next().unwrap_or_default().to_string();
    let (_, host_before) = client.get().expect("weft_get");

    // The standard socket is read-only: the agent owns the configuration.
    let ro = uapi_dir.join(format!("{name}.sock"));
    let mut s = std::os::unix::net::UnixStream::connect(&ro).expect("standard socket");
    use std::io::{Read, Write};
    s.write_all(b"set=1\nlisten_port=1\n\n").expect("write");
    s.shutdown(std::net::Shutdown::Write).expect("shutdown");
    let mut reply = String::new();
    let _ = s.read_to_string(&mut reply);
    assert_eq!(reply, format!("errno=-{}\n\n", libc::EPERM));

    let mut successor = None;
    let (answered, sent) = probe_while(&pair.b, TA, 120, Duration::from_millis(1500), || {
        successor = Some(start(true, "3"));
    });
    let mut successor = successor.expect("started");
    let gap = longest_gap(&answered);
    let blackout = Duration::from_millis(50 * u64::from(gap));
    eprintln!(
        "upgrade: {} of {sent} probes answered, longest gap {gap} probes ({blackout:?})",
        answered.len()
    );
    // The old process left by itself; the new one serves the device.
    assert!(
        wait_until(Duration::from_secs(5), Duration::from_millis(20), || old
            .0
            .try_wait()
            .expect("wait")
            .is_some()),
        "the old process did not exit"
    );
    assert!(
        successor.0.try_wait().expect("wait").is_none(),
        "the successor runs"
    );
    let (info, host_after) = client.get().expect("weft_get from the successor");
    assert_ne!(host_after.pid, host_before.pid);
    assert_eq!(info.listen_port, PORT_A, "the port stayed");
    assert_eq!(info.peers.len(), 1, "the peers came along");
    let link_after = pair.a.ip(&["-o", "link", "show", &name]);
    assert_eq!(
        index(&link_after),
        index(&link_before),
        "the same interface"
    );
    assert!(pair.a.ip(&["addr", "show", "dev", &name]).contains(TA));
    assert_eq!(queues(), 3, "the successor's queues, the old ones gone");
    assert!(
        answered.iter().any(|s| *s > 110),
        "traffic resumed: {answered:?}"
    );
    assert!(
        blackout <= Duration::from_millis(200),
        "the upgrade cost {blackout:?} of traffic"
    );
    drop(successor);
    let _ = std::fs::remove_dir_all(&dir);
}
