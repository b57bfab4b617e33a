//! The request path: Bascule's `ProxyHttp` implementation.
//!
//! Per request: one snapshot load (an `Arc` clone), one slot pick, one in-flight guard, one
//! prefix scan of the routes, one member pick, one peer clone. No logging, no formatting, no
//! allocation of our own beyond what Pingora asks for (the boxed peer).

use std::os::fd::RawFd;
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use bascule_config::RouteTarget;
use bytes::Bytes;
use http::HeaderValue;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora_core::modules::http::HttpModules;
use pingora_core::protocols::Digest;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::{Error, ErrorSource, ErrorType, Result};
use pingora_http::ResponseHeader;

use crate::control::Control;
use crate::slots::counters::InflightGuard;
use crate::slots::routing::Routing;
use crate::statics::StaticFiles;
use crate::wire::error_body;
use crate::SlotName;

/// The proxy service.
pub struct Bascule {
    control: Arc<Control>,
    slot_header: Option<Bytes>,
    statics: Arc<StaticFiles>,
}

impl Bascule {
    /// A proxy over `control`'s snapshots, serving static routes with `statics`.
    pub fn new(control: Arc<Control>, statics: Arc<StaticFiles>) -> Bascule {
        let config = control.config();
        Bascule {
            slot_header: config
                .server
                .slot_header
                .as_ref()
                .map(|h| Bytes::from(h.clone())),
            statics,
            control,
        }
    }

    /// Adds the slot header to `resp`, when it is turned on.
    #[inline]
    fn tag(&self, resp: &mut ResponseHeader, slot: SlotName) {
        if let Some(name) = &self.slot_header {
            let value = HeaderValue::from_static(slot.as_str());
            let _ = resp.insert_header(name.clone(), value);
        }
    }
}

/// What one request carries from hook to hook.
pub struct RequestCtx {
    /// The snapshot this request was routed with; kept to the end of the request.
    routing: Option<Arc<Routing>>,
    /// Counts this request against its slot until dropped with the context.
    guard: Option<InflightGuard>,
    /// The serving slot.
    slot: SlotName,
    /// The member picked for the current attempt.
    member: Option<usize>,
    /// A member that failed to connect, skipped on the retry.
    failed: Option<usize>,
    /// Upstream socket of an upgrade request, registered once the upstream answers 101.
    upstream_fd: Option<RawFd>,
    /// Key of this connection among the slot's upgraded connections.
    upgraded: Option<u64>,
    start: Instant,
}

impl Drop for RequestCtx {
    fn drop(&mut self) {
        if let (Some(id), Some(r)) = (self.upgraded, &self.routing) {
            r.counters.upgraded.unregister(self.slot, id);
        }
    }
}

impl RequestCtx {
    /// The slot serving this request, once routed.
    pub fn slot(&self) -> Option<SlotName> {
        self.guard.as_ref().map(InflightGuard::slot)
    }
}

fn error_status(e: &Error) -> u16 {
    match e.etype() {
        ErrorType::HTTPStatus(code) => *code,
        ErrorType::ConnectTimedout | ErrorType::ReadTimedout | ErrorType::WriteTimedout
            if e.esource() == &ErrorSource::Upstream =>
        {
            504
        }
        _ => match e.esource() {
            ErrorSource::Upstream => 502,
            ErrorSource::Downstream => match e.etype() {
                ErrorType::WriteError | ErrorType::ReadError | ErrorType::ConnectionClosed => 0,
                _ => 400,
            },
            ErrorSource::Internal | ErrorSource::Unset => 500,
        },
    }
}

#[async_trait]
impl ProxyHttp for Bascule {
    type CTX = RequestCtx;

    /// Runs before any hook of a request: an empty context, the clock started.
    fn new_ctx(&self) -> RequestCtx {
        RequestCtx {
            routing: None,
            guard: None,
            slot: SlotName::Blue,
            member: None,
            failed: None,
            upstream_fd: None,
            upgraded: None,
            start: Instant::now(),
        }
    }

    /// Setup phase, once per service: no downstream modules. Pingora's default adds a disabled
    /// compression module whose hooks would still run on every request.
    fn init_downstream_modules(&self, _modules: &mut HttpModules) {}

