//! The policy functions of [`Bascule`] that every path calls: the full proxy's hooks, and the
//! HTTP/2 loop for the streams it answers or proxies itself (`super::super::h2`).

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use http::HeaderValue;
use pingora_http::{RequestHeader, ResponseHeader};

use crate::slots::choice::{Asked, Choice};
use crate::slots::counters::InflightGuard;
use crate::slots::routing::Routing;
use crate::statics::StaticFiles;
use crate::wire::access_log::{Entry, LogRequest};
use crate::wire::headers::{EdgeHeaders, RouteHeaders};
use crate::wire::retry::Failure;
use crate::wire::{error_body, forward, pingora, Reject};
use crate::SlotName;

use super::{Bascule, RequestCtx};

impl Bascule {
    /// Records a failed attempt; whether to try again (`wire::retry`).
    pub(super) fn again(&self, ctx: &mut RequestCtx, failure: Failure, replayable: bool) -> bool {
        let members = ctx
            .routing
            .as_ref()
            .map_or(0, |r| r.slot(ctx.slot).pool.members().len());
        let member = ctx.member.unwrap_or(0);
        ctx.retries
            .after(failure, member, members, replayable)
            .is_some()
    }

    /// Adds the slot header to `resp`, when it is turned on.
    #[inline]
    pub(crate) fn tag(&self, resp: &mut ResponseHeader, slot: SlotName) {
        if let Some(name) = &self.slot_header {
            let value = HeaderValue::from_static(slot.as_str());
            let _ = resp.insert_header(name.clone(), value);
        }
    }

    /// What `req`'s headers ask of the slot choice; nothing is read when no header can
    /// change it under `routing`.
    fn asked(&self, req: &RequestHeader, routing: &Routing) -> Asked {
        let mut asked = Asked::default();
        if self.slots.reads_headers(routing) {
            for (name, value) in req.headers.iter() {
                self.slots
                    .read_header(name.as_str().as_bytes(), value.as_bytes(), &mut asked);
            }
        }
        asked
    }

    /// Adds the sticky cookie naming `slot`, when this response carries it.
    pub(crate) fn sticky_cookie(
        &self,
        resp: &mut ResponseHeader,
        slot: SlotName,
        set_cookie: bool,
    ) {
        if set_cookie {
            let cookie = self.slots.set_cookie(slot);
            let _ = resp.append_header(http::header::SET_COOKIE, cookie);
        }
    }

    /// The answer to a head the policy refused, with the edge's headers.
    pub(crate) fn refusal(&self, why: &Reject) -> Option<(ResponseHeader, Bytes)> {
        let body = Bytes::from(format!("{why}\n"));
        let mut resp = pingora::own_response_header(why.status(), body.len())?;
        if let Some(s) = why.retry_after() {
            let _ = resp.insert_header(http::header::RETRY_AFTER, s);
        }
        self.edge.apply(&[], &mut resp, false);
        Some((resp, body))
    }

    /// The proxy's own error answer (502, 503, 504) with the edge's and the route's headers,
    /// and the slot header once the request was given a slot.
    pub(crate) fn error_answer(
        &self,
        code: u16,
        slot: Option<SlotName>,
        route: &RouteHeaders,
    ) -> Option<(ResponseHeader, Bytes)> {
        let body = Bytes::from_static(error_body(code).as_bytes());
        let mut resp = pingora::own_response_header(code, body.len())?;
        if let Some(slot) = slot {
            self.tag(&mut resp, slot);
        }
        self.edge.apply(route, &mut resp, false);
        Some((resp, body))
    }

    /// The slot for an accepted request under `routing`, chosen without counting anything.
    pub(crate) fn choose(&self, req: &RequestHeader, routing: &Routing, client: IpAddr) -> Choice {
        let asked = self.asked(req, routing);
        self.slots.choose(routing, asked, client)
    }

    /// Counts a request served by `choice` (in flight until the guard drops).
    pub(crate) fn admit(&self, routing: &Routing, choice: Choice) -> InflightGuard {
        if choice.preview {
            self.control.metrics().preview_requests.inc();
        }
        routing.counters.enter(choice.slot)
    }

