//! The admin socket: Bascule's [`Handler`] for the admin protocol, served as a Pingora
//! background service.

use std::os::unix::net::UnixListener;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bascule_admin::{Command, Handler, ReplyFields, SetField, HELP};
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use serde_json::{json, Value};

use crate::control::{Control, FlipOutcome, SlotChange};
use crate::slots::routing::Routing;
use crate::SlotName;

/// Longest `drain --wait` or `deploy` step when no `--timeout` is given.
const DEFAULT_WAIT: Duration = Duration::from_secs(60);
/// Time upgraded connections get to close after their close frame, before a TCP shutdown.
const CUT_GRACE: Duration = Duration::from_secs(2);

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

fn rfc3339(t: Option<SystemTime>) -> Value {
    t.map_or(Value::Null, |t| {
        Value::String(humantime::format_rfc3339_seconds(t).to_string())
    })
}

fn fields(v: Value) -> ReplyFields {
    match v {
        Value::Object(map) => map,
        other => {
            let mut m = ReplyFields::new();
            m.insert("value".into(), other);
            m
        }
    }
}

/// `active`, `draining` or `idle`.
pub fn slot_state(r: &Routing, slot: SlotName) -> &'static str {
    if r.takes_traffic(slot) {
        "active"
    } else if r.counters.inflight(slot) > 0 {
        "draining"
    } else {
        "idle"
    }
}

fn slot_json(r: &Routing, slot: SlotName) -> Value {
    let s = r.slot(slot);
    let upstreams: Vec<Value> = s
        .pool
        .members()
        .iter()
        .map(|m| json!({"address": m.address, "healthy": m.health.healthy()}))
        .collect();
    let state = slot_state(r, slot);
    let mark = r.counters.drain_mark(slot);
    let mut v = json!({
        "state": state,
        "version": s.version,
        "inflight": r.counters.inflight(slot),
        "served": r.counters.served(slot),
        "cut": r.counters.cut(slot),
        "upgraded": r.counters.upgraded.count(slot),
        "pooled": s.pool.members().iter().map(|m| m.idle.len()).sum::<usize>(),
        "static_root": s.static_root,
        "upstreams": upstreams,
    });
    if state != "active" {
        v["drain_started"] = rfc3339(mark.since);
        v["drain_seconds"] = mark
            .since_instant
            .map_or(Value::Null, |i| json!(i.elapsed().as_secs_f64()));
    }
    v
}

fn status_json(r: &Routing) -> Value {
    json!({
        "active": r.active,
        "previous": r.previous,
        "last_switch": rfc3339(r.last_switch),
        "generation": r.generation,
        "weights": r.weights.map(|[b, g]| json!({"blue": b, "green": g})),
        "slots": {
            "blue": slot_json(r, SlotName::Blue),
            "green": slot_json(r, SlotName::Green),
        },
    })
}

fn flip_json(o: &FlipOutcome) -> Value {
    json!({
        "active": o.active,
        "previous": o.previous,
        "generation": o.generation,
        "changed": o.changed,
    })
}

impl AdminHandler {
    /// After a flip away from `from`: waits for it to drain and records how long it took. When
    /// `timeout` runs out first (and `from` has not become active again), its upgraded
    /// connections are asked to close (WebSocket close 1001), then shut down after a grace
    /// period; how many were cut is counted and logged.
    fn watch_drain(&self, from: SlotName, timeout: Duration) {
        let control = self.control.clone();
        tokio::spawn(async move {
            let counters = control.load().counters.clone();
            let started = std::time::Instant::now();
            if counters.wait_drained(from, timeout).await {
                control
                    .metrics()
                    .drain_duration
                    .observe(started.elapsed().as_secs_f64());
                tracing::info!(slot = %from, seconds = started.elapsed().as_secs_f64(), "slot drained");
                return;
            }
            if slot_state(&control.load(), from) != "draining" {
                return;
            }
            let asked = counters.upgraded.close_all(from);
            let long = counters.exchanges.shutdown_all(from);
            counters.add_cut(from, (asked + long) as u64);
            let drained = counters.wait_drained(from, CUT_GRACE).await;
            let forced = if drained {
                0
            } else {
                counters.upgraded.shutdown_all(from)
            };
            tracing::warn!(
                slot = %from,
                upgraded_closed = asked,
                requests_cut = long,
                shut_down = forced,
                still_inflight = counters.inflight(from),
                "drain timed out; upgraded connections cut"
            );
        });
    }

