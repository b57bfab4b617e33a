//! Per-slot request statistics since start, for the `stats` admin command and the automatic
//! rollback: counts by status class and a fixed-bucket latency histogram, all relaxed atomics,
//! bumped once per answered request from [`Metrics::observe`](crate::slots::metrics::Metrics::observe).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::SlotName;

/// Upper bounds of the latency buckets, microseconds; a last, unbounded bucket follows.
pub const LATENCY_BOUNDS_US: [u64; 24] = [
    100, 250, 500, 1_000, 2_000, 3_000, 5_000, 7_500, 10_000, 15_000, 20_000, 30_000, 50_000,
    75_000, 100_000, 150_000, 250_000, 500_000, 750_000, 1_000_000, 2_500_000, 5_000_000,
    10_000_000, 30_000_000,
];

/// Number of buckets, the unbounded one included.
pub const BUCKETS: usize = LATENCY_BOUNDS_US.len() + 1;

/// One slot's counters.
#[derive(Debug)]
pub struct SlotStats {
    /// Answered requests by class: index 0 for 1xx … 4 for 5xx.
    classes: [AtomicU64; 5],
    /// Latency histogram, one count per bucket (not cumulative).
    buckets: [AtomicU64; BUCKETS],
}

/// A copy of one slot's counters at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatsSnapshot {
    /// Answered requests by class, 1xx first.
    pub classes: [u64; 5],
    /// Latency histogram.
    pub buckets: [u64; BUCKETS],
}

impl StatsSnapshot {
    /// Requests answered.
    pub fn requests(&self) -> u64 {
        self.classes.iter().sum()
    }

    /// Requests answered 5xx.
    pub fn errors(&self) -> u64 {
        self.classes[4]
    }
}

impl SlotStats {
    fn new() -> SlotStats {
        SlotStats {
            classes: std::array::from_fn(|_| AtomicU64::new(0)),
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }

    /// Counts one answered request.
    #[inline]
    fn observe(&self, code: u16, elapsed: Duration) {
        let class = (code / 100).clamp(1, 5) as usize - 1;
        self.classes[class].fetch_add(1, Ordering::Relaxed);
        let us = elapsed.as_micros().min(u64::MAX as u128) as u64;
        let bucket = LATENCY_BOUNDS_US.partition_point(|&b| b < us);
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
    }

    /// The counters now.
    pub fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            classes: std::array::from_fn(|i| self.classes[i].load(Ordering::Relaxed)),
            buckets: std::array::from_fn(|i| self.buckets[i].load(Ordering::Relaxed)),
        }
    }
}

/// Both slots' counters and the moment counting started.
#[derive(Debug)]
pub struct Stats {
    slots: [SlotStats; 2],
    started: Instant,
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            slots: [SlotStats::new(), SlotStats::new()],
            started: Instant::now(),
        }
    }
}

impl Stats {
    /// Counts one answered request of `slot`.
    #[inline]
    pub fn observe(&self, slot: SlotName, code: u16, elapsed: Duration) {
        self.slots[slot.index()].observe(code, elapsed);
    }

    /// `slot`'s counters now.
    pub fn snapshot(&self, slot: SlotName) -> StatsSnapshot {
        self.slots[slot.index()].snapshot()
    }

    /// Time since counting started.
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_and_buckets_count_each_request_once() {
        let s = Stats::default();
        s.observe(SlotName::Green, 200, Duration::from_micros(90));
        s.observe(SlotName::Green, 502, Duration::from_millis(3));
        s.observe(SlotName::Green, 999, Duration::from_secs(100));
        let g = s.snapshot(SlotName::Green);
        assert_eq!(g.classes, [0, 1, 0, 0, 2]);
        assert_eq!((g.requests(), g.errors()), (3, 2));
        assert_eq!(g.buckets[0], 1);
        assert_eq!(g.buckets[5], 1);
        assert_eq!(g.buckets[BUCKETS - 1], 1);
        assert_eq!(s.snapshot(SlotName::Blue).requests(), 0);
    }
}