    /// The slot header, sticky cookie, route's and edge's headers on a static answer.
    pub(crate) fn dress_static(
        &self,
        resp: &mut ResponseHeader,
        choice: Choice,
        route: &RouteHeaders,
    ) {
        self.tag(resp, choice.slot);
        self.sticky_cookie(resp, choice.slot, choice.set_cookie);
        self.edge.apply(route, resp, false);
    }

    /// The end of every request, whatever its outcome: metrics (of a request given to a slot)
    /// and the access log line (of every request, refused ones too).
    pub(crate) fn record(&self, done: Done) {
        let elapsed = done.start.elapsed();
        if let Some(slot) = done.slot {
            self.control.metrics().observe(slot, done.status, elapsed);
        }
        let (Some(log), Some(request)) = (&self.log, done.request) else {
            return;
        };
        log.log(Entry {
            time: SystemTime::now() - elapsed,
            client: done.client,
            request,
            status: done.status,
            bytes: done.bytes,
            duration: elapsed,
            slot: done.slot,
            upstream: done.upstream,
        });
    }

    /// Runs the request policy on `req` from `client` without editing it: the verdict and the
    /// edit for the upstream, or why it is refused.
    pub(crate) fn check(
        &self,
        req: &RequestHeader,
        client: Option<IpAddr>,
        tls: bool,
    ) -> std::result::Result<(pingora::Verdict, pingora::Edit), Reject> {
        let mode = forward::mode(
            &self.forwarding,
            client.unwrap_or(std::net::Ipv4Addr::UNSPECIFIED.into()),
        );
        pingora::check_pingora(req, &self.limits, mode, client, tls, self.redirect_to)
    }

    /// `[[rate_limits]]` for an accepted request to `path`: counts it, or refuses it.
    pub(crate) fn rate_check(&self, path: &str, client: IpAddr) -> std::result::Result<(), Reject> {
        self.rate.check(path, client)
    }

    /// The routing snapshot now.
    pub(crate) fn routing(&self) -> Arc<Routing> {
        self.control.load()
    }

    /// The static file server.
    pub(crate) fn statics(&self) -> &StaticFiles {
        &self.statics
    }

    /// Runs the request policy on `req` from `client` (over TLS) and writes the upstream's
    /// HTTP/1.1 head for it into `out`, as the fast path would.
    pub(crate) fn upstream_head(
        &self,
        req: &RequestHeader,
        client: Option<IpAddr>,
        out: &mut Vec<u8>,
    ) -> std::result::Result<pingora::Verdict, Reject> {
        let mode = forward::mode(
            &self.forwarding,
            client.unwrap_or(std::net::Ipv4Addr::UNSPECIFIED.into()),
        );
        pingora::upstream_h1(req, &self.limits, mode, client, true, out)
    }

    /// The edge's response headers (`[headers]`, the slot header).
    pub(crate) fn edge(&self) -> &EdgeHeaders {
        &self.edge
    }

    /// Whether the HTTP/2 loop may proxy a request itself: with `[compression]` on, the full
    /// proxy does (it compresses per body piece).
    pub(crate) fn proxies_h2(&self) -> bool {
        self.compression.is_none()
    }

    /// Idle connections kept per upstream member.
    pub(crate) fn pool_max(&self) -> usize {
        self.pool_max
    }

    /// Whether `slot` takes traffic now (a slot that left duty gets no connection back).
    pub(crate) fn takes_traffic(&self, slot: SlotName) -> bool {
        self.control.takes_traffic(slot)
    }

    /// Whether requests are logged: the head is then copied as sent, before any rewrite.
    pub(crate) fn logs(&self) -> bool {
        self.log.is_some()
    }
}

/// A finished request, for [`Bascule::record`].
pub(crate) struct Done {
    pub(crate) start: Instant,
    pub(crate) client: Option<IpAddr>,
    /// The head as sent; `None` when requests are not logged.
    pub(crate) request: Option<Box<LogRequest>>,
    /// 0 when no response head was written.
    pub(crate) status: u16,
    /// Body bytes written to the client.
    pub(crate) bytes: u64,
    /// The serving slot, once the request was given one.
    pub(crate) slot: Option<SlotName>,
    /// The upstream member that answered.
    pub(crate) upstream: Option<String>,
}
