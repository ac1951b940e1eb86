//! What Weft's integration tests share, in one place: the root requirement
//! (stated, never silently skipped), network namespaces removed on drop,
//! scratch files and directories removed on drop, waits bounded by a
//! deadline, commands that fail the test when they fail, a sibling package's
//! binary, a process's CPU time, and the IP packets tests send through
//! tunnels.
//!
//! Root-only tests are marked `#[ignore = "needs root: ..."]` so that a run
//! without root lists them as ignored in cargo's summary, and start with
//! [`require_root`], so that `--include-ignored` without root fails loudly
//! instead of passing. `scripts/test.sh` runs them as root and, in CI, refuses
//! to run without root.

use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// Whether this process runs as root.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Fails the test unless it runs as root. `needs` says what for (network
/// namespaces, TUN, ...), so the failure tells the reader what to do.
pub fn require_root(needs: &str) {
    assert!(
        is_root(),
        "this test needs root ({needs}); run it as root, e.g. `sudo scripts/test.sh`"
    );
}

/// Fails the test unless `tool` is on PATH.
pub fn require_tool(tool: &str) {
    let found = std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(tool).is_file()));
    assert!(
        found,
        "{tool} is not installed; scripts/test.sh installs it as root"
    );
}

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A short name unique to this process and call: interface names hold at
/// most 15 bytes, and namespaces, UAPI sockets and scratch files share
/// system-wide directories with other test processes.
pub fn unique(prefix: &str) -> String {
    let n = SEQ.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}{}x{n}", std::process::id() % 100_000)
}

