//! The node's WireGuard tunnel runs in a process of its own (`weft-wg
//! --control`), so that restarting or upgrading the agent never touches the
//! data path: a new agent finds the running tunnel, reads its configuration
//! and applies only what differs (after a plain restart, nothing). The agent
//! talks to it over its control socket (the UAPI protocol plus Weft's own
//! requests); the standard socket that process serves is read-only, so
//! `wg show` works and `wg set` cannot fight the agent.
//!
//! Who starts that process:
//! - [`Launch::Spawn`] (a node run by hand, the demo): the agent starts it
//!   when the node first leads and leaves it running when the agent stops.
//!   When it finds one started from another binary (an upgrade), it starts
//!   the new one with `--take-over`: the new process joins the running
//!   interface and takes its socket, and traffic pauses for one handshake.
//! - [`Launch::External`] (Kubernetes): a container of the agent's pod runs
//!   it; the agent waits for its socket.

use super::ReconcileError;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use wgconf::control::{identity_of, ControlClient, HostInfo};
use wgconf::{DeviceInfo, DeviceUpdate, PeerUpdate};

/// How long a started tunnel process may take to answer on its socket.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// Who starts the tunnel's process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Launch {
    /// The agent, from this executable.
    Spawn { binary: PathBuf },
    /// Someone else (a container of the pod); the agent only connects.
    External,
}

impl Launch {
    /// `weft-wg` beside the running executable, else on the PATH.
    pub fn spawn_default() -> Self {
        let beside = std::env::current_exe()
            .ok()
            .and_then(|e| e.parent().map(|d| d.join("weft-wg")))
            .filter(|p| p.is_file());
        Launch::Spawn {
            binary: beside.unwrap_or_else(|| PathBuf::from("weft-wg")),
        }
    }
}

/// Where and how the tunnel runs.
#[derive(Clone, Debug)]
pub struct TunnelSettings {
    pub interface: String,
    /// The control socket (root only).
    pub control: PathBuf,
    /// Where the standard UAPI socket goes (`wg show`); `None` for none.
    pub uapi_dir: Option<PathBuf>,
    pub launch: Launch,
}

pub struct Tunnel {
    settings: TunnelSettings,
    client: ControlClient,
    /// What the running process said last: the configuration for the next
    /// diff, counters for the metrics.
    last: Option<(DeviceInfo, HostInfo)>,
    /// Whether the running process's binary was compared with ours (once
    /// per agent run: that is when an upgrade shows).
    binary_checked: bool,
}

fn tunnel_err(e: impl std::fmt::Display) -> ReconcileError {
    ReconcileError::Tunnel(e.to_string())
}

impl Tunnel {
    pub fn new(settings: TunnelSettings) -> Self {
        let client = ControlClient::new(&settings.control);
        Self {
            settings,
            client,
            last: None,
            binary_checked: false,
        }
    }

    pub fn control_path(&self) -> &Path {
        &self.settings.control
    }

    /// The configuration and counters read last, if the tunnel runs.
    pub fn last_info(&self) -> Option<&DeviceInfo> {
        self.last.as_ref().map(|(i, _)| i)
    }

    /// Reads the running tunnel's configuration, starting (or upgrading)
    /// its process first where the agent launches it.
    pub fn ensure(&mut self) -> Result<&DeviceInfo, ReconcileError> {
        let read = self.client.get();
        let (info, host) = match (read, &self.settings.launch) {
            (Ok(got), Launch::Spawn { binary }) if !self.binary_checked => {
                self.binary_checked = true;
                let ours = identity_of(binary);
                if got.1.binary.as_deref().is_some_and(|b| b != ours) {
                    tracing::info!(
                        running = ?got.1.binary,
                        ours = %ours,
                        "the tunnel runs another weft-wg binary; handing it to {}",
                        binary.display()
                    );
                    self.spawn(true)?;
                    self.client.get().map_err(tunnel_err)?
                } else {
                    got
                }
            }
            (Ok(got), _) => got,
            (Err(e), Launch::External) => {
                return Err(ReconcileError::Tunnel(format!(
                    "{e} (is the tunnel container running?)"
                )))
            }
            (Err(_), Launch::Spawn { .. }) => {
                self.binary_checked = true;
                self.spawn(false)?;
                self.client.get().map_err(tunnel_err)?
            }
        };
        Ok(&self.last.insert((info, host)).0)
    }

