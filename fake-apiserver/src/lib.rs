//! An in-memory Kubernetes API server for Nodes, Kilo Peers and Events, for
//! Weft's tests and benchmarks. It keeps a resourceVersion, answers lists,
//! answers watches with the events after the asked version, applies JSON
//! merge patches to Nodes, stores Events and records every request, so tests
//! can assert what an agent sent.
//!
//! Two ways in:
//! - [`FakeApi::client`]: a `kube` client whose requests go through a
//!   tower-test mock service (no sockets);
//! - [`FakeApi::serve_http`]: plain HTTP/1.1 with keep-alive, watches
//!   streamed in chunks as a real API server streams them, for agents in
//!   other processes. The returned [`HttpServer`] can be taken away and
//!   brought back on the same address, as an API server restart or outage
//!   looks to its clients (connections reset, then refused).

use http::{Method, Request, Response, StatusCode};
use kube::client::Body;
use kube::Client;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
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
    /// kind ("nodes" | "peers" | "events") -> name -> object.
    objects: BTreeMap<&'static str, BTreeMap<String, Value>>,
    /// (version, kind, watch event as one JSON line).
    log: Vec<(u64, &'static str, String)>,
    received: Vec<Received>,
    /// Whether to keep `received` (a long benchmark turns it off).
    forget_requests: bool,
    /// Fail PATCHes of nodes with this status, to test error handling.
    fail_patches: Option<u16>,
    /// Never answer PATCHes of nodes (an API server that hangs).
    hang_patches: bool,
    /// Mock clients get connection errors, as from an API server that is
    /// gone (the HTTP front has its own switch, [`HttpServer::stop`]).
    unreachable: bool,
}

#[derive(Clone, Default)]
pub struct FakeApi {
    state: Arc<Mutex<State>>,
    /// Every request of a mock client, answered or refused.
    attempts: Arc<AtomicU64>,
    /// Wakes the tower-test servers.
    changed: Arc<Notify>,
    /// Wakes the HTTP watch streams.
    changed_sync: Arc<Condvar>,
}

