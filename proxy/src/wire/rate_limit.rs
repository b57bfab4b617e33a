//! `[[rate_limits]]`: requests per client address under a path prefix, checked by both request
//! paths right after the request policy accepts a head, before static files or upstreams.
//!
//! Counting uses Pingora's `pingora-limits` [`Rate`]: a count-min sketch per window, so memory is
//! fixed whatever the number of distinct addresses (a flood of them cannot grow it; at worst it
//! makes counts higher than true, never lower). A limit of `per_ip` a second with `burst` is
//! kept as at most `burst` requests in a sliding window of `burst / per_ip` seconds: the
//! previous window's count weighted by the part of it still inside the sliding window, plus the
//! current one's. Refused requests are not counted.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use bascule_config::RateLimit;
use pingora_limits::rate::Rate;
use prometheus::{IntCounter, IntCounterVec};

use crate::wire::Reject;

/// Hash rows of each sketch.
const HASHES: usize = 4;
/// Counters per row: 4 × 8192 × 8 bytes × 2 windows = 512 KiB per prefix.
const SLOTS: usize = 8192;

/// One prefix's limit and its counts.
struct Limit {
    /// The entry as configured: a reload keeps the counts of an entry it leaves as it was.
    config: RateLimit,
    prefix: String,
    burst: f64,
    window: Duration,
    rate: Arc<Rate>,
    limited: IntCounter,
}

/// Every configured limit, longest prefix first.
#[derive(Default)]
pub(crate) struct RateLimits {
    limits: Vec<Limit>,
}

impl RateLimits {
    /// Limits for `config` (longest prefix first, as the config orders them); 429s are counted
    /// in `limited` by prefix.
    #[cfg(test)]
    pub(crate) fn new(config: &[RateLimit], limited: &IntCounterVec) -> RateLimits {
        RateLimits::keeping(config, limited, None)
    }

    /// Limits for `config`, as [`RateLimits::new`]; an entry that `previous` has as it is
    /// keeps its counts (a reload does not hand every client a fresh burst).
    pub(crate) fn keeping(
        config: &[RateLimit],
        limited: &IntCounterVec,
        previous: Option<&RateLimits>,
    ) -> RateLimits {
        let limits = config
            .iter()
            .map(|c| {
                let window = Duration::from_secs_f64(c.burst as f64 / c.per_ip as f64)
                    .max(Duration::from_millis(10));
                let kept = previous
                    .and_then(|p| p.limits.iter().find(|l| l.config == *c))
                    .map(|l| l.rate.clone());
                Limit {
                    config: c.clone(),
                    prefix: c.prefix.clone(),
                    burst: c.burst as f64,
                    window,
                    rate: kept.unwrap_or_else(|| {
                        Arc::new(Rate::new_with_estimator_config(window, HASHES, SLOTS))
                    }),
                    limited: limited.with_label_values(&[&c.prefix]),
                }
            })
            .collect();
        RateLimits { limits }
    }

    /// Counts a request for `path` from `client`; a 429 (with the seconds to wait) when the
    /// longest matching prefix's limit is reached.
    pub(crate) fn check(&self, path: &str, client: IpAddr) -> Result<(), Reject> {
        let Some(limit) = self.limits.iter().find(|l| path.starts_with(&l.prefix)) else {
            return Ok(());
        };
        let client = canonical(client);
        let seen = limit.rate.rate_with(&client, |c| {
            c.prev_samples as f64 * (1.0 - c.current_interval_fraction) + c.curr_samples as f64
        });
        if seen + 1.0 > limit.burst {
            limit.limited.inc();
            let retry_after = limit.window.as_secs_f64().ceil().max(1.0) as u32;
            return Err(Reject::TooManyRequests(retry_after));
        }
        limit.rate.observe(&client, 1);
        Ok(())
    }
}

/// An IPv4 client on a dual-stack listener counts as its IPv4 address.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(per_ip: u32, burst: u32) -> (RateLimits, IntCounterVec) {
        let counter = IntCounterVec::new(prometheus::Opts::new("t", "t"), &["prefix"]).unwrap();
        let config = [RateLimit {
            prefix: "/api/".into(),
            per_ip,
            burst,
        }];
        (RateLimits::new(&config, &counter), counter)
    }

    #[test]
    fn the_burst_passes_then_429_while_others_pass() {
        let (l, counter) = limits(1, 5);
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let b: IpAddr = "127.0.0.2".parse().unwrap();
        for _ in 0..5 {
            assert_eq!(l.check("/api/x", a), Ok(()));
        }
        assert_eq!(l.check("/api/x", a), Err(Reject::TooManyRequests(5)));
        assert_eq!(l.check("/api/x", b), Ok(()));
        assert_eq!(l.check("/other", a), Ok(()), "outside every prefix");
        assert_eq!(counter.with_label_values(&["/api/"]).get(), 1);
    }

    #[test]
    fn a_reload_keeps_the_counts_of_an_unchanged_entry() {
        let (l, counter) = limits(1, 3);
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        for _ in 0..3 {
            assert_eq!(l.check("/api/x", a), Ok(()));
        }
        let same = RateLimits::keeping(&[l.limits[0].config.clone()], &counter, Some(&l));
        assert!(same.check("/api/x", a).is_err(), "counts kept");
        let other = RateLimit {
            prefix: "/api/".into(),
            per_ip: 1,
            burst: 4,
        };
        let changed = RateLimits::keeping(&[other], &counter, Some(&l));
        assert_eq!(
            changed.check("/api/x", a),
            Ok(()),
            "a changed entry starts afresh"
        );
    }

    #[test]
    fn a_flood_of_addresses_keeps_its_memory() {
        let (l, _) = limits(1000, 1000);
        for i in 0..100_000u32 {
            let _ = l.check("/api/", IpAddr::from(i.to_be_bytes()));
        }
        // Fixed-size sketches: nothing to measure grows; an unseen address still passes.
        assert_eq!(l.check("/api/", "10.9.9.9".parse().unwrap()), Ok(()));
    }
}
