//! Health records of upstream members, as the request path reads them.
//!
//! Each upstream member carries a [`MemberHealth`] record shared by every snapshot that holds
//! the same address, so a flip or a `set` that keeps a member keeps its health. The
//! health checker (`control::health_check`) probes every member of the current snapshot each
//! `[health] interval`: `GET [health] path`, 2xx or 3xx within `timeout` is a success.
//! A member starts *unchecked*, which counts as usable (as HAProxy starts servers up); its first
//! result decides its state, after which the thresholds apply.
//!
//! Beside the checks, the requests themselves judge a member under `[outlier]`: after
//! `consecutive_failures` failed requests in a row it is *ejected* — not picked, and not
//! healthy for a flip's gate — for `eject_time`, doubled on each repeat up to ten times. A
//! member back for ten times `eject_time` without a new ejection starts again from one.

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bascule_config::{HealthConfig, OutlierConfig};

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
    /// Requests failed in a row (`[outlier]`).
    failed_requests: AtomicU32,
    /// End of the latest ejection, in ms since the Unix epoch; 0: none to remember.
    ejected_until: AtomicU64,
    /// Ejections since the member was last forgiven: each doubles the next.
    ejections: AtomicU32,
}

/// Milliseconds since the Unix epoch.
fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Longest an ejection lasts, in multiples of `eject_time`.
const MAX_EJECTION_FACTOR: u32 = 10;

/// The outcome of the latest check.
#[derive(Debug, Default, Clone)]
pub struct LastCheck {
    /// When it ran.
    pub at: Option<SystemTime>,
    /// Why it failed, if it did.
    pub error: Option<String>,
}

impl MemberHealth {
    /// Whether the member may take new requests (healthy or not yet checked, not ejected).
    #[inline]
    pub fn usable(&self) -> bool {
        self.state.load(Ordering::Relaxed) != UNHEALTHY && !self.ejected()
    }

    /// Whether the member passed its checks and is not ejected.
    pub fn is_healthy(&self) -> bool {
        self.state.load(Ordering::Relaxed) == HEALTHY && !self.ejected()
    }

    /// Whether `[outlier]` has the member out now. One atomic load unless it was ever ejected.
    #[inline]
    pub fn ejected(&self) -> bool {
        let until = self.ejected_until.load(Ordering::Relaxed);
        until != 0 && now_ms() < until
    }

    /// When the ejection under way ends.
    pub fn ejected_until(&self) -> Option<SystemTime> {
        let until = self.ejected_until.load(Ordering::Relaxed);
        (until != 0 && now_ms() < until).then(|| UNIX_EPOCH + Duration::from_millis(until))
    }

    /// A request the member answered without failing: the run of failures ends, and a member
    /// back long enough is forgiven its past ejections.
    pub(crate) fn request_passed(&self, cfg: &OutlierConfig) {
        if self.failed_requests.load(Ordering::Relaxed) != 0 {
            self.failed_requests.store(0, Ordering::Relaxed);
        }
        let until = self.ejected_until.load(Ordering::Relaxed);
        if until != 0 {
            let grace = cfg.eject_time.saturating_mul(MAX_EJECTION_FACTOR);
            let grace = u64::try_from(grace.as_millis()).unwrap_or(u64::MAX);
            if now_ms() > until.saturating_add(grace) {
                self.ejections.store(0, Ordering::Relaxed);
                self.ejected_until.store(0, Ordering::Relaxed);
            }
        }
    }

    /// A request the member failed (no connection, a timeout, a 5xx): the failures in a row.
    pub(crate) fn request_failed(&self) -> u32 {
        self.failed_requests
            .fetch_add(1, Ordering::Relaxed)
            .saturating_add(1)
    }

    /// Takes the member out for `eject_time`, doubled for each earlier ejection (at most ten
    /// times); returns for how long.
    pub(crate) fn eject(&self, cfg: &OutlierConfig) -> Duration {
        let n = self.ejections.fetch_add(1, Ordering::Relaxed).min(4);
        let factor = (1u32 << n).min(MAX_EJECTION_FACTOR);
        let time = cfg.eject_time.saturating_mul(factor);
        let ms = u64::try_from(time.as_millis()).unwrap_or(u64::MAX);
        self.failed_requests.store(0, Ordering::Relaxed);
        self.ejected_until
            .store(now_ms().saturating_add(ms).max(1), Ordering::Relaxed);
        time
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

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> OutlierConfig {
        OutlierConfig {
            consecutive_failures: 3,
            eject_time: Duration::from_secs(30),
            max_ejected_percent: 50,
        }
    }

    #[test]
    fn ejections_double_up_to_ten_times() {
        let h = MemberHealth::default();
        assert!(h.usable() && !h.ejected());
        let times: Vec<u64> = (0..6).map(|_| h.eject(&cfg()).as_secs()).collect();
        assert_eq!(times, [30, 60, 120, 240, 300, 300]);
        assert!(h.ejected() && !h.usable() && h.ejected_until().is_some());
    }

    #[test]
    fn a_pass_ends_the_run_of_failures() {
        let h = MemberHealth::default();
        assert_eq!((h.request_failed(), h.request_failed()), (1, 2));
        h.request_passed(&cfg());
        assert_eq!(h.request_failed(), 1);
        // Still ejected: a pass while out (a request already under way) changes nothing.
        h.eject(&cfg());
        h.request_passed(&cfg());
        assert!(h.ejected());
    }
}