    /// Request phase, first hook that can answer: loads the snapshot once, picks the slot,
    /// counts the request against it, and answers static routes here entirely (`Ok(true)`).
    /// `Ok(false)` sends the request on to [`Self::upstream_peer`].
    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        let routing = self.control.load();
        let slot = routing.pick_slot();
        ctx.slot = slot;
        ctx.guard = Some(routing.counters.enter(slot));
        let (target, route) = routing.target(session.req_header().uri.path());
        if target == RouteTarget::Static {
            let route = route.expect("a static target comes from a route").clone();
            let mut resp = self
                .statics
                .respond(session, &routing, slot, &route)
                .await?;
            self.tag(&mut resp.header, slot);
            resp.send(session).await?;
            ctx.routing = Some(routing);
            return Ok(true);
        }
        ctx.routing = Some(routing);
        Ok(false)
    }

    /// Upstream phase, once per attempt: the next usable member of the serving slot,
    /// round-robin, skipping a member that just failed. No usable member is a 503.
    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        let routing = ctx
            .routing
            .as_ref()
            .ok_or_else(|| Error::explain(ErrorType::InternalError, "request not routed"))?;
        let pool = &routing.slot(ctx.slot).pool;
        match pool.pick(ctx.failed) {
            Some(i) => {
                ctx.member = Some(i);
                Ok(Box::new(pool.members()[i].peer.clone()))
            }
            None => Error::e_explain(ErrorType::HTTPStatus(503), "no usable upstream"),
        }
    }

    /// Upstream phase, on a failed connect: an idempotent request is retried once, on another
    /// member of the same slot. Nothing has reached the upstream yet, so the retry is safe.
    fn fail_to_connect(
        &self,
        session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut RequestCtx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        let idempotent = session.req_header().method.is_idempotent();
        let others = ctx
            .routing
            .as_ref()
            .is_some_and(|r| r.slot(ctx.slot).pool.members().len() > 1);
        if ctx.failed.is_none() && idempotent && others {
            ctx.failed = ctx.member;
            e.set_retry(true);
        }
        e
    }

    /// Upstream phase, once connected: remembers the upstream socket of an upgrade request
    /// (a WebSocket handshake), so the connection can be closed if its slot's drain times out.
    async fn connected_to_upstream(
        &self,
        session: &mut Session,
        _reused: bool,
        _peer: &HttpPeer,
        fd: RawFd,
        _digest: Option<&Digest>,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if session.is_upgrade_req() {
            ctx.upstream_fd = Some(fd);
        }
        Ok(())
    }

    /// Upstream phase, on an error after connecting (or reusing a connection): decides whether
    /// the request may be tried again. Never for a non-idempotent method or a truncated body
    /// buffer; a stale pooled connection is retried as Pingora does by default; a fresh
    /// connection that failed before any response byte is retried once, on another member.
    fn error_while_proxy(
        &self,
        _peer: &HttpPeer,
        session: &mut Session,
        mut e: Box<Error>,
        ctx: &mut RequestCtx,
        client_reused: bool,
    ) -> Box<Error> {
        let idempotent = session.req_header().method.is_idempotent()
            && !session.as_ref().retry_buffer_truncated();
        if !idempotent {
            e.set_retry(false);
        } else if client_reused {
            e.retry.decide_reuse(true);
        } else if ctx.failed.is_none()
            && session.response_written().is_none()
            && e.esource() == &ErrorSource::Upstream
        {
            ctx.failed = ctx.member;
            e.set_retry(true);
        } else {
            e.set_retry(false);
        }
        e
    }

    /// Response phase, before the header goes downstream: tags it with the serving slot, and
    /// registers an accepted upgrade (101) as an upgraded connection of that slot.
    async fn response_filter(
        &self,
        _session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        self.tag(upstream_response, ctx.slot);
        if upstream_response.status == 101 {
            if let (Some(fd), Some(r)) = (ctx.upstream_fd.take(), &ctx.routing) {
                ctx.upgraded = r.counters.upgraded.register(ctx.slot, fd);
            }
        }
        Ok(())
    }

    /// Error phase, when the request cannot be completed: 502 (unreachable), 503 (no usable
    /// upstream) or 504 (timeout) with a short text body and the slot header, unless the
    /// client is already gone.
    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        let code = error_status(e);
        if code > 0 {
            let body = Bytes::from_static(error_body(code).as_bytes());
            if let Ok(mut resp) = ResponseHeader::build(code, Some(4)) {
                let _ = resp.insert_header(http::header::CONTENT_TYPE, "text/plain; charset=utf-8");
                let _ = resp.insert_header(http::header::CONTENT_LENGTH, body.len());
                if ctx.guard.is_some() {
                    self.tag(&mut resp, ctx.slot);
                }
                let _ = session.write_error_response(resp, body).await;
            }
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    /// Last hook of every request, whatever its outcome: metrics. The in-flight guard drops
    /// with the context right after.
    async fn logging(&self, session: &mut Session, _e: Option<&Error>, ctx: &mut RequestCtx) {
        if ctx.guard.is_none() {
            return;
        }
        let code = session.response_written().map_or(0, |r| r.status.as_u16());
        self.control
            .metrics()
            .observe(ctx.slot, code, ctx.start.elapsed());
    }
}
