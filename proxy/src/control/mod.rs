//! Every change to the routing snapshot, and its persistence.
//!
//! Readers (the request path) only ever `load` the current [`Routing`]. Writers go through
//! [`Control`]: each change takes the write lock, builds a new snapshot from the current one,
//! stores it with one pointer swap, then writes the state file. Requests that loaded the old
//! snapshot keep it until they end; the next request sees the new one.
//!
//! A change that went live stays live, with all its side effects, even when the state file
//! cannot be written: the caller gets [`ControlError::NotPersisted`] carrying the outcome, and
//! says so to the user instead of pretending the change failed.
//!
//! With `[cluster]`, a change is not stored here: it is committed to etcd
//! ([`cluster`]), and this instance, like every other, publishes it when its watch brings it
//! back. The request path still only loads the snapshot.

mod auto_rollback;
pub mod cluster;
mod drain_watch;
mod error;
pub mod health_check;
pub mod state;

pub use auto_rollback::last_rollback;
pub use error::{Applied, ControlError};

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use bascule_admin::SetField;
use bascule_config::{Config, HealthConfig};

use crate::slots::certs::Certs;
use crate::slots::counters::SlotCounters;
use crate::slots::metrics::Metrics;
use crate::slots::routing::{Pool, RollbackRecord, Routing, Slot};
use crate::SlotName;
use error::saved;
use state::{PersistedSlot, PersistedState, StateError};

/// Whether weights read back (state file, cluster store) can be served; logged when not, and
/// then dropped, so that the active slot takes all traffic.
pub(crate) fn usable_weights(w: [u32; 2], from: &str) -> bool {
    match bascule_config::valid_weights(w) {
        Ok(()) => true,
        Err(e) => {
            tracing::error!(error = %e, "weights from the {from} ignored");
            false
        }
    }
}

/// State that a layer above keeps, built from the config (the edge policy of `http::edge`):
/// `reload` asks it to build what a new config calls for beside the running one, and makes it
/// live only once every part of the reload has been built.
pub trait Reloadable: Send + Sync {
    /// Builds the state `new` calls for; nothing changes until [`Prepared::commit`] runs.
    /// `Err` stops the reload with nothing changed.
    fn prepare(self: Arc<Self>, old: &Config, new: &Config) -> Result<Prepared, String>;
}

/// A reload's part built and not yet live.
pub struct Prepared {
    /// The tables it changes, by their name in the file.
    pub changed: Vec<String>,
    /// Makes it live.
    pub commit: Box<dyn FnOnce() + Send>,
}

impl Prepared {
    /// Nothing to change.
    pub fn nothing() -> Prepared {
        Prepared {
            changed: Vec::new(),
            commit: Box::new(|| {}),
        }
    }
}

/// What a `reload` did: the tables applied, and those that only a restart applies.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Reloaded {
    /// Applied from the next request on (`headers`, `slots.blue.upstreams`, …).
    pub changed: Vec<String>,
    /// Changed in the file, applied on restart only (`listen.http`, `server.threads`, …).
    pub restart_needed: Vec<String>,
}

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

/// Owner of the routing snapshot.
pub struct Control {
    routing: ArcSwap<Routing>,
    config: ArcSwap<Config>,
    write: tokio::sync::Mutex<()>,
    metrics: Arc<Metrics>,
    /// The https listeners' certificates, reloaded with the config.
    certs: std::sync::OnceLock<Arc<Certs>>,
    /// This control, for the tasks it starts.
    me: Weak<Control>,
    /// Bumped by every flip and weights change: a rollback watch stands down when it moved.
    watch_token: AtomicU64,
    /// The shared slot state, with `[cluster]`.
    cluster: Option<Arc<cluster::Link>>,
    /// What went wrong with the state file at start, for `status`.
    start_warning: Option<String>,
    /// The state built from the config by the layers above, rebuilt by `reload`.
    reloadable: std::sync::OnceLock<Arc<dyn Reloadable>>,
}

/// Proof that the caller holds [`Control`]'s write lock.
type WriteGuard<'a> = tokio::sync::MutexGuard<'a, ()>;

