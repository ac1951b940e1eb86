//! Test hosts in network namespaces: creation, commands inside them, and
//! clean-up that runs even when a test fails (Drop).
#![allow(dead_code, unused_imports)]

pub mod relay;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

pub use testkit::{cpu_time, require_tool as require, run, try_run, unique, wait_until, Netns};

/// Pairs made so far by this process: each gets its own 192.168.x.0/24.
static PAIRS: AtomicU32 = AtomicU32::new(0);

/// Two hosts joined by a veth pair: `a` is 192.168.x.1, `b` is 192.168.x.2.
pub struct Pair {
    pub a: Netns,
    pub b: Netns,
    pub a_addr: Ipv4Addr,
    pub b_addr: Ipv4Addr,
    /// b's end of the veth pair.
    pub b_dev: String,
}

impl Pair {
    pub fn new() -> Self {
        let a = Netns::new();
        let b = Netns::new();
        let subnet = 100 + (PAIRS.fetch_add(1, Ordering::Relaxed) % 150) as u8;
        let (va, vb) = (unique("va"), unique("vb"));
        run(&[
            "ip", "link", "add", &va, "netns", &a.name, "type", "veth", "peer", "name", &vb,
            "netns", &b.name,
        ]);
        let a_addr = Ipv4Addr::new(192, 168, subnet, 1);
        let b_addr = Ipv4Addr::new(192, 168, subnet, 2);
        a.ip(&["addr", "add", &format!("{a_addr}/24"), "dev", &va]);
        b.ip(&["addr", "add", &format!("{b_addr}/24"), "dev", &vb]);
        a.ip(&["link", "set", &va, "up"]);
        b.ip(&["link", "set", &vb, "up"]);
        Self {
            a,
            b,
            a_addr,
            b_addr,
            b_dev: vb,
        }
    }
}

/// Which WireGuard implementation runs an interface.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Implementation {
    Weft,
    WireguardGo,
}

impl Implementation {
    pub fn program(self) -> &'static str {
        match self {
            Implementation::Weft => env!("CARGO_BIN_EXE_weft-wg"),
            Implementation::WireguardGo => "wireguard-go",
        }
    }
}

/// A userspace WireGuard interface running in the foreground in a namespace;
/// killed on drop, and its socket removed.
pub struct WgInterface {
    pub name: String,
    pub ns: String,
    pub implementation: Implementation,
    child: Option<Child>,
}

impl WgInterface {
    pub fn start(ns: &Netns, implementation: Implementation) -> Self {
        Self::start_named(ns, implementation, &unique("wg"))
    }

    pub fn start_named(ns: &Netns, implementation: Implementation, name: &str) -> Self {
        let child = ns
            .command(implementation.program())
            .args(["-f", name])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start WireGuard daemon");
        let sock = format!("/var/run/wireguard/{name}.sock");
        assert!(
            testkit::wait_until(Duration::from_secs(10), Duration::from_millis(20), || {
                std::path::Path::new(&sock).exists()
            }),
            "{implementation:?} did not create {sock}"
        );
        Self {
            name: name.to_string(),
            ns: ns.name.clone(),
            implementation,
            child: Some(child),
        }
    }

    /// `wg ARGS...` against this interface's namespace.
    pub fn wg(&self, args: &[&str]) -> String {
        let mut v = vec!["ip", "netns", "exec", &self.ns, "wg"];
        v.extend_from_slice(args);
        run(&v)
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: plain kill(2) on our child.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            testkit::wait_until(Duration::from_secs(5), Duration::from_millis(20), || {
                matches!(c.try_wait(), Ok(Some(_)))
            });
            let _ = c.kill();
            let _ = c.wait();
            // Only the first stop cleans up: a later drop of this (stopped)
            // value must not remove a successor's socket of the same name.
            let _ = std::fs::remove_file(format!("/var/run/wireguard/{}.sock", self.name));
        }
    }

    /// The daemon's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// True while the daemon runs.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }
}

impl Drop for WgInterface {
    fn drop(&mut self) {
        self.stop();
    }
}

pub struct Keys {
    pub private: String,
    pub public: String,
}

