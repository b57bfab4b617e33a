//! The members one request is tried on, for every path that proxies itself (the fast path and
//! the HTTP/2 loop): a slot's pool picked by the shared retry rules ([`crate::wire::retry`]),
//! and no retry on a slot whose exchanges were cut by a drain timeout. A path keeps only its
//! own way of sending and of answering the error.

use crate::http::edge::EdgePolicy;
use crate::slots::routing::{Member, Routing};
use crate::wire::retry::{Failure, Retries};
use crate::SlotName;

/// The attempts of one request on one slot.
pub(crate) struct Attempts<'r, 'p> {
    routing: &'r Routing,
    /// Judges each attempt's member (`[outlier]`).
    policy: &'p EdgePolicy,
    slot: SlotName,
    /// The slot's cut epoch when the request began.
    epoch: u64,
    retries: Retries,
    fresh_only: bool,
    /// The member of the attempt under way.
    current: usize,
    /// Whether any member was picked: a 502 names the member that failed.
    picked: bool,
}

/// One attempt to make.
pub(crate) struct Attempt<'r> {
    pub(crate) member: &'r Member,
    /// Open a fresh connection: a pooled one just turned out stale.
    pub(crate) fresh_only: bool,
}

impl<'r, 'p> Attempts<'r, 'p> {
    /// The first attempt is yet to be picked.
    pub(crate) fn new(
        routing: &'r Routing,
        slot: SlotName,
        policy: &'p EdgePolicy,
    ) -> Attempts<'r, 'p> {
        Attempts {
            routing,
            policy,
            slot,
            epoch: routing.counters.exchanges.cut_epoch(slot),
            retries: Retries::default(),
            fresh_only: false,
            current: 0,
            picked: false,
        }
    }

    /// The member to try next, or the status to answer with when none is usable.
    pub(crate) fn next(&mut self) -> Result<Attempt<'r>, u16> {
        let pool = &self.routing.slot(self.slot).pool;
        let i = pool
            .pick(self.retries.skip())
            .ok_or_else(|| self.retries.exhausted_status())?;
        self.current = i;
        self.picked = true;
        Ok(Attempt {
            member: &pool.members()[i],
            fresh_only: self.fresh_only,
        })
    }

    /// The attempt [`Attempts::next`] gave was answered with `status` (a 5xx is a failure of
    /// its member, anything else a success).
    pub(crate) fn answered(&self, status: u16) {
        self.policy
            .judge(self.routing, self.slot, self.current, status >= 500);
    }

    /// The member of the last attempt, for the access log of a request that failed on it.
    pub(crate) fn last(&self) -> Option<&'r Member> {
        let members = self.routing.slot(self.slot).pool.members();
        self.picked.then(|| members.get(self.current)).flatten()
    }

    /// The attempt [`Attempts::next`] gave failed with `failure` before anything reached the
    /// client; `Err(status)` when the request is to be answered with an error instead of tried
    /// again. `replayable`: the request may be sent again (idempotent, body still whole).
    pub(crate) fn failed(&mut self, failure: Failure, replayable: bool) -> Result<(), u16> {
        // A pooled connection the upstream had closed says nothing of the member.
        if failure != Failure::Stale {
            self.policy
                .judge(self.routing, self.slot, self.current, true);
        }
        // A slot whose drain timed out is not retried on: its exchanges were cut on purpose.
        if self.routing.counters.exchanges.cut_epoch(self.slot) != self.epoch {
            return Err(503);
        }
        let members = self.routing.slot(self.slot).pool.members().len();
        let again = self
            .retries
            .after(failure, self.current, members, replayable)
            .ok_or(failure.status())?;
        self.fresh_only = again.fresh_only;
        Ok(())
    }
}