/// A snapshot made live, and why the state file was not written, if it was not.
type Published = Result<(Arc<Routing>, Option<StateError>), ControlError>;

impl Control {
    /// Builds the first snapshot from `config`, overlaid with the state file when there is one.
    ///
    /// Returns the control and, when the state file was unusable, the warning to show (also
    /// kept for `status`).
    pub fn new(
        config: Config,
        metrics: Arc<Metrics>,
    ) -> Result<(Arc<Control>, Option<String>), ControlError> {
        let (persisted, warning) = match &config.state_path {
            None => (None, None),
            Some(path) => {
                let loaded = state::load(path);
                (loaded.state, loaded.warning)
            }
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
                .map_err(|source| match (runtime, &config.state_path) {
                    (Some(_), Some(path)) => ControlError::StatePool {
                        path: path.clone(),
                        slot: name,
                        source,
                    },
                    _ => ControlError::Pool { slot: name, source },
                })?;
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
            weights: persisted
                .as_ref()
                .and_then(|p| p.weights)
                .filter(|w| usable_weights(*w, "state file")),
            slots: [blue, green],
            routes: config.routes.clone().into(),
            counters,
            split: Arc::new(AtomicUsize::new(0)),
            last_rollback: persisted
                .as_ref()
                .and_then(|p| p.last_rollback.as_ref())
                .and_then(auto_rollback::record_of),
        };
        metrics.set_active(routing.active);
        let cluster = config.cluster.clone().map(cluster::Link::new);
        let control = Arc::new_cyclic(|me| Control {
            routing: ArcSwap::from_pointee(routing),
            config: ArcSwap::from_pointee(config),
            write: tokio::sync::Mutex::new(()),
            metrics,
            certs: std::sync::OnceLock::new(),
            me: me.clone(),
            watch_token: AtomicU64::new(0),
            cluster,
            start_warning: warning.clone(),
            reloadable: std::sync::OnceLock::new(),
        });
        Ok((control, warning))
    }

    /// Hands over the state built from the config above this layer, so `reload` rebuilds it.
    pub fn reload_with(&self, r: Arc<dyn Reloadable>) {
        let _ = self.reloadable.set(r);
    }

    /// Hands over the https listeners' certificates, so `reload` re-reads them.
    pub fn serve_certs(&self, certs: Arc<Certs>) {
        let _ = self.certs.set(certs);
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

    /// Why the state file was not used as it was at start, if it was not.
    pub fn start_warning(&self) -> Option<&str> {
        self.start_warning.as_deref()
    }

    /// The shared slot state, with `[cluster]`.
    pub fn cluster(&self) -> Option<&Arc<cluster::Link>> {
        self.cluster.as_ref()
    }

    /// Stores `next` and persists it; the change is live whatever the state file says, so a
    /// failed write is returned beside it, not instead of it. Caller holds the write lock.
    ///
    /// When `next` has another active slot, the slot left starts draining, watched until it
    /// has drained or `drain_timeout` (default: `[drain] timeout`) cuts what is left.
    fn publish(
        &self,
        next: Routing,
        drain_timeout: Option<Duration>,
    ) -> (Arc<Routing>, Option<StateError>) {
        let current = self.routing.load_full();
        let (from, to) = (current.active, next.active);
        if from != to {
            current.counters.mark_switch(from, to, next.generation);
        }
        let next = Arc::new(next);
        self.routing.store(next.clone());
        self.metrics.set_active(next.active);
        // Everything below happens whether or not the state file is written: the flip is
        // live, and a drain without its watcher would have no deadline.
        if from != to {
            self.release_idle(&next, from, to);
            let timeout = drain_timeout.unwrap_or(self.config.load().drain.timeout);
            drain_watch::spawn(
                next.counters.clone(),
                self.metrics.clone(),
                from,
                next.generation,
                timeout,
            );
        }
        let unsaved = self.persist(&next).err();
        if let Some(e) = &unsaved {
            tracing::error!(error = %e, "state not saved");
        }
        (next, unsaved)
    }

    /// Makes `next` live: published here at once, or, with `[cluster]`, committed to etcd
    /// and published when this instance's watch brings it back. The write lock is let go
    /// while the watch catches up (the watch publishes under it) and held again on return.
    async fn go_live<'a>(
        &'a self,
        w: WriteGuard<'a>,
        next: Routing,
        drain_timeout: Option<Duration>,
    ) -> (WriteGuard<'a>, Published) {
        let Some(link) = &self.cluster else {
            return (w, Ok(self.publish(next, drain_timeout)));
        };
        let revision = match link.commit(&persisted(&next), drain_timeout).await {
            Ok(r) => r,
            Err(e) => return (w, Err(e)),
        };
        drop(w);
        let caught_up = link.wait_applied(revision).await;
        let w = self.write.lock().await;
        if !caught_up {
            return (w, Err(ControlError::NotApplied { revision }));
        }
        (w, Ok((self.load(), None)))
    }

