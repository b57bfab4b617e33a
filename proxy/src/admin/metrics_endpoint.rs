//! The `/metrics` endpoint: Prometheus text on its own listener.
//!
//! Served by hyper's HTTP/1 server (parsing, framing and the header read timeout are hyper's),
//! one request per connection, with at most [`MAX_CONNECTIONS`] open at once and each closed
//! after [`CONNECTION_TIMEOUT`] whatever it does: whoever reaches the port can neither hold
//! descriptors the proxy needs nor make the process spin when they run out.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::control::Control;
use crate::fd::AcceptBackoff;

/// Connections served at once; one more is closed as soon as it is accepted. Prometheus
/// scrapes with one connection per target.
pub const MAX_CONNECTIONS: usize = 32;
/// Time a connection has to send its whole request head.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// Time a connection may stay open in all, reading and writing included.
pub const CONNECTION_TIMEOUT: Duration = Duration::from_secs(30);

/// Serves `GET /metrics` on its own listener, apart from the proxied traffic.
pub struct MetricsService {
    addr: SocketAddr,
    control: Arc<Control>,
}

impl MetricsService {
    /// A metrics endpoint on `addr`.
    pub fn new(addr: SocketAddr, control: Arc<Control>) -> MetricsService {
        MetricsService { addr, control }
    }
}

/// The answer to one request: the metrics at `/metrics`, 404 elsewhere.
fn answer(control: &Control, req: &Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
    let (status, body) = if req.uri().path() == "/metrics" {
        (
            http::StatusCode::OK,
            control.metrics().render(&control.load()),
        )
    } else {
        (
            http::StatusCode::NOT_FOUND,
            "not found: try /metrics\n".to_string(),
        )
    };
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    resp
}

#[async_trait]
impl BackgroundService for MetricsService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        // A plain start checked the address already (`app::check_addresses`); during an
        // upgrade the old process holds the port until it exits: keep trying.
        let listener = loop {
            match TcpListener::bind(self.addr).await {
                Ok(l) => break l,
                Err(e) => {
                    tracing::warn!(addr = %self.addr, error = %e, "metrics listener not bound yet; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        _ = shutdown.changed() => return,
                    }
                }
            }
        };
        let open = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        let mut backoff = AcceptBackoff::new("metrics");
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                _ = shutdown.changed() => return,
            };
            let stream = match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    backoff.failed(&e).await;
                    continue;
                }
            };
            let Ok(permit) = open.clone().try_acquire_owned() else {
                tracing::debug!("metrics connection refused: {MAX_CONNECTIONS} open already");
                continue;
            };
            let control = self.control.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    let resp = answer(&control, &req);
                    async move { Ok::<_, Infallible>(resp) }
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEADER_TIMEOUT)
                    .keep_alive(false)
                    .serve_connection(TokioIo::new(stream), service);
                let _ = tokio::time::timeout(CONNECTION_TIMEOUT, conn).await;
                drop(permit);
            });
        }
    }
}
