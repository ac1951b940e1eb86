//! Records left out of the mesh, or read without a bad field, become
//! Kubernetes Events on the object at fault. Each problem is recorded once
//! while it lasts; Events that could not be recorded wait for the API.

use super::health::{unreachable, Backoff};
use super::kube::{KubeBackend, API_CALL_TIMEOUT, FIELD_MANAGER};
use crate::mesh::RecordError;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use std::collections::BTreeSet;

/// Problems to record as Events: the ones recorded (so each is recorded
/// once while it lasts) and the ones still waiting for the API.
#[derive(Default)]
pub(super) struct Events {
    pub(super) recorded: BTreeSet<(String, String, String)>,
    pub(super) pending: Vec<RecordError>,
    pub(super) backoff: Backoff,
}

pub(super) fn event_key(e: &RecordError) -> (String, String, String) {
    (e.kind.to_string(), e.name.clone(), e.to_string())
}

impl KubeBackend {
    /// Records the waiting Events, unless the API is away or backing off.
    pub(super) fn record_events(&mut self) {
        if self.events.pending.is_empty() || !self.events.backoff.ready() {
            return;
        }
        if self.shared.health.is_down() {
            return;
        }
        while let Some(e) = self.events.pending.first().cloned() {
            let Some(reference) = self.reference(&e) else {
                // The object is gone: nothing to attach an Event to.
                self.events.pending.remove(0);
                continue;
            };
            let event = Event {
                type_: EventType::Warning,
                reason: match e.kind {
                    "peer" => "InvalidPeer",
                    _ => "InvalidAnnotation",
                }
                .into(),
                note: Some(event_message(&e)),
                action: "Read".into(),
                secondary: None,
            };
            // A recorder of its own per Event: kube's recorder folds Events
            // about one object with one reason into a series and would show
            // only the first problem's message.
            let recorder = Recorder::new(
                self.client.clone(),
                Reporter {
                    controller: FIELD_MANAGER.into(),
                    instance: Some(self.settings.node_name.clone()),
                },
            );
            let published = self.rt.block_on(async {
                tokio::time::timeout(API_CALL_TIMEOUT, recorder.publish(&event, &reference)).await
            });
            match published {
                Ok(Ok(())) => {
                    self.shared.health.succeeded();
                    self.events.backoff.reset();
                    self.events.recorded.insert(event_key(&e));
                    self.events.pending.remove(0);
                }
                Ok(Err(err)) if !unreachable(&err) => {
                    self.shared.health.succeeded();
                    tracing::warn!(
                        "cannot record an Event for {} {}: the API refused: {err}",
                        e.kind,
                        e.name
                    );
                    self.events.recorded.insert(event_key(&e));
                    self.events.pending.remove(0);
                }
                Ok(Err(err)) => {
                    self.shared.health.failed("recording an Event", &err);
                    self.events.backoff.failed();
                    return;
                }
                Err(_) => {
                    self.shared.health.failed(
                        "recording an Event",
                        &format!("no answer within {API_CALL_TIMEOUT:?}"),
                    );
                    self.events.backoff.failed();
                    return;
                }
            }
        }
    }
}

/// A record's problem as the Event's message names it.
pub fn event_message(e: &RecordError) -> String {
    format!("weft: {} {}: {}: {}", e.kind, e.name, e.field, e.reason)
}

// Tested in tests/kube_backend.rs against an in-memory API server.
