//! `wg show` for the embedded tunnel: the standard UAPI socket
//! (`/var/run/wireguard/IFNAME.sock`, root only), read-only. The agent owns
//! the configuration, so a `wg set` is refused with EPERM instead of being
//! silently overwritten at the next pass.

use dataplane::uapi::{UapiHandler, UapiListener};
use dataplane::{Device, DeviceInfo, DeviceUpdate};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::{Arc, Weak};

/// Answers `get` from the device while it exists; never holds it alive.
struct View(Weak<Device>);

impl UapiHandler for View {
    fn get(&self) -> DeviceInfo {
        self.0.upgrade().map(|d| d.info()).unwrap_or(DeviceInfo {
            private_key: None,
            public_key: None,
            listen_port: 0,
            fwmark: 0,
            peers: Vec::new(),
        })
    }

    fn set(&self, _update: DeviceUpdate) -> Result<(), i32> {
        tracing::warn!("refused a UAPI set (wg set): weft-agent manages this interface");
        Err(libc::EPERM)
    }
}

/// The socket and its accept thread; both go away on drop.
pub struct ReadOnlyUapi {
    listener: Arc<UapiListener>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ReadOnlyUapi {
    pub fn start(dir: &Path, ifname: &str, device: &Arc<Device>) -> std::io::Result<Self> {
        let listener = Arc::new(UapiListener::bind_in(dir, ifname)?);
        let serving = listener.clone();
        let handler: Arc<dyn UapiHandler> = Arc::new(View(Arc::downgrade(device)));
        let thread = std::thread::Builder::new()
            .name("weft-uapi-accept".into())
            .spawn(move || serving.serve(handler))?;
        Ok(Self {
            listener,
            thread: Some(thread),
        })
    }

    pub fn path(&self) -> &Path {
        self.listener.path()
    }
}

impl Drop for ReadOnlyUapi {
    fn drop(&mut self) {
        // Wakes the blocked accept (it returns EINVAL), so the thread ends;
        // the listener's own drop then removes the socket file.
        // SAFETY: shutdown(2) on a socket this struct keeps open.
        unsafe { libc::shutdown(self.listener.listener().as_raw_fd(), libc::SHUT_RDWR) };
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
