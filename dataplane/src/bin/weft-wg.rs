//! `weft-wg`: a userspace WireGuard interface with wireguard-go's command-line
//! contract, so `wg`, `wg-quick` (`WG_QUICK_USERSPACE_IMPLEMENTATION=weft-wg`)
//! and scripts written for wireguard-go work unchanged.

use dataplane::control::binary_identity;
use dataplane::handoff::{self, HandoffError};
use dataplane::signals::TerminationSignals;
use dataplane::uapi::{Access, ServingSocket, UapiHandler, UapiListener, SOCKET_DIR};
use dataplane::{Device, DeviceInfo, DeviceOptions, DeviceUpdate};
use std::io::{Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

const USAGE: &str = "\
Usage: weft-wg [-f|--foreground] [--control PATH [--take-over]] [--workers N]
               [--uapi-dir DIR | --no-uapi] INTERFACE-NAME

Creates the TUN interface INTERFACE-NAME and runs a userspace WireGuard device
on it, configured through /var/run/wireguard/INTERFACE-NAME.sock with the
standard `wg` tool, exactly as with wireguard-go:

  weft-wg wg0
  wg setconf wg0 wg0.conf          # or: wg set wg0 private-key ... peer ...
  ip address add 10.0.0.1/24 dev wg0 && ip link set wg0 up

  WG_QUICK_USERSPACE_IMPLEMENTATION=weft-wg wg-quick up wg0

The interface starts down with MTU 1420, a random listen port and no key.
It returns once the interface and its socket exist, leaving the device running
in the background; -f (or WG_PROCESS_FOREGROUND=1) keeps it in the foreground.
SIGINT or SIGTERM, or deleting the interface (`ip link del wg0`), stops it and
removes the socket.

Options:
  -f, --foreground   stay in the foreground
  --control PATH     also serve a control socket at PATH (root only) for
                     weft-agent; the standard socket is then read-only
                     (`wg show` works, `wg set` gets EPERM: the agent owns the
                     configuration)
  --take-over        with --control: if a weft-wg runs the interface behind
                     PATH, take the running interface over from it (an
                     upgrade: routes and port stay, traffic resumes after one
                     handshake; if this process fails, the old one carries
                     on); otherwise start afresh
  --linger           after handing the device to a successor, stay (idle)
                     until terminated instead of exiting: a container that
                     exits is restarted, and would take the device back
  --workers N        worker threads, each with a TUN queue and a UDP socket of
                     its own (default: one per core this process may use, at
                     most 16). A flow stays on one worker; more workers serve
                     more flows and peers in parallel
  --uapi-dir DIR     where the standard socket goes (default /var/run/wireguard)
  --no-uapi          no standard socket
  -h, --help         show this help
  --version          show the version

Environment:
  WG_PROCESS_FOREGROUND=1   same as --foreground
  WEFT_LOG=LEVEL            log filter: error, warn, info (default), debug, trace;
                            in the background, logs are kept only when it is set
  WEFT_WG_NO_OFFLOAD=1      disable TUN segmentation offload (for comparison)
  WEFT_WG_WORKERS=N         same as --workers N
";

struct Args {
    foreground: bool,
    ifname: String,
    control: Option<PathBuf>,
    take_over: bool,
    linger: bool,
    uapi_dir: Option<PathBuf>,
    workers: Option<usize>,
}

/// A worker count from the command line or the environment.
fn parse_workers(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(n) if (1..=dataplane::MAX_WORKERS).contains(&n) => Ok(n),
        _ => Err(format!(
            "invalid worker count {text:?}: 1 to {}",
            dataplane::MAX_WORKERS
        )),
    }
}

fn parse_args() -> Result<Option<Args>, String> {
    parse_command_line(
        std::env::args().skip(1),
        std::env::var("WG_PROCESS_FOREGROUND").as_deref() == Ok("1"),
        std::env::var("WEFT_WG_WORKERS").ok(),
    )
}

