//! `weft-wg`: a userspace WireGuard interface with wireguard-go's command-line
//! contract, so `wg`, `wg-quick` (`WG_QUICK_USERSPACE_IMPLEMENTATION=weft-wg`)
//! and scripts written for wireguard-go work unchanged.

use dataplane::signals::TerminationSignals;
use dataplane::uapi::{UapiHandler, UapiListener};
use dataplane::{Device, DeviceOptions};
use std::io::{Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::process::ExitCode;
use std::sync::Arc;

const USAGE: &str = "\
Usage: weft-wg [-f|--foreground] INTERFACE-NAME

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
  -h, --help         show this help
  --version          show the version

Environment:
  WG_PROCESS_FOREGROUND=1   same as --foreground
  WEFT_LOG=LEVEL            log filter: error, warn, info (default), debug, trace;
                            in the background, logs are kept only when it is set
  WEFT_WG_NO_OFFLOAD=1      disable TUN segmentation offload (for comparison)
";

struct Args {
    foreground: bool,
    ifname: String,
}

fn parse_args() -> Result<Option<Args>, String> {
    let mut foreground = std::env::var("WG_PROCESS_FOREGROUND").as_deref() == Ok("1");
    let mut ifname = None;
    for arg in std::env::args().skip(1) {
        match arg.as_str() {
            "-f" | "--foreground" => foreground = true,
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
    Ok(Some(Args { foreground, ifname }))
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("WEFT_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
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

fn start(args: &Args) -> Result<(Arc<Device>, UapiListener), String> {
    let mut options = DeviceOptions::new(&args.ifname);
    if std::env::var("WEFT_WG_NO_OFFLOAD").as_deref() == Ok("1") {
        options.offload = false;
    }
    let device = Device::create(&options).map_err(|e| e.to_string())?;
    let uapi = UapiListener::bind(&args.ifname)
        .map_err(|e| format!("cannot create the UAPI socket for {}: {e}", args.ifname))?;
    Ok((Arc::new(device), uapi))
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
    let (device, uapi) = match start(&args) {
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
    tracing::info!(interface = %args.ifname, socket = %uapi.path().display(), "running");

    let stopper = device.stopper();
    signals.on_arrival(move |sig| stopper.stop(&format!("received signal {sig}")));
    let handler: Arc<dyn UapiHandler> = device.clone();
    let uapi = Arc::new(uapi);
    let serving = uapi.clone();
    let _ = std::thread::Builder::new()
        .name("weft-uapi-accept".into())
        .spawn(move || serving.serve(handler));

    let reason = device.wait();
    tracing::info!("shutting down: {reason}");
    // Removing the socket first tells `wg` the interface is gone; dropping the
    // device closes the TUN, which deletes the interface.
    let _ = std::fs::remove_file(uapi.path());
    drop(device);
    ExitCode::SUCCESS
}

fn nix_is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}
