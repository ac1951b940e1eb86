//! The kernel's link notifications (rtnetlink's link group), so the TUN's
//! MTU is read again the moment any link changes. Between a change and the
//! next look, the padding of data messages (up to the next multiple of 16,
//! capped at the MTU as last read) could take a full-sized packet past the
//! new MTU: with the tunnel exactly filling its underlay (an agent's
//! `--mtu auto`), such a packet no longer fits and is dropped.
//!
//! Nothing in a notification is parsed: any message means "look again",
//! and the MTU is asked of the TUN itself.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// A netlink socket subscribed to link changes, non-blocking.
pub(crate) struct LinkEvents(OwnedFd);

impl LinkEvents {
    pub(crate) fn open() -> io::Result<Self> {
        // SAFETY: plain socket(2); the descriptor is owned below.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
                libc::NETLINK_ROUTE,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a new descriptor nobody else owns.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: sockaddr_nl is plain data; zeroed is its unbound state.
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        addr.nl_groups = libc::RTMGRP_LINK as u32;
        // SAFETY: bind(2) with a sockaddr_nl of the size given.
        let rc = unsafe {
            libc::bind(
                owned.as_raw_fd(),
                (&addr as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Self(owned))
    }

    pub(crate) fn raw(&self) -> RawFd {
        self.0.as_raw_fd()
    }

    /// Reads every queued notification; whether there was any (a lost
    /// one, the socket's buffer having overflowed, counts too).
    pub(crate) fn drain(&self) -> bool {
        let mut buf = [0u8; 8192];
        let mut any = false;
        loop {
            // SAFETY: recv(2) into a buffer of the length given.
            let n = unsafe { libc::recv(self.raw(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n > 0 {
                any = true;
                continue;
            }
            if n < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::ENOBUFS) {
                any = true;
                continue;
            }
            return any;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_socket_has_nothing_to_drain() {
        // Opening needs no privilege; without link changes nothing arrives
        // (the machine's links are not touched here).
        let events = LinkEvents::open().expect("a netlink socket");
        assert!(events.raw() >= 0);
        let _ = events.drain();
        assert!(!events.drain(), "drained: nothing queued");
    }
}
