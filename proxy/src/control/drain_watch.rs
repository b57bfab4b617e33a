//! Enforcement of a drain timeout: one watcher per drain, started by every change that takes
//! a slot off duty (flip, rollback, the flip of a deploy).
//!
//! A watcher is keyed on its drain, the generation of the snapshot that took the slot off
//! duty, not on the slot being "draining": after a flip A→B→A→B within one timeout, the
//! slot is draining again, but under a later drain with its own deadline, and the first
//! watcher must leave it alone.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::slots::counters::SlotCounters;
use crate::slots::metrics::Metrics;
use crate::SlotName;

/// Time upgraded connections get to close after their close frame, before a TCP shutdown.
const CUT_GRACE: Duration = Duration::from_secs(2);
/// How often a watcher looks: drains are watched by people and scripts, so 10 ms is plenty,
/// and the request path stays free of any wake-up work.
const STEP: Duration = Duration::from_millis(10);

/// How a watched drain ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// Nothing left in flight before the deadline.
    Drained,
    /// A later change took the slot back on duty, or off it again: no longer this drain.
    Superseded,
    /// The deadline passed with requests still in flight.
    TimedOut,
}

/// Watches the drain of `slot` that snapshot `generation` started: records how long it took,
/// or, when `timeout` runs out first and no later change owns the slot, asks its upgraded
/// connections to close (WebSocket close 1001), shuts down its long upstream exchanges, and
/// shuts the upgraded ones down after a grace period. Cuts are counted and logged.
pub(crate) fn spawn(
    counters: Arc<SlotCounters>,
    metrics: Arc<Metrics>,
    slot: SlotName,
    generation: u64,
    timeout: Duration,
) {
    tokio::spawn(async move {
        let started = Instant::now();
        // Bounded at parse time; checked here too, so no deadline can overflow.
        let deadline = started
            .checked_add(timeout)
            .unwrap_or(started + bascule_config::MAX_DURATION);
        match wait(&counters, slot, generation, deadline).await {
            End::Superseded => {}
            End::Drained => {
                let seconds = started.elapsed().as_secs_f64();
                metrics.drain_duration.observe(seconds);
                tracing::info!(slot = %slot, seconds, "slot drained");
            }
            End::TimedOut => cut(&counters, slot, generation).await,
        }
    });
}

async fn wait(counters: &SlotCounters, slot: SlotName, generation: u64, deadline: Instant) -> End {
    loop {
        if counters.drain_mark(slot).generation != generation {
            return End::Superseded;
        }
        if counters.inflight(slot) == 0 {
            return End::Drained;
        }
        if Instant::now() >= deadline {
            return End::TimedOut;
        }
        tokio::time::sleep(STEP).await;
    }
}

async fn cut(counters: &SlotCounters, slot: SlotName, generation: u64) {
    let asked = counters.upgraded.close_all(slot);
    let long = counters.exchanges.shutdown_all(slot);
    counters.add_cut(slot, (asked + long) as u64);
    let end = wait(counters, slot, generation, Instant::now() + CUT_GRACE).await;
    let forced = match end {
        End::TimedOut => counters.upgraded.shutdown_all(slot),
        End::Drained | End::Superseded => 0,
    };
    tracing::warn!(
        slot = %slot,
        upgraded_closed = asked,
        requests_cut = long,
        shut_down = forced,
        still_inflight = counters.inflight(slot),
        "drain timed out; upgraded connections cut"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_later_drain_of_the_same_slot_supersedes_the_watch() {
        let counters = SlotCounters::new();
        let busy = counters.enter(SlotName::Blue);
        counters.mark_switch(SlotName::Blue, SlotName::Green, 2);
        let far = Instant::now() + Duration::from_secs(60);
        counters.mark_switch(SlotName::Green, SlotName::Blue, 3);
        counters.mark_switch(SlotName::Blue, SlotName::Green, 4);
        assert_eq!(
            wait(&counters, SlotName::Blue, 2, far).await,
            End::Superseded
        );
        let now = Instant::now();
        assert_eq!(wait(&counters, SlotName::Blue, 4, now).await, End::TimedOut);
        drop(busy);
        assert_eq!(wait(&counters, SlotName::Blue, 4, far).await, End::Drained);
    }
}
