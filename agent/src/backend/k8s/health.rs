//! Whether the Kubernetes API can be reached, as every caller of it sees
//! it: the watches, the check-ins, the Events. One place decides when the
//! API is "away" and "back", logs it once each way (and at most once per
//! back-off step between), and remembers the outages so that silence during
//! them is not held against other nodes ([`crate::mesh::OutageLog`]).
//!
//! Each caller retries on its own [`Backoff`] (0.5 s doubling to 30 s, with
//! jitter, so a thousand agents do not return in step); a cheap probe of
//! the API while it is away ([`ApiHealth::wait_back`]) cuts every wait short
//! once it answers again.

use crate::backend::unix_now;
use crate::mesh::{Limits, Liveness, OutageLog};
use kube::runtime::watcher;
use std::fmt::Display;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The first retry after a failure.
pub const BACKOFF_FIRST: Duration = Duration::from_millis(500);
/// The longest wait between two tries.
pub const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// A random factor in [0.8, 1.2): spreads the retries of many agents.
fn jitter() -> f64 {
    let mut b = [0u8; 2];
    // Without randomness the factor is 1: still correct, only in step.
    if getrandom::fill(&mut b).is_err() {
        return 1.0;
    }
    0.8 + f64::from(u16::from_le_bytes(b)) / f64::from(u16::MAX) * 0.4
}

/// Exponential back-off with jitter for one caller.
#[derive(Debug, Clone)]
pub struct Backoff {
    step: Duration,
    /// When the next try may go out; `None` when there is no failure to
    /// wait out.
    next: Option<Instant>,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            step: BACKOFF_FIRST,
            next: None,
        }
    }
}

impl Backoff {
    /// Records a failure; returns how long to wait before the next try.
    pub fn failed(&mut self) -> Duration {
        let wait = self.step.mul_f64(jitter()).min(BACKOFF_MAX);
        self.step = (self.step * 2).min(BACKOFF_MAX);
        self.next = Some(Instant::now() + wait);
        wait
    }

    /// Records a success: the next failure starts from the first step.
    pub fn reset(&mut self) {
        self.step = BACKOFF_FIRST;
        self.next = None;
    }

    /// Whether a try may go out now.
    pub fn ready(&self) -> bool {
        self.next.is_none_or(|t| Instant::now() >= t)
    }

    /// Lets the next try go out at once (the API came back).
    pub fn allow_now(&mut self) {
        self.next = None;
    }
}

struct Down {
    since: Instant,
    /// What the last failed call said.
    last_error: String,
    /// When the next "still unreachable" line may be logged, and the step
    /// after that one.
    next_log: Instant,
    log_step: Duration,
}

#[derive(Default)]
struct State {
    down: Option<Down>,
    outages: OutageLog,
    /// The API came back and the backend has not acted on it yet.
    came_back: bool,
}

/// The API's reachability as this agent sees it.
pub struct ApiHealth {
    /// The API's address, for logs.
    server: String,
    /// What to tell the operator when the API cannot be reached.
    hint: String,
    state: Mutex<State>,
    back: tokio::sync::Notify,
}