/// What a request gets: an answer now, or a watch to answer with the events
/// after the given version.
enum Reply {
    Now(StatusCode, Value),
    Watch {
        kind: &'static str,
        since: u64,
        timeout: Duration,
    },
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

const EVENTS_PREFIX: &str = "/apis/events.k8s.io/v1/namespaces/";
const PEERS: &str = "/apis/kilo.squat.ai/v1alpha1/peers";

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

/// A watch event as the API server writes it: the type first, then the
/// object (serde_json alone would sort "object" first, which makes clients
/// buffer the whole object before they know what it is).
fn watch_event(kind: &str, object: &Value) -> String {
    format!("{{\"type\":\"{kind}\",\"object\":{object}}}")
}

fn refused() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "connection refused")
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
        let name = object["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let existed = s
            .objects
            .entry(kind)
            .or_default()
            .insert(name, object.clone())
            .is_some();
        let t = if existed { "MODIFIED" } else { "ADDED" };
        s.log.push((v, kind, watch_event(t, &object)));
        drop(s);
        self.wake();
    }

    /// Applies a merge patch to an object, as another client's PATCH would;
    /// false if there is no such object.
    pub fn patch(&self, kind: &'static str, name: &str, patch: &Value) -> bool {
        let Some(mut o) = self.get(kind, name) else {
            return false;
        };
        merge_patch(&mut o, patch);
        self.put(kind, o);
        true
    }

    /// Removes an object, as `kubectl delete` would.
    pub fn delete(&self, kind: &'static str, name: &str) {
        let mut s = self.state.lock().unwrap();
        s.version += 1;
        let v = s.version;
        if let Some(mut o) = s.objects.entry(kind).or_default().remove(name) {
            o["metadata"]["resourceVersion"] = json!(v.to_string());
            s.log.push((v, kind, watch_event("DELETED", &o)));
        }
        drop(s);
        self.wake();
    }

    fn wake(&self) {
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

    /// Every object of a kind ("nodes", "peers", "events"), by name.
    pub fn list(&self, kind: &'static str) -> Vec<Value> {
        self.state
            .lock()
            .unwrap()
            .objects
            .get(kind)
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default()
    }

    pub fn received(&self) -> Vec<Received> {
        self.state.lock().unwrap().received.clone()
    }

    /// Stops recording requests (a long benchmark would grow without end).
    pub fn forget_requests(&self) {
        let mut s = self.state.lock().unwrap();
        s.forget_requests = true;
        s.received.clear();
    }

    /// Drops the watch log up to the current version, keeping memory flat
    /// in long runs; watches from older versions then see only what follows.
    pub fn compact(&self) {
        self.state.lock().unwrap().log.clear();
    }

    pub fn hang_patches(&self, hang: bool) {
        self.state.lock().unwrap().hang_patches = hang;
    }

    pub fn fail_patches(&self, status: Option<u16>) {
        self.state.lock().unwrap().fail_patches = status;
    }

    /// Takes the API away from mock clients (every request, open watches
    /// included, fails as a refused connection would) or brings it back.
    pub fn set_reachable(&self, reachable: bool) {
        self.state.lock().unwrap().unreachable = !reachable;
        self.wake();
    }

    /// Requests mock clients made, refused ones included.
    pub fn attempts(&self) -> u64 {
        self.attempts.load(Ordering::Relaxed)
    }

    fn unreachable(&self) -> bool {
        self.state.lock().unwrap().unreachable
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
            // Answer the held watches that have something new; cut them
            // all when the API goes away.
            let mut still = Vec::new();
            let gone = self.unreachable();
            for (kind, since, send) in held.drain(..) {
                if gone {
                    send.send_error(refused());
                    continue;
                }
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

    /// The watch events of `kind` after version `since`, one JSON per line.
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

    /// Answers one mock request, or hands back a watch to hold.
    async fn handle(
        &self,
        req: Request<Body>,
        send: Responder,
    ) -> Option<(&'static str, u64, Responder)> {
        self.attempts.fetch_add(1, Ordering::Relaxed);
        if self.unreachable() {
            send.send_error(refused());
            return None;
        }
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
            Reply::Watch { kind, since, .. } => match self.events_after(kind, since) {
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
        {
            let mut s = self.state.lock().unwrap();
            if !s.forget_requests {
                s.received.push(Received {
                    method: method.clone(),
                    path: path.to_string(),
                    content_type,
                    body: body.clone(),
                });
            }
        }
        let kind = kind_of(path);
        match (&method, kind) {
            (&Method::GET, _) if path == "/version" => Reply::Now(
                StatusCode::OK,
                json!({"major": "1", "minor": "33", "gitVersion": "v1.33.0-fake",
                       "platform": "linux/amd64"}),
            ),
            (&Method::GET, Some(kind)) if query_param(query, "watch") == Some("true") => {
                let since = query_param(query, "resourceVersion")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                let timeout = query_param(query, "timeoutSeconds")
                    .and_then(|v| v.parse().ok())
                    .map_or(Duration::from_secs(290), Duration::from_secs);
                Reply::Watch {
                    kind,
                    since,
                    timeout,
                }
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
                        StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                        "injected failure".into(),
                    );
                }
                if !self.patch("nodes", &name, &body) {
                    return status(StatusCode::NOT_FOUND, format!("nodes \"{name}\" not found"));
                }
                Reply::Now(
                    StatusCode::OK,
                    self.get("nodes", &name).unwrap_or(Value::Null),
                )
            }
            (&Method::POST, Some("peers")) if path == PEERS => {
                let name = body["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
                if name.is_empty() {
                    return status(StatusCode::UNPROCESSABLE_ENTITY, "peer without name".into());
                }
                if self.get("peers", &name).is_some() {
                    return Reply::Now(
                        StatusCode::CONFLICT,
                        json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                               "message": format!("peers.kilo.squat.ai \"{name}\" already exists"),
                               "reason": "AlreadyExists", "code": 409}),
                    );
                }
                self.put("peers", body.clone());
                Reply::Now(
                    StatusCode::CREATED,
                    self.get("peers", &name).unwrap_or(Value::Null),
                )
            }
            (&Method::PATCH, Some("peers")) => {
                let name = path.trim_start_matches(PEERS).trim_start_matches('/');
                if !self.patch("peers", name, &body) {
                    return status(
                        StatusCode::NOT_FOUND,
                        format!("peers.kilo.squat.ai \"{name}\" not found"),
                    );
                }
                Reply::Now(
                    StatusCode::OK,
                    self.get("peers", name).unwrap_or(Value::Null),
                )
            }
            (&Method::DELETE, Some("peers")) => {
                let name = path.trim_start_matches(PEERS).trim_start_matches('/');
                let Some(gone) = self.get("peers", name) else {
                    return status(
                        StatusCode::NOT_FOUND,
                        format!("peers.kilo.squat.ai \"{name}\" not found"),
                    );
                };
                self.delete("peers", name);
                Reply::Now(StatusCode::OK, gone)
            }
            (&Method::POST, None) if path.starts_with(EVENTS_PREFIX) => {
                let name = body["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
                if name.is_empty() {
                    return status(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        "event without name".into(),
                    );
                }
                self.put("events", body.clone());
                Reply::Now(StatusCode::CREATED, body)
            }
            (&Method::PATCH, None) if path.starts_with(EVENTS_PREFIX) => {
                let name = path.rsplit('/').next().unwrap_or_default().to_string();
                if !self.patch("events", &name, &body) {
                    return status(
                        StatusCode::NOT_FOUND,
                        format!("events \"{name}\" not found"),
                    );
                }
                Reply::Now(
                    StatusCode::OK,
                    self.get("events", &name).unwrap_or(Value::Null),
                )
            }
            _ => status(
                StatusCode::NOT_FOUND,
                format!("the fake API does not serve {method} {path}"),
            ),
        }
    }

    /// Serves plain HTTP/1.1 on `listener` until the returned server is
    /// stopped or dropped.
    pub fn serve_http(&self, listener: TcpListener) -> HttpServer {
        let addr = listener.local_addr().expect("a bound listener");
        let server = HttpServer {
            api: self.clone(),
            addr,
            inner: Arc::new(Mutex::new(None)),
            requests: Arc::new(AtomicU64::new(0)),
        };
        server.run(listener);
        server
    }

    /// Writes the events after `since` to `out` as chunks until `timeout`
    /// passes, `stop` is set or the client goes away.
    fn stream_watch(
        &self,
        out: &mut TcpStream,
        kind: &'static str,
        mut since: u64,
        timeout: Duration,
        stop: &AtomicBool,
    ) -> std::io::Result<()> {
        write!(
            out,
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
        )?;
        out.flush()?;
        let end = Instant::now() + timeout;
        while !stop.load(Ordering::SeqCst) {
            let batch: Vec<(u64, String)> = {
                let s = self.state.lock().unwrap();
                s.log
                    .iter()
                    .filter(|(v, k, _)| *k == kind && *v > since)
                    .map(|(v, _, e)| (*v, format!("{e}\n")))
                    .collect()
            };
            for (v, line) in batch {
                write!(out, "{:x}\r\n{line}\r\n", line.len())?;
                since = v;
            }
            out.flush()?;
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            // Short waits: a change between the look and the wait costs at
            // most 100 ms, and a stop is seen as quickly.
            let s = self.state.lock().unwrap();
            let _ = self
                .changed_sync
                .wait_timeout(s, left.min(Duration::from_millis(100)))
                .unwrap();
        }
        write!(out, "0\r\n\r\n")?;
        out.flush()
    }

    /// Serves requests on one connection until the client closes it, the
    /// server stops, or a request asks to close.
    fn http_connection(
        &self,
        conn: TcpStream,
        stop: &AtomicBool,
        requests: &AtomicU64,
    ) -> std::io::Result<()> {
        conn.set_read_timeout(Some(Duration::from_secs(120)))?;
        let mut reader = BufReader::new(conn.try_clone()?);
        let mut out = conn;
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line)? == 0 || stop.load(Ordering::SeqCst) {
                return Ok(());
            }
            requests.fetch_add(1, Ordering::Relaxed);
            let mut parts = line.split_whitespace();
            let method =
                Method::from_bytes(parts.next().unwrap_or("").as_bytes()).unwrap_or(Method::GET);
            let target = parts.next().unwrap_or("/").to_string();
            let (mut length, mut content_type, mut close) = (0usize, String::new(), false);
            loop {
                let mut h = String::new();
                if reader.read_line(&mut h)? == 0 || h == "\r\n" {
                    break;
                }
                if let Some((k, v)) = h.split_once(':') {
                    match k.trim().to_ascii_lowercase().as_str() {
                        "content-length" => length = v.trim().parse().unwrap_or(0),
                        "content-type" => content_type = v.trim().to_string(),
                        "connection" => close = v.trim().eq_ignore_ascii_case("close"),
                        _ => {}
                    }
                }
            }
            let mut bytes = vec![0; length.min(1 << 20)];
            reader.read_exact(&mut bytes)?;
            let (path, query) = target.split_once('?').unwrap_or((&target, ""));
            let (code, body) = match self.respond(method, path, query, content_type, &bytes) {
                Reply::Now(code, body) => (code, body.to_string()),
                Reply::Hang => {
                    while !stop.load(Ordering::SeqCst) {
                        std::thread::sleep(Duration::from_millis(100));
                    }
                    return Ok(());
                }
                Reply::Watch {
                    kind,
                    since,
                    timeout,
                } => {
                    self.stream_watch(&mut out, kind, since, timeout, stop)?;
                    continue;
                }
            };
            write!(
                out,
                "HTTP/1.1 {} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                code.as_u16(),
                code.canonical_reason().unwrap_or(""),
                body.len()
            )?;
            out.flush()?;
            if close {
                return Ok(());
            }
        }
    }
}

