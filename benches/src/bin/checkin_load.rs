//! What a large cluster's heartbeat costs one agent: a real `weft-agent`
//! (Kubernetes backend, in a network namespace of its own) against an
//! in-memory API server holding N Kilo-annotated Nodes in L locations, every
//! other node checking in (`kilo.squat.ai/last-seen`) every 30 s, spread
//! evenly, as Kilo nodes do. It measures, from the outside:
//!
//! - the first apply (time, RSS);
//! - a quiet window, then a window of check-ins: the agent's CPU time
//!   (from /proc), the reconcile passes it ran (`weft_reconciles_total`),
//!   and its log lines (its tunnel's included: the location's leader has
//!   a peer per other location, none of which answers here).
//!
//! A benchmark, not a test: it prints figures and asserts nothing.
//!
//!   sudo scripts/bench-checkins.sh [--nodes 1000] [--locations 50] [--seconds 60]

use fake_apiserver::{k3s_node, FakeApi};
use serde_json::json;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

struct Args {
    nodes: usize,
    locations: usize,
    seconds: u64,
    quiet_seconds: u64,
    agent: PathBuf,
}

const USAGE: &str = "usage: checkin_load [--nodes N] [--locations L] [--seconds S] \
                     [--quiet-seconds Q] [--agent PATH]";

