//! `[cluster]`: several edges sharing one slot state through etcd.
//!
//! The slot state is one JSON value (the state file's [`PersistedState`]) under
//! `PREFIX/state`. A change is one transaction that puts the new value only if the key's mod
//! revision is still the one the change was based on: of two concurrent changes, one wins and
//! the other is refused. No instance, the one that made a change included, stores a change
//! itself: every instance publishes the values its watch brings ([`watch`]), so all of them
//! go through the same path in the same order. Each instance also registers itself under
//! `PREFIX/instances/NAME`, bound to a lease ([`lease`]).
//!
//! When etcd cannot be reached, the last state stays in force (and in the state file), and
//! changes are refused ([`ControlError::Unreachable`]) until the watch is back.

mod lease;
mod watch;

/// Why a request to etcd did not get its answer.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The client or etcd said why.
    #[error(transparent)]
    Etcd(#[from] etcd_client::Error),
    /// Nothing came back in time (no member answered, or no leader).
    #[error("no answer within {}", humantime::format_duration(*.0))]
    NoAnswer(Duration),
    /// The watch stopped without an error from the client.
    #[error("watch {0}")]
    WatchEnded(String),
    /// The lease this instance registered under is gone (expired while etcd was away).
    #[error("lease expired")]
    LeaseExpired,
}

pub use watch::ClusterService;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use bascule_admin::{ClusterInstance, ClusterStatus};
use bascule_config::ClusterConfig;
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, GetOptions, Txn, TxnOp, TxnOpResponse,
};

use crate::control::state::PersistedState;
use crate::control::ControlError;

/// Longest wait for one etcd request made for an admin command.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// gRPC's `UNAVAILABLE` status code.
const UNAVAILABLE: i32 = 14;
/// Wait before a request etcd said it could not serve is tried again.
const RETRY_STEP: Duration = Duration::from_millis(20);
/// Longest wait, after a commit, for this instance's watch to bring the change back.
const APPLY_TIMEOUT: Duration = Duration::from_secs(5);

/// This instance's link to the shared slot state.
pub struct Link {
    config: ClusterConfig,
    client: tokio::sync::OnceCell<Client>,
    /// Whether the watch is established now.
    connected: AtomicBool,
    /// The mod revision of the state value the snapshot in force was published from; 0
    /// before the first one.
    applied: tokio::sync::watch::Sender<i64>,
    /// Times the whole state was read again after a compaction.
    reloads: AtomicU64,
    /// The `--drain-timeout` of a flip committed here, by the generation it made: the watch
    /// that publishes it starts the drain with it.
    drain_timeout: Mutex<Option<(u64, Duration)>>,
}

impl Link {
    pub(crate) fn new(config: ClusterConfig) -> std::sync::Arc<Link> {
        std::sync::Arc::new(Link {
            config,
            client: tokio::sync::OnceCell::new(),
            connected: AtomicBool::new(false),
            applied: tokio::sync::watch::Sender::new(0),
            reloads: AtomicU64::new(0),
            drain_timeout: Mutex::new(None),
        })
    }

    fn state_key(&self) -> String {
        format!("{}/state", self.config.prefix)
    }

    fn instances_key(&self) -> String {
        format!("{}/instances/", self.config.prefix)
    }

    /// The etcd client; it connects lazily, and reconnects by itself, per request.
    async fn client(&self) -> Result<Client, etcd_client::Error> {
        let c = self
            .client
            .get_or_try_init(|| {
                let options = ConnectOptions::new()
                    .with_connect_timeout(Duration::from_millis(500))
                    .with_keep_alive(Duration::from_secs(1), Duration::from_secs(1))
                    .with_keep_alive_while_idle(true);
                Client::connect(self.config.etcd.clone(), Some(options))
            })
            .await?;
        Ok(c.clone())
    }

    fn unreachable(&self, source: Option<StoreError>) -> ControlError {
        ControlError::Unreachable {
            endpoints: self.config.etcd.join(","),
            why: source.map_or_else(|| "not connected".into(), |e| e.to_string()),
        }
    }

