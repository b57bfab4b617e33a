//! Active health checks.
//!
//! Each upstream member carries a [`MemberHealth`] record shared by every snapshot that holds
//! the same address, so a flip or a `set` that keeps a member keeps its health. The
//! [`HealthChecker`] background service probes every member of the current snapshot each
//! `[health] interval`: `GET [health] path`, 2xx or 3xx within `timeout` is a success.
//! A member starts *unchecked*, which counts as usable (as HAProxy starts servers up); its first
//! result decides its state, after which the thresholds apply.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bascule_config::HealthConfig;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::control::Control;

const UNCHECKED: u8 = 0;
const HEALTHY: u8 = 1;
const UNHEALTHY: u8 = 2;

/// Health of one upstream member.
#[derive(Debug, Default)]
pub struct MemberHealth {
    state: AtomicU8,
    successes: AtomicU32,
    failures: AtomicU32,
    last: Mutex<LastCheck>,
}

/// The outcome of the latest check.
#[derive(Debug, Default, Clone)]
pub struct LastCheck {
    /// When it ran.
    pub at: Option<SystemTime>,
    /// Why it failed, if it did.
    pub error: Option<String>,
}

impl MemberHealth {
    /// Whether the member may take new requests (healthy or not yet checked).
    #[inline]
    pub fn usable(&self) -> bool {
        self.state.load(Ordering::Relaxed) != UNHEALTHY
    }

    /// Whether the member passed its checks.
    pub fn is_healthy(&self) -> bool {
        self.state.load(Ordering::Relaxed) == HEALTHY
    }

    /// Whether the member has never been checked.
    pub fn is_unchecked(&self) -> bool {
        self.state.load(Ordering::Relaxed) == UNCHECKED
    }

    /// `Some(healthy)` once checked, `None` before.
    pub fn healthy(&self) -> Option<bool> {
        match self.state.load(Ordering::Relaxed) {
            UNCHECKED => None,
            s => Some(s == HEALTHY),
        }
    }

    /// The latest check.
    pub fn last(&self) -> LastCheck {
        self.last.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Records one check result and applies the thresholds.
    pub fn record(&self, result: Result<(), String>, cfg: &HealthConfig) {
        let state = self.state.load(Ordering::Relaxed);
        match &result {
            Ok(()) => {
                self.failures.store(0, Ordering::Relaxed);
                let n = self.successes.fetch_add(1, Ordering::Relaxed) + 1;
                if state == UNCHECKED || n >= cfg.healthy_threshold {
                    self.state.store(HEALTHY, Ordering::Relaxed);
                }
            }
            Err(_) => {
                self.successes.store(0, Ordering::Relaxed);
                let n = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
                if state == UNCHECKED || n >= cfg.unhealthy_threshold {
                    self.state.store(UNHEALTHY, Ordering::Relaxed);
                }
            }
        }
        *self.last.lock().unwrap_or_else(|p| p.into_inner()) = LastCheck {
            at: Some(SystemTime::now()),
            error: result.err(),
        };
    }
}

/// One health check: `GET path` on `addr`, success on a 2xx or 3xx status within `timeout`.
pub async fn probe(
    addr: SocketAddr,
    host: &str,
    path: &str,
    timeout: Duration,
) -> Result<(), String> {
    let attempt = async {
        let mut stream = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: bascule-health\r\nConnection: close\r\n\r\n"
        );
        stream
            .write_all(req.as_bytes())
            .await
            .map_err(|e| format!("write: {e}"))?;
        let mut buf = [0u8; 1024];
        let mut len = 0;
        loop {
            let n = stream
                .read(&mut buf[len..])
                .await
                .map_err(|e| format!("read: {e}"))?;
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
            .ok_or_else(|| "no HTTP status line in the reply".to_string())?;
        if (200..400).contains(&status) {
            Ok(())
        } else {
            Err(format!("status {status}"))
        }
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(r) => r,
        Err(_) => Err(format!(
            "timed out after {}",
            humantime::format_duration(timeout)
        )),
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