impl ApiHealth {
    pub fn new(server: impl Into<String>, hint: impl Into<String>) -> Self {
        Self {
            server: server.into(),
            hint: hint.into(),
            state: Mutex::new(State::default()),
            back: tokio::sync::Notify::new(),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock leaves consistent data behind (all
        // updates are single assignments), so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The API answered (any answer that proves it is there).
    pub fn succeeded(&self) {
        let mut st = self.state();
        if let Some(down) = st.down.take() {
            st.outages.back(unix_now());
            st.came_back = true;
            drop(st);
            tracing::info!(
                server = %self.server,
                "the Kubernetes API is back after {:.1} s; checking in",
                down.since.elapsed().as_secs_f64()
            );
            self.back.notify_waiters();
        }
    }

    /// A call could not reach the API (`what` says which, for the log).
    pub fn failed(&self, what: &str, error: &dyn Display) {
        let mut st = self.state();
        let now = Instant::now();
        match &mut st.down {
            None => {
                st.down = Some(Down {
                    since: now,
                    last_error: format!("{what}: {error}"),
                    next_log: now + BACKOFF_FIRST,
                    log_step: BACKOFF_FIRST * 2,
                });
                st.outages.lost(unix_now());
                drop(st);
                tracing::warn!(
                    server = %self.server,
                    "the Kubernetes API is unreachable ({what}: {error}); keeping the mesh as it \
                     is and retrying with back-off up to {} s. {}",
                    BACKOFF_MAX.as_secs(),
                    self.hint
                );
            }
            Some(down) if now >= down.next_log => {
                down.last_error = format!("{what}: {error}");
                let elapsed = now.duration_since(down.since).as_secs_f64();
                down.next_log = now + down.log_step;
                down.log_step = (down.log_step * 2).min(BACKOFF_MAX);
                drop(st);
                tracing::warn!(
                    server = %self.server,
                    "the Kubernetes API is still unreachable after {elapsed:.0} s ({what}: {error})"
                );
            }
            Some(down) => down.last_error = format!("{what}: {error}"),
        }
    }

    /// How long the API has been away, and what the last try said.
    pub fn outage(&self) -> Option<(Duration, String)> {
        self.state()
            .down
            .as_ref()
            .map(|d| (d.since.elapsed(), d.last_error.clone()))
    }

    /// The API's address, as configured.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// What to tell the operator when the API cannot be reached.
    pub fn hint(&self) -> &str {
        &self.hint
    }

    pub fn is_down(&self) -> bool {
        self.state().down.is_some()
    }

    /// Whether the API came back since the last call (once per return).
    pub fn take_came_back(&self) -> bool {
        std::mem::take(&mut self.state().came_back)
    }

    /// The clock node ages are judged by (see [`OutageLog`]).
    pub fn liveness(&self, now: u64, limits: Limits) -> Liveness {
        self.state().outages.liveness_under(now, limits)
    }

    /// Resolves when the API is next seen back.
    pub async fn wait_back(&self) {
        let notified = self.back.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if !self.is_down() {
            return;
        }
        notified.await;
    }

    /// Resolves at the API's next return (not at once when it is up). A
    /// return between two calls is not lost: [`ApiHealth::take_came_back`]
    /// still reports it.
    pub async fn next_return(&self) {
        self.back.notified().await;
    }

    /// Waits `delay`, or less if the API comes back first.
    pub async fn wait(&self, delay: Duration) {
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = self.wait_back() => {}
        }
    }
}

/// Whether an error means the API could not be reached (as opposed to an
/// answer, such as "forbidden", which proves it is there).
pub fn unreachable(e: &kube::Error) -> bool {
    match e {
        kube::Error::Api(status) => status.code >= 500 || status.code == 429,
        kube::Error::SerdeError(_) | kube::Error::BuildRequest(_) => false,
        _ => true,
    }
}

/// The API's answer inside a watch error, if there was one.
pub fn watch_answer(e: &watcher::Error) -> Option<&kube::Error> {
    match e {
        watcher::Error::InitialListFailed(e)
        | watcher::Error::WatchStartFailed(e)
        | watcher::Error::WatchFailed(e) => Some(e),
        watcher::Error::WatchError(_) | watcher::Error::NoResourceVersion => None,
    }
}

pub fn watch_unreachable(e: &watcher::Error) -> bool {
    match e {
        watcher::Error::WatchError(s) => s.code >= 500 || s.code == 429,
        watcher::Error::NoResourceVersion => false,
        _ => watch_answer(e).is_some_and(unreachable),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_up_to_the_cap_and_resets() {
        let mut b = Backoff::default();
        assert!(b.ready());
        let mut waits = Vec::new();
        for _ in 0..10 {
            waits.push(b.failed());
        }
        assert!(!b.ready());
        let first = waits[0].as_secs_f64();
        assert!((0.4..=0.6).contains(&first), "{first}");
        let second = waits[1].as_secs_f64();
        assert!((0.8..=1.2).contains(&second), "{second}");
        assert!(waits.iter().all(|w| *w <= BACKOFF_MAX));
        assert!(waits[9] >= Duration::from_secs(24), "{:?}", waits[9]);
        b.reset();
        assert!(b.ready());
        assert!(b.failed() <= Duration::from_millis(600));
        b.allow_now();
        assert!(b.ready());
    }

    #[test]
    fn an_outage_is_remembered_and_reported_once_back() {
        let h = ApiHealth::new("https://10.0.0.1:6443", "");
        assert!(!h.is_down());
        h.succeeded();
        assert!(!h.take_came_back(), "never away");
        h.failed("watching nodes", &"connection refused");
        h.failed("patching node a", &"connection refused");
        assert!(h.is_down());
        // While away, no time counts against a node fresh before it.
        let now = unix_now();
        assert_eq!(h.liveness(now + 100, Limits::default()).age(now), 0);
        h.succeeded();
        assert!(!h.is_down());
        assert!(h.take_came_back());
        assert!(!h.take_came_back(), "once per return");
    }

    #[test]
    fn waiting_ends_when_the_api_returns() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let h = std::sync::Arc::new(ApiHealth::new("x", ""));
        h.failed("probe", &"refused");
        let waiter = h.clone();
        let started = Instant::now();
        rt.block_on(async move {
            let t = tokio::spawn(async move { waiter.wait(Duration::from_secs(30)).await });
            tokio::time::sleep(Duration::from_millis(50)).await;
            h.succeeded();
            t.await.unwrap();
        });
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}
