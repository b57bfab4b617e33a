//! The automatic rollback (`[rollback] auto = true`).
//!
//! After a flip, a deploy's flip or a weights change, the slot that just took traffic is
//! watched for `window`: at every 5xx it answers (the request path wakes the watch) and every
//! [`POLL`] besides, its answers since the change are read from the per-slot stats
//! ([`Stats`](crate::slots::stats::Stats)). Once it has answered
//! `min_requests`, a 5xx share above `max_error_ratio` flips back to the slot it replaced —
//! a flip like any other (drain watch, state file, `bascule_flips_total`), recorded as
//! `last_rollback` in the snapshot and the state file, counted in
//! `bascule_auto_rollbacks_total` and logged as a warning.
//!
//! A slot that is itself unhealthy is never flipped to: the watch keeps going, and rolls back
//! if it becomes healthy within the window. The rollback starts no watch of its own, and any
//! later change stands the watch down (its token moved): one automatic rollback per change.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bascule_admin::LastRollback;
use bascule_config::RollbackConfig;

use crate::control::{Control, ControlError, WriteGuard};
use crate::slots::routing::RollbackRecord;
use crate::slots::stats::StatsSnapshot;
use crate::SlotName;

/// How often a watched slot's counts are read when no 5xx woke the watch.
const POLL: Duration = Duration::from_millis(50);

/// A record as `status` and the state file show it.
pub fn last_rollback(r: &RollbackRecord) -> LastRollback {
    LastRollback {
        at: humantime::format_rfc3339_seconds(r.at).to_string(),
        from: r.from,
        to: r.to,
        reason: r.reason.clone(),
    }
}

/// A record read back from the state file (`None` when its time does not parse).
pub(crate) fn record_of(p: &LastRollback) -> Option<Arc<RollbackRecord>> {
    Some(Arc::new(RollbackRecord {
        at: humantime::parse_rfc3339(&p.at).ok()?,
        from: p.from,
        to: p.to,
        reason: p.reason.clone(),
    }))
}

/// `0.05` as `5%`, `0.125` as `12.5%`.
fn percent(ratio: f64) -> String {
    let p = ratio * 100.0;
    if (p - p.round()).abs() < 1e-9 {
        format!("{p:.0}%")
    } else {
        format!("{p:.1}%")
    }
}

/// Why `now` minus `baseline` calls for a rollback under `cfg`, if it does.
fn verdict(cfg: &RollbackConfig, baseline: &StatsSnapshot, now: &StatsSnapshot) -> Option<String> {
    let requests = now.requests().saturating_sub(baseline.requests());
    let errors = now.errors().saturating_sub(baseline.errors());
    if requests < cfg.min_requests {
        return None;
    }
    let ratio = errors as f64 / requests as f64;
    (ratio > cfg.max_error_ratio).then(|| {
        format!(
            "5xx {errors}/{requests} = {} > {}",
            percent(ratio),
            percent(cfg.max_error_ratio)
        )
    })
}

/// What became of an attempt to roll back.
enum Attempt {
    /// Flipped back (or a later change made it moot): the watch is over.
    Done,
    /// The slot to go back to cannot take traffic now.
    Refused(String),
}

impl Control {
    /// After a change (caller holds the write lock): stands down any earlier watch and, when
    /// `[rollback] auto` is on, watches `watched.0`, to flip back to `watched.1`.
    pub(super) fn watch_change(&self, _w: &WriteGuard<'_>, watched: Option<(SlotName, SlotName)>) {
        let token = self.watch_token.fetch_add(1, Ordering::SeqCst) + 1;
        let cfg = self.config.load().rollback.clone();
        let Some((slot, back_to)) = watched else {
            return;
        };
        if !cfg.auto || slot == back_to {
            return;
        }
        let Some(me) = self.me.upgrade() else {
            return;
        };
        let baseline = self.metrics.stats.snapshot(slot);
        tracing::info!(slot = %slot, window = ?cfg.window, "watching for an automatic rollback");
        tokio::spawn(async move { me.watch(token, slot, back_to, baseline, cfg).await });
    }

    async fn watch(
        self: Arc<Self>,
        token: u64,
        slot: SlotName,
        back_to: SlotName,
        baseline: StatsSnapshot,
        cfg: RollbackConfig,
    ) {
        let deadline = Instant::now() + cfg.window;
        let mut told = false;
        let mut tick = tokio::time::interval(POLL);
        let errors = &self.metrics.errors_seen[slot.index()];
        while Instant::now() < deadline {
            tokio::select! {
                _ = tick.tick() => {}
                () = errors.notified() => {}
            }
            if self.watch_token.load(Ordering::SeqCst) != token {
                return;
            }
            let now = self.metrics.stats.snapshot(slot);
            let Some(reason) = verdict(&cfg, &baseline, &now) else {
                continue;
            };
            match self.roll_back(token, slot, back_to, reason.clone()).await {
                Attempt::Done => return,
                Attempt::Refused(why) if !told => {
                    told = true;
                    tracing::warn!(slot = %slot, to = %back_to, %reason, %why,
                        "automatic rollback held back: the slot to go back to is not healthy");
                }
                Attempt::Refused(_) => {}
            }
        }
        tracing::info!(slot = %slot, "automatic rollback watch over");
    }

    /// Flips from `slot` back to `back_to`, unless `back_to` is unhealthy or a later change
    /// superseded the watch.
    async fn roll_back(
        &self,
        token: u64,
        slot: SlotName,
        back_to: SlotName,
        reason: String,
    ) -> Attempt {
        // A slot known healthy is gone back to at once: every request until the flip fails.
        // Only one that is not is probed again first (and refused if it still fails).
        if !self.load().slot(back_to).pool.any_healthy() {
            if let Some(why) = self.refusal(back_to).await {
                return Attempt::Refused(why);
            }
        }
        let w = self.write.lock().await;
        if self.watch_token.load(Ordering::SeqCst) != token {
            return Attempt::Done;
        }
        let record = RollbackRecord {
            at: SystemTime::now(),
            from: slot,
            to: back_to,
            reason: reason.clone(),
        };
        // The rollback ends the watch and starts none: no oscillation.
        self.watch_token.fetch_add(1, Ordering::SeqCst);
        match self.apply_flip(w, back_to, None, Some(record)).await.1 {
            Ok(_) | Err(ControlError::NotPersisted { .. }) => {
                self.metrics.auto_rollbacks.inc();
                tracing::warn!(from = %slot, to = %back_to, %reason, "automatic rollback");
            }
            Err(e) => tracing::error!(error = %e, "automatic rollback failed"),
        }
        Attempt::Done
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::slots::stats::BUCKETS;

    fn counts(ok: u64, errors: u64) -> StatsSnapshot {
        StatsSnapshot {
            classes: [0, ok, 0, 0, errors],
            buckets: [0; BUCKETS],
        }
    }

    #[test]
    fn judges_only_after_min_requests_and_above_the_ratio() {
        let cfg = RollbackConfig {
            auto: true,
            min_requests: 20,
            ..Default::default()
        };
        let base = counts(100, 3);
        assert_eq!(verdict(&cfg, &base, &counts(100, 22)), None);
        assert_eq!(
            verdict(&cfg, &base, &counts(103, 50)).as_deref(),
            Some("5xx 47/50 = 94% > 5%")
        );
        // 1 in 20 is 5%: not above.
        assert_eq!(verdict(&cfg, &base, &counts(119, 4)), None);
        assert_eq!(percent(0.125), "12.5%");
    }
}
