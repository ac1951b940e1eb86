//! The agent's HTTP endpoint: `/metrics`, `/healthz`, `/readyz`, on hyper
//! and a single-threaded tokio runtime of its own (one thread however many
//! clients). It is reachable from the network (the manifests bind the
//! node's internal address), so it is bounded: at most
//! [`MAX_CONNECTIONS`] at a time (more are closed at once), a request's
//! header must arrive within [`HEADER_TIMEOUT`], and a connection lives at
//! most [`CONNECTION_LIFETIME`]. GET and HEAD only.

use crate::metrics::Metrics;
use crate::status::Status;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// Connections held at once (each is a task on the one thread, a few KiB);
/// further ones are closed on accept until idle ones time out.
pub const MAX_CONNECTIONS: usize = 1024;
/// How long a client may take to send a request's header.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one connection may stay open, keep-alive included.
pub const CONNECTION_LIFETIME: Duration = Duration::from_secs(60);

fn reply(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    if let Ok(v) = content_type.parse() {
        r.headers_mut().insert(http::header::CONTENT_TYPE, v);
    }
    r
}

/// Answers one request.
pub fn answer(
    method: &Method,
    path: &str,
    metrics: &Metrics,
    status: &Status,
) -> Response<Full<Bytes>> {
    if method != Method::GET && method != Method::HEAD {
        return reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "GET only\n".into(),
        );
    }
    match path {
        "/metrics" => {
            metrics.set_ready(status.ready().0);
            reply(
                StatusCode::OK,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                metrics.render(),
            )
        }
        "/healthz" => match status.live() {
            Ok(()) => reply(StatusCode::OK, "text/plain", "ok\n".into()),
            Err(why) => reply(
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain",
                format!("{why}\n"),
            ),
        },
        "/readyz" => {
            let (ok, report) = status.ready();
            let code = if ok {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            reply(code, "text/plain", report)
        }
        _ => reply(StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
    }
}

/// Serves on `addr` on a thread of its own for as long as the process runs.
/// A busy address (the agent of the pod being replaced still holds it) is
/// tried again every second until it frees.
pub fn serve(addr: SocketAddr, metrics: Arc<Metrics>, status: Arc<Status>) -> std::io::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name("http".into())
        .spawn(move || rt.block_on(accept_loop(addr, metrics, status)))?;
    Ok(())
}

async fn accept_loop(addr: SocketAddr, metrics: Arc<Metrics>, status: Arc<Status>) {
    let mut said = false;
    let listener = loop {
        match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => break l,
            Err(e) => {
                if !said {
                    tracing::warn!("cannot listen on {addr} for metrics and health ({e}); trying again every second");
                    said = true;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    };
    tracing::info!("metrics on http://{addr}/metrics, health on /healthz and /readyz");
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            // Full: closed at once, so idle clients cannot hold the rest out.
            drop(stream);
            continue;
        };
        let (metrics, status) = (metrics.clone(), status.clone());
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<Incoming>| {
                let r = answer(req.method(), req.uri().path(), &metrics, &status);
                async move { Ok::<_, Infallible>(r) }
            });
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            let _ = tokio::time::timeout(CONNECTION_LIFETIME, conn).await;
            drop(slot);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    #[test]
    fn endpoints_answer_and_idle_clients_cannot_hold_it() {
        let metrics = Metrics::new();
        metrics.set_mesh(2, 0, false);
        let status = Arc::new(Status::default());
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = probe.local_addr().unwrap();
        drop(probe);
        serve(addr, metrics, status.clone()).unwrap();
        let get = |req: &str| -> String {
            let end = std::time::Instant::now() + Duration::from_secs(5);
            loop {
                if let Ok(mut s) = std::net::TcpStream::connect(addr) {
                    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                    s.write_all(req.as_bytes()).unwrap();
                    let mut out = String::new();
                    let _ = s.read_to_string(&mut out);
                    if !out.is_empty() {
                        return out;
                    }
                }
                assert!(std::time::Instant::now() < end, "no answer");
                std::thread::sleep(Duration::from_millis(20));
            }
        };
        let close = "HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
        let m = get(&format!("GET /metrics {close}"));
        assert!(m.starts_with("HTTP/1.1 200"), "{m}");
        assert!(m.contains("weft_nodes 2"), "{m}");
        assert!(get(&format!("GET /healthz {close}")).contains("ok"));
        let r = get(&format!("GET /readyz {close}"));
        assert!(r.starts_with("HTTP/1.1 503"), "nothing known yet: {r}");
        for c in crate::status::CHECKS {
            status.set(c, Ok(()));
        }
        assert!(get(&format!("GET /readyz {close}")).starts_with("HTTP/1.1 200"));
        assert!(get(&format!("POST /metrics {close}")).starts_with("HTTP/1.1 405"));
        assert!(get(&format!("GET /nope {close}")).starts_with("HTTP/1.1 404"));

        // Many idle connections: no thread per connection, and a health
        // check is answered at once all the same.
        let threads = || {
            std::fs::read_dir("/proc/self/task")
                .map(|d| d.count())
                .unwrap_or(0)
        };
        let before = threads();
        let idle: Vec<_> = (0..500)
            .filter_map(|_| std::net::TcpStream::connect(addr).ok())
            .collect();
        assert_eq!(idle.len(), 500);
        std::thread::sleep(Duration::from_millis(300));
        let started = std::time::Instant::now();
        let r = get(&format!("GET /readyz {close}"));
        let latency = started.elapsed();
        assert!(r.starts_with("HTTP/1.1 200"), "{r}");
        assert!(latency < Duration::from_millis(500), "{latency:?}");
        assert!(
            threads() <= before + 1,
            "{} threads, {before} before",
            threads()
        );
        drop(idle);
    }
}
