//! The request path: Bascule's `ProxyHttp` implementation.
//!
//! Per request: one snapshot load (an `Arc` clone), one slot choice, one in-flight guard, one
//! prefix scan of the routes, one member pick, one peer clone. No logging, no formatting, no
//! allocation of our own beyond what Pingora asks for (the boxed peer).

use std::os::fd::RawFd;
use std::sync::Arc;
use std::time::Instant;

use ::pingora::proxy::{FailToProxy, ProxyHttp, Session};
use async_trait::async_trait;
use bascule_config::{HeaderLines, RouteTarget};
use bytes::Bytes;
use pingora_core::modules::http::HttpModules;
use pingora_core::protocols::Digest;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::{Error, ErrorSource, ErrorType, OrErr, Result};
use pingora_http::ResponseHeader;

use crate::control::Control;
use crate::http::edge::{Done, Dress, EdgePolicy, Policies};
use crate::slots::counters::InflightGuard;
use crate::slots::routing::Routing;
use crate::wire::access_log::LogRequest;
use crate::wire::compress::{self, Encoder, Facts, Negotiated, Plan};
use crate::wire::pingora;
use crate::wire::request_id::RequestId;
use crate::wire::retry::{self, Failure, Retries};
use crate::SlotName;

mod policy;

/// The proxy service. Cloned for the HTTP/2 loop, which serves in-memory static answers and
/// proxies bodiless streams with the same policy (`super::h2`); the clones share their state.
#[derive(Clone)]
pub struct Bascule {
    control: Arc<Control>,
    /// The edge policy in force, loaded once per request.
    policies: Arc<Policies>,
}

impl Bascule {
    /// A proxy over `control`'s snapshots and `policies`' edge policy (shared with the fast
    /// path and the HTTP/2 loop).
    pub(crate) fn new(control: Arc<Control>, policies: Arc<Policies>) -> Bascule {
        Bascule { control, policies }
    }

    /// The edge policy now; a request keeps the one it loaded.
    #[inline]
    pub(crate) fn policy(&self) -> Arc<EdgePolicy> {
        self.policies.load()
    }
}

