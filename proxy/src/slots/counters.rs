//! Per-slot in-flight accounting.
//!
//! The counters outlive any one routing snapshot: a request that started on blue before a flip
//! still decrements blue's counter when it ends. A request enters by [`SlotCounters::enter`]
//! and leaves when its [`InflightGuard`] drops, which Pingora does when it drops the request
//! context, whatever the outcome (client gone, upstream error, timeout).

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use crate::slots::upgraded::{Exchanges, UpgradedConns};
use crate::SlotName;

/// Counters of one slot.
#[derive(Debug, Default)]
pub struct SlotCounter {
    inflight: AtomicI64,
    served: AtomicU64,
    cut: AtomicU64,
}

/// Drain bookkeeping of one slot: when it left active duty, and by which change.
#[derive(Debug, Default, Clone, Copy)]
pub struct DrainMark {
    /// Generation of the snapshot that took the slot off duty: names this drain, so that a
    /// watcher of an earlier drain of the same slot can tell it is no longer in charge.
    pub generation: u64,
    /// When the slot stopped taking new requests (wall clock, for status).
    pub since: Option<SystemTime>,
    /// The same instant on the monotonic clock, for durations.
    pub since_instant: Option<Instant>,
}

/// The counters of both slots; shared by every snapshot.
#[derive(Debug, Default)]
pub struct SlotCounters {
    slots: [SlotCounter; 2],
    marks: Mutex<[DrainMark; 2]>,
    /// Upgraded connections, which a drain that times out closes.
    pub upgraded: UpgradedConns,
    /// The fast path's upstream exchanges, which a drain that times out shuts down.
    pub exchanges: Exchanges,
}

impl SlotCounters {
    /// New counters at zero, shareable.
    pub fn new() -> Arc<SlotCounters> {
        Arc::new(SlotCounters::default())
    }

    /// Counts a request or connection against `slot` until the guard drops.
    pub fn enter(self: &Arc<Self>, slot: SlotName) -> InflightGuard {
        let c = &self.slots[slot.index()];
        c.inflight.fetch_add(1, Ordering::Relaxed);
        c.served.fetch_add(1, Ordering::Relaxed);
        InflightGuard {
            counters: self.clone(),
            slot,
        }
    }

    /// Requests and connections in flight on `slot` now.
    pub fn inflight(&self, slot: SlotName) -> u64 {
        self.slots[slot.index()]
            .inflight
            .load(Ordering::Acquire)
            .max(0) as u64
    }

    /// Requests and connections ever counted against `slot`.
    pub fn served(&self, slot: SlotName) -> u64 {
        self.slots[slot.index()].served.load(Ordering::Relaxed)
    }

    /// Connections cut on `slot` because its drain timed out.
    pub fn cut(&self, slot: SlotName) -> u64 {
        self.slots[slot.index()].cut.load(Ordering::Relaxed)
    }

    /// Records `n` connections cut on `slot`.
    pub fn add_cut(&self, slot: SlotName, n: u64) {
        self.slots[slot.index()].cut.fetch_add(n, Ordering::Relaxed);
    }

    /// Marks `from` as having left active duty now, by the change that made snapshot
    /// `generation`, and `to` as having taken it.
    pub fn mark_switch(&self, from: SlotName, to: SlotName, generation: u64) {
        let mut marks = self.marks.lock().unwrap_or_else(|p| p.into_inner());
        marks[from.index()] = DrainMark {
            generation,
            since: Some(SystemTime::now()),
            since_instant: Some(Instant::now()),
        };
        marks[to.index()] = DrainMark::default();
    }

    /// When `slot` left active duty, if it has.
    pub fn drain_mark(&self, slot: SlotName) -> DrainMark {
        self.marks.lock().unwrap_or_else(|p| p.into_inner())[slot.index()]
    }

    /// Waits until `slot` has nothing in flight or `timeout` passes; returns whether it drained.
    ///
    /// Polls: drains are watched by people and scripts, so a 10 ms step is plenty, and the
    /// request path stays free of any wake-up work.
    pub async fn wait_drained(&self, slot: SlotName, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.inflight(slot) == 0 {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// Holds one unit of a slot's in-flight count; dropping it releases the unit.
#[derive(Debug)]
pub struct InflightGuard {
    counters: Arc<SlotCounters>,
    slot: SlotName,
}

impl InflightGuard {
    /// The slot this guard counts against.
    pub fn slot(&self) -> SlotName {
        self.slot
    }
}

impl Drop for InflightGuard {
    fn drop(&mut self) {
        self.counters.slots[self.slot.index()]
            .inflight
            .fetch_sub(1, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guards_count_and_release() {
        let c = SlotCounters::new();
        let a = c.enter(SlotName::Blue);
        let b = c.enter(SlotName::Blue);
        let g = c.enter(SlotName::Green);
        assert_eq!(c.inflight(SlotName::Blue), 2);
        assert_eq!(c.inflight(SlotName::Green), 1);
        drop(a);
        drop(g);
        assert_eq!(c.inflight(SlotName::Blue), 1);
        assert_eq!(c.inflight(SlotName::Green), 0);
        drop(b);
        assert_eq!(c.inflight(SlotName::Blue), 0);
        assert_eq!(c.served(SlotName::Blue), 2);
    }
}