    fn persist(&self, r: &Routing) -> Result<(), StateError> {
        let config = self.config.load();
        let Some(path) = &config.state_path else {
            return Ok(());
        };
        state::save(path, &persisted(r))
    }

    /// The next snapshot after `r`: the generation bumped, the same parts.
    fn derive(r: &Routing) -> Routing {
        Routing {
            generation: r.generation + 1,
            active: r.active,
            previous: r.previous,
            last_switch: r.last_switch,
            weights: r.weights,
            slots: r.slots.clone(),
            routes: r.routes.clone(),
            counters: r.counters.clone(),
            split: r.split.clone(),
            last_rollback: r.last_rollback.clone(),
        }
    }

    /// Sends new requests to `slot`; the slot left starts draining, watched until it has
    /// drained or `drain_timeout` (default: `[drain] timeout`) cuts what is left.
    pub async fn flip(
        &self,
        slot: SlotName,
        force: bool,
        drain_timeout: Option<Duration>,
    ) -> Result<FlipOutcome, ControlError> {
        if !force {
            if let Some(why) = self.refusal(slot).await {
                return Err(ControlError::Refused(why));
            }
        }
        let w = self.write.lock().await;
        let (w, outcome) = self.apply_flip(w, slot, drain_timeout, None).await;
        if outcome.as_ref().is_ok_and(|o| o.changed)
            || matches!(&outcome, Err(ControlError::NotPersisted { .. }))
        {
            let back_to = self.load().previous;
            self.watch_change(&w, back_to.map(|b| (slot, b)));
        }
        outcome
    }

