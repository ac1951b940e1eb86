//! An in-memory Kubernetes API server for Nodes, Kilo Peers and Events,
//! served to `kube` clients through tower-test mock services. It keeps a
//! resourceVersion, answers lists, answers watches with the events after the
//! asked version (holding the request while there are none, as a quiet API
//! server does), applies JSON merge patches to Nodes and records every
//! request body, so tests can assert what the agent sent.

#![allow(dead_code)]

use http::{Method, Request, Response, StatusCode};
use kube::client::Body;
use kube::Client;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;
type Responder = tower_test::mock::SendResponse<Response<Body>>;

/// A request as the API server received it.
#[derive(Clone, Debug)]
pub struct Received {
    pub method: Method,
    pub path: String,
    pub content_type: String,
    pub body: Value,
}

#[derive(Default)]
struct State {
    version: u64,
    /// kind ("nodes" | "peers") -> name -> object.
    objects: BTreeMap<&'static str, BTreeMap<String, Value>>,
    /// (version, kind, watch event).
    log: Vec<(u64, &'static str, Value)>,
    received: Vec<Received>,
    /// Fail PATCHes of nodes with this status, to test error handling.
    fail_patches: Option<u16>,
    /// Never answer PATCHes of nodes (an API server that hangs).
    hang_patches: bool,
}

#[derive(Clone, Default)]
pub struct FakeApi {
    state: Arc<Mutex<State>>,
    /// Wakes the tower-test servers and the HTTP watch threads.
    changed: Arc<Notify>,
    changed_sync: Arc<Condvar>,
}

/// What a request gets: an answer now, or a watch to answer once there are
/// events after the given version.
enum Reply {
    Now(StatusCode, Value),
    Watch(&'static str, u64),
    /// Never answered.
    Hang,
}

fn status(code: StatusCode, message: String) -> Reply {
    Reply::Now(
        code,
        json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
               "message": message, "code": code.as_u16()}),
    )
}

fn kind_of(path: &str) -> Option<&'static str> {
    if path.starts_with("/api/v1/nodes") {
        Some("nodes")
    } else if path.starts_with("/apis/kilo.squat.ai/v1alpha1/peers") {
        Some("peers")
    } else {
        None
    }
}

fn query_param<'a>(query: &'a str, key: &str) -> Option<&'a str> {
    query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v)
}

/// RFC 7386 JSON merge patch.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    match (target.as_object_mut(), patch.as_object()) {
        (Some(t), Some(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        (_, Some(_)) => {
            *target = json!({});
            merge_patch(target, patch);
        }
        _ => *target = patch.clone(),
    }
}

fn response(status: StatusCode, body: Value) -> Response<Body> {
    let mut r = Response::new(Body::from(body.to_string().into_bytes()));
    *r.status_mut() = status;
    r
}

impl FakeApi {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds or replaces an object, as another client would.
    pub fn put(&self, kind: &'static str, mut object: Value) {
        let mut s = self.state.lock().unwrap();
        s.version += 1;
        let v = s.version;
        object["metadata"]["resourceVersion"] = json!(v.to_string());
        let name = object["metadata"]["name"].as_str().unwrap().to_string();
        let existed = s
            .objects
            .entry(kind)
            .or_default()
            .insert(name, object.clone())
            .is_some();
        let t = if existed { "MODIFIED" } else { "ADDED" };
        s.log.push((v, kind, json!({"type": t, "object": object})));
        drop(s);
        self.changed.notify_waiters();
        self.changed_sync.notify_all();
    }

    /// Removes an object, as `kubectl delete` would.
    pub fn delete(&self, kind: &'static str, name: &str) {
        let mut s = self.state.lock().unwrap();
        s.version += 1;
        let v = s.version;
        if let Some(mut o) = s.objects.entry(kind).or_default().remove(name) {
            o["metadata"]["resourceVersion"] = json!(v.to_string());
            s.log
                .push((v, kind, json!({"type": "DELETED", "object": o})));
        }
        drop(s);
        self.changed.notify_waiters();
        self.changed_sync.notify_all();
    }

    pub fn get(&self, kind: &'static str, name: &str) -> Option<Value> {
        self.state
            .lock()
            .unwrap()
            .objects
            .get(kind)?
            .get(name)
            .cloned()
    }

