//! The admin crate's reply types made from the routing snapshot and from what a change
//! applied: shared by the command handler and `deploy`, apart from both.

use std::sync::Arc;
use std::time::SystemTime;

use bascule_admin::{
    DrainTimes, FlipReply, HealthReply, LatencyBucket, MemberHealth, Percentiles, SlotState,
    SlotStatus, Slots, StatsReply, Status, StatusClasses, Upstream, Weights,
};

use crate::control::{last_rollback, Applied, ControlError, FlipOutcome};
use crate::slots::metrics::Metrics;
use crate::slots::routing::Routing;
use crate::slots::stats::{StatsSnapshot, LATENCY_BOUNDS_US};
use crate::SlotName;

fn rfc3339(t: Option<SystemTime>) -> Option<String> {
    t.map(|t| humantime::format_rfc3339_seconds(t).to_string())
}

/// Active, draining or idle.
pub(crate) fn slot_state(r: &Routing, slot: SlotName) -> SlotState {
    if r.takes_traffic(slot) {
        SlotState::Active
    } else if r.counters.inflight(slot) > 0 {
        SlotState::Draining
    } else {
        SlotState::Idle
    }
}

pub(crate) fn slot_status(r: &Routing, slot: SlotName) -> SlotStatus {
    let s = r.slot(slot);
    let state = slot_state(r, slot);
    let drain = (state != SlotState::Active).then(|| {
        let mark = r.counters.drain_mark(slot);
        DrainTimes {
            drain_started: rfc3339(mark.since),
            drain_seconds: mark.since_instant.map(|i| i.elapsed().as_secs_f64()),
        }
    });
    SlotStatus {
        state,
        version: s.version.clone(),
        inflight: r.counters.inflight(slot),
        served: r.counters.served(slot),
        cut: r.counters.cut(slot),
        upgraded: r.counters.upgraded.count(slot) as u64,
        pooled: s.pool.members().iter().map(|m| m.idle.len() as u64).sum(),
        static_root: s.static_root.clone(),
        upstreams: s
            .pool
            .members()
            .iter()
            .map(|m| Upstream {
                address: m.address.clone(),
                healthy: m.health.healthy(),
            })
            .collect(),
        drain,
    }
}

pub(crate) fn status(r: &Routing) -> Status {
    Status {
        active: r.active,
        previous: r.previous,
        last_switch: rfc3339(r.last_switch),
        generation: r.generation,
        weights: r.weights.map(|[blue, green]| Weights { blue, green }),
        slots: Slots {
            blue: slot_status(r, SlotName::Blue),
            green: slot_status(r, SlotName::Green),
        },
        last_rollback: r.last_rollback.as_deref().map(last_rollback),
        cluster: None,
        warnings: Vec::new(),
    }
}

pub(crate) fn health(r: &Routing) -> HealthReply {
    let mut upstreams = Vec::new();
    for slot in SlotName::ALL {
        for m in r.slot(slot).pool.members() {
            let last = m.health.last();
            upstreams.push(MemberHealth {
                slot,
                address: m.address.clone(),
                healthy: m.health.healthy(),
                last_check: rfc3339(last.at),
                last_error: last.error,
                ejected_until: rfc3339(m.health.ejected_until()),
            });
        }
    }
    HealthReply { upstreams }
}

fn slot_stats(r: &Routing, slot: SlotName, s: StatsSnapshot) -> bascule_admin::SlotStats {
    let [c1xx, c2xx, c3xx, c4xx, c5xx] = s.classes;
    let latency_buckets: Vec<LatencyBucket> = s
        .buckets
        .iter()
        .enumerate()
        .map(|(i, &count)| LatencyBucket {
            le_ms: LATENCY_BOUNDS_US.get(i).map(|&us| us as f64 / 1000.0),
            count,
        })
        .collect();
    bascule_admin::SlotStats {
        requests: s.requests(),
        status: StatusClasses {
            c1xx,
            c2xx,
            c3xx,
            c4xx,
            c5xx,
        },
        latency_ms: Percentiles::of(&latency_buckets),
        inflight: r.counters.inflight(slot),
        latency_buckets,
    }
}

pub(crate) fn stats(r: &Routing, m: &Metrics) -> StatsReply {
    let of = |slot| slot_stats(r, slot, m.stats.snapshot(slot));
    StatsReply {
        uptime_seconds: m.stats.uptime().as_secs_f64(),
        blue: of(SlotName::Blue),
        green: of(SlotName::Green),
        preview_requests: m.preview_requests.get(),
    }
}

pub(crate) fn flip_reply(o: FlipOutcome, warning: Option<String>) -> FlipReply {
    FlipReply {
        active: o.active,
        previous: o.previous,
        generation: o.generation,
        changed: o.changed,
        warning,
    }
}

/// A change's outcome with the warning to show when it went live without being saved; any
/// other error is the refusal's message.
pub(crate) fn live<T>(
    result: Result<T, ControlError>,
    take: impl FnOnce(Applied) -> Option<T>,
) -> Result<(T, Option<String>), String> {
    match result {
        Ok(v) => Ok((v, None)),
        Err(e) => e
            .applied(take)
            .map(|(v, w)| (v, Some(w)))
            .map_err(|e| e.to_string()),
    }
}

pub(crate) fn flip_of(a: Applied) -> Option<FlipOutcome> {
    match a {
        Applied::Flip(o) => Some(o),
        _ => None,
    }
}

pub(crate) fn routing_of(a: Applied) -> Option<Arc<Routing>> {
    match a {
        Applied::Routing(r) => Some(r),
        _ => None,
    }
}