fn parse() -> Result<Args, String> {
    let dir = std::env::current_exe()
        .map_err(|e| e.to_string())?
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let mut a = Args {
        nodes: 1000,
        locations: 50,
        seconds: 60,
        quiet_seconds: 30,
        agent: dir.join("weft-agent"),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        let number = |v: String| {
            v.parse::<u64>()
                .map_err(|_| format!("{flag}: {v:?} is not a number"))
        };
        match flag.as_str() {
            "--nodes" => a.nodes = number(value()?)? as usize,
            "--locations" => a.locations = number(value()?)? as usize,
            "--seconds" => a.seconds = number(value()?)?,
            "--quiet-seconds" => a.quiet_seconds = number(value()?)?,
            "--agent" => a.agent = PathBuf::from(value()?),
            "-h" | "--help" => return Err(USAGE.into()),
            _ => return Err(format!("unknown argument {flag}\n{USAGE}")),
        }
    }
    if a.nodes < 2 || a.locations == 0 || a.locations > a.nodes || a.nodes > 60_000 {
        return Err("need 2..60000 nodes and 1..nodes locations".into());
    }
    Ok(a)
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn sh(args: &[&str]) -> Result<(), String> {
    let ok = Command::new(args[0])
        .args(&args[1..])
        .status()
        .map_err(|e| format!("{}: {e}", args[0]))?
        .success();
    ok.then_some(())
        .ok_or_else(|| format!("{} failed", args.join(" ")))
}

/// The namespace the agent runs in; removed (with everything in it) on drop.
struct Netns(String);

impl Netns {
    fn path(&self) -> PathBuf {
        PathBuf::from(format!("/var/run/netns/{}", self.0))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

struct Agent(Child);

/// The run's working directory; on any exit it stops the agent's tunnel
/// (which outlives the agent by design) and is removed.
struct WorkDir(PathBuf);

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = dataplane::control::ControlClient::new(self.0.join("weft0.ctl")).stop();
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn name(i: usize) -> String {
    format!("node-{i:05}")
}

/// Node `i`: location `i % L`, pod CIDR and internal IP from its number.
fn node(i: usize, locations: usize, last_seen: u64) -> serde_json::Value {
    let pod = format!("10.{}.{}.0/24", 64 + i / 256, i % 256);
    let mut n = k3s_node(&name(i), &pod);
    let key = dataplane::PrivateKey::generate()
        .map(|k| k.public_key().to_base64())
        .unwrap_or_default();
    let a = &mut n["metadata"]["annotations"];
    a["kilo.squat.ai/location"] = json!(format!("loc-{}", i % locations));
    a["kilo.squat.ai/key"] = json!(key);
    a["kilo.squat.ai/endpoint"] = json!(format!("198.18.{}.{}:51820", i / 256, i % 256));
    a["kilo.squat.ai/internal-ip"] = json!(format!(
        "10.{}.{}.{}/16",
        200 + i % locations,
        (i / 256) % 256,
        i % 256
    ));
    a["kilo.squat.ai/last-seen"] = json!(last_seen.to_string());
    a["kilo.squat.ai/granularity"] = json!("location");
    n
}

fn cpu(pid: u32) -> Duration {
    testkit::cpu_time(pid)
}

/// CPU time per thread name (the agent's threads: the main loop, `kube`
/// for the watches, `probe` for the segment watch), in milliseconds.
fn thread_cpu(pid: u32) -> std::collections::BTreeMap<String, u64> {
    let mut out = std::collections::BTreeMap::new();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for t in tasks.flatten() {
        let Ok(stat) = std::fs::read_to_string(t.path().join("stat")) else {
            continue;
        };
        let Some((head, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let name = head.split_once('(').map_or("", |(_, n)| n).to_string();
        let f: Vec<u64> = rest
            .split_whitespace()
            .skip(11)
            .take(2)
            .filter_map(|v| v.parse().ok())
            .collect();
        *out.entry(name).or_default() += f.iter().sum::<u64>() * 1000 / hz;
    }
    out
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// `weft_reconciles_total` from the agent's metrics, read inside its namespace.
fn passes(ns: &Netns) -> u64 {
    weft_netlink::in_netns(&ns.path(), |_| {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect("127.0.0.1:1107")
            .map_err(|e| weft_netlink::NetlinkError::Failed(e.to_string()))?;
        let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
        let _ = s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n");
        let mut body = String::new();
        let _ = s.read_to_string(&mut body);
        Ok::<_, weft_netlink::NetlinkError>(
            body.lines()
                .find_map(|l| l.strip_prefix("weft_reconciles_total "))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0),
        )
    })
    .unwrap_or(0)
}

fn log_lines(path: &Path) -> usize {
    std::fs::read_to_string(path)
        .map(|s| s.lines().count())
        .unwrap_or(0)
}

/// One window of `seconds`, with every other node checking in once per 30 s
/// or with no events at all.
fn window(
    api: &FakeApi,
    args: &Args,
    pid: u32,
    ns: &Netns,
    log: &Path,
    with_check_ins: bool,
    seconds: u64,
) {
    let (cpu0, passes0, lines0) = (cpu(pid), passes(ns), log_lines(log));
    let threads0 = thread_cpu(pid);
    let started = Instant::now();
    let mut sent = 0u64;
    let mut next = 1usize;
    let period = Duration::from_secs(30);
    while started.elapsed() < Duration::from_secs(seconds) {
        if with_check_ins {
            // Every other node once per 30 s, spread evenly.
            let due = (started.elapsed().as_secs_f64() / period.as_secs_f64()
                * (args.nodes - 1) as f64) as u64;
            while sent < due {
                let patch = json!({"metadata": {"annotations": {
                    "kilo.squat.ai/last-seen": unix_now().to_string()}}});
                api.patch("nodes", &name(next), &patch);
                sent += 1;
                next = if next + 1 >= args.nodes { 1 } else { next + 1 };
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let used = cpu(pid).saturating_sub(cpu0);
    let per_minute = used.as_secs_f64() * 60.0 / seconds as f64;
    println!(
        "{:<22} {:>8.0} s  {:>9} {:>12.3} s {:>8.2} % {:>7} {:>6}",
        if with_check_ins {
            "check-ins (Kilo's 30 s)"
        } else {
            "quiet"
        },
        seconds,
        sent,
        per_minute,
        used.as_secs_f64() * 100.0 / seconds as f64,
        passes(ns).saturating_sub(passes0),
        log_lines(log).saturating_sub(lines0),
    );
    let threads: Vec<String> = thread_cpu(pid)
        .into_iter()
        .map(|(name, ms)| {
            (
                name.clone(),
                ms.saturating_sub(threads0.get(&name).copied().unwrap_or(0)),
            )
        })
        .filter(|(_, ms)| *ms > 0)
        .map(|(name, ms)| {
            format!(
                "{name} {:.3} s/min",
                ms as f64 * 60.0 / 1000.0 / seconds as f64
            )
        })
        .collect();
    println!("{:<22} by thread: {}", "", threads.join(", "));
}

fn run(args: &Args) -> Result<(), String> {
    if unsafe { libc::geteuid() } != 0 {
        return Err("needs root (a network namespace for the agent)".into());
    }
    if !args.agent.is_file() {
        return Err(format!(
            "{} not found: cargo build --release --workspace",
            args.agent.display()
        ));
    }
    let ns = Netns(format!("wck{}", std::process::id()));
    sh(&["ip", "netns", "add", &ns.0])?;
    let ip = |a: &[&str]| {
        let mut v = vec!["ip", "-n", &ns.0];
        v.extend_from_slice(a);
        sh(&v)
    };
    ip(&["link", "set", "lo", "up"])?;
    // The node's private network, and a default route into it: the other
    // locations' leaders exist only in the API, and what is sent to them is
    // lost, as to hosts that are down. On the far side, a namespace that
    // answers for the leader candidates this node watches (as live nodes
    // do).
    let lan = Netns(format!("wck{}l", std::process::id()));
    sh(&["ip", "netns", "add", &lan.0])?;
    ip(&[
        "link", "add", "eth0", "type", "veth", "peer", "name", "lan", "netns", &lan.0,
    ])?;
    ip(&["addr", "add", "10.200.0.0/16", "dev", "eth0"])?;
    ip(&["link", "set", "eth0", "up"])?;
    ip(&["route", "add", "default", "dev", "eth0"])?;
    sh(&["ip", "-n", &lan.0, "link", "set", "lan", "up"])?;
    for i in (1..=3)
        .map(|k| k * args.locations)
        .filter(|i| *i < args.nodes)
    {
        let addr = format!("10.200.{}.{}/16", (i / 256) % 256, i % 256);
        sh(&["ip", "-n", &lan.0, "addr", "add", &addr, "dev", "lan"])?;
    }

    let api = FakeApi::new();
    api.forget_requests();
    // Fresh for an hour without any event, so that the quiet window is
    // quiet; the check-in window then brings them back to now, one by one.
    let fresh = unix_now() + 3600;
    for i in 0..args.nodes {
        let mut n = node(i, args.locations, fresh);
        if i == 0 {
            // The agent's own node leads its location.
            let a = &mut n["metadata"]["annotations"];
            a["kilo.squat.ai/leader"] = json!("true");
            a["kilo.squat.ai/internal-ip"] = json!("10.200.0.0/16");
        }
        api.put("nodes", n);
    }
    let listener = weft_netlink::in_netns(&ns.path(), |_| {
        TcpListener::bind("127.0.0.1:6443")
            .map_err(|e| weft_netlink::NetlinkError::Failed(e.to_string()))
    })
    .map_err(|e| e.to_string())?;
    let _server = api.serve_http(listener);

    let work_dir =
        WorkDir(std::env::temp_dir().join(format!("weft-checkins-{}", std::process::id())));
    std::fs::create_dir_all(&work_dir.0).map_err(|e| e.to_string())?;
    let work = &work_dir.0;
    let kubeconfig = work.join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster: {server: 'http://127.0.0.1:6443'}\nusers:\n- name: u\n  user: {}\ncontexts:\n- name: c\n  context: {cluster: c, user: u}\ncurrent-context: c\n",
    )
    .map_err(|e| e.to_string())?;
    let log = work.join("agent.log");
    let started = Instant::now();
    let child = Command::new("ip")
        .args(["netns", "exec", &ns.0])
        .arg(&args.agent)
        .args([
            "--backend",
            "kubernetes",
            "--hostname",
            &name(0),
            "--kubeconfig",
        ])
        .arg(&kubeconfig)
        .arg("--state-dir")
        .arg(work)
        .arg("--cni-dir")
        .arg(work.join("cni"))
        .arg("--control-socket")
        .arg(work.join("weft0.ctl"))
        .arg("--uapi-dir")
        .arg(work.join("run"))
        .args(["--listen", "127.0.0.1:1107"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).map_err(|e| e.to_string())?)
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", args.agent.display()))?;
    let agent = Agent(child);
    let pid = agent.0.id();
    let conflist = work.join("cni").join("10-weft.conflist");
    while !conflist.exists() {
        if started.elapsed() > Duration::from_secs(60) {
            return Err(format!(
                "the agent did not apply within 60 s; see {}",
                log.display()
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let first_apply = started.elapsed();
    // Let the first wave settle: the tunnel's handshakes to the other
    // leaders go unanswered, and each is reported once.
    std::thread::sleep(Duration::from_secs(10));
    println!(
        "{} nodes in {} locations; first apply {:.2} s, agent RSS {} MiB after it",
        args.nodes,
        args.locations,
        first_apply.as_secs_f64(),
        rss_kib(pid) / 1024
    );
    println!(
        "{:<22} {:>10} {:>9} {:>14} {:>10} {:>7} {:>6}",
        "window", "length", "events", "CPU per min", "of a core", "passes", "log"
    );
    window(&api, args, pid, &ns, &log, false, args.quiet_seconds);
    // Into a steady cluster: every node last checked in within the past
    // 30 s, in order, so that each is next due 30 s after that.
    let now = unix_now();
    for i in 1..args.nodes {
        let phase = 30 * (args.nodes - 1 - i) as u64 / (args.nodes - 1) as u64;
        let patch = json!({"metadata": {"annotations": {
            "kilo.squat.ai/last-seen": (now - phase).to_string()}}});
        api.patch("nodes", &name(i), &patch);
    }
    std::thread::sleep(Duration::from_secs(3));
    window(&api, args, pid, &ns, &log, true, args.seconds);
    println!("agent RSS at the end: {} MiB", rss_kib(pid) / 1024);
    Ok(())
}

fn main() -> std::process::ExitCode {
    let args = match parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return std::process::ExitCode::from(2);
        }
    };
    match run(&args) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("checkin_load: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