    /// The flip itself, under the write lock; `rollback` is the record of an automatic
    /// rollback, kept in the snapshot.
    async fn apply_flip<'a>(
        &'a self,
        w: WriteGuard<'a>,
        slot: SlotName,
        drain_timeout: Option<Duration>,
        rollback: Option<RollbackRecord>,
    ) -> (WriteGuard<'a>, Result<FlipOutcome, ControlError>) {
        let current = self.routing.load_full();
        if current.active == slot && current.weights.is_none() {
            let unchanged = FlipOutcome {
                active: slot,
                previous: current.previous,
                generation: current.generation,
                changed: false,
            };
            return (w, Ok(unchanged));
        }
        let mut next = Self::derive(&current);
        if let Some(r) = rollback {
            next.last_rollback = Some(Arc::new(r));
        }
        let from = current.active;
        next.active = slot;
        next.weights = None;
        if from != slot {
            next.previous = Some(from);
            next.last_switch = Some(SystemTime::now());
        }
        // The reply names the snapshot this flip made: with `[cluster]`, a later change from
        // another instance may already be live when the watch brings this one back, and its
        // generation is not this flip's.
        let (generation, previous) = (next.generation, next.previous);
        let (w, published) = self.go_live(w, next, drain_timeout).await;
        let (published, unsaved) = match published {
            Ok(p) => p,
            Err(e) => return (w, Err(e)),
        };
        // A flip through the cluster store is counted where the watch publishes it.
        if self.cluster.is_none() {
            self.metrics.flips.inc();
        }
        tracing::info!(slot = %slot, from = %from, generation, live = published.generation, "flipped");
        let outcome = FlipOutcome {
            active: slot,
            previous,
            generation,
            changed: true,
        };
        (w, saved(outcome, unsaved, Applied::Flip))
    }

    /// Releases at once the idle pooled connections of `from`, the slot that left duty;
    /// members that `to` shares keep theirs.
    fn release_idle(&self, r: &Routing, from: SlotName, to: SlotName) {
        let keep = r.slot(to).pool.addresses();
        for m in r.slot(from).pool.members() {
            if !keep.contains(&m.address) {
                m.idle.clear();
            }
        }
    }

    /// Flips back to the previous slot.
    pub async fn rollback(&self, force: bool) -> Result<FlipOutcome, ControlError> {
        let Some(previous) = self.load().previous else {
            return Err(ControlError::Refused(
                "nothing to roll back to: there has been no flip".into(),
            ));
        };
        self.flip(previous, force, None).await
    }

    /// Replaces one part of `slot`. The active slot is changed only with `force`.
    pub async fn set(
        &self,
        slot: SlotName,
        change: SetField,
        force: bool,
    ) -> Result<Arc<Routing>, ControlError> {
        let w = self.write.lock().await;
        let current = self.routing.load_full();
        if current.takes_traffic(slot) && !force {
            return Err(ControlError::Refused(format!(
                "{slot} takes traffic; change the idle slot, or add --force"
            )));
        }
        let old = current.slot(slot);
        let new_slot = match change {
            SetField::Upstreams(addrs) => {
                let config = self.config.load();
                let known = [&current.slots[0].pool, &current.slots[1].pool];
                let pool = Pool::build(&addrs, &config.upstream, &known)
                    .map_err(|source| ControlError::Pool { slot, source })?;
                old.with(Some(pool), None, None)
            }
            SetField::Version(v) => old.with(None, Some(Some(v)), None),
            SetField::StaticRoot(dir) => {
                if !dir.is_dir() {
                    return Err(ControlError::Invalid(format!(
                        "{}: not a directory",
                        dir.display()
                    )));
                }
                old.with(None, None, Some(Some(dir)))
            }
        };
        let mut next = Self::derive(&current);
        next.slots[slot.index()] = Arc::new(new_slot);
        let (published, unsaved) = self.go_live(w, next, None).await.1?;
        saved(published, unsaved, Applied::Routing)
    }

    /// Puts `previous` back as `slot` (its upstreams with their health records, version and
    /// static root): what a deploy that failed before its flip does. Refused once the slot
    /// takes traffic, whose parts are then no longer the deploy's to undo.
    pub async fn restore(
        &self,
        slot: SlotName,
        previous: Arc<Slot>,
    ) -> Result<Arc<Routing>, ControlError> {
        let w = self.write.lock().await;
        let current = self.routing.load_full();
        if current.takes_traffic(slot) {
            return Err(ControlError::Refused(format!(
                "{slot} takes traffic; it is not put back"
            )));
        }
        let mut next = Self::derive(&current);
        next.slots[slot.index()] = previous;
        let (published, unsaved) = self.go_live(w, next, None).await.1?;
        tracing::info!(slot = %slot, generation = published.generation, "slot put back");
        saved(published, unsaved, Applied::Routing)
    }

    /// Splits new requests `blue:green`.
    pub async fn weights(&self, blue: u32, green: u32) -> Result<Arc<Routing>, ControlError> {
        bascule_config::valid_weights([blue, green]).map_err(ControlError::Invalid)?;
        let w = self.write.lock().await;
        let current = self.routing.load_full();
        let mut next = Self::derive(&current);
        next.weights = Some([blue, green]);
        let (w, published) = self.go_live(w, next, None).await;
        let (published, unsaved) = published?;
        // The canary, the slot beside the active one that now takes traffic, is watched.
        let active = published.active;
        let canary = active.other();
        let watched = (published.takes_traffic(canary)).then_some((canary, active));
        self.watch_change(&w, watched);
        saved(published, unsaved, Applied::Routing)
    }

    /// Re-reads the config file and applies it whole, or not at all.
    ///
    /// Slot parts take the file's value only where the file changed them since it was last
    /// read: runtime `set`s survive a reload that does not touch them.
    pub async fn reload(&self) -> Result<Reloaded, ControlError> {
        let _w = self.write.lock().await;
        let old = self.config.load_full();
        let Some(path) = old.source.clone() else {
            return Err(ControlError::Refused(
                "this proxy was started without a config file; nothing to reload".into(),
            ));
        };
        let new = bascule_config::load(&path)?;
        let restart_needed = restart_needed(&old, &new);
        let mut changes = Vec::new();
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
                        .map_err(|source| ControlError::Pool { slot: name, source })?,
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
            ("rollback", old.rollback != new.rollback),
            ("upstream", old.upstream != new.upstream),
            ("state", old.state_path != new.state_path),
            ("slots.default", old.default_slot != new.default_slot),
        ] {
            if changed {
                changes.push(what.into());
            }
        }
        // Built beside the running state; live only once nothing else can fail.
        let prepared = match self.reloadable.get() {
            Some(r) => r.clone().prepare(&old, &new).map_err(|e| {
                ControlError::Refused(format!("{}: {e}; nothing changed", path.display()))
            })?,
            None => Prepared::nothing(),
        };
        if old.tls != new.tls || new.tls.is_some() {
            // Files may have changed under the same paths: certificates are always re-read.
            if let (Some(certs), Some(tls)) = (self.certs.get(), &new.tls) {
                certs
                    .reload(tls)
                    .map_err(|e| ControlError::Refused(format!("tls: {e}; nothing changed")))?;
                changes.push("tls.certs (new handshakes)".into());
            }
        }
        changes.extend(prepared.changed);
        (prepared.commit)();
        self.config.store(Arc::new(new));
        // Slot parts live in the cluster store: a reload does not change them, `set` does.
        if self.cluster.is_some() {
            next.slots = current.slots.clone();
            for c in changes
                .iter_mut()
                .filter(|c| c.starts_with("slots.") && *c != "slots.default")
            {
                *c = format!("{c}: kept; the cluster store holds it (use set)");
            }
        }
        let (_, unsaved) = self.publish(next, None);
        tracing::info!(changes = ?changes, restart_needed = ?restart_needed, "config reloaded");
        let reloaded = Reloaded {
            changed: changes,
            restart_needed,
        };
        saved(reloaded, unsaved, Applied::Reload)
    }
}

