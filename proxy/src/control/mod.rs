//! Every change to the routing snapshot, and its persistence.
//!
//! Readers (the request path) only ever `load` the current [`Routing`]. Writers go through
//! [`Control`]: each change takes the write lock, builds a new snapshot from the current one,
//! stores it with one pointer swap, then writes the state file. Requests that loaded the old
//! snapshot keep it until they end; the next request sees the new one.

pub mod health_check;
pub mod state;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use bascule_config::{Config, HealthConfig, RouteTarget};

use crate::slots::counters::SlotCounters;

use crate::slots::metrics::Metrics;
use crate::slots::routing::{Pool, Routing, Slot};
use crate::SlotName;
use state::{PersistedSlot, PersistedState};

/// What a flip or rollback did.
#[derive(Debug, Clone)]
pub struct FlipOutcome {
    /// The slot now active.
    pub active: SlotName,
    /// The slot left.
    pub previous: Option<SlotName>,
    /// The new generation.
    pub generation: u64,
    /// False when the slot was already active.
    pub changed: bool,
}

/// A part of a slot to replace.
#[derive(Debug, Clone)]
pub enum SlotChange {
    /// New upstream members.
    Upstreams(Vec<String>),
    /// New version label.
    Version(String),
    /// New static root.
    StaticRoot(PathBuf),
}

/// Owner of the routing snapshot.
pub struct Control {
    routing: ArcSwap<Routing>,
    config: ArcSwap<Config>,
    write: tokio::sync::Mutex<()>,
    metrics: Arc<Metrics>,
}

impl Control {
    /// Builds the first snapshot from `config`, overlaid with the state file when there is one.
    ///
    /// Returns the control and, when the state file was unusable, the warning to show.
    pub fn new(
        config: Config,
        metrics: Arc<Metrics>,
    ) -> Result<(Arc<Control>, Option<String>), String> {
        let (persisted, warning) = match &config.state_path {
            None => (None, None),
            Some(path) => match state::load(path) {
                Ok(s) => (s, None),
                Err(e) => (None, Some(e.to_string())),
            },
        };
        let counters = SlotCounters::new();
        let mut slots = Vec::with_capacity(2);
        for name in SlotName::ALL {
            let cfg = config.slot(name);
            let runtime = persisted.as_ref().and_then(|p| p.slots.get(&name));
            let (upstreams, version, root) = match runtime {
                Some(r) => (&r.upstreams, r.version.clone(), r.static_root.clone()),
                None => (&cfg.upstreams, cfg.version.clone(), cfg.static_root.clone()),
            };
            let known: Vec<&Pool> = slots.iter().map(|s: &Arc<Slot>| &s.pool).collect();
            let slot = Slot::build(name, upstreams, version, root, &config.upstream, &known)
                .map_err(|e| format!("slots.{name}.upstreams: {e}"))?;
            slots.push(Arc::new(slot));
        }
        let green = slots.pop().expect("two slots");
        let blue = slots.pop().expect("two slots");
        let routing = Routing {
            generation: persisted.as_ref().map_or(1, |p| p.generation),
            active: persisted.as_ref().map_or(config.default_slot, |p| p.active),
            previous: persisted.as_ref().and_then(|p| p.previous),
            last_switch: persisted
                .as_ref()
                .and_then(|p| p.last_switch.as_deref())
                .and_then(|t| humantime::parse_rfc3339(t).ok()),
            weights: persisted.as_ref().and_then(|p| p.weights),
            slots: [blue, green],
            routes: config.routes.clone().into(),
            counters,
            split: Arc::new(AtomicUsize::new(0)),
        };
        metrics.set_active(routing.active);
        let control = Arc::new(Control {
            routing: ArcSwap::from_pointee(routing),
            config: ArcSwap::from_pointee(config),
            write: tokio::sync::Mutex::new(()),
            metrics,
        });
        Ok((control, warning))
    }

    /// The current snapshot. The request path calls this once per request.
    #[inline]
    pub fn load(&self) -> Arc<Routing> {
        self.routing.load_full()
    }

    /// Whether new requests may go to `slot` now (no reference taken on the snapshot).
    #[inline]
    pub fn takes_traffic(&self, slot: SlotName) -> bool {
        self.routing.load().takes_traffic(slot)
    }

    /// The config in force.
    pub fn config(&self) -> Arc<Config> {
        self.config.load_full()
    }

    /// The health-check settings in force.
    pub fn health_config(&self) -> HealthConfig {
        self.config.load().health.clone()
    }

    /// The metrics registry.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Stores `next` (with the generation bumped) and persists it. Caller holds the write lock.
    fn publish(&self, mut next: Routing) -> Result<Arc<Routing>, String> {
        next.generation = self.routing.load().generation + 1;
        let next = Arc::new(next);
        self.routing.store(next.clone());
        self.metrics.set_active(next.active);
        self.persist(&next)?;
        Ok(next)
    }