/// What one request carries from hook to hook.
pub struct RequestCtx {
    /// The edge policy this request reads, loaded when it began.
    policy: Arc<EdgePolicy>,
    /// The snapshot this request was routed with; kept to the end of the request.
    routing: Option<Arc<Routing>>,
    /// Counts this request against its slot until dropped with the context.
    guard: Option<InflightGuard>,
    /// The serving slot.
    slot: SlotName,
    /// The response carries the sticky cookie naming `slot`.
    set_cookie: bool,
    /// The member picked for the current attempt.
    member: Option<usize>,
    /// The attempts so far, by the shared retry rules.
    retries: Retries,
    /// The slot's drain-cut epoch when the request was routed.
    cut_epoch: u64,
    /// Request body bytes seen, against `[limits] max_body_bytes`.
    body_bytes: u64,
    /// Upstream socket of an upgrade request, registered once the upstream answers 101.
    upstream_fd: Option<RawFd>,
    /// Key of this connection among the slot's upgraded connections.
    upgraded: Option<u64>,
    /// The head as the client sent it, for the access log (copied before it is rewritten).
    log_request: Option<Box<LogRequest>>,
    /// The route's own response headers.
    route_headers: Option<HeaderLines>,
    /// What `Accept-Encoding` allows for a proxied response.
    negotiated: Negotiated,
    /// The compressor of a response being compressed.
    encoder: Option<Encoder>,
    /// The request's id, under `[request_id]`.
    request_id: Option<RequestId>,
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
    /// Judges the member of the current attempt by its outcome (`[outlier]`).
    fn judge(&self, failed: bool) {
        if let (Some(r), Some(i)) = (&self.routing, self.member) {
            self.policy.judge(r, self.slot, i, failed);
        }
    }

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
                // The request body stalled past `[limits] body_timeout`.
                ErrorType::ReadTimedout => 408,
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
            policy: self.policy(),
            routing: None,
            guard: None,
            slot: SlotName::Blue,
            set_cookie: false,
            member: None,
            retries: Retries::default(),
            cut_epoch: 0,
            body_bytes: 0,
            upstream_fd: None,
            upgraded: None,
            log_request: None,
            route_headers: None,
            negotiated: Negotiated::Off,
            encoder: None,
            request_id: None,
            start: Instant::now(),
        }
    }

    /// Setup phase, once per service: no downstream modules. Pingora's default adds a disabled
    /// compression module whose hooks would still run on every request.
    fn init_downstream_modules(&self, _modules: &mut HttpModules) {}

    /// Request phase, first hook that can answer: runs the shared request policy (a refused
    /// head is answered here, 4xx and close; an accepted one is rewritten for the upstream),
    /// loads the snapshot once, chooses the slot (`slots::choice`: preview, sticky canary,
    /// split), counts the request against it, and answers static routes here entirely
    /// (`Ok(true)`). `Ok(false)` sends the request on to [`Self::upstream_peer`].
    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        let p = &ctx.policy;
        let peer = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip());
        if p.logs() {
            ctx.log_request = Some(Box::new(LogRequest::from_pingora(session.req_header())));
        }
        // Read before the head is rewritten: as on the fast path, the first value as sent.
        if let Some(c) = &p.compression {
            let req = session.req_header();
            ctx.negotiated = c.negotiate(
                req.method == http::Method::HEAD,
                req.version < http::Version::HTTP_11,
                req.headers
                    .get(http::header::ACCEPT_ENCODING)
                    .map(|v| v.as_bytes()),
            );
        }
        let tls = session.digest().is_some_and(|d| d.ssl_digest.is_some());
        let client = peer.unwrap_or(std::net::Ipv4Addr::UNSPECIFIED.into());
        let checked = match p.check(session.req_header(), peer, tls) {
            Ok((mut v, edit)) => {
                ctx.request_id = v.request_id.take();
                p.rate.check(&v.path, client).map(|()| (v, edit))
            }
            Err(why) => {
                ctx.request_id = p.new_id();
                Err(why)
            }
        };
        let verdict = match checked {
            Ok((v, edit)) => {
                edit.apply(session.req_header_mut());
                v
            }
            Err(why) => {
                if let Some((resp, body)) = p.refusal(&why, ctx.request_id.as_ref()) {
                    let _ = session.write_error_response(resp, body).await;
                }
                return Ok(true);
            }
        };
        if let Some(location) = verdict.redirect {
            let body = Bytes::from_static(b"moved to https\n");
            if let Some(mut resp) = pingora::own_response_header(308, body.len()) {
                let _ = resp.insert_header(http::header::LOCATION, location);
                p.dress(Dress::bare(ctx.request_id.as_ref()), &mut resp, false);
                let _ = session.write_error_response(resp, body).await;
            }
            return Ok(true);
        }
        // Between two reads of the body, as the fast path waits for a head.
        session.set_read_timeout(Some(p.limits.body_timeout));
        let routing = self.control.load();
        let choice = p.choose(session.req_header(), &routing, client);
        let slot = choice.slot;
        ctx.slot = slot;
        ctx.set_cookie = choice.set_cookie;
        ctx.guard = Some(p.admit(&routing, choice));
        ctx.cut_epoch = routing.counters.exchanges.cut_epoch(slot);
        let (target, route) = routing.target(&verdict.path);
        ctx.route_headers = route.map(|r| r.headers.clone());
        if let (RouteTarget::Static, Some(route)) = (target, route) {
            let route = route.clone();
            let mut resp = p.statics.respond(session, &routing, slot, &route).await?;
            let d = Dress::of(choice, &route.headers, ctx.request_id.as_ref());
            p.dress(d, &mut resp.header, false);
            resp.send(session).await?;
            ctx.routing = Some(routing);
            return Ok(true);
        }
        ctx.routing = Some(routing);
        Ok(false)
    }

    /// Request phase, per piece of the request body: counts it against
    /// `[limits] max_body_bytes` (a chunked body declares no length up front): 413 beyond it.
    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if let Some(b) = body {
            ctx.body_bytes += b.len() as u64;
            if ctx.body_bytes > ctx.policy.limits.max_body_bytes {
                return Error::e_explain(ErrorType::HTTPStatus(413), "request body too large");
            }
        }
        Ok(())
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
        match pool.pick(ctx.retries.skip()) {
            Some(i) => {
                ctx.member = Some(i);
                Ok(Box::new(pool.members()[i].peer.clone()))
            }
            None => Error::e_explain(
                ErrorType::HTTPStatus(ctx.retries.exhausted_status()),
                "no usable upstream",
            ),
        }
    }

    /// Upstream phase, on a failed connect: by the shared retry rules (`wire::retry`), another
    /// member is tried while one is left; nothing has reached the upstream, so any method may.
    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut RequestCtx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        let failure = if e.etype() == &ErrorType::ConnectTimedout {
            Failure::ConnectTimeout
        } else {
            Failure::Connect
        };
        ctx.judge(true);
        e.set_retry(self.again(ctx, failure, true));
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

    /// Upstream phase, on an error after connecting (or reusing a connection): by the shared
    /// retry rules, while no response byte has gone downstream and the request can be sent
    /// again (idempotent, body buffer whole): a stale pooled connection is replaced, a fresh one
    /// that failed moves to another member, a timeout is answered.
    fn error_while_proxy(
        &self,
        _peer: &HttpPeer,
        session: &mut Session,
        mut e: Box<Error>,
        ctx: &mut RequestCtx,
        client_reused: bool,
    ) -> Box<Error> {
        let replayable = retry::idempotent(session.req_header().method.as_str())
            && !session.as_ref().retry_buffer_truncated()
            && session.response_written().is_none();
        let failure = match e.etype() {
            ErrorType::ReadTimedout | ErrorType::WriteTimedout => Failure::Timeout,
            _ if client_reused => Failure::Stale,
            _ => Failure::Exchange,
        };
        // A pooled connection the upstream had closed says nothing of the member.
        if e.esource() == &ErrorSource::Upstream && failure != Failure::Stale {
            ctx.judge(true);
        }
        let again = e.esource() == &ErrorSource::Upstream && self.again(ctx, failure, replayable);
        e.set_retry(again);
        e
    }

    /// Response phase, before the header goes downstream: tags it with the serving slot,
    /// registers an accepted upgrade (101) as an upgraded connection of that slot, and applies
    /// the compression policy (`wire::compress`) to the head.
    async fn response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        // Refused as the fast path refuses it: a 502, the connection not reused.
        if let Some(why) = pingora::refused_response(upstream_response, session.is_upgrade_req()) {
            ctx.judge(true);
            return Error::e_explain(ErrorType::HTTPStatus(502), why);
        }
        ctx.judge(upstream_response.status.as_u16() >= 500);
        // An HTTP/1.0 client reads no chunked framing: without it Pingora writes the body
        // decoded and delimited by the close, as the fast path does.
        if session.req_header().version == http::Version::HTTP_10
            && upstream_response
                .headers
                .contains_key(http::header::TRANSFER_ENCODING)
        {
            upstream_response.remove_header(&http::header::TRANSFER_ENCODING);
            session.set_keepalive(None);
        }
        let p = &ctx.policy;
        let slot_header = p
            .slot_header
            .as_ref()
            .and_then(|h| std::str::from_utf8(h).ok());
        pingora::clean_response(upstream_response, slot_header);
        let d = Dress {
            slot: Some(ctx.slot),
            set_cookie: ctx.set_cookie,
            route: ctx.route_headers.as_deref().unwrap_or_default(),
            id: ctx.request_id.as_ref(),
        };
        p.dress(d, upstream_response, true);
        if upstream_response.status == 101 {
            if let (Some(fd), Some(r)) = (ctx.upstream_fd.take(), &ctx.routing) {
                ctx.upgraded = r.counters.upgraded.register(ctx.slot, fd);
            }
        }
        if let Some(c) = &ctx.policy.compression {
            let plan = c.plan(ctx.negotiated, &Facts::of_pingora(upstream_response));
            let h1 = session.req_header().version != http::Version::HTTP_2;
            compress::apply_pingora(plan, upstream_response, h1);
            if let Plan::Encode(a) = plan {
                ctx.encoder = Some(Encoder::new(a).or_err(ErrorType::InternalError, "compressor")?);
            }
        }
        Ok(())
    }

    /// Response phase, per piece of the body: compresses it when the head was planned so, each
    /// piece flushed so a streamed response is not held back; the codec's tail goes with the
    /// last piece.
    fn response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<Option<std::time::Duration>> {
        let Some(encoder) = ctx.encoder.as_mut() else {
            return Ok(None);
        };
        let mut out = Vec::new();
        let input = body.as_deref().unwrap_or_default();
        let done = if end_of_stream {
            ctx.encoder.take().map(|e| e.finish(input, &mut out))
        } else {
            (!input.is_empty()).then(|| encoder.chunk(input, &mut out))
        };
        done.transpose()
            .or_err(ErrorType::InternalError, "compressing a response")?;
        *body = (!out.is_empty()).then(|| Bytes::from(out));
        Ok(None)
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
        // Failed before its head was checked: an id of its own all the same.
        if ctx.request_id.is_none() {
            ctx.request_id = ctx.policy.new_id();
        }
        let d = Dress {
            slot: ctx.guard.is_some().then_some(ctx.slot),
            set_cookie: false,
            route: ctx.route_headers.as_deref().unwrap_or_default(),
            id: ctx.request_id.as_ref(),
        };
        if let Some((resp, body)) = (code > 0)
            .then(|| ctx.policy.error_answer(code, d))
            .flatten()
        {
            let _ = session.write_error_response(resp, body).await;
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    /// Last hook of every request, whatever its outcome: metrics (of a request given to a
    /// slot) and the access log line (of every request, refused ones too). The in-flight guard
    /// drops with the context right after.
    async fn logging(&self, session: &mut Session, _e: Option<&Error>, ctx: &mut RequestCtx) {
        let request = match (ctx.policy.logs(), ctx.log_request.take()) {
            (false, _) => None,
            (true, Some(r)) => Some(r),
            (true, None) => Some(Box::new(LogRequest::from_pingora(session.req_header()))),
        };
        // The member that answered, or the last one tried when none did (nginx's
        // `$upstream_addr` of a 502).
        let upstream = match (ctx.member, &ctx.routing) {
            (Some(i), Some(r)) => r.slot(ctx.slot).pool.members().get(i),
            _ => None,
        };
        ctx.policy.record(Done {
            start: ctx.start,
            client: session
                .client_addr()
                .and_then(|a| a.as_inet())
                .map(|a| a.ip()),
            request,
            status: session.response_written().map_or(0, |r| r.status.as_u16()),
            bytes: session.body_bytes_sent() as u64,
            slot: ctx.guard.is_some().then_some(ctx.slot),
            upstream: upstream.map(|m| m.address.clone()),
            request_id: ctx.request_id.take(),
        });
    }
}