    pub fn received(&self) -> Vec<Received> {
        self.state.lock().unwrap().received.clone()
    }

    pub fn hang_patches(&self, hang: bool) {
        self.state.lock().unwrap().hang_patches = hang;
    }

    pub fn fail_patches(&self, status: Option<u16>) {
        self.state.lock().unwrap().fail_patches = status;
    }

    /// A client whose requests this API server answers (on `rt`, which must
    /// outlive the client).
    pub fn client(&self, rt: &tokio::runtime::Runtime) -> Client {
        let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        rt.spawn(self.clone().serve(handle));
        rt.block_on(async { Client::new(service, "default") })
    }

    async fn serve(self, mut handle: Handle) {
        let mut held: Vec<(&'static str, u64, Responder)> = Vec::new();
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            // Answer the held watches that have something new.
            let mut still = Vec::new();
            for (kind, since, send) in held.drain(..) {
                match self.events_after(kind, since) {
                    Some(body) => send.send_response(Response::new(Body::from(body.into_bytes()))),
                    None => still.push((kind, since, send)),
                }
            }
            held = still;
            tokio::select! {
                req = handle.next_request() => {
                    let Some((req, send)) = req else { return };
                    if let Some(w) = self.handle(req, send).await {
                        held.push(w);
                    }
                }
                _ = notified => {}
            }
        }
    }

    fn events_after(&self, kind: &'static str, since: u64) -> Option<String> {
        let s = self.state.lock().unwrap();
        let lines: Vec<String> = s
            .log
            .iter()
            .filter(|(v, k, _)| *k == kind && *v > since)
            .map(|(_, _, e)| format!("{e}\n"))
            .collect();
        (!lines.is_empty()).then(|| lines.concat())
    }

    /// Answers one request, or hands back a watch to hold.
    async fn handle(
        &self,
        req: Request<Body>,
        send: Responder,
    ) -> Option<(&'static str, u64, Responder)> {
        let method = req.method().clone();
        let path = req.uri().path().to_string();
        let query = req.uri().query().unwrap_or("").to_string();
        let content_type = req
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let bytes = req.into_body().collect_bytes().await.unwrap_or_default();
        match self.respond(method, &path, &query, content_type, &bytes) {
            Reply::Now(code, body) => send.send_response(response(code, body)),
            // Held forever: parked as a watch of nothing.
            Reply::Hang => return Some(("hung", u64::MAX, send)),
            Reply::Watch(kind, since) => match self.events_after(kind, since) {
                Some(b) => send.send_response(Response::new(Body::from(b.into_bytes()))),
                None => return Some((kind, since, send)),
            },
        }
        None
    }

    fn respond(
        &self,
        method: Method,
        path: &str,
        query: &str,
        content_type: String,
        bytes: &[u8],
    ) -> Reply {
        let body: Value = serde_json::from_slice(bytes).unwrap_or(Value::Null);
        self.state.lock().unwrap().received.push(Received {
            method: method.clone(),
            path: path.to_string(),
            content_type,
            body: body.clone(),
        });
        let kind = kind_of(path);
        match (&method, kind) {
            (&Method::GET, Some(kind)) if query_param(query, "watch") == Some("true") => {
                let since = query_param(query, "resourceVersion")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                Reply::Watch(kind, since)
            }
            (&Method::GET, Some(kind)) => {
                let s = self.state.lock().unwrap();
                let items: Vec<Value> = s
                    .objects
                    .get(kind)
                    .map(|m| m.values().cloned().collect())
                    .unwrap_or_default();
                let (api_version, list_kind) = match kind {
                    "nodes" => ("v1", "NodeList"),
                    _ => ("kilo.squat.ai/v1alpha1", "PeerList"),
                };
                Reply::Now(
                    StatusCode::OK,
                    json!({
                        "apiVersion": api_version, "kind": list_kind,
                        "metadata": {"resourceVersion": s.version.to_string()},
                        "items": items,
                    }),
                )
            }
            (&Method::PATCH, Some("nodes")) => {
                let name = path.trim_start_matches("/api/v1/nodes/").to_string();
                if self.state.lock().unwrap().hang_patches {
                    return Reply::Hang;
                }
                if let Some(code) = self.state.lock().unwrap().fail_patches {
                    return status(
                        StatusCode::from_u16(code).unwrap(),
                        "injected failure".into(),
                    );
                }
                let Some(mut node) = self.get("nodes", &name) else {
                    return status(StatusCode::NOT_FOUND, format!("nodes \"{name}\" not found"));
                };
                merge_patch(&mut node, &body);
                self.put("nodes", node);
                Reply::Now(StatusCode::OK, self.get("nodes", &name).unwrap())
            }
            (&Method::POST, None) if path.starts_with("/apis/events.k8s.io/v1/namespaces/") => {
                Reply::Now(StatusCode::CREATED, body)
            }
            (&Method::PATCH, None) if path.starts_with("/apis/events.k8s.io/v1/namespaces/") => {
                Reply::Now(StatusCode::OK, body)
            }
            _ => status(
                StatusCode::NOT_FOUND,
                format!("the fake API does not serve {method} {path}"),
            ),
        }
    }