/// Splits `--flag=value` into `--flag` and `value`, so that both spellings
/// work (manifests tend to use the first).
fn split_long_options(args: impl IntoIterator<Item = String>) -> Vec<String> {
    let mut out = Vec::new();
    for arg in args {
        match arg.split_once('=') {
            Some((flag, value)) if flag.starts_with("--") => {
                out.push(flag.to_string());
                out.push(value.to_string());
            }
            _ => out.push(arg),
        }
    }
    out
}

fn parse_command_line(
    args: impl IntoIterator<Item = String>,
    foreground: bool,
    workers_env: Option<String>,
) -> Result<Option<Args>, String> {
    let mut foreground = foreground;
    let mut ifname = None;
    let mut control = None;
    let mut take_over = false;
    let mut linger = false;
    let mut uapi_dir = Some(PathBuf::from(SOCKET_DIR));
    let mut workers = match workers_env {
        Some(v) => Some(parse_workers(&v).map_err(|e| format!("WEFT_WG_WORKERS: {e}"))?),
        None => None,
    };
    let mut args = split_long_options(args).into_iter();
    while let Some(arg) = args.next() {
        let mut value = |flag: &str| args.next().ok_or(format!("{flag} needs a value"));
        match arg.as_str() {
            "-f" | "--foreground" => foreground = true,
            "--control" => control = Some(PathBuf::from(value("--control")?)),
            "--take-over" => take_over = true,
            "--linger" => linger = true,
            "--uapi-dir" => uapi_dir = Some(PathBuf::from(value("--uapi-dir")?)),
            "--no-uapi" => uapi_dir = None,
            "--workers" => workers = Some(parse_workers(&value("--workers")?)?),
            "-h" | "--help" => {
                print!("{USAGE}");
                return Ok(None);
            }
            "--version" => {
                println!("weft-wg {}", env!("CARGO_PKG_VERSION"));
                return Ok(None);
            }
            a if a.starts_with('-') => return Err(format!("unknown option {a}")),
            a if ifname.is_none() => ifname = Some(a.to_string()),
            a => return Err(format!("unexpected argument {a}")),
        }
    }
    let ifname = ifname.ok_or("missing INTERFACE-NAME")?;
    if take_over && control.is_none() {
        return Err("--take-over needs --control (where the running process listens)".into());
    }
    Ok(Some(Args {
        foreground,
        ifname,
        control,
        take_over,
        linger,
        uapi_dir,
        workers,
    }))
}