/// Runs a command (program first) with no stdin; fails the test if it fails
/// to start or exits non-zero; returns its stdout.
pub fn run(args: &[&str]) -> String {
    let (program, rest) = args.split_first().expect("a command");
    let out = Command::new(program)
        .args(rest)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs a command quietly; whether it succeeded.
pub fn try_run(args: &[&str]) -> bool {
    let Some((program, rest)) = args.split_first() else {
        return false;
    };
    Command::new(program)
        .args(rest)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Runs `ip` in the current namespace; fails the test if it fails.
pub fn ip(args: &[&str]) -> String {
    let mut v = vec!["ip"];
    v.extend_from_slice(args);
    run(&v)
}

/// Calls `check` until it returns true or `timeout` passes, `pause` apart;
/// whether it did. For the test to assert on with its own message.
pub fn wait_until(timeout: Duration, pause: Duration, mut check: impl FnMut() -> bool) -> bool {
    wait_for(timeout, pause, || check().then_some(())).is_some()
}

/// Calls `probe` until it returns `Some` or `timeout` passes, `pause` apart.
pub fn wait_for<T>(
    timeout: Duration,
    pause: Duration,
    mut probe: impl FnMut() -> Option<T>,
) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(found) = probe() {
            return Some(found);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(pause);
    }
}

/// A network namespace, deleted on drop with everything in it (veths,
/// TUN devices, addresses, routes).
pub struct Netns {
    pub name: String,
}

impl Netns {
    /// A new namespace with a unique name starting with `prefix` (keep it
    /// to a few letters) and its loopback up.
    pub fn with_prefix(prefix: &str) -> Self {
        let name = unique(prefix);
        run(&["ip", "netns", "add", &name]);
        let ns = Self { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// A new namespace named `wt...`.
    pub fn new() -> Self {
        Self::with_prefix("wt")
    }

    /// The namespace's file, as a CNI runtime passes it (CNI_NETNS).
    pub fn path(&self) -> PathBuf {
        PathBuf::from(format!("/var/run/netns/{}", self.name))
    }

    /// `ip -n NAME args...`; fails the test if it fails.
    pub fn ip(&self, args: &[&str]) -> String {
        let mut v = vec!["ip", "-n", &self.name];
        v.extend_from_slice(args);
        run(&v)
    }

    /// Runs a command inside; fails the test if it fails; its stdout.
    pub fn exec(&self, args: &[&str]) -> String {
        let mut v = vec!["ip", "netns", "exec", &self.name];
        v.extend_from_slice(args);
        run(&v)
    }

    /// Runs a command inside quietly; whether it succeeded.
    pub fn try_exec(&self, args: &[&str]) -> bool {
        let mut v = vec!["ip", "netns", "exec", &self.name];
        v.extend_from_slice(args);
        try_run(&v)
    }

    /// A command that will run `program` inside, for the caller to finish.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(program);
        c
    }

    /// Runs `f` on a thread that has entered this namespace, so sockets it
    /// opens live there.
    pub fn run_in<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> std::thread::JoinHandle<T> {
        let path = self.path();
        std::thread::spawn(move || {
            let file = std::fs::File::open(&path).expect("open netns");
            // SAFETY: setns on a namespace fd, for this thread only.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            f()
        })
    }

    /// One ping with a one-second wait; whether it was answered.
    pub fn ping(&self, addr: &str) -> bool {
        self.try_exec(&["ping", "-c", "1", "-W", "1", addr])
    }

    /// Pings until one reply or `timeout`.
    pub fn ping_within(&self, addr: &str, timeout: Duration) -> bool {
        wait_until(timeout, Duration::ZERO, || self.ping(addr))
    }
}

impl Default for Netns {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .stderr(Stdio::null())
            .status();
    }
}

/// A scratch directory under the system's temporary directory, removed with
/// its contents on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    /// A new empty directory named `prefix` plus a unique suffix.
    pub fn new(prefix: &str) -> Self {
        let path = std::env::temp_dir().join(unique(prefix));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", path.display()));
        Self(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn join(&self, name: impl AsRef<Path>) -> PathBuf {
        self.0.join(name)
    }
}

impl AsRef<Path> for TempDir {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A scratch file readable by its owner only (0600, as private keys must
/// be), removed on drop.
pub struct SecretFile(PathBuf);

impl SecretFile {
    pub fn with_contents(contents: &str) -> Self {
        let path = std::env::temp_dir().join(unique("weft-test-secret-"));
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", path.display()));
        std::io::Write::write_all(&mut file, contents.as_bytes()).expect("write secret file");
        Self(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn as_str(&self) -> &str {
        self.0.to_str().unwrap_or_default()
    }
}

impl Drop for SecretFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Another package's binary, built with the profile of `own_binary` (a
/// binary of the calling test's package, from `env!("CARGO_BIN_EXE_...")`):
/// cargo builds only the tested package's binaries for its tests.
pub fn sibling_binary(own_binary: &str, bin: &str, package: &str) -> PathBuf {
    let dir = Path::new(own_binary).parent().expect("target dir");
    let path = dir.join(bin);
    if !path.is_file() {
        // The profile is the target directory's name ("debug" is "dev").
        let profile = match dir.file_name().and_then(|n| n.to_str()) {
            Some("debug") | None => "dev".to_string(),
            Some(name) => name.to_string(),
        };
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let ok = Command::new(cargo)
            .args(["build", "-p", package, "--bin", bin, "--profile", &profile])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "cannot build {bin} of {package}");
    }
    path
}

/// CPU time (user and system) a process has used so far; zero once it is
/// gone.
pub fn cpu_time(pid: u32) -> Duration {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return Duration::ZERO;
    };
    // The fields after the command name, which may hold spaces and sits in
    // parentheses: utime and stime are the 12th and 13th of them.
    let Some(rest) = stat.rfind(')').and_then(|i| stat.get(i + 2..)) else {
        return Duration::ZERO;
    };
    let fields: Vec<&str> = rest.split(' ').collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Duration::from_millis((ticks(11) + ticks(12)) * 1000 / hz)
}

/// An IPv4/UDP packet from `src:40000` to `dst:port` carrying `payload`,
/// with don't-fragment set and a valid header checksum (a TUN device drops
/// a packet without one); the UDP checksum is 0, which IPv4 allows.
pub fn ipv4_udp(src: Ipv4Addr, dst: Ipv4Addr, port: u16, payload: &[u8]) -> Vec<u8> {
    let total = 20 + 8 + payload.len();
    let mut p = vec![0u8; total];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    p[6] = 0x40; // don't fragment
    p[8] = 64;
    p[9] = 17;
    p[12..16].copy_from_slice(&src.octets());
    p[16..20].copy_from_slice(&dst.octets());
    let mut sum = 0u32;
    for w in p[..20].chunks(2) {
        sum += u32::from(u16::from_be_bytes([w[0], w[1]]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    p[10..12].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    p[20..22].copy_from_slice(&40000u16.to_be_bytes());
    p[22..24].copy_from_slice(&port.to_be_bytes());
    p[24..26].copy_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    p[28..].copy_from_slice(payload);
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_fit_an_interface() {
        let a = unique("wt");
        let b = unique("wt");
        assert_ne!(a, b);
        assert!(a.len() <= 15, "{a}");
    }

    #[test]
    fn waits_end_at_the_deadline_or_at_success() {
        let start = Instant::now();
        assert!(!wait_until(
            Duration::from_millis(50),
            Duration::from_millis(10),
            || false
        ));
        assert!(start.elapsed() >= Duration::from_millis(50));
        let mut calls = 0;
        assert!(wait_until(Duration::from_secs(5), Duration::ZERO, || {
            calls += 1;
            calls == 3
        }));
        assert_eq!(
            wait_for(Duration::ZERO, Duration::ZERO, || Some(7)),
            Some(7)
        );
    }

    #[test]
    fn scratch_files_are_private_and_go_away() {
        use std::os::unix::fs::PermissionsExt;
        let dir = TempDir::new("weft-testkit-");
        let kept = dir.path().to_path_buf();
        std::fs::write(dir.join("a"), "x").expect("write");
        drop(dir);
        assert!(!kept.exists());
        let secret = SecretFile::with_contents("key");
        let mode = std::fs::metadata(secret.path())
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let path = secret.path().to_path_buf();
        drop(secret);
        assert!(!path.exists());
    }

    #[test]
    fn this_process_uses_cpu_and_a_gone_one_none() {
        let mut x = 0u64;
        let used = wait_until(Duration::from_secs(5), Duration::ZERO, || {
            for _ in 0..100_000 {
                x = std::hint::black_box(x.wrapping_add(1));
            }
            cpu_time(std::process::id()) > Duration::ZERO
        });
        assert!(used);
        assert_eq!(cpu_time(u32::MAX), Duration::ZERO);
    }
}