    /// Serves plain HTTP/1.1 on `listener` (one request per connection),
    /// for agents in other processes; a watch is answered with the events
    /// after its version, waiting up to 20 s for some.
    pub fn serve_http(&self, listener: TcpListener) {
        let api = self.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let api = api.clone();
                std::thread::spawn(move || {
                    let _ = api.http_connection(conn);
                });
            }
        });
    }

    fn http_connection(&self, conn: std::net::TcpStream) -> std::io::Result<()> {
        conn.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut reader = BufReader::new(conn.try_clone()?);
        let mut line = String::new();
        reader.read_line(&mut line)?;
        let mut parts = line.split_whitespace();
        let method =
            Method::from_bytes(parts.next().unwrap_or("").as_bytes()).unwrap_or(Method::GET);
        let target = parts.next().unwrap_or("/").to_string();
        let (mut length, mut content_type) = (0usize, String::new());
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h)? == 0 || h == "\r\n" {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                match k.trim().to_ascii_lowercase().as_str() {
                    "content-length" => length = v.trim().parse().unwrap_or(0),
                    "content-type" => content_type = v.trim().to_string(),
                    _ => {}
                }
            }
        }
        let mut bytes = vec![0; length];
        reader.read_exact(&mut bytes)?;
        let (path, query) = target.split_once('?').unwrap_or((&target, ""));
        let mut out = conn;
        let (code, body) = match self.respond(method, path, query, content_type, &bytes) {
            Reply::Now(code, body) => (code, body.to_string()),
            Reply::Hang => {
                std::thread::sleep(Duration::from_secs(60));
                return Ok(());
            }
            Reply::Watch(kind, since) => {
                let end = Instant::now() + Duration::from_secs(20);
                loop {
                    if let Some(b) = self.events_after(kind, since) {
                        break (StatusCode::OK, b);
                    }
                    let left = end.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        break (StatusCode::OK, String::new());
                    }
                    // Short waits: a change between the look and the wait
                    // costs at most 100 ms, never the whole watch.
                    let s = self.state.lock().unwrap();
                    let _ = self
                        .changed_sync
                        .wait_timeout(s, left.min(Duration::from_millis(100)))
                        .unwrap();
                }
            }
        };
        write!(
            out,
            "HTTP/1.1 {} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            code.as_u16(),
            code.canonical_reason().unwrap_or(""),
            body.len()
        )?;
        out.flush()
    }
}

/// A Node in the shape a k3s v1.33 server started with --flannel-backend
/// none returns it before any CNI runs (k3s's own annotations and labels,
/// managedFields, the not-ready taint and condition), written after the API
/// reference and k3s's documented annotations, not captured from a live
/// cluster (there is none here); renamed, with `pod` as its pod CIDR.
pub fn k3s_node(name: &str, pod: &str) -> Value {
    let text = include_str!("../fixtures/k3s-node.json").replace("NAME", name);
    let mut v: Value = serde_json::from_str(&text).expect("fixture is JSON");
    v["spec"]["podCIDR"] = json!(pod);
    v["spec"]["podCIDRs"] = json!([pod]);
    v
}
