//! `stats`: per-slot counts since start, and the arithmetic `bascule ctl monitor` does on two
//! of them (rates and percentiles over the interval between).

use bascule_config::SlotName;
use serde::{Deserialize, Serialize};

/// `stats`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatsReply {
    /// Seconds since the proxy started (the clock both replies of an interval are read on).
    pub uptime_seconds: f64,
    /// Blue's counts.
    pub blue: SlotStats,
    /// Green's counts.
    pub green: SlotStats,
    /// Requests served by a slot because they asked for it (`[preview]`), since start.
    pub preview_requests: u64,
}

impl StatsReply {
    /// One slot's counts.
    pub fn get(&self, slot: SlotName) -> &SlotStats {
        match slot {
            SlotName::Blue => &self.blue,
            SlotName::Green => &self.green,
        }
    }
}

/// One slot since start.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SlotStats {
    /// Requests answered.
    pub requests: u64,
    /// Answered requests by status class.
    pub status: StatusClasses,
    /// Latency percentiles in milliseconds, from [`SlotStats::latency_buckets`].
    pub latency_ms: Percentiles,
    /// Requests and connections in flight now.
    pub inflight: u64,
    /// The latency histogram the percentiles come from: what two replies are subtracted on.
    pub latency_buckets: Vec<LatencyBucket>,
}

/// Counts by status class.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusClasses {
    /// 100–199.
    #[serde(rename = "1xx")]
    pub c1xx: u64,
    /// 200–299.
    #[serde(rename = "2xx")]
    pub c2xx: u64,
    /// 300–399.
    #[serde(rename = "3xx")]
    pub c3xx: u64,
    /// 400–499.
    #[serde(rename = "4xx")]
    pub c4xx: u64,
    /// 500–599, the proxy's own 502/503/504 included.
    #[serde(rename = "5xx")]
    pub c5xx: u64,
}

impl StatusClasses {
    /// Counts from `self` minus those of `earlier` (an earlier reply of the same proxy).
    pub fn since(&self, earlier: &StatusClasses) -> StatusClasses {
        StatusClasses {
            c1xx: self.c1xx.saturating_sub(earlier.c1xx),
            c2xx: self.c2xx.saturating_sub(earlier.c2xx),
            c3xx: self.c3xx.saturating_sub(earlier.c3xx),
            c4xx: self.c4xx.saturating_sub(earlier.c4xx),
            c5xx: self.c5xx.saturating_sub(earlier.c5xx),
        }
    }
}

/// Latency percentiles, milliseconds; 0 when nothing was answered.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Percentiles {
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
}

impl Percentiles {
    /// Percentiles of a histogram.
    pub fn of(buckets: &[LatencyBucket]) -> Percentiles {
        Percentiles {
            p50: percentile(buckets, 0.50),
            p90: percentile(buckets, 0.90),
            p99: percentile(buckets, 0.99),
        }
    }
}

/// One bucket of a latency histogram: the requests that took at most `le_ms` and more than the
/// bucket before (`le_ms` is `null` for the last, unbounded bucket).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LatencyBucket {
    /// Upper bound, milliseconds.
    pub le_ms: Option<f64>,
    /// Requests in this bucket (not cumulative).
    pub count: u64,
}

/// Bucket counts of `now` minus those of `earlier`, when both have the same bounds.
pub fn buckets_since(now: &[LatencyBucket], earlier: &[LatencyBucket]) -> Vec<LatencyBucket> {
    if now.len() != earlier.len() {
        return now.to_vec();
    }
    now.iter()
        .zip(earlier)
        .map(|(n, e)| LatencyBucket {
            le_ms: n.le_ms,
            count: n.count.saturating_sub(e.count),
        })
        .collect()
}

