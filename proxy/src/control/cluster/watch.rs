//! The watch on `PREFIX/state`: the one way a state value becomes this instance's snapshot.
//!
//! Start: read the value (writing this instance's state there when there is none yet),
//! publish it, and watch from the revision after the read, so no change made in between is
//! missed. After a disconnect the watch resumes from the revision after the last one seen;
//! when etcd has compacted that revision away, everything is read again. Reconnection waits
//! grow from [`BACKOFF_MIN`] to [`BACKOFF_MAX`], and start over once a watch is up.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use etcd_client::{Compare, CompareOp, EventType, Txn, TxnOp, WatchOptions};
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;

use crate::control::auto_rollback::record_of;
use crate::control::cluster::{lease, timed, Link, StoreError};
use crate::control::state::PersistedState;
use crate::control::{persisted, Control};
use crate::slots::routing::Pool;
use crate::SlotName;

/// First wait before reconnecting.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
/// Longest wait between two attempts.
const BACKOFF_MAX: Duration = Duration::from_secs(2);

/// Why a watch stopped.
enum End {
    /// etcd compacted the revisions it was to resume from: read everything again.
    Compacted,
    /// The connection was lost; resume after `last`, the last revision seen.
    Lost { last: i64, why: StoreError },
}

/// The watch and the registration, as a Pingora background service.
pub struct ClusterService {
    control: Arc<Control>,
}

impl ClusterService {
    /// The service for `control`, which has a `[cluster]`.
    pub fn new(control: Arc<Control>) -> ClusterService {
        ClusterService { control }
    }
}

#[async_trait]
impl BackgroundService for ClusterService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let Some(link) = self.control.cluster.clone() else {
            return;
        };
        let register = lease::register(self.control.clone(), link.clone());
        tokio::select! {
            _ = follow(&self.control, &link) => {}
            _ = register => {}
            _ = shutdown.changed() => {}
        }
    }
}

/// Reads, watches, and reads again, for ever.
async fn follow(control: &Control, link: &Link) {
    let mut wait = BACKOFF_MIN;
    let mut resume: Option<i64> = None;
    loop {
        let start = match resume {
            Some(r) => r,
            None => match load(control, link).await {
                Ok(read_at) => read_at + 1,
                Err(why) => {
                    lost(link, &why, &mut wait).await;
                    continue;
                }
            },
        };
        match watch(control, link, start, &mut wait).await {
            End::Compacted => {
                link.reloads.fetch_add(1, Ordering::SeqCst);
                tracing::warn!(
                    from = start,
                    "cluster watch fell behind a compaction; reloading"
                );
                resume = None;
            }
            End::Lost { last, why } => {
                resume = Some(last + 1);
                lost(link, &why, &mut wait).await;
            }
        }
    }
}

/// Marks the link down and waits before the next attempt.
async fn lost(link: &Link, why: &StoreError, wait: &mut Duration) {
    if link.connected.swap(false, Ordering::SeqCst) {
        tracing::warn!(error = %why, "cluster store unreachable; serving the last state");
    }
    tokio::time::sleep(*wait).await;
    *wait = (*wait * 2).min(BACKOFF_MAX);
}