    fn persist(&self, r: &Routing) -> Result<(), String> {
        let config = self.config.load();
        let Some(path) = &config.state_path else {
            return Ok(());
        };
        let slots: BTreeMap<SlotName, PersistedSlot> = SlotName::ALL
            .iter()
            .map(|&n| {
                let s = r.slot(n);
                let slot = PersistedSlot {
                    upstreams: s.pool.addresses(),
                    version: s.version.clone(),
                    static_root: s.static_root.clone(),
                };
                (n, slot)
            })
            .collect();
        let persisted = PersistedState {
            active: r.active,
            previous: r.previous,
            last_switch: r
                .last_switch
                .map(|t| humantime::format_rfc3339_seconds(t).to_string()),
            generation: r.generation,
            weights: r.weights,
            slots,
        };
        state::save(path, &persisted).map_err(|e| {
            tracing::error!(error = %e, "state not saved");
            // The change is live; say so rather than pretend it failed.
            format!("applied, but {e}")
        })
    }

    /// A copy of `r` with new scalar parts and the same slots.
    fn derive(r: &Routing) -> Routing {
        Routing {
            generation: r.generation,
            active: r.active,
            previous: r.previous,
            last_switch: r.last_switch,
            weights: r.weights,
            slots: r.slots.clone(),
            routes: r.routes.clone(),
            counters: r.counters.clone(),
            split: r.split.clone(),
        }
    }

    /// Why `slot` may not take traffic, if it may not: no upstream, or none healthy.
    ///
    /// Members never checked are probed now, so a flip right after `set` is judged on facts.
    pub async fn refusal(&self, slot: SlotName) -> Option<String> {
        let routing = self.load();
        let s = routing.slot(slot);
        let needs_upstream = routing.routes.is_empty()
            || routing.routes.iter().any(|r| r.to == RouteTarget::Upstream);
        if !needs_upstream {
            return None;
        }
        if s.pool.members().is_empty() {
            return Some(format!(
                "{slot} has no upstreams; `set {slot} upstreams ADDR` first, or add --force"
            ));
        }
        self.check_slot(&routing, slot, true).await;
        if s.pool.any_healthy() {
            return None;
        }
        let failing: Vec<String> = s
            .pool
            .members()
            .iter()
            .map(|m| {
                let why = m
                    .health
                    .last()
                    .error
                    .unwrap_or_else(|| "not healthy yet".into());
                format!("{} ({why})", m.address)
            })
            .collect();
        Some(format!(
            "{slot} has no healthy upstream: {}; add --force to flip anyway",
            failing.join(", ")
        ))
    }

    /// Sends new requests to `slot`; the slot left starts draining.
    pub async fn flip(&self, slot: SlotName, force: bool) -> Result<FlipOutcome, String> {
        if !force {
            if let Some(why) = self.refusal(slot).await {
                return Err(why);
            }
        }
        let _w = self.write.lock().await;
        let current = self.routing.load_full();
        if current.active == slot && current.weights.is_none() {
            return Ok(FlipOutcome {
                active: slot,
                previous: current.previous,
                generation: current.generation,
                changed: false,
            });
        }
        let mut next = Self::derive(&current);
        let from = current.active;
        next.active = slot;
        next.weights = None;
        if from != slot {
            next.previous = Some(from);
            next.last_switch = Some(SystemTime::now());
            current.counters.mark_switch(from, slot);
        }
        let published = self.publish(next)?;
        self.metrics.flips.inc();
        if from != slot {
            // Idle pooled connections of the slot that left duty are released at once; members
            // the new active slot shares keep theirs.
            let keep = published.slot(slot).pool.addresses();
            for m in published.slot(from).pool.members() {
                if !keep.contains(&m.address) {
                    m.idle.clear();
                }
            }
        }
        tracing::info!(slot = %slot, from = %from, generation = published.generation, "flipped");
        Ok(FlipOutcome {
            active: slot,
            previous: published.previous,
            generation: published.generation,
            changed: true,
        })
    }

    /// Flips back to the previous slot.
    pub async fn rollback(&self, force: bool) -> Result<FlipOutcome, String> {
        let Some(previous) = self.load().previous else {
            return Err("nothing to roll back to: there has been no flip".into());
        };
        self.flip(previous, force).await
    }