    /// Commits `next` if the stored state is still the one in force here; returns the
    /// revision of the commit.
    pub(crate) async fn commit(
        &self,
        next: &PersistedState,
        drain_timeout: Option<Duration>,
    ) -> Result<i64, ControlError> {
        let base = *self.applied.borrow();
        if !self.connected.load(Ordering::SeqCst) || base == 0 {
            return Err(self.unreachable(None));
        }
        let key = self.state_key();
        let value = serde_json::to_vec(next).expect("state serialises");
        let txn = Txn::new()
            .when([Compare::mod_revision(key.as_str(), CompareOp::Equal, base)])
            .and_then([TxnOp::put(key.as_str(), value.clone(), None)])
            .or_else([TxnOp::get(key.as_str(), None)]);
        if let Some(t) = drain_timeout {
            *self.drain_timeout.lock().unwrap_or_else(|p| p.into_inner()) =
                Some((next.generation, t));
        }
        let client = self
            .client()
            .await
            .map_err(|e| self.unreachable(Some(e.into())))?;
        let resp = retried(|| {
            let (mut client, txn) = (client.clone(), txn.clone());
            async move { client.txn(txn).await }
        })
        .await
        .map_err(|e| self.unreachable(Some(e)))?;
        let revision = resp.header().map_or(0, |h| h.revision());
        if !resp.succeeded() {
            // A retried commit may have gone through the first time: then the value found is
            // this very one.
            let found = resp.op_responses().into_iter().find_map(|r| match r {
                TxnOpResponse::Get(g) => g
                    .kvs()
                    .first()
                    .map(|kv| (kv.value().to_vec(), kv.mod_revision())),
                _ => None,
            });
            if let Some((_, at)) = found.filter(|(v, _)| *v == value) {
                return Ok(at);
            }
            return Err(ControlError::Conflict {
                base,
                now: revision,
            });
        }
        Ok(revision)
    }

    /// Waits until the watch has published the state of `revision` or a later one.
    pub(crate) async fn wait_applied(&self, revision: i64) -> bool {
        let mut rx = self.applied.subscribe();
        let caught_up = tokio::time::timeout(APPLY_TIMEOUT, rx.wait_for(|&r| r >= revision))
            .await
            .is_ok_and(|r| r.is_ok());
        caught_up
    }

    /// The `--drain-timeout` given with the flip that made `generation`, if it was made here.
    fn drain_timeout_for(&self, generation: u64) -> Option<Duration> {
        let mut d = self.drain_timeout.lock().unwrap_or_else(|p| p.into_inner());
        match *d {
            Some((g, t)) if g == generation => {
                *d = None;
                Some(t)
            }
            _ => None,
        }
    }

    /// The live instances, as registered; `Err` when etcd cannot be asked.
    pub async fn instances(&self) -> Result<Vec<ClusterInstance>, StoreError> {
        let client = self.client().await?;
        let resp = retried(|| {
            let (mut client, key) = (client.clone(), self.instances_key());
            async move { client.get(key, Some(GetOptions::new().with_prefix())).await }
        })
        .await?;
        Ok(resp
            .kvs()
            .iter()
            .filter_map(|kv| serde_json::from_slice(kv.value()).ok())
            .collect())
    }

    /// `status`'s `cluster` object.
    pub async fn status(&self) -> ClusterStatus {
        let instances = if self.connected.load(Ordering::SeqCst) {
            self.instances().await.unwrap_or_default()
        } else {
            Vec::new()
        };
        ClusterStatus {
            endpoints: self.config.etcd.clone(),
            prefix: self.config.prefix.clone(),
            name: self.config.name.clone(),
            revision: *self.applied.borrow(),
            connected: self.connected.load(Ordering::SeqCst),
            reloads: self.reloads.load(Ordering::SeqCst),
            instances,
        }
    }
}

/// `f`, or an error when etcd does not answer within [`REQUEST_TIMEOUT`].
async fn timed<T>(
    f: impl std::future::Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, StoreError> {
    match tokio::time::timeout(REQUEST_TIMEOUT, f).await {
        Ok(r) => Ok(r?),
        Err(_) => Err(StoreError::NoAnswer(REQUEST_TIMEOUT)),
    }
}

/// `f`, tried again while etcd says it is unavailable (a member down: the client's balancer
/// may still pick it) until [`REQUEST_TIMEOUT`] runs out.
async fn retried<T, F, Fut>(mut f: F) -> Result<T, StoreError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, etcd_client::Error>>,
{
    let deadline = tokio::time::Instant::now() + REQUEST_TIMEOUT;
    loop {
        match tokio::time::timeout_at(deadline, f()).await {
            Ok(Ok(v)) => return Ok(v),
            Ok(Err(etcd_client::Error::GRpcStatus(s)))
                if i32::from(s.code()) == UNAVAILABLE
                    && tokio::time::Instant::now() + RETRY_STEP < deadline =>
            {
                tokio::time::sleep(RETRY_STEP).await;
            }
            Ok(Err(e)) => return Err(e.into()),
            Err(_) => return Err(StoreError::NoAnswer(REQUEST_TIMEOUT)),
        }
    }
}

impl crate::control::Control {
    /// Waits until `slot` has nothing in flight here and, with `[cluster]`, on every live
    /// instance that serves this generation or a later one (an instance still on an older
    /// one has not yet taken the slot off duty).
    pub async fn wait_drained_everywhere(&self, slot: crate::SlotName, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        let r = self.load();
        if !r.counters.wait_drained(slot, timeout).await {
            return false;
        }
        let Some(link) = self.cluster() else {
            return true;
        };
        let generation = r.generation;
        loop {
            if let Ok(all) = link.instances().await {
                let drained =
                    |i: &ClusterInstance| i.generation >= generation && i.inflight.get(slot) == 0;
                if all.iter().all(drained) {
                    return true;
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
