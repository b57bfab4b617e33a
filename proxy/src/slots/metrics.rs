//! Prometheus metrics: the registry and the counters the request path bumps.
//!
//! The request path touches only pre-resolved counters (one relaxed atomic add each): label
//! lookups happen once per (slot, status) pair. Gauges that mirror state (`inflight`,
//! `upstream_healthy`) are read from the snapshot when scraped, not kept up to date per request.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use crate::slots::routing::Routing;
use crate::slots::stats::Stats;
use crate::SlotName;
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Every metric Bascule exports.
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    by_code: [Box<[OnceLock<IntCounter>]>; 2],
    durations: [Histogram; 2],
    inflight: IntGaugeVec,
    active: IntGaugeVec,
    upstream_healthy: IntGaugeVec,
    /// Flips done since start.
    pub flips: IntCounter,
    /// How long slots took to drain after leaving active duty.
    pub drain_duration: Histogram,
    /// Idle client connections parked outside their tasks (updated once a second).
    pub parked: IntGauge,
    /// Automatic rollbacks since start.
    pub auto_rollbacks: IntCounter,
    /// Requests served by the slot they asked for (`[preview]`) since start.
    pub preview_requests: IntCounter,
    /// Per-slot counts and latency histogram, for `stats` and the automatic rollback.
    pub stats: Stats,
    /// Access log lines dropped because the writer's buffer was full.
    pub access_log_dropped: IntCounter,
    /// Requests refused by `[[rate_limits]]`, by prefix.
    pub rate_limited: IntCounterVec,
    /// Members ejected by `[outlier]`, by slot and member.
    pub ejections: IntCounterVec,
    /// Client connections accepted, by how they are served.
    pub connections: Connections,
    /// Woken by every 5xx a slot answers: the automatic rollback judges at the request that
    /// crosses its threshold, not at its next look.
    pub errors_seen: [tokio::sync::Notify; 2],
}

/// `bascule_connections_total`: client connections accepted, by transport (`plain`, `tls`) and
/// by what serves them (`fast`: the fast path's request loop, `h2`: HTTP/2 by ALPN), and
/// `bascule_handovers_total`: connections the fast path gave to the full proxy (an upgrade,
/// `CONNECT`, `fast_path = false`…), by transport. Label values are resolved once here.
pub struct Connections {
    /// HTTP/1.x connections on the fast path: plain, TLS.
    fast: [IntCounter; 2],
    /// HTTP/2 over TLS (the full proxy).
    pub h2: IntCounter,
    /// Connections handed over: plain, TLS.
    handovers: [IntCounter; 2],
}

impl Connections {
    /// Counts an HTTP/1.x connection taken by the fast path.
    pub fn fast(&self, tls: bool) {
        self.fast[usize::from(tls)].inc();
    }

