//! Termination signals for the daemons (`weft-wg`, `weft-agent`, `weftctl
//! demo`): blocked in every thread, awaited by one, so shutdown runs as
//! ordinary code (removing sockets, interfaces, namespaces) instead of in a
//! signal handler.

/// SIGINT, SIGTERM and SIGHUP, blocked.
pub struct TerminationSignals(libc::sigset_t);

impl TerminationSignals {
    /// Blocks the signals in the calling thread and so in every thread it
    /// starts afterwards: call it before starting any.
    pub fn block() -> Self {
        // SAFETY: sigset manipulation on a local, then pthread_sigmask on it.
        let set = unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            for s in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
                libc::sigaddset(&mut set, s);
            }
            libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
            set
        };
        Self(set)
    }

    /// Runs `f` with the signal's number, on a thread of its own, when the
    /// first of them arrives.
    pub fn on_arrival(self, f: impl FnOnce(i32) + Send + 'static) {
        let set = self.0;
        let spawned = std::thread::Builder::new()
            .name("signals".into())
            .spawn(move || {
                let mut sig = 0;
                // SAFETY: waits on the set blocked in `block`.
                unsafe { libc::sigwait(&set, &mut sig) };
                f(sig);
            });
        if let Err(e) = spawned {
            tracing::warn!("cannot watch for termination signals: {e}");
        }
    }
}