    /// The reply to a flip or rollback; starts watching the drain of the slot it left.
    fn flipped(&self, outcome: FlipOutcome, drain_timeout: Option<Duration>) -> Value {
        if let Some(left) = outcome
            .previous
            .filter(|&p| outcome.changed && p != outcome.active)
        {
            let timeout = drain_timeout.unwrap_or(self.control.config().drain.timeout);
            self.watch_drain(left, timeout);
        }
        flip_json(&outcome)
    }

    async fn deploy(
        &self,
        slot: SlotName,
        upstreams: Vec<String>,
        version: Option<String>,
        timeout: Option<Duration>,
    ) -> Result<Value, String> {
        let timeout = timeout.unwrap_or(DEFAULT_WAIT);
        let steps = Arc::new(Mutex::new(Vec::<Value>::new()));
        let step = |name: &str, ok: bool, detail: Value| {
            steps
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(json!({"step": name, "ok": ok, "detail": detail}));
        };
        let fail = |msg: String| -> Result<Value, String> {
            let done = steps.lock().unwrap_or_else(|p| p.into_inner()).clone();
            Err(format!("{msg}; steps done: {}", Value::Array(done)))
        };
        if let Err(e) = self
            .control
            .set(slot, SlotChange::Upstreams(upstreams.clone()), false)
            .await
        {
            return fail(format!("set upstreams: {e}"));
        }
        step("set upstreams", true, json!(upstreams));
        if let Some(v) = version {
            if let Err(e) = self
                .control
                .set(slot, SlotChange::Version(v.clone()), false)
                .await
            {
                return fail(format!("set version: {e}"));
            }
            step("set version", true, json!(v));
        }
        if !self.control.wait_healthy(slot, timeout).await {
            let why = self.control.refusal(slot).await.unwrap_or_default();
            return fail(format!(
                "{slot} did not become healthy within {}: {why}",
                humantime::format_duration(timeout)
            ));
        }
        step("healthy", true, Value::Null);
        let from = self.control.load().active;
        let outcome = match self.control.flip(slot, false).await {
            Ok(o) => o,
            Err(e) => return fail(format!("flip: {e}")),
        };
        // Same drain watch as a plain flip: the drain timeout applies to a deploy too.
        step("flip", true, self.flipped(outcome.clone(), None));
        let drained = from == slot
            || self
                .control
                .load()
                .counters
                .wait_drained(from, timeout)
                .await;
        step(
            "drain",
            drained,
            json!({"slot": from, "inflight": self.control.load().counters.inflight(from)}),
        );
        let done = steps.lock().unwrap_or_else(|p| p.into_inner()).clone();
        Ok(
            json!({"active": outcome.active, "previous": outcome.previous, "generation": outcome.generation, "drained": drained, "steps": done}),
        )
    }
}

#[async_trait]
impl Handler for AdminHandler {
    async fn handle(&self, cmd: Command) -> Result<ReplyFields, String> {
        let c = &self.control;
        let value = match cmd {
            Command::Status => status_json(&c.load()),
            Command::Help => json!({"commands": HELP}),
            Command::Flip {
                slot,
                force,
                drain_timeout,
            } => self.flipped(c.flip(slot, force).await?, drain_timeout),
            Command::Rollback { force } => self.flipped(c.rollback(force).await?, None),
            Command::Set { slot, field, force } => {
                let change = match field {
                    SetField::Upstreams(a) => SlotChange::Upstreams(a),
                    SetField::Version(v) => SlotChange::Version(v),
                    SetField::StaticRoot(d) => SlotChange::StaticRoot(d),
                };
                let r = c.set(slot, change, force).await?;
                let mut v = slot_json(&r, slot);
                v["slot"] = json!(slot);
                v["generation"] = json!(r.generation);
                v
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
                json!({"slot": slot, "inflight": counters.inflight(slot), "drained": drained, "state": slot_state(&c.load(), slot)})
            }
            Command::Health => {
                let r = c.load();
                let mut list = Vec::new();
                for slot in SlotName::ALL {
                    for m in r.slot(slot).pool.members() {
                        let last = m.health.last();
                        list.push(json!({
                            "slot": slot,
                            "address": m.address,
                            "healthy": m.health.healthy(),
                            "last_check": rfc3339(last.at),
                            "last_error": last.error,
                        }));
                    }
                }
                json!({"upstreams": list})
            }
            Command::Weights { blue, green } => {
                let r = c.weights(blue, green).await?;
                json!({"weights": {"blue": blue, "green": green}, "generation": r.generation})
            }
            Command::Deploy {
                slot,
                upstreams,
                version,
                timeout,
            } => self.deploy(slot, upstreams, version, timeout).await?,
            Command::Reload => {
                let changes = c.reload().await?;
                json!({"changed": changes})
            }
        };
        Ok(fields(value))
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
