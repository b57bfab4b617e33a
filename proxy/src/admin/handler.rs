//! The admin socket: Bascule's [`Handler`] for the admin protocol, served as a Pingora
//! background service. It turns commands into [`Control`] calls and the snapshot into the
//! admin crate's reply types; every change and its side effects (drain watch included) live
//! in [`Control`].

use std::os::unix::net::UnixListener;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bascule_admin::{
    Command, DeployReply, DrainReply, DrainTimes, FlipReply, Handler, HealthReply, HelpReply,
    MemberHealth, ReloadReply, Reply, SetField, SetReply, SlotState, SlotStatus, Slots, Status,
    Step, StepDetail, Upstream, Weights, WeightsReply, HELP,
};
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;

use crate::control::{Applied, Control, ControlError, FlipOutcome};
use crate::slots::routing::Routing;
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

fn flip_reply(o: FlipOutcome, warning: Option<String>) -> FlipReply {
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
fn live<T>(
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

fn flip_of(a: Applied) -> Option<FlipOutcome> {
    match a {
        Applied::Flip(o) => Some(o),
        _ => None,
    }
}

fn routing_of(a: Applied) -> Option<Arc<Routing>> {
    match a {
        Applied::Routing(r) => Some(r),
        _ => None,
    }
}

impl AdminHandler {
    async fn deploy(
        &self,
        slot: SlotName,
        upstreams: Vec<String>,
        version: Option<String>,
        timeout: Option<Duration>,
    ) -> Result<DeployReply, String> {
        let timeout = timeout.unwrap_or(DEFAULT_WAIT);
        let steps = Mutex::new(Vec::<Step>::new());
        let step = |name: &str, ok: bool, detail: StepDetail| {
            steps.lock().unwrap_or_else(|p| p.into_inner()).push(Step {
                step: name.into(),
                ok,
                detail,
            });
        };
        let fail = |msg: String| -> Result<DeployReply, String> {
            let done = steps.lock().unwrap_or_else(|p| p.into_inner());
            let done = serde_json::to_string(&*done).unwrap_or_default();
            Err(format!("{msg}; steps done: {done}"))
        };
        let set = |field| self.control.set(slot, field, false);
        if let Err(e) = live(
            set(SetField::Upstreams(upstreams.clone())).await,
            routing_of,
        ) {
            return fail(format!("set upstreams: {e}"));
        }
        step("set upstreams", true, StepDetail::Upstreams(upstreams));
        if let Some(v) = version {
            if let Err(e) = live(set(SetField::Version(v.clone())).await, routing_of) {
                return fail(format!("set version: {e}"));
            }
            step("set version", true, StepDetail::Version(v));
        }
        if !self.control.wait_healthy(slot, timeout).await {
            let why = self.control.refusal(slot).await.unwrap_or_default();
            return fail(format!(
                "{slot} did not become healthy within {}: {why}",
                humantime::format_duration(timeout)
            ));
        }
        step("healthy", true, StepDetail::None);
        let from = self.control.load().active;
        // The flip starts its drain watch: the drain timeout applies to a deploy too.
        let (outcome, warning) = match live(self.control.flip(slot, false, None).await, flip_of) {
            Ok(o) => o,
            Err(e) => return fail(format!("flip: {e}")),
        };
        step(
            "flip",
            true,
            StepDetail::Flip(flip_reply(outcome.clone(), warning)),
        );
        let counters = self.control.load().counters.clone();
        let drained = from == slot || counters.wait_drained(from, timeout).await;
        let inflight = counters.inflight(from);
        step(
            "drain",
            drained,
            StepDetail::Drain {
                slot: from,
                inflight,
            },
        );
        Ok(DeployReply {
            active: outcome.active,
            previous: outcome.previous,
            generation: outcome.generation,
            drained,
            steps: steps.into_inner().unwrap_or_else(|p| p.into_inner()),
        })
    }
}

#[async_trait]
impl Handler for AdminHandler {
    async fn handle(&self, cmd: Command) -> Result<Reply, String> {
        let c = &self.control;
        let reply = match cmd {
            Command::Status => Reply::Status(status(&c.load())),
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
                    counters
                        .wait_drained(slot, timeout.unwrap_or(DEFAULT_WAIT))
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
            } => Reply::Deploy(self.deploy(slot, upstreams, version, timeout).await?),
            Command::Reload => {
                let take = |a| match a {
                    Applied::Reload(changes) => Some(changes),
                    _ => None,
                };
                let (changed, warning) = live(c.reload().await, take)?;
                Reply::Reload(ReloadReply { changed, warning })
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
            bascule_admin::server::serve(listener, self.handler.clone(), shutdown).await;
        }
    }
}