pub fn genkey() -> Keys {
    let private = run(&["wg", "genkey"]).trim().to_string();
    let mut c = Command::new("wg")
        .arg("pubkey")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("wg pubkey");
    c.stdin
        .take()
        .expect("stdin")
        .write_all(private.as_bytes())
        .expect("write key");
    let out = c.wait_with_output().expect("wg pubkey output");
    Keys {
        private,
        public: String::from_utf8_lossy(&out.stdout).trim().to_string(),
    }
}

/// Writes a private key to a 0600 file for `wg set ... private-key FILE`.
pub fn key_file(key: &str) -> testkit::SecretFile {
    testkit::SecretFile::with_contents(key)
}

/// Two hosts, each with a WireGuard interface, configured as each other's
/// peer: tunnel addresses 10.77.0.1 (a) and 10.77.0.2 (b).
pub struct Tunnel {
    pub pair: Pair,
    pub wa: WgInterface,
    pub wb: WgInterface,
    pub ka: Keys,
    pub kb: Keys,
}

pub const TA: &str = "10.77.0.1";
pub const TB: &str = "10.77.0.2";
pub const TA6: &str = "fd77::1";
pub const TB6: &str = "fd77::2";
pub const PORT_A: u16 = 51820;
pub const PORT_B: u16 = 51821;

impl Tunnel {
    pub fn new(ia: Implementation, ib: Implementation) -> Self {
        let pair = Pair::new();
        let wa = WgInterface::start(&pair.a, ia);
        let wb = WgInterface::start(&pair.b, ib);
        let (ka, kb) = (genkey(), genkey());
        let t = Self {
            pair,
            wa,
            wb,
            ka,
            kb,
        };
        t.configure_a();
        t.configure_b();
        for (ns, w, addr, addr6) in [(&t.pair.a, &t.wa, TA, TA6), (&t.pair.b, &t.wb, TB, TB6)] {
            ns.ip(&["addr", "add", &format!("{addr}/24"), "dev", &w.name]);
            ns.ip(&[
                "-6",
                "addr",
                "add",
                &format!("{addr6}/64"),
                "dev",
                &w.name,
                "nodad",
            ]);
            ns.ip(&["link", "set", &w.name, "up"]);
        }
        t
    }

    pub fn configure_a(&self) {
        let f = key_file(&self.ka.private);
        self.wa.wg(&[
            "set",
            &self.wa.name,
            "private-key",
            f.as_str(),
            "listen-port",
            &PORT_A.to_string(),
            "peer",
            &self.kb.public,
            "allowed-ips",
            &format!("{TB}/32,{TB6}/128"),
            "endpoint",
            &format!("{}:{PORT_B}", self.pair.b_addr),
        ]);
    }

    pub fn configure_b(&self) {
        let f = key_file(&self.kb.private);
        self.wb.wg(&[
            "set",
            &self.wb.name,
            "private-key",
            f.as_str(),
            "listen-port",
            &PORT_B.to_string(),
            "peer",
            &self.ka.public,
            "allowed-ips",
            &format!("{TA}/32,{TA6}/128"),
            "endpoint",
            &format!("{}:{PORT_A}", self.pair.a_addr),
        ]);
    }
}

/// The payload of datagram `index` in [`udp_transfer`]: its index, then
/// bytes derived from it, so that any change shows.
fn udp_payload(index: u32, len: usize) -> Vec<u8> {
    let mut p = index.to_le_bytes().to_vec();
    p.extend((0..len - 4).map(|i| (index as usize * 7 + i * 13) as u8));
    p
}

