//! Records left out of the mesh, or read without a bad field, become
//! Kubernetes Events on the object at fault. Each problem is recorded once
//! while it lasts; Events that could not be recorded wait for the API.

use super::health::{unreachable, ApiHealth, Backoff};
use super::{API_CALL_TIMEOUT, FIELD_MANAGER};
use crate::mesh::RecordError;
use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::Client;
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

impl Events {
    /// Records the waiting Events as `node_name`'s agent, unless the API is
    /// away or backing off; `reference` finds the object an Event is about
    /// (none when it is gone).
    pub(super) fn record(
        &mut self,
        rt: &tokio::runtime::Runtime,
        client: &Client,
        health: &ApiHealth,
        node_name: &str,
        reference: impl Fn(&RecordError) -> Option<ObjectReference>,
    ) {
        if self.pending.is_empty() || !self.backoff.ready() {
            return;
        }
        if health.is_down() {
            return;
        }
        while let Some(e) = self.pending.first().cloned() {
            let Some(reference) = reference(&e) else {
                // The object is gone: nothing to attach an Event to.
                self.pending.remove(0);
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
                client.clone(),
                Reporter {
                    controller: FIELD_MANAGER.into(),
                    instance: Some(node_name.to_string()),
                },
            );
            let published = rt.block_on(async {
                tokio::time::timeout(API_CALL_TIMEOUT, recorder.publish(&event, &reference)).await
            });
            match published {
                Ok(Ok(())) => {
                    health.succeeded();
                    self.backoff.reset();
                    self.recorded.insert(event_key(&e));
                    self.pending.remove(0);
                }
                Ok(Err(err)) if !unreachable(&err) => {
                    health.succeeded();
                    tracing::warn!(
                        "cannot record an Event for {} {}: the API refused: {err}",
                        e.kind,
                        e.name
                    );
                    self.recorded.insert(event_key(&e));
                    self.pending.remove(0);
                }
                Ok(Err(err)) => {
                    health.failed("recording an Event", &err);
                    self.backoff.failed();
                    return;
                }
                Err(_) => {
                    health.failed(
                        "recording an Event",
                        &format!("no answer within {API_CALL_TIMEOUT:?}"),
                    );
                    self.backoff.failed();
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
