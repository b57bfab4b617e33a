//! The admin socket: Bascule's [`Handler`] for the admin protocol, served as a Pingora
//! background service. It turns commands into [`Control`] calls and the snapshot into the
//! admin crate's reply types; every change and its side effects (drain watch included) live
//! in [`Control`].

use std::os::unix::net::UnixListener;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bascule_admin::{
    Command, DrainReply, DrainTimes, FlipReply, Handler, HealthReply, HelpReply, LatencyBucket,
    MemberHealth, Percentiles, Progress, ReloadReply, Reply, SetReply, SlotState, SlotStatus,
    Slots, StatsReply, Status, StatusClasses, Upstream, Weights, WeightsReply, HELP,
};
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;

use crate::admin::deploy;
use crate::control::{last_rollback, Applied, Control, ControlError, FlipOutcome};
use crate::slots::metrics::Metrics;
use crate::slots::routing::Routing;
use crate::slots::stats::{StatsSnapshot, LATENCY_BOUNDS_US};
use crate::SlotName;

/// Longest `drain --wait` or `deploy` step when no `--timeout` is given.
const DEFAULT_WAIT: Duration = Duration::from_secs(60);

/// Answers admin commands from the routing snapshot.
pub struct AdminHandler {
    control: Arc<Control>,
}

impl AdminHandler {
    /// A handler over `control`.
    pub fn new(control: Arc<Control>) -> Arc<AdminHandler> {
        Arc::new(AdminHandler { control })
    }
}

fn rfc3339(t: Option<SystemTime>) -> Option<String> {
    t.map(|t| humantime::format_rfc3339_seconds(t).to_string())
}

/// Active, draining or idle.
fn slot_state(r: &Routing, slot: SlotName) -> SlotState {
    if r.takes_traffic(slot) {
        SlotState::Active
    } else if r.counters.inflight(slot) > 0 {
        SlotState::Draining
    } else {
        SlotState::Idle
    }
}

fn slot_status(r: &Routing, slot: SlotName) -> SlotStatus {
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

fn status(r: &Routing) -> Status {
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

fn health(r: &Routing) -> HealthReply {
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

fn stats(r: &Routing, m: &Metrics) -> StatsReply {
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

#[async_trait]
impl Handler for AdminHandler {
    async fn handle(&self, cmd: Command) -> Result<Reply, String> {
        self.handle_with_progress(cmd, Progress::none()).await
    }

    async fn handle_with_progress(
        &self,
        cmd: Command,
        progress: Progress,
    ) -> Result<Reply, String> {
        let c = &self.control;
        let reply = match cmd {
            Command::Status => {
                let mut s = status(&c.load());
                s.warnings.extend(c.start_warning().map(str::to_string));
                if let Some(link) = c.cluster() {
                    s.cluster = Some(link.status().await);
                }
                Reply::Status(s)
            }
            Command::Help => Reply::Help(HelpReply {
                commands: HELP.iter().map(|h| h.to_string()).collect(),
            }),
            Command::Flip {
                slot,
                force,
                drain_timeout,
            } => {
                let (o, warning) = live(c.flip(slot, force, drain_timeout).await, flip_of)?;
                Reply::Flip(flip_reply(o, warning))
            }
            Command::Rollback { force } => {
                let (o, warning) = live(c.rollback(force).await, flip_of)?;
                Reply::Flip(flip_reply(o, warning))
            }
            Command::Set { slot, field, force } => {
                let (r, warning) = live(c.set(slot, field, force).await, routing_of)?;
                Reply::Set(SetReply {
                    slot,
                    generation: r.generation,
                    status: slot_status(&r, slot),
                    warning,
                })
            }
            Command::Drain {
                slot,
                wait,
                timeout,
            } => {
                let counters = c.load().counters.clone();
                let drained = if wait {
                    c.wait_drained_everywhere(slot, timeout.unwrap_or(DEFAULT_WAIT))
                        .await
                } else {
                    counters.inflight(slot) == 0
                };
                Reply::Drain(DrainReply {
                    slot,
                    inflight: counters.inflight(slot),
                    drained,
                    state: slot_state(&c.load(), slot),
                })
            }
            Command::Health => Reply::Health(health(&c.load())),
            Command::Weights { blue, green } => {
                let (r, warning) = live(c.weights(blue, green).await, routing_of)?;
                Reply::Weights(WeightsReply {
                    weights: Weights { blue, green },
                    generation: r.generation,
                    warning,
                })
            }
            Command::Deploy {
                slot,
                upstreams,
                version,
                timeout,
                progress: _,
            } => {
                let timeout = timeout.unwrap_or(DEFAULT_WAIT);
                let d = deploy::deploy(c, slot, upstreams, version, timeout, &progress);
                Reply::Deploy(d.await?)
            }
            Command::Stats => Reply::Stats(stats(&c.load(), c.metrics())),
            Command::Reload => {
                let take = |a| match a {
                    Applied::Reload(changes) => Some(changes),
                    _ => None,
                };
                let (reloaded, warning) = live(c.reload().await, take)?;
                Reply::Reload(ReloadReply {
                    changed: reloaded.changed,
                    restart_needed: reloaded.restart_needed,
                    warning,
                })
            }
        };
        Ok(reply)
    }
}

/// The admin socket as a Pingora background service.
pub struct AdminService {
    listener: Mutex<Option<UnixListener>>,
    handler: Arc<AdminHandler>,
}

impl AdminService {
    /// Serves `listener` (bound by [`bascule_admin::server::bind`]) with `handler`.
    pub fn new(listener: UnixListener, handler: Arc<AdminHandler>) -> AdminService {
        AdminService {
            listener: Mutex::new(Some(listener)),
            handler,
        }
    }
}

#[async_trait]
impl BackgroundService for AdminService {
    async fn start(&self, shutdown: ShutdownWatch) {
        let listener = self
            .listener
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(listener) = listener {
            let idle = self.handler.control.config().admin.idle_timeout;
            bascule_admin::server::serve(listener, self.handler.clone(), idle, shutdown).await;
        }
    }
}