/// The `q` quantile (0–1) of a histogram, interpolated linearly inside its bucket; the
/// unbounded last bucket answers its lower bound. 0 for an empty histogram.
pub fn percentile(buckets: &[LatencyBucket], q: f64) -> f64 {
    let total: u64 = buckets.iter().map(|b| b.count).sum();
    if total == 0 {
        return 0.0;
    }
    let rank = (q * total as f64).ceil().max(1.0);
    let (mut seen, mut lower) = (0u64, 0.0);
    for b in buckets {
        if b.count > 0 && (seen + b.count) as f64 >= rank {
            let Some(upper) = b.le_ms else {
                return lower;
            };
            let into = (rank - seen as f64) / b.count as f64;
            return lower + (upper - lower) * into;
        }
        seen += b.count;
        if let Some(upper) = b.le_ms {
            lower = upper;
        }
    }
    lower
}

/// One sample of `bascule ctl monitor`: both slots over the interval between two replies.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MonitorSample {
    /// Seconds between the two `stats` replies.
    pub interval_seconds: f64,
    /// Blue over the interval.
    pub blue: SlotRate,
    /// Green over the interval.
    pub green: SlotRate,
}

impl MonitorSample {
    /// The interval from `earlier` to `now` (two replies of the same proxy).
    pub fn between(earlier: &StatsReply, now: &StatsReply) -> MonitorSample {
        let secs = (now.uptime_seconds - earlier.uptime_seconds).max(1e-3);
        MonitorSample {
            interval_seconds: secs,
            blue: SlotRate::between(&earlier.blue, &now.blue, secs),
            green: SlotRate::between(&earlier.green, &now.green, secs),
        }
    }

    /// One slot's figures.
    pub fn get(&self, slot: SlotName) -> &SlotRate {
        match slot {
            SlotName::Blue => &self.blue,
            SlotName::Green => &self.green,
        }
    }
}

/// One slot over a monitor interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SlotRate {
    /// Requests answered in the interval.
    pub requests: u64,
    /// Requests answered per second.
    pub requests_per_s: f64,
    /// Share of those answered 5xx (0–1; 0 without requests).
    pub error_ratio_5xx: f64,
    /// Median latency in the interval, milliseconds.
    pub p50_ms: f64,
    /// 99th percentile latency in the interval, milliseconds.
    pub p99_ms: f64,
    /// In flight at the end of the interval.
    pub inflight: u64,
}

impl SlotRate {
    fn between(earlier: &SlotStats, now: &SlotStats, secs: f64) -> SlotRate {
        let requests = now.requests.saturating_sub(earlier.requests);
        let classes = now.status.since(&earlier.status);
        let buckets = buckets_since(&now.latency_buckets, &earlier.latency_buckets);
        SlotRate {
            requests,
            requests_per_s: requests as f64 / secs,
            error_ratio_5xx: if requests == 0 {
                0.0
            } else {
                classes.c5xx as f64 / requests as f64
            },
            p50_ms: percentile(&buckets, 0.50),
            p99_ms: percentile(&buckets, 0.99),
            inflight: now.inflight,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hist(counts: &[(Option<f64>, u64)]) -> Vec<LatencyBucket> {
        counts
            .iter()
            .map(|&(le_ms, count)| LatencyBucket { le_ms, count })
            .collect()
    }

    #[test]
    fn percentiles_fall_in_the_right_bucket() {
        let h = hist(&[
            (Some(1.0), 50),
            (Some(10.0), 40),
            (Some(100.0), 9),
            (None, 1),
        ]);
        let p = Percentiles::of(&h);
        assert!(p.p50 > 0.0 && p.p50 <= 1.0, "{p:?}");
        assert!(p.p90 > 1.0 && p.p90 <= 10.0, "{p:?}");
        assert!(p.p99 > 10.0 && p.p99 <= 100.0, "{p:?}");
        assert_eq!(percentile(&h, 1.0), 100.0);
        assert_eq!(percentile(&hist(&[(Some(1.0), 0)]), 0.5), 0.0);
    }

    #[test]
    fn an_interval_is_the_difference_of_two_replies() {
        let before = hist(&[(Some(1.0), 10), (None, 0)]);
        let after = hist(&[(Some(1.0), 10), (None, 5)]);
        let d = buckets_since(&after, &before);
        assert_eq!(d[0].count, 0);
        assert_eq!(percentile(&d, 0.5), 1.0);
    }
}
