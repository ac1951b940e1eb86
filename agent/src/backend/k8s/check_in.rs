//! This node's check-ins (Kilo's `last-seen`, renewed every period) and
//! the other nodes' freshness: going stale needs no event, so the nodes are
//! looked at when the first fresh one would expire, not at every turn.

use super::annotations::LAST_SEEN;
use super::health::Backoff;
use super::node::MeshNode;
use crate::mesh::Liveness;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// When this node last checked in, and the back-off of failed attempts.
pub(super) struct CheckIn {
    pub(super) period: Duration,
    pub(super) last: Option<Instant>,
    pub(super) backoff: Backoff,
}

impl CheckIn {
    pub(super) fn due(&self) -> bool {
        self.last.is_none_or(|t| t.elapsed() >= self.period)
    }
}

pub(super) fn last_seen(node: &MeshNode) -> Option<u64> {
    node.metadata
        .annotations
        .as_ref()?
        .get(LAST_SEEN)?
        .trim()
        .parse()
        .ok()
}

/// Which nodes were fresh at the last `observe`, and when the first fresh
/// one expires without a check-in.
#[derive(Default)]
pub(super) struct Freshness {
    pub(super) fresh: HashMap<String, bool>,
    /// Unix seconds; `None` when no node is fresh.
    pub(super) next_expiry: Option<u64>,
}

impl Freshness {
    pub(super) fn expired(&self, now: u64) -> bool {
        self.next_expiry.is_some_and(|t| now >= t)
    }
}

/// When the first of the fresh check-ins `last_seen` turns stale, on
/// `clock`, if no node checks in again (a clock stopped by an outage only
/// makes this early, never late: then the nodes are looked at again).
pub(super) fn next_expiry(last_seen: impl Iterator<Item = u64>, clock: &Liveness) -> Option<u64> {
    last_seen
        .filter(|t| !clock.is_stale(*t))
        .map(|t| clock.now() + clock.stale_after().saturating_sub(clock.age(t)))
        .min()
}

impl Freshness {
    /// Whether some node crossed the staleness line since the last
    /// `observe`, judged at `now` by `clock` over `nodes` (both fetched only
    /// when needed: most turns end at the first check). Going stale needs no event, so the
    /// nodes are looked at when the first fresh one would expire (about
    /// once per check-in period, not per event); coming back is an event
    /// (see `mirror`).
    pub(super) fn moved(
        &mut self,
        now: u64,
        clock: impl FnOnce() -> Liveness,
        nodes: impl FnOnce() -> Vec<std::sync::Arc<MeshNode>>,
    ) -> bool {
        if !self.expired(now) {
            return false;
        }
        let clock = clock();
        let nodes = nodes();
        let moved = nodes.iter().any(|n| {
            let fresh = last_seen(n).is_some_and(|t| !clock.is_stale(t));
            let name = n.metadata.name.as_deref().unwrap_or_default();
            self.fresh.get(name) != Some(&fresh)
        });
        if !moved {
            // Nobody expired: they checked in since. Look again when the
            // next one would.
            self.next_expiry = next_expiry(nodes.iter().filter_map(|n| last_seen(n)), &clock);
        }
        moved
    }
}