    /// Counts a connection handed to the full proxy.
    pub fn handed_over(&self, tls: bool) {
        self.handovers[usize::from(tls)].inc();
    }
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Arc<Metrics> {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "bascule_requests_total",
                "Requests answered, by slot and status code",
            ),
            &["slot", "code"],
        )
        .expect("valid metric");
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "bascule_request_duration_seconds",
                "Time from request start to the end of the response, by slot",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0,
            ]),
            &["slot"],
        )
        .expect("valid metric");
        let inflight = IntGaugeVec::new(
            Opts::new(
                "bascule_inflight",
                "Requests and connections in flight, by slot",
            ),
            &["slot"],
        )
        .expect("valid metric");
        let active = IntGaugeVec::new(
            Opts::new(
                "bascule_active_slot",
                "1 for the active slot, 0 for the other",
            ),
            &["slot"],
        )
        .expect("valid metric");
        let upstream_healthy = IntGaugeVec::new(
            Opts::new(
                "bascule_upstream_healthy",
                "1 when the upstream passes its health checks",
            ),
            &["slot", "upstream"],
        )
        .expect("valid metric");
        let flips =
            IntCounter::new("bascule_flips_total", "Flips since start").expect("valid metric");
        let drain_duration = Histogram::with_opts(
            HistogramOpts::new(
                "bascule_drain_duration_seconds",
                "Time a slot took to drain after it left active duty",
            )
            .buckets(vec![0.01, 0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0]),
        )
        .expect("valid metric");
        let parked = IntGauge::new(
            "bascule_connections_parked",
            "Idle keep-alive client connections waiting outside their tasks",
        )
        .expect("valid metric");
        let auto_rollbacks = IntCounter::new(
            "bascule_auto_rollbacks_total",
            "Flips back made by the automatic rollback since start",
        )
        .expect("valid metric");
        let preview_requests = IntCounter::new(
            "bascule_preview_requests_total",
            "Requests served by the slot they asked for (preview) since start",
        )
        .expect("valid metric");
        let access_log_dropped = IntCounter::new(
            "bascule_access_log_dropped_total",
            "Access log lines dropped because the writer's buffer was full",
        )
        .expect("valid metric");
        let rate_limited = IntCounterVec::new(
            Opts::new(
                "bascule_rate_limited_total",
                "Requests answered 429 by a rate limit, by its prefix",
            ),
            &["prefix"],
        )
        .expect("valid metric");
        let ejections = IntCounterVec::new(
            Opts::new(
                "bascule_outlier_ejections_total",
                "Upstream members ejected for failing requests in a row, by slot and member",
            ),
            &["slot", "upstream"],
        )
        .expect("valid metric");
        let accepted = IntCounterVec::new(
            Opts::new(
                "bascule_connections_total",
                "Client connections accepted, by transport and by what serves them",
            ),
            &["transport", "served_by"],
        )
        .expect("valid metric");
        let handovers = IntCounterVec::new(
            Opts::new(
                "bascule_handovers_total",
                "Client connections the fast path handed to the full proxy, by transport",
            ),
            &["transport"],
        )
        .expect("valid metric");
        let connections = Connections {
            fast: ["plain", "tls"].map(|t| accepted.with_label_values(&[t, "fast"])),
            h2: accepted.with_label_values(&["tls", "h2"]),
            handovers: ["plain", "tls"].map(|t| handovers.with_label_values(&[t])),
        };
        for c in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(accepted),
            Box::new(handovers),
            Box::new(duration.clone()),
            Box::new(inflight.clone()),
            Box::new(active.clone()),
            Box::new(upstream_healthy.clone()),
            Box::new(flips.clone()),
            Box::new(drain_duration.clone()),
            Box::new(parked.clone()),
            Box::new(auto_rollbacks.clone()),
            Box::new(preview_requests.clone()),
            Box::new(access_log_dropped.clone()),
            Box::new(rate_limited.clone()),
            Box::new(ejections.clone()),
        ] {
            registry.register(c).expect("unique metric names");
        }
        let codes = || (0..600).map(|_| OnceLock::new()).collect::<Box<[_]>>();
        Arc::new(Metrics {
            registry,
            by_code: [codes(), codes()],
            durations: [
                duration.with_label_values(&["blue"]),
                duration.with_label_values(&["green"]),
            ],
            requests,
            inflight,
            active,
            upstream_healthy,
            flips,
            drain_duration,
            parked,
            auto_rollbacks,
            preview_requests,
            stats: Stats::default(),
            errors_seen: [tokio::sync::Notify::new(), tokio::sync::Notify::new()],
            access_log_dropped,
            rate_limited,
            ejections,
            connections,
        })
    }

    /// Counts one answered request.
    #[inline]
    pub fn observe(&self, slot: SlotName, code: u16, elapsed: Duration) {
        let table = &self.by_code[slot.index()];
        match table.get(code as usize) {
            Some(cell) => cell
                .get_or_init(|| {
                    self.requests
                        .with_label_values(&[slot.as_str(), &code.to_string()])
                })
                .inc(),
            None => self
                .requests
                .with_label_values(&[slot.as_str(), &code.to_string()])
                .inc(),
        }
        self.durations[slot.index()].observe(elapsed.as_secs_f64());
        self.stats.observe(slot, code, elapsed);
        if code >= 500 {
            self.errors_seen[slot.index()].notify_one();
        }
    }

    /// Marks `slot` as the active one.
    pub fn set_active(&self, slot: SlotName) {
        for s in SlotName::ALL {
            self.active
                .with_label_values(&[s.as_str()])
                .set((s == slot) as i64);
        }
    }

    /// The text exposition of every metric, with state gauges read from `control` now.
    pub fn render(&self, routing: &Routing) -> String {
        self.upstream_healthy.reset();
        for slot in SlotName::ALL {
            self.inflight
                .with_label_values(&[slot.as_str()])
                .set(routing.counters.inflight(slot) as i64);
            for m in routing.slot(slot).pool.members() {
                self.upstream_healthy
                    .with_label_values(&[slot.as_str(), &m.address])
                    .set(m.health.usable() as i64);
            }
        }
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("text encoding cannot fail");
        String::from_utf8(out).expect("text encoding is UTF-8")
    }
}