/// A running HTTP front of a [`FakeApi`].
pub struct HttpServer {
    api: FakeApi,
    addr: SocketAddr,
    inner: Arc<Mutex<Option<Running>>>,
    requests: Arc<AtomicU64>,
}

struct Running {
    stop: Arc<AtomicBool>,
    listener: TcpListener,
    connections: Arc<Mutex<Vec<TcpStream>>>,
}

impl HttpServer {
    fn run(&self, listener: TcpListener) {
        let stop = Arc::new(AtomicBool::new(false));
        let connections: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let accept = listener.try_clone().expect("listener clone");
        *self.inner.lock().unwrap() = Some(Running {
            stop: stop.clone(),
            listener,
            connections: connections.clone(),
        });
        let api = self.api.clone();
        let requests = self.requests.clone();
        std::thread::spawn(move || {
            for conn in accept.incoming() {
                if stop.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(conn) = conn else { continue };
                if let Ok(c) = conn.try_clone() {
                    let mut all = connections.lock().unwrap();
                    all.retain(|c| c.peer_addr().is_ok());
                    all.push(c);
                }
                let (api, stop, requests) = (api.clone(), stop.clone(), requests.clone());
                std::thread::spawn(move || {
                    let _ = api.http_connection(conn, &stop, &requests);
                });
            }
        });
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Requests served so far (all connections, all kinds).
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// Takes the API away: the listening socket closes (new connections are
    /// refused) and every open connection, watches included, is cut.
    pub fn stop(&self) {
        let Some(r) = self.inner.lock().unwrap().take() else {
            return;
        };
        r.stop.store(true, Ordering::SeqCst);
        // Wakes the blocked accept; the socket closes when `r` drops.
        let _ = shutdown_listener(&r.listener);
        for c in r.connections.lock().unwrap().iter() {
            let _ = c.shutdown(Shutdown::Both);
        }
        self.api.changed_sync.notify_all();
    }

    /// Brings the API back on the same address (with `bind` run where the
    /// address lives, e.g. inside a network namespace).
    pub fn start_with(
        &self,
        bind: impl FnOnce(SocketAddr) -> std::io::Result<TcpListener>,
    ) -> std::io::Result<()> {
        if self.inner.lock().unwrap().is_some() {
            return Ok(());
        }
        let listener = bind(self.addr)?;
        self.run(listener);
        Ok(())
    }

    /// Brings the API back on the same address in this network namespace.
    pub fn start(&self) -> std::io::Result<()> {
        self.start_with(TcpListener::bind)
    }

    pub fn is_up(&self) -> bool {
        self.inner.lock().unwrap().is_some()
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn shutdown_listener(l: &TcpListener) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: shutdown(2) on a socket we keep open until after the call.
    if unsafe { libc::shutdown(l.as_raw_fd(), libc::SHUT_RDWR) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
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
