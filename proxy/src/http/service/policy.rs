//! The parts of [`Bascule`] that are not the edge policy (`crate::http::edge`): the retry
//! decision of its hooks and what the HTTP/2 loop asks of the proxy.

use std::sync::Arc;

use crate::slots::routing::Routing;
use crate::wire::retry::Failure;
use crate::SlotName;

use super::{Bascule, RequestCtx};

impl Bascule {
    /// Records a failed attempt; whether to try again (`wire::retry`). As on the paths that
    /// proxy themselves (`http::attempts`), a slot whose exchanges a drain timeout cut since
    /// the request began is not retried on: they were cut on purpose.
    pub(super) fn again(&self, ctx: &mut RequestCtx, failure: Failure, replayable: bool) -> bool {
        let cut = ctx
            .routing
            .as_ref()
            .is_some_and(|r| r.counters.exchanges.cut_epoch(ctx.slot) != ctx.cut_epoch);
        if cut {
            return false;
        }
        let members = ctx
            .routing
            .as_ref()
            .map_or(0, |r| r.slot(ctx.slot).pool.members().len());
        let member = ctx.member.unwrap_or(0);
        ctx.retries
            .after(failure, member, members, replayable)
            .is_some()
    }

    /// The routing snapshot now.
    pub(crate) fn routing(&self) -> Arc<Routing> {
        self.control.load()
    }

    /// Whether `slot` takes traffic now (a slot that left duty gets no connection back).
    pub(crate) fn takes_traffic(&self, slot: SlotName) -> bool {
        self.control.takes_traffic(slot)
    }
}
