//! What the agent says about itself on /healthz and /readyz.
//!
//! - *Live* (`/healthz`, the kubelet's liveness probe): the agent's loop is
//!   turning. A loop stuck for [`STUCK_AFTER`] is dead; the kubelet restarts
//!   the agent, and the tunnel, in its own process, keeps running meanwhile.
//! - *Ready* (`/readyz`, the readiness probe): every check the agent loop
//!   keeps up to date passes: the backend is synced (the API answered
//!   recently), this node is in the mesh and applied, the CNI configuration
//!   is written, forwarding is on. Each failing check says why and what to
//!   do, in the response and (once) in the log.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A loop that has not turned for this long is stuck (a pass over a large
/// mesh takes well under a second; the API calls in it are bounded to 5 s).
pub const STUCK_AFTER: Duration = Duration::from_secs(60);

/// The readiness checks, by name.
pub const CHECKS: [&str; 4] = ["backend", "mesh", "cni", "forwarding"];

#[derive(Debug)]
pub struct Status {
    started: Instant,
    heartbeat: Mutex<Instant>,
    /// Each check's last verdict; a check never set is not passing.
    checks: Mutex<BTreeMap<&'static str, Result<(), String>>>,
    /// The checks that have passed at least once since the start.
    passed: Mutex<BTreeSet<&'static str>>,
}

impl Default for Status {
    fn default() -> Self {
        let now = Instant::now();
        Self {
            started: now,
            heartbeat: Mutex::new(now),
            checks: Mutex::new(BTreeMap::new()),
            passed: Mutex::new(BTreeSet::new()),
        }
    }
}

impl Status {
    /// The agent loop turned.
    pub fn beat(&self) {
        *self.heartbeat.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
    }

    /// Whether the loop turned within [`STUCK_AFTER`]; with why not.
    pub fn live(&self) -> Result<(), String> {
        let age = self
            .heartbeat
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .elapsed();
        if age >= STUCK_AFTER {
            return Err(format!(
                "the agent loop has not turned for {} s",
                age.as_secs()
            ));
        }
        Ok(())
    }

    /// Records a check's verdict; returns true when it changed (so the
    /// caller logs a change once, not every pass).
    pub fn set(&self, check: &'static str, verdict: Result<(), String>) -> bool {
        if verdict.is_ok() {
            self.passed
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(check);
        }
        let mut c = self.checks.lock().unwrap_or_else(|e| e.into_inner());
        c.insert(check, verdict.clone()) != Some(verdict)
    }

    /// Whether `check` has passed at least once since the start.
    pub fn has_passed(&self, check: &str) -> bool {
        self.passed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(check)
    }

    /// Whether every check passes, and a line per check.
    pub fn ready(&self) -> (bool, String) {
        let c = self.checks.lock().unwrap_or_else(|e| e.into_inner());
        let mut ok = true;
        let mut report = String::new();
        for name in CHECKS {
            match c.get(name) {
                Some(Ok(())) => report.push_str(&format!("[+] {name} ok\n")),
                Some(Err(why)) => {
                    ok = false;
                    report.push_str(&format!("[-] {name} failed: {why}\n"));
                }
                None => {
                    ok = false;
                    report.push_str(&format!(
                        "[-] {name} not yet known (the agent started {} s ago)\n",
                        self.started.elapsed().as_secs()
                    ));
                }
            }
        }
        (ok, report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_check_remembers_that_it_passed_once() {
        let s = Status::default();
        s.set("mesh", Err("no endpoint".into()));
        assert!(!s.has_passed("mesh"), "failing since the start");
        s.set("mesh", Ok(()));
        s.set("mesh", Err("left the mesh".into()));
        assert!(s.has_passed("mesh"), "a loss, not a start");
        assert!(!s.has_passed("cni"));
    }

    #[test]
    fn ready_only_when_every_check_passes() {
        let s = Status::default();
        let (ok, report) = s.ready();
        assert!(!ok, "nothing known yet");
        assert!(report.contains("[-] backend not yet known"), "{report}");
        for c in CHECKS {
            assert!(s.set(c, Ok(())));
        }
        assert!(!s.set("mesh", Ok(())), "no change");
        assert!(s.ready().0);
        assert!(s.set("forwarding", Err("IPv4 forwarding is off".into())));
        let (ok, report) = s.ready();
        assert!(!ok);
        assert!(
            report.contains("[-] forwarding failed: IPv4 forwarding is off"),
            "{report}"
        );
        assert!(report.contains("[+] backend ok"), "{report}");
        assert!(s.live().is_ok());
    }
}