/// Sends `count` datagrams of 1200 bytes from `from` to `to_addr` (in `to`)
/// in bursts of 50 (so that the tunnel batches and coalesces them);
/// returns how many arrived intact and how many arrived changed.
pub fn udp_transfer(from: &Netns, to: &Netns, to_addr: &str, count: u32) -> (u32, u32) {
    const LEN: usize = 1200;
    let ip: std::net::IpAddr = to_addr.parse().expect("an address");
    let addr = SocketAddr::new(ip, 5202);
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let server = to.run_in(move || {
        let s = std::net::UdpSocket::bind(addr).expect("bind");
        // Room for every datagram: what is measured is their content.
        big_receive_buffer(&s, 8 << 20);
        s.set_read_timeout(Some(Duration::from_secs(2)))
            .expect("timeout");
        ready_tx.send(()).expect("ready");
        let (mut intact, mut changed) = (0, 0);
        let mut buf = vec![0u8; 2048];
        while let Ok(n) = s.recv(&mut buf) {
            let index = u32::from_le_bytes(buf[..4].try_into().expect("4 bytes"));
            if n == LEN && index < count && buf[..n] == udp_payload(index, LEN)[..] {
                intact += 1;
            } else {
                changed += 1;
            }
            if intact + changed == count {
                break;
            }
        }
        (intact, changed)
    });
    ready_rx
        .recv_timeout(Duration::from_secs(5))
        .expect("server up");
    from.run_in(move || {
        let s = std::net::UdpSocket::bind(SocketAddr::new(
            if ip.is_ipv4() {
                std::net::Ipv4Addr::UNSPECIFIED.into()
            } else {
                std::net::Ipv6Addr::UNSPECIFIED.into()
            },
            0,
        ))
        .expect("bind");
        for index in 0..count {
            // A full queue drops, as it would for any application.
            let _ = s.send_to(&udp_payload(index, LEN), addr);
            if index % 50 == 49 {
                std::thread::sleep(Duration::from_millis(2));
            }
        }
    })
    .join()
    .expect("client");
    server.join().expect("server")
}

/// Sends `bytes` of deterministic pseudo-random data over TCP from `from` to
/// `to_addr` (listening in `to`); returns (sent digest, received digest).
pub fn tcp_transfer(from: &Netns, to: &Netns, to_addr: &str, bytes: usize) -> (u64, u64) {
    let ip: std::net::IpAddr = to_addr.parse().expect("an address");
    let listen_addr = SocketAddr::new(ip, 5201);
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let server = to.run_in(move || {
        let l = TcpListener::bind(listen_addr).expect("bind");
        ready_tx.send(()).expect("ready");
        let (mut s, _) = l.accept().expect("accept");
        s.set_read_timeout(Some(Duration::from_secs(30)))
            .expect("timeout");
        let mut h = Fnv::new();
        let mut buf = vec![0u8; 1 << 16];
        let mut total = 0usize;
        loop {
            let n = s.read(&mut buf).expect("read");
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
            total += n;
        }
        (h.finish(), total)
    });
    ready_rx
        .recv_timeout(Duration::from_secs(5))
        .expect("server up");
    let client = from.run_in(move || {
        let mut s =
            TcpStream::connect_timeout(&listen_addr, Duration::from_secs(10)).expect("connect");
        s.set_write_timeout(Some(Duration::from_secs(30)))
            .expect("timeout");
        let mut h = Fnv::new();
        let mut rng = 0x9e37_79b9_7f4a_7c15u64;
        let mut chunk = vec![0u8; 1 << 16];
        let mut left = bytes;
        while left > 0 {
            for w in chunk.chunks_mut(8) {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                w.copy_from_slice(&rng.to_le_bytes()[..w.len()]);
            }
            let n = left.min(chunk.len());
            s.write_all(&chunk[..n]).expect("write");
            h.update(&chunk[..n]);
            left -= n;
        }
        h.finish()
    });
    let sent = client.join().expect("client");
    let (received, total) = server.join().expect("server");
    assert_eq!(total, bytes, "byte count");
    (sent, received)
}

/// FNV-1a, 64 bit: enough to tell corrupted or reordered data from intact.
pub struct Fnv(u64);
impl Fnv {
    pub fn new() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }
    pub fn update(&mut self, data: &[u8]) {
        for b in data {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x100_0000_01b3);
        }
    }
    pub fn finish(&self) -> u64 {
        self.0
    }
}

/// Field `field` of `wg show IF dump` for the first peer.
pub fn peer_dump_field(w: &WgInterface, field: usize) -> String {
    let dump = w.wg(&["show", &w.name, "dump"]);
    let line = dump.lines().nth(1).expect("a peer line");
    line.split('\t').nth(field).expect("field").to_string()
}

pub const DUMP_ENDPOINT: usize = 2;
pub const DUMP_LATEST_HANDSHAKE: usize = 4;
pub const DUMP_RX: usize = 5;
pub const DUMP_TX: usize = 6;
pub const DUMP_KEEPALIVE: usize = 7;

/// Sets a socket's receive buffer past the system limit (root).
pub fn big_receive_buffer(s: &impl AsRawFd, bytes: libc::c_int) {
    // SAFETY: a valid socket and option value.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&bytes as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
}
