//! Active health checks: the background service that probes every member of the current
//! snapshot each `[health] interval` and records the result in the member's
//! [`MemberHealth`](crate::slots::health::MemberHealth); and the checks `Control` runs on
//! demand: a flip's health gate ([`Control::refusal`]) and a deploy's wait
//! ([`Control::wait_healthy`]).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bascule_config::RouteTarget;

use async_trait::async_trait;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::control::Control;
use crate::slots::routing::Routing;
use crate::SlotName;

/// Why one health check failed.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// No TCP connection.
    #[error("connect: {0}")]
    Connect(std::io::Error),
    /// The request could not be sent.
    #[error("write: {0}")]
    Write(std::io::Error),
    /// The reply could not be read.
    #[error("read: {0}")]
    Read(std::io::Error),
    /// The reply does not start with an HTTP/1 status line.
    #[error("no HTTP status line in the reply")]
    NoStatus,
    /// A status other than 2xx or 3xx.
    #[error("status {0}")]
    Status(u16),
    /// No reply within `[health] timeout`.
    #[error("timed out after {}", humantime::format_duration(*.0))]
    Timeout(Duration),
}

/// One health check: `GET path` on `addr`, success on a 2xx or 3xx status within `timeout`.
pub async fn probe(
    addr: SocketAddr,
    host: &str,
    path: &str,
    timeout: Duration,
) -> Result<(), ProbeError> {
    let attempt = async {
        let mut stream = TcpStream::connect(addr)
            .await
            .map_err(ProbeError::Connect)?;
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: bascule-health\r\nConnection: close\r\n\r\n"
        );
        stream
            .write_all(req.as_bytes())
            .await
            .map_err(ProbeError::Write)?;
        let mut buf = [0u8; 1024];
        let mut len = 0;
        loop {
            let n = stream
                .read(&mut buf[len..])
                .await
                .map_err(ProbeError::Read)?;
            if n == 0 {
                break;
            }
            len += n;
            if buf[..len].windows(2).any(|w| w == b"\r\n") || len == buf.len() {
                break;
            }
        }
        let line = String::from_utf8_lossy(&buf[..len]);
        let status: u16 = line
            .strip_prefix("HTTP/1.")
            .and_then(|l| l.get(2..5))
            .and_then(|c| c.parse().ok())
            .ok_or(ProbeError::NoStatus)?;
        if (200..400).contains(&status) {
            Ok(())
        } else {
            Err(ProbeError::Status(status))
        }
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(r) => r,
        Err(_) => Err(ProbeError::Timeout(timeout)),
    }
}

impl Control {
    /// Why `slot` may not take traffic, if it may not: no upstream, or none healthy.
    ///
    /// Members never checked are probed now, so a flip right after `set` is judged on facts.
    pub async fn refusal(&self, slot: SlotName) -> Option<String> {
        let routing = self.load();
        let s = routing.slot(slot);
        let needs_upstream = routing.routes.is_empty()
            || routing.routes.iter().any(|r| r.to == RouteTarget::Upstream);
        if !needs_upstream {
            return None;
        }
        if s.pool.members().is_empty() {
            return Some(format!(
                "{slot} has no upstreams; `set {slot} upstreams ADDR` first, or add --force"
            ));
        }
        self.check_slot(&routing, slot, true).await;
        if s.pool.any_healthy() {
            return None;
        }
        let failing: Vec<String> = s
            .pool
            .members()
            .iter()
            .map(|m| {
                let why = match m.health.ejected_until() {
                    Some(until) => format!(
                        "ejected for failing requests until {}",
                        humantime::format_rfc3339_seconds(until)
                    ),
                    None => m
                        .health
                        .last()
                        .error
                        .unwrap_or_else(|| "not healthy yet".into()),
                };
                format!("{} ({why})", m.address)
            })
            .collect();
        Some(format!(
            "{slot} has no healthy upstream: {}; add --force to flip anyway",
            failing.join(", ")
        ))
    }

    /// Checks every member of the current snapshot once.
    pub async fn check_all(&self) {
        let routing = self.load();
        for slot in SlotName::ALL {
            self.check_slot(&routing, slot, false).await;
        }
    }

    /// Checks the members of `slot` (only the unchecked ones when `unchecked_only`).
    async fn check_slot(&self, routing: &Routing, slot: SlotName, unchecked_only: bool) {
        let cfg = self.health_config();
        let mut tasks = Vec::new();
        for m in routing.slot(slot).pool.members() {
            if unchecked_only && !m.health.is_unchecked() {
                continue;
            }
            let (addr, host, path, timeout) =
                (m.socket, m.address.clone(), cfg.path.clone(), cfg.timeout);
            let health = m.health.clone();
            let cfg = cfg.clone();
            tasks.push(tokio::spawn(async move {
                let result = probe(addr, &host, &path, timeout).await;
                if let Err(e) = &result {
                    if health.usable() {
                        tracing::warn!(upstream.addr = %host, error = %e, "health check failed");
                    }
                }
                health.record(result, &cfg);
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
    }

    /// Waits until `slot` has a healthy member, checking it every 100 ms, up to `timeout`.
    pub async fn wait_healthy(&self, slot: SlotName, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            let routing = self.load();
            self.check_slot(&routing, slot, false).await;
            if routing.slot(slot).pool.any_healthy() {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// The background service that checks every member of the current snapshot.
pub struct HealthChecker {
    control: Arc<Control>,
}

impl HealthChecker {
    /// A checker over `control`'s snapshots.
    pub fn new(control: Arc<Control>) -> HealthChecker {
        HealthChecker { control }
    }
}

#[async_trait]
impl BackgroundService for HealthChecker {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        loop {
            let interval = self.control.health_config().interval;
            self.control.check_all().await;
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = shutdown.changed() => return,
            }
        }
    }
}
