//! Health records of upstream members, as the request path reads them.
//!
//! Each upstream member carries a [`MemberHealth`] record shared by every snapshot that holds
//! the same address, so a flip or a `set` that keeps a member keeps its health. The
//! health checker (`control::health_check`) probes every member of the current snapshot each
//! `[health] interval`: `GET [health] path`, 2xx or 3xx within `timeout` is a success.
//! A member starts *unchecked*, which counts as usable (as HAProxy starts servers up); its first
//! result decides its state, after which the thresholds apply.

use std::sync::atomic::{AtomicU32, AtomicU8, Ordering};
use std::sync::Mutex;
use std::time::SystemTime;

use bascule_config::HealthConfig;

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

    /// Records one check result and applies the thresholds; a failure is kept as its message.
    pub fn record<E: std::fmt::Display>(&self, result: Result<(), E>, cfg: &HealthConfig) {
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
            error: result.err().map(|e| e.to_string()),
        };
    }
}