/// Reads the state (creating it from this instance's when there is none) and publishes it;
/// returns the revision the read was made at.
async fn load(control: &Control, link: &Link) -> Result<i64, StoreError> {
    let mut client = link.client().await?;
    let key = link.state_key();
    let mut resp = timed(client.get(key.as_str(), None)).await?;
    if resp.kvs().is_empty() {
        let mine = serde_json::to_vec(&persisted(&control.load())).expect("state serialises");
        let create = Txn::new()
            .when([Compare::create_revision(key.as_str(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key.as_str(), mine, None)]);
        timed(client.txn(create)).await?;
        resp = timed(client.get(key.as_str(), None)).await?;
    }
    let read_at = resp.header().map_or(0, |h| h.revision());
    if let Some(kv) = resp.kvs().first() {
        apply(control, link, kv.value(), kv.mod_revision()).await;
    }
    Ok(read_at)
}

/// Publishes every change from `start` on, until the watch ends.
async fn watch(control: &Control, link: &Link, start: i64, wait: &mut Duration) -> End {
    let last = start - 1;
    let lost = |why: StoreError| End::Lost { last, why };
    let mut client = match link.client().await {
        Ok(c) => c,
        Err(e) => return lost(e.into()),
    };
    let options = WatchOptions::new().with_start_revision(start);
    let mut stream = match timed(client.watch(link.state_key(), Some(options))).await {
        Ok(s) => s,
        Err(why) => return lost(why),
    };
    let mut last = last;
    loop {
        let resp = match stream.message().await {
            Ok(Some(r)) => r,
            Ok(None) => {
                return End::Lost {
                    last,
                    why: StoreError::WatchEnded("closed by etcd".into()),
                }
            }
            Err(e) => {
                return End::Lost {
                    last,
                    why: e.into(),
                }
            }
        };
        if resp.compact_revision() > 0 {
            return End::Compacted;
        }
        if resp.canceled() {
            let why = StoreError::WatchEnded(format!("canceled: {}", resp.cancel_reason()));
            return End::Lost { last, why };
        }
        if resp.created() && !link.connected.swap(true, Ordering::SeqCst) {
            tracing::info!(from = start, "cluster store connected");
            *wait = BACKOFF_MIN;
        }
        for event in resp.events() {
            let Some(kv) = event.kv() else { continue };
            if event.event_type() == EventType::Put {
                apply(control, link, kv.value(), kv.mod_revision()).await;
            } else {
                tracing::warn!("cluster slot state deleted; the last state stays in force");
            }
            last = kv.mod_revision();
        }
    }
}

/// Publishes the state value `value` of `revision`.
async fn apply(control: &Control, link: &Link, value: &[u8], revision: i64) {
    match serde_json::from_slice::<PersistedState>(value) {
        Ok(state) => control.apply_state(link, &state, revision).await,
        Err(e) => {
            tracing::error!(error = %e, revision, "cluster slot state unreadable; ignored");
            // Still behind us: a change is based on the stored revision.
            link.applied.send_replace(revision);
        }
    }
}

impl Control {
    /// Makes `state` the snapshot, keeping the parts that did not change (pools with their
    /// health records and idle connections).
    /// The revision is recorded under the write lock: a change is always based on the
    /// revision of the snapshot it was built from.
    async fn apply_state(&self, link: &Link, state: &PersistedState, revision: i64) {
        let _w = self.write.lock().await;
        let current = self.load();
        let mut next = Self::derive(&current);
        next.generation = state.generation;
        next.active = state.active;
        next.previous = state.previous;
        next.last_switch = state
            .last_switch
            .as_deref()
            .and_then(|t| humantime::parse_rfc3339(t).ok());
        next.weights = state
            .weights
            .filter(|w| crate::control::usable_weights(*w, "cluster store"));
        next.last_rollback = state.last_rollback.as_ref().and_then(record_of);
        let config = self.config.load();
        for name in SlotName::ALL {
            let (Some(p), old) = (state.slots.get(&name), current.slot(name)) else {
                continue;
            };
            let pool = if old.pool.addresses() != p.upstreams {
                let known = [&current.slots[0].pool, &current.slots[1].pool];
                match Pool::build(&p.upstreams, &config.upstream, &known) {
                    Ok(pool) => Some(pool),
                    Err(e) => {
                        tracing::error!(slot = %name, error = %e, "cluster upstreams unusable here; kept");
                        None
                    }
                }
            } else {
                None
            };
            let version = (old.version != p.version).then(|| p.version.clone());
            let root = (old.static_root != p.static_root).then(|| p.static_root.clone());
            if pool.is_some() || version.is_some() || root.is_some() {
                next.slots[name.index()] = Arc::new(old.with(pool, version, root));
            }
        }
        let flipped =
            current.active != next.active || (current.weights.is_some() && next.weights.is_none());
        let routed = flipped || current.weights != next.weights;
        let drain_timeout = link.drain_timeout_for(next.generation);
        let (published, _) = self.publish(next, drain_timeout);
        link.applied.send_replace(revision);
        if flipped {
            self.metrics.flips.inc();
        }
        if routed {
            // A change from anywhere stands the local rollback watch down, as a local one does.
            self.watch_token.fetch_add(1, Ordering::SeqCst);
        }
        tracing::info!(active = %published.active, generation = published.generation, "cluster state applied");
    }
}
