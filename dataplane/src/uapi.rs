//! The WireGuard cross-platform userspace API (UAPI) socket: the server `wg`
//! talks to over `/var/run/wireguard/IFNAME.sock`. The text it speaks is
//! `wgconf::uapi` (re-exported here); this half serves one connection per
//! thread and answers every request with `errno=N`; a broken request never
//! takes the device down.

use crate::config::{DeviceInfo, DeviceUpdate};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, ToSocketAddrs};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use wgconf::uapi::{
    errno_line, format_get, format_weft_get, parse_endpoint, parse_set, UapiError, SOCKET_DIR,
};

/// What a connection may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// `get` only: `set` is refused with EPERM (the agent owns the config).
    ReadOnly,
    /// The standard protocol, `get` and `set`.
    ReadWrite,
    /// Also Weft's own requests (`weft_get`, `weft_stop`, `weft_handoff`):
    /// the agent's control socket.
    Control,
}

/// What the socket server needs from a device.
pub trait UapiHandler: Send + Sync + 'static {
    fn get(&self) -> DeviceInfo;
    /// Applies an update; on failure returns a (positive) errno and changes
    /// nothing.
    fn set(&self, update: DeviceUpdate) -> Result<(), i32>;
    /// Device-level `key=value` lines a `weft_get` reply adds (who serves
    /// the device: pid, binary).
    fn host_lines(&self) -> Vec<String> {
        Vec::new()
    }
    /// `weft_stop=1`: stop the device and the process serving it.
    fn stop(&self) {}
    /// `weft_handoff=1`: hand the running device to the process at the
    /// other end of `stream` (see [`crate::handoff`]).
    fn hand_off(&self, _stream: &UnixStream) -> io::Result<()> {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "this device cannot be handed off",
        ))
    }
}

/// Longest line we accept; the longest legitimate one is a 64-hex-char key.
const MAX_LINE: usize = 512;
/// Upper bound on a `set` request, so a client cannot make us buffer without end.
const MAX_SET_LINES: usize = 1 << 20;

/// Reads one line (without the newline). `Ok(None)` on a clean end of stream.
pub(crate) fn read_line(reader: &mut impl BufRead, line: &mut String) -> io::Result<Option<()>> {
    line.clear();
    let n = reader.take(MAX_LINE as u64 + 1).read_line(line)?;
    if n == 0 {
        return Ok(None);
    }
    if !line.ends_with('\n') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "line too long or unterminated",
        ));
    }
    line.pop();
    Ok(Some(()))
}

/// Reads the blank line that ends a request without a body; false (after
/// answering EPROTO) if something else came.
fn end_of_request(
    reader: &mut impl BufRead,
    writer: &mut impl Write,
    line: &mut String,
) -> io::Result<bool> {
    if read_line(reader, line)?.is_none() || !line.is_empty() {
        writer.write_all(errno_line(libc::EPROTO).as_bytes())?;
        return Ok(false);
    }
    Ok(true)
}

/// Serves requests on one connection until the client closes it.
pub fn serve_connection(
    stream: UnixStream,
    handler: &dyn UapiHandler,
    access: Access,
) -> io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    loop {
        if read_line(&mut reader, &mut line)?.is_none() {
            return Ok(());
        }
        let control = access == Access::Control;
        match line.as_str() {
            "get=1" | "weft_get=1" => {
                let weft = line == "weft_get=1";
                if (weft && !control) || !end_of_request(&mut reader, &mut writer, &mut line)? {
                    if weft && !control {
                        writer.write_all(errno_line(libc::EINVAL).as_bytes())?;
                    }
                    return Ok(());
                }
                let info = handler.get();
                let body = if weft {
                    format_weft_get(&info, &handler.host_lines())
                } else {
                    format_get(&info)
                };
                writer.write_all(body.as_bytes())?;
                writer.write_all(errno_line(0).as_bytes())?;
            }
            "set=1" => {
                let mut lines = Vec::new();
                loop {
                    match read_line(&mut reader, &mut line)? {
                        None => return Ok(()),
                        Some(()) if line.is_empty() => break,
                        Some(()) if lines.len() >= MAX_SET_LINES => {
                            writer.write_all(errno_line(libc::E2BIG).as_bytes())?;
                            return Ok(());
                        }
                        Some(()) => lines.push(line.clone()),
                    }
                }
                let errno = if access == Access::ReadOnly {
                    tracing::warn!(
                        "refused a UAPI set (wg set): weft-agent manages this interface"
                    );
                    libc::EPERM
                } else {
                    match parse_set(lines.iter().map(String::as_str)) {
                        Ok(update) => match handler.set(update) {
                            Ok(()) => 0,
                            Err(errno) => errno,
                        },
                        Err(e) => {
                            tracing::warn!("uapi: rejected set request: {e}");
                            e.errno()
                        }
                    }
                };
                writer.write_all(errno_line(errno).as_bytes())?;
            }
            "weft_stop=1" if control => {
                if !end_of_request(&mut reader, &mut writer, &mut line)? {
                    return Ok(());
                }
                writer.write_all(errno_line(0).as_bytes())?;
                writer.flush()?;
                handler.stop();
                return Ok(());
            }
            "weft_handoff=1" if control => {
                if !end_of_request(&mut reader, &mut writer, &mut line)? {
                    return Ok(());
                }
                // The rest of the conversation belongs to the handoff.
                drop(reader);
                if let Err(e) = handler.hand_off(&writer) {
                    tracing::warn!("handoff refused or failed: {e}");
                    let _ = writer.write_all(errno_line(libc::EIO).as_bytes());
                }
                return Ok(());
            }
            _ => {
                writer.write_all(errno_line(libc::EINVAL).as_bytes())?;
                return Ok(());
            }
        }
        writer.flush()?;
    }
}