    /// Replaces one part of `slot`. The active slot is changed only with `force`.
    pub async fn set(
        &self,
        slot: SlotName,
        change: SlotChange,
        force: bool,
    ) -> Result<Arc<Routing>, String> {
        let _w = self.write.lock().await;
        let current = self.routing.load_full();
        if current.takes_traffic(slot) && !force {
            return Err(format!(
                "{slot} takes traffic; change the idle slot, or add --force"
            ));
        }
        let old = current.slot(slot);
        let new_slot = match change {
            SlotChange::Upstreams(addrs) => {
                let config = self.config.load();
                let known = [&current.slots[0].pool, &current.slots[1].pool];
                let pool = Pool::build(&addrs, &config.upstream, &known)?;
                old.with(Some(pool), None, None)
            }
            SlotChange::Version(v) => old.with(None, Some(Some(v)), None),
            SlotChange::StaticRoot(dir) => {
                if !dir.is_dir() {
                    return Err(format!("{}: not a directory", dir.display()));
                }
                old.with(None, None, Some(Some(dir)))
            }
        };
        let mut next = Self::derive(&current);
        next.slots[slot.index()] = Arc::new(new_slot);
        self.publish(next)
    }

    /// Splits new requests `blue:green`.
    pub async fn weights(&self, blue: u32, green: u32) -> Result<Arc<Routing>, String> {
        let _w = self.write.lock().await;
        let current = self.routing.load_full();
        let mut next = Self::derive(&current);
        next.weights = Some([blue, green]);
        self.publish(next)
    }

    /// Re-reads the config file and applies it whole, or not at all.
    ///
    /// Slot parts take the file's value only where the file changed them since it was last
    /// read: runtime `set`s survive a reload that does not touch them.
    pub async fn reload(&self) -> Result<Vec<String>, String> {
        let _w = self.write.lock().await;
        let old = self.config.load_full();
        let Some(path) = old.source.clone() else {
            return Err("this proxy was started without a config file; nothing to reload".into());
        };
        let new = bascule_config::load(&path).map_err(|e| e.to_string())?;
        let mut changes = Vec::new();
        for (what, changed) in [
            ("listen", old.listen != new.listen),
            ("server", old.server != new.server),
            ("admin", old.admin != new.admin),
            ("metrics", old.metrics != new.metrics),
        ] {
            if changed {
                changes.push(format!(
                    "{what}: changed in the file; takes effect on restart"
                ));
            }
        }
        let current = self.routing.load_full();
        let mut next = Self::derive(&current);
        for name in SlotName::ALL {
            let (o, n) = (old.slot(name), new.slot(name));
            let slot = current.slot(name);
            let upstreams = if o.upstreams != n.upstreams || old.upstream != new.upstream {
                changes.push(format!("slots.{name}.upstreams"));
                let known = [&current.slots[0].pool, &current.slots[1].pool];
                Some(
                    Pool::build(&n.upstreams, &new.upstream, &known)
                        .map_err(|e| format!("slots.{name}.upstreams: {e}"))?,
                )
            } else {
                None
            };
            let version = (o.version != n.version).then(|| {
                changes.push(format!("slots.{name}.version"));
                n.version.clone()
            });
            let root = (o.static_root != n.static_root).then(|| {
                changes.push(format!("slots.{name}.static_root"));
                n.static_root.clone()
            });
            if upstreams.is_some() || version.is_some() || root.is_some() {
                next.slots[name.index()] = Arc::new(slot.with(upstreams, version, root));
            }
        }
        if old.routes != new.routes {
            changes.push("routes".into());
            next.routes = new.routes.clone().into();
        }
        for (what, changed) in [
            ("health", old.health != new.health),
            ("drain", old.drain != new.drain),
            ("static", old.statics != new.statics),
            ("state", old.state_path != new.state_path),
            ("slots.default", old.default_slot != new.default_slot),
        ] {
            if changed {
                changes.push(what.into());
            }
        }
        self.config.store(Arc::new(new));
        self.publish(next)?;
        tracing::info!(changes = ?changes, "config reloaded");
        Ok(changes)
    }

    /// Checks every member of the current snapshot once.
    pub async fn check_all(&self) {
        let routing = self.load();
        for slot in SlotName::ALL {
            self.check_slot(&routing, slot, false).await;
        }
    }

    /// Checks the members of `slot` (only the unchecked ones when `unchecked_only`).
    async fn check_slot(&self, routing: &Routing, slot: SlotName, unchecked_only: bool) {
        let cfg = self.health_config();
        let mut tasks = Vec::new();
        for m in routing.slot(slot).pool.members() {
            if unchecked_only && !m.health.is_unchecked() {
                continue;
            }
            let (addr, host, path, timeout) =
                (m.socket, m.address.clone(), cfg.path.clone(), cfg.timeout);
            let health = m.health.clone();
            let cfg = cfg.clone();
            tasks.push(tokio::spawn(async move {
                let result = health_check::probe(addr, &host, &path, timeout).await;
                if let Err(e) = &result {
                    if health.usable() {
                        tracing::warn!(upstream.addr = %host, error = %e, "health check failed");
                    }
                }
                health.record(result, &cfg);
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
    }

    /// Waits until `slot` has a healthy member, checking it every 100 ms, up to `timeout`.
    pub async fn wait_healthy(&self, slot: SlotName, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            let routing = self.load();
            self.check_slot(&routing, slot, false).await;
            if routing.slot(slot).pool.any_healthy() {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