fn init_logging() {
    // The protocol core logs every handshake it sends or drops; our own
    // lines say once when a peer stops and starts answering instead.
    let filter = tracing_subscriber::EnvFilter::try_from_env("WEFT_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,gotatun=off"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(dataplane::logging::stderr_colour())
        .with_writer(std::io::stderr)
        .init();
}

/// Forks; the parent waits for the child to report that the interface and its
/// socket exist (or why not) and exits with that result, as wireguard-go does.
/// Returns the write end of the report pipe in the child.
fn daemonize() -> Result<Option<OwnedFd>, String> {
    let mut fds = [0i32; 2];
    // SAFETY: pipe2 fills two descriptors we then own.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(format!("pipe: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: we own both ends from here on.
    let (read_end, write_end) =
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // SAFETY: no other thread exists yet, so fork is safe.
    match unsafe { libc::fork() } {
        -1 => Err(format!("fork: {}", std::io::Error::last_os_error())),
        0 => {
            drop(read_end);
            // Like wireguard-go, the background process keeps the caller's
            // stdout and stderr only when logging was asked for; otherwise a
            // caller reading our output through a pipe would wait forever.
            let keep_output = std::env::var_os("WEFT_LOG").is_some();
            // SAFETY: detach from the controlling terminal; point stdio at /dev/null.
            unsafe {
                libc::setsid();
                let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
                if null >= 0 {
                    libc::dup2(null, 0);
                    if !keep_output {
                        libc::dup2(null, 1);
                        libc::dup2(null, 2);
                    }
                    libc::close(null);
                }
            }
            let _ = std::env::set_current_dir("/");
            Ok(Some(write_end))
        }
        _ => {
            drop(write_end);
            let mut report = String::new();
            let mut f = std::fs::File::from(read_end);
            let _ = f.read_to_string(&mut report);
            if report == "ok" {
                std::process::exit(0);
            }
            if report.is_empty() {
                report = "the background process exited before the interface was ready".into();
            }
            Err(report)
        }
    }
}

/// The device as the sockets serve it, and who serves it.
struct Host {
    device: Arc<Device>,
    binary: String,
    /// Set once a successor runs the device: then this process leaves the
    /// interface and the socket files alone.
    handed_off: AtomicBool,
}

impl UapiHandler for Host {
    fn get(&self) -> DeviceInfo {
        self.device.info()
    }
    fn set(&self, update: DeviceUpdate) -> Result<(), i32> {
        self.device.apply(&update).map_err(|e| {
            tracing::warn!("uapi set failed: {e}");
            e.errno()
        })
    }
    fn host_lines(&self) -> Vec<String> {
        vec![
            format!("weft_pid={}", std::process::id()),
            format!("weft_binary={}", self.binary),
        ]
    }
    fn stop(&self) {
        self.device.stop("asked to stop (weft_stop)");
    }
    fn hand_off(&self, stream: &UnixStream) -> std::io::Result<()> {
        tracing::info!("a successor asks for the device");
        match handoff::give(&self.device, stream) {
            Ok(()) => {
                self.handed_off.store(true, Ordering::SeqCst);
                self.device.stop("handed over to a successor");
                Ok(())
            }
            Err(e) => Err(std::io::Error::other(e.to_string())),
        }
    }
}

/// Creates the device, or takes it over from the process running it.
fn start_device(args: &Args) -> Result<Device, String> {
    let mut options = DeviceOptions::new(&args.ifname);
    if std::env::var("WEFT_WG_NO_OFFLOAD").as_deref() == Ok("1") {
        options.offload = false;
    }
    if let Some(n) = args.workers {
        options.workers = n;
    }
    if let (true, Some(control)) = (args.take_over, &args.control) {
        match handoff::take(control, &options) {
            Ok(d) => {
                tracing::info!(interface = %args.ifname, "took the running device over");
                return Ok(d);
            }
            Err(HandoffError::NothingRunning(_)) => {
                tracing::info!("no running device to take over; starting afresh")
            }
            Err(e) => return Err(e.to_string()),
        }
    }
    Device::create(&options).map_err(|e| e.to_string())
}

/// The sockets: the standard one (read-only when the agent has a control
/// socket) and the control socket.
fn serve(args: &Args, host: &Arc<Host>) -> Result<Vec<ServingSocket>, String> {
    let handler: Arc<dyn UapiHandler> = host.clone();
    let mut served = Vec::new();
    if let Some(dir) = &args.uapi_dir {
        let path = dir.join(format!("{}.sock", args.ifname));
        let access = if args.control.is_some() {
            Access::ReadOnly
        } else {
            Access::ReadWrite
        };
        let l = UapiListener::bind_path(&path, args.take_over)
            .map_err(|e| format!("cannot create the UAPI socket {}: {e}", path.display()))?;
        served.push(
            l.spawn(handler.clone(), access)
                .map_err(|e| e.to_string())?,
        );
    }
    if let Some(path) = &args.control {
        let l = UapiListener::bind_path(path, args.take_over)
            .map_err(|e| format!("cannot create the control socket {}: {e}", path.display()))?;
        served.push(
            l.spawn(handler, Access::Control)
                .map_err(|e| e.to_string())?,
        );
    }
    Ok(served)
}

fn start(args: &Args) -> Result<(Arc<Host>, Vec<ServingSocket>), String> {
    let device = Arc::new(start_device(args)?);
    let host = Arc::new(Host {
        device,
        binary: binary_identity(),
        handed_off: AtomicBool::new(false),
    });
    let served = serve(args, &host)?;
    Ok((host, served))
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(Some(a)) => a,
        Ok(None) => return ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("weft-wg: {e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    if !nix_is_root() {
        eprintln!("weft-wg: must run as root (creates a TUN interface and a root-only socket)");
        return ExitCode::FAILURE;
    }
    let report = if args.foreground {
        None
    } else {
        match daemonize() {
            Ok(fd) => fd,
            Err(e) => {
                eprintln!("weft-wg: {e}");
                return ExitCode::FAILURE;
            }
        }
    };
    init_logging();
    let signals = TerminationSignals::block();
    let (host, served) = match start(&args) {
        Ok(x) => x,
        Err(e) => {
            match report {
                Some(fd) => {
                    let _ = std::fs::File::from(fd).write_all(e.as_bytes());
                }
                None => eprintln!("weft-wg: {e}"),
            }
            return ExitCode::FAILURE;
        }
    };
    if let Some(fd) = report {
        let _ = std::fs::File::from(fd).write_all(b"ok");
    }
    tracing::info!(
        interface = %args.ifname,
        sockets = ?served.iter().map(|s| s.path().display().to_string()).collect::<Vec<_>>(),
        "running"
    );

    let stopper = host.device.stopper();
    let terminated = Arc::new(AtomicBool::new(false));
    let flag = terminated.clone();
    signals.on_arrival(move |sig| {
        flag.store(true, Ordering::SeqCst);
        stopper.stop(&format!("received signal {sig}"));
    });

    let reason = host.device.wait();
    tracing::info!("shutting down: {reason}");
    // Closing the sockets first tells `wg` the interface is gone; after a
    // handoff the socket files are the successor's and stay. Dropping the
    // device closes the TUN queue, which deletes the interface unless a
    // successor holds it.
    let handed_off = host.handed_off.load(Ordering::SeqCst);
    if handed_off {
        for s in &served {
            s.leave_file();
        }
    }
    drop(served);
    drop(host);
    if handed_off {
        tracing::info!("the successor runs the interface now");
        if args.linger {
            while !terminated.load(Ordering::SeqCst) {
                std::thread::sleep(std::time::Duration::from_millis(200));
            }
        }
    }
    ExitCode::SUCCESS
}

fn nix_is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Option<Args>, String> {
        parse_command_line(args.iter().map(|a| a.to_string()), false, None)
    }

    #[test]
    fn long_options_take_their_value_after_an_equals_sign_too() {
        // As the DaemonSets spell them.
        let a = parse(&[
            "--foreground",
            "--control=/var/run/weft/weft0.ctl",
            "--take-over",
            "--linger",
            "--uapi-dir=/var/run/wireguard",
            "--workers=2",
            "weft0",
        ])
        .unwrap()
        .unwrap();
        assert_eq!(a.control, Some(PathBuf::from("/var/run/weft/weft0.ctl")));
        assert_eq!(a.uapi_dir, Some(PathBuf::from("/var/run/wireguard")));
        assert_eq!(a.workers, Some(2));
        assert!(a.foreground && a.take_over && a.linger);
        assert_eq!(a.ifname, "weft0");
        let b = parse(&["--control", "/c", "--workers", "1", "wg0"])
            .unwrap()
            .unwrap();
        assert_eq!(b.control, Some(PathBuf::from("/c")));
        assert_eq!(b.workers, Some(1));
    }

    #[test]
    fn bad_worker_counts_and_options_are_refused() {
        for bad in ["0", "17", "two", ""] {
            let flag = format!("--workers={bad}");
            let e = parse(&[flag.as_str(), "wg0"]).err().unwrap();
            assert!(e.contains("worker count"), "{e}");
        }
        let e = parse_command_line(["wg0".to_string()], false, Some("x".into()))
            .err()
            .unwrap();
        assert!(e.starts_with("WEFT_WG_WORKERS"), "{e}");
        assert!(parse(&["--frobnicate", "wg0"]).is_err());
        assert!(parse(&["--take-over", "wg0"]).is_err(), "needs --control");
        assert!(parse(&[]).is_err(), "needs an interface");
    }
}