/// The keys that changed in the file and that only a restart applies: listening sockets,
/// threads, the admin socket, the metrics listener, the cluster link.
fn restart_needed(old: &Config, new: &Config) -> Vec<String> {
    let (a, b) = (&old.server, &new.server);
    [
        ("listen.http", old.listen != new.listen),
        ("listen.https", old.https != new.https),
        ("server.threads", a.threads != b.threads),
        ("server.work_stealing", a.work_stealing != b.work_stealing),
        (
            "server.shutdown_grace",
            a.shutdown_grace != b.shutdown_grace,
        ),
        ("admin.socket", old.admin.socket != new.admin.socket),
        ("admin.mode", old.admin.mode != new.admin.mode),
        (
            "admin.idle_timeout",
            old.admin.idle_timeout != new.admin.idle_timeout,
        ),
        ("metrics.listen", old.metrics != new.metrics),
        ("cluster", old.cluster != new.cluster),
        (
            "tls.min_version",
            old.tls.as_ref().map(|t| t.min_version) != new.tls.as_ref().map(|t| t.min_version),
        ),
        (
            "tls.h2",
            old.tls.as_ref().map(|t| t.h2) != new.tls.as_ref().map(|t| t.h2),
        ),
    ]
    .into_iter()
    .filter(|(_, changed)| *changed)
    .map(|(key, _)| key.to_string())
    .collect()
}

/// The state file's (and the cluster store's) form of `r`.
fn persisted(r: &Routing) -> PersistedState {
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
    PersistedState {
        active: r.active,
        previous: r.previous,
        last_switch: r
            .last_switch
            .map(|t| humantime::format_rfc3339_seconds(t).to_string()),
        generation: r.generation,
        weights: r.weights,
        slots,
        last_rollback: r.last_rollback.as_deref().map(auto_rollback::last_rollback),
    }
}