/// The listening UAPI socket of one interface. The socket file is removed on
/// drop, unless another process has taken its place since.
pub struct UapiListener {
    listener: UnixListener,
    path: PathBuf,
    /// The socket file's inode, to tell ours from a successor's.
    inode: u64,
    /// Set once a successor has taken over: the file is its to keep or
    /// replace, and we never remove it (a check and then a removal would
    /// race with the successor binding its own socket in between).
    leave_file: std::sync::atomic::AtomicBool,
}

fn inode(path: &Path) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(path).ok().map(|m| m.ino())
}

impl UapiListener {
    /// Binds `/var/run/wireguard/IFNAME.sock`, replacing a stale socket but
    /// refusing to steal one that a live process still answers on.
    pub fn bind(ifname: &str) -> io::Result<Self> {
        Self::bind_in(Path::new(SOCKET_DIR), ifname)
    }

    pub fn bind_in(dir: &Path, ifname: &str) -> io::Result<Self> {
        Self::bind_path(&dir.join(format!("{ifname}.sock")), false)
    }

    /// Binds `path` (root-only). With `replace`, a socket a live process
    /// answers on is replaced too: that process is handing over to us.
    pub fn bind_path(path: &Path, replace: bool) -> io::Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(dir)?;
        }
        if path.exists() {
            if !replace && UnixStream::connect(path).is_ok() {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    format!("{} is in use by a running process", path.display()),
                ));
            }
            std::fs::remove_file(path)?;
        }
        // Create the socket with no access for group and others from the
        // first instant, then make that explicit.
        // SAFETY: umask(2) has no preconditions; the old mask is restored.
        let old = unsafe { libc::umask(0o077) };
        let bound = UnixListener::bind(path);
        // SAFETY: as above.
        unsafe { libc::umask(old) };
        let listener = bound?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        let inode = inode(path).unwrap_or(0);
        Ok(Self {
            listener,
            path: path.to_path_buf(),
            inode,
            leave_file: std::sync::atomic::AtomicBool::new(false),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn listener(&self) -> &UnixListener {
        &self.listener
    }

    /// Accepts connections until the listener is shut down, each served on
    /// its own thread.
    pub fn serve(&self, handler: std::sync::Arc<dyn UapiHandler>, access: Access) {
        for conn in self.listener.incoming() {
            match conn {
                Ok(stream) => {
                    let handler = handler.clone();
                    let spawned =
                        std::thread::Builder::new()
                            .name("weft-uapi".into())
                            .spawn(move || {
                                if let Err(e) = serve_connection(stream, handler.as_ref(), access) {
                                    tracing::debug!("uapi connection ended: {e}");
                                }
                            });
                    if let Err(e) = spawned {
                        tracing::warn!("uapi: cannot start a connection thread: {e}");
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::debug!("uapi: accept stopped: {e}");
                    return;
                }
            }
        }
    }

    /// Serves on a thread of its own; the thread ends when the returned
    /// handle is dropped (which also removes the socket file, if ours).
    pub fn spawn(
        self,
        handler: std::sync::Arc<dyn UapiHandler>,
        access: Access,
    ) -> io::Result<ServingSocket> {
        let listener = std::sync::Arc::new(self);
        let serving = listener.clone();
        let thread = std::thread::Builder::new()
            .name("weft-uapi-accept".into())
            .spawn(move || serving.serve(handler, access))?;
        Ok(ServingSocket {
            listener,
            thread: Some(thread),
        })
    }

    /// Whether the socket file at our path is still ours.
    fn still_ours(&self) -> bool {
        inode(&self.path) == Some(self.inode)
    }
}

impl Drop for UapiListener {
    fn drop(&mut self) {
        if !self.leave_file.load(std::sync::atomic::Ordering::SeqCst) && self.still_ours() {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// A socket served on its own thread; dropping it stops serving.
pub struct ServingSocket {
    listener: std::sync::Arc<UapiListener>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ServingSocket {
    pub fn path(&self) -> &Path {
        self.listener.path()
    }

    /// Leaves the socket file in place when this is dropped: a successor
    /// took the device over and binds (or has bound) its own there.
    pub fn leave_file(&self) {
        self.listener
            .leave_file
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Drop for ServingSocket {
    fn drop(&mut self) {
        // Wakes the blocked accept (it returns EINVAL), so the thread ends;
        // the listener's own drop then removes the socket file.
        // SAFETY: shutdown(2) on a socket the listener keeps open.
        unsafe {
            libc::shutdown(
                std::os::fd::AsRawFd::as_raw_fd(self.listener.listener()),
                libc::SHUT_RDWR,
            )
        };
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Resolves `HOST:PORT` for callers that accept names (the agent's config);
/// the UAPI itself only ever carries literal addresses.
pub fn resolve_endpoint(value: &str) -> io::Result<SocketAddr> {
    value
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("{value} has no address")))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A handler that records what it was asked to do.
    struct Recorder(std::sync::Mutex<Vec<DeviceUpdate>>);
    impl UapiHandler for Recorder {
        fn get(&self) -> DeviceInfo {
            DeviceInfo {
                private_key: None,
                public_key: None,
                listen_port: 7,
                fwmark: 0,
                peers: vec![],
            }
        }
        fn set(&self, update: DeviceUpdate) -> Result<(), i32> {
            self.0.lock().unwrap().push(update);
            Ok(())
        }
    }

    fn talk(handler: &Recorder, request: &[u8]) -> String {
        let (a, mut b) = UnixStream::pair().unwrap();
        b.write_all(request).unwrap();
        b.shutdown(std::net::Shutdown::Write).unwrap();
        serve_connection(a, handler, Access::ReadWrite).ok();
        // The server may close with our junk unread, which resets the
        // connection; what it wrote before that is still the answer.
        let mut out = Vec::new();
        let _ = b.read_to_end(&mut out);
        String::from_utf8_lossy(&out).into_owned()
    }

    #[test]
    fn serves_get_and_set_on_one_connection() {
        let h = Recorder(Default::default());
        let out = talk(&h, b"get=1\n\nset=1\nlisten_port=9\n\nget=1\n\n");
        assert_eq!(
            out,
            "listen_port=7\nerrno=0\n\nerrno=0\n\nlisten_port=7\nerrno=0\n\n"
        );
        assert_eq!(h.0.lock().unwrap()[0].listen_port, Some(9));
    }

    #[test]
    fn hostile_connections_get_errno_not_a_crash() {
        let h = Recorder(Default::default());
        assert_eq!(talk(&h, b"hello\n"), format!("errno=-{}\n\n", libc::EINVAL));
        assert_eq!(
            talk(&h, b"set=1\nlisten_port=abc\n\n"),
            format!("errno=-{}\n\n", libc::EINVAL)
        );
        assert_eq!(
            talk(&h, b"get=1\nx\n"),
            format!("errno=-{}\n\n", libc::EPROTO)
        );
        let mut long = b"set=1\n".to_vec();
        long.extend(std::iter::repeat_n(b'a', 10_000));
        assert_eq!(talk(&h, &long), "");
        // Random bytes, including invalid UTF-8.
        let junk: Vec<u8> = (0..4096u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        let _ = talk(&h, &junk);
        assert!(h.0.lock().unwrap().is_empty());
    }

    #[test]
    fn socket_is_private_and_removed_on_drop() {
        let dir = std::env::temp_dir().join(format!("weft-uapi-test-{}", std::process::id()));
        let l = UapiListener::bind_in(&dir, "wtest0").unwrap();
        let mode = std::fs::metadata(l.path()).unwrap().permissions().mode();
        assert_eq!(
            mode & 0o077,
            0,
            "socket must not be reachable by group/others"
        );
        // A second bind while the first is alive is refused.
        assert!(UapiListener::bind_in(&dir, "wtest0").is_err());
        let path = l.path().to_path_buf();
        drop(l);
        assert!(!path.exists());
        let _ = std::fs::remove_dir(&dir);
    }

    #[test]
    fn a_listener_told_to_leave_its_file_does_not_remove_it() {
        let dir = std::env::temp_dir().join(format!("weft-uapi-leave-{}", std::process::id()));
        let path = dir.join("wtest1.sock");
        let handler: std::sync::Arc<dyn UapiHandler> =
            std::sync::Arc::new(Recorder(std::sync::Mutex::new(Vec::new())));
        let old = UapiListener::bind_path(&path, false)
            .unwrap()
            .spawn(handler.clone(), Access::ReadWrite)
            .unwrap();
        // Handed over: whatever the successor does with the path, the old
        // listener leaves it alone, here even while the file is still its own.
        old.leave_file();
        drop(old);
        assert!(path.exists(), "the file was removed after a handoff");
        // A successor replaces it, and removes it on its own exit.
        let new = UapiListener::bind_path(&path, true).unwrap();
        drop(new);
        assert!(!path.exists());
        let _ = std::fs::remove_dir(&dir);
    }
}