    /// Starts `weft-wg` for our interface, detached from the agent so that
    /// it outlives it, and waits until it answers.
    fn spawn(&self, take_over: bool) -> Result<(), ReconcileError> {
        let Launch::Spawn { binary } = &self.settings.launch else {
            return Ok(());
        };
        let mut cmd = Command::new(binary);
        cmd.arg("--foreground")
            .arg("--control")
            .arg(&self.settings.control);
        match &self.settings.uapi_dir {
            Some(dir) => cmd.arg("--uapi-dir").arg(dir),
            None => cmd.arg("--no-uapi"),
        };
        if take_over {
            cmd.arg("--take-over");
        }
        cmd.arg(&self.settings.interface)
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        // Its own session: a signal to the agent's process group (Ctrl-C,
        // a service manager stopping the agent) must not reach the tunnel.
        // SAFETY: setsid(2) is async-signal-safe and touches no memory.
        unsafe {
            use std::os::unix::process::CommandExt;
            cmd.pre_exec(|| {
                libc::setsid();
                Ok(())
            });
        }
        let mut child = cmd.spawn().map_err(|e| {
            ReconcileError::Tunnel(format!("cannot start {}: {e}", binary.display()))
        })?;
        let started = Instant::now();
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(ReconcileError::Tunnel(format!(
                    "{} exited ({status}) before its socket came up; see its log above",
                    binary.display()
                )));
            }
            if let Ok((_, host)) = self.client.get() {
                // A successor answers with its own pid once it took over.
                if !take_over || host.pid == Some(child.id()) {
                    break;
                }
            }
            if started.elapsed() > START_TIMEOUT {
                let _ = child.kill();
                let _ = child.wait();
                return Err(ReconcileError::Tunnel(format!(
                    "{} did not answer on {} within {START_TIMEOUT:?}",
                    binary.display(),
                    self.settings.control.display()
                )));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        tracing::info!(
            interface = %self.settings.interface,
            pid = child.id(),
            control = %self.settings.control.display(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "{} the tunnel's process",
            if take_over { "upgraded" } else { "started" }
        );
        // Reaped if it exits while the agent runs; adopted by init after.
        let _ = std::thread::Builder::new()
            .name("tunnel-reaper".into())
            .spawn(move || {
                let _ = child.wait();
            });
        Ok(())
    }

    /// Applies `update` to the running tunnel.
    pub fn apply(&mut self, update: &DeviceUpdate) -> Result<(), ReconcileError> {
        self.client.set(update).map_err(tunnel_err)?;
        // The next diff starts from what the tunnel says now.
        self.last = None;
        Ok(())
    }

    /// This node no longer leads: a tunnel the agent launched is stopped
    /// (true: its interface goes with it); one run by someone else keeps
    /// running with no peers (false: its interface stays).
    pub fn retire(&mut self) -> Result<bool, ReconcileError> {
        if !self.client.is_alive() {
            self.last = None;
            return Ok(false);
        }
        let stopped = match self.settings.launch {
            Launch::Spawn { .. } => {
                self.client.stop().map_err(tunnel_err)?;
                tracing::info!("stopped the tunnel: this node no longer leads its segment");
                true
            }
            Launch::External => {
                let (info, _) = self.client.get().map_err(tunnel_err)?;
                if !info.peers.is_empty() {
                    let update = DeviceUpdate {
                        peers: info
                            .peers
                            .iter()
                            .map(|p| {
                                let mut u = PeerUpdate::new(p.public_key);
                                u.remove = true;
                                u
                            })
                            .collect(),
                        ..Default::default()
                    };
                    self.client.set(&update).map_err(tunnel_err)?;
                }
                false
            }
        };
        self.last = None;
        Ok(stopped)
    }

    /// Whether a tunnel process answers.
    pub fn is_running(&self) -> bool {
        self.client.is_alive()
    }

    /// Stops the tunnel's process (clean-up), whoever started it.
    pub fn stop(&mut self) -> Result<(), ReconcileError> {
        self.last = None;
        if self.client.is_alive() {
            self.client.stop().map_err(tunnel_err)?;
        }
        Ok(())
    }
}
