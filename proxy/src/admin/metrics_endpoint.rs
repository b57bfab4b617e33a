//! The `/metrics` endpoint: Prometheus text on its own listener.

use std::net::SocketAddr;
use std::sync::Arc;

use async_trait::async_trait;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::control::Control;

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

#[async_trait]
impl BackgroundService for MetricsService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        // During an upgrade the old process holds the port until it exits: keep trying.
        let listener = loop {
            match TcpListener::bind(self.addr).await {
                Ok(l) => break l,
                Err(e) => {
                    tracing::warn!(addr = %self.addr, error = %e, "metrics listener not bound yet; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
                        _ = shutdown.changed() => return,
                    }
                }
            }
        };
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    let Ok((mut stream, _)) = accepted else { continue };
                    let control = self.control.clone();
                    tokio::spawn(async move {
                        let mut buf = vec![0u8; 4096];
                        let mut len = 0;
                        while len < buf.len() {
                            match stream.read(&mut buf[len..]).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => len += n,
                            }
                            if buf[..len].windows(4).any(|w| w == b"\r\n\r\n") {
                                break;
                            }
                        }
                        let head = String::from_utf8_lossy(&buf[..len]);
                        let path = head.split_whitespace().nth(1).unwrap_or("");
                        let (status, body) = if path == "/metrics" {
                            ("200 OK", control.metrics().render(&control.load()))
                        } else {
                            ("404 Not Found", "not found: try /metrics\n".to_string())
                        };
                        let resp = format!(
                            "HTTP/1.1 {status}\r\ncontent-type: text/plain; version=0.0.4\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                            body.len()
                        );
                        let _ = stream.write_all(resp.as_bytes()).await;
                    });
                }
                _ = shutdown.changed() => return,
            }
        }
    }
}
