//! HTTP/2 streams proxied by the loop itself: a request without a body that goes upstream is
//! sent as the fast path sends its requests — the head written again from the checked fields
//! ([`crate::wire::pingora::upstream_h1`]), on a provably idle connection from the member's
//! own pool or a fresh one, the members tried by the shared retry rules — and the response
//! head, checked and rewritten by the fast path's parser, becomes the stream's head with the
//! full proxy's response policy (edge headers, slot header, sticky cookie, request id). Pingora's full
//! proxy would spend a task's worth of phases on each stream and keep its own pool beside the
//! members'.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use bascule_config::HeaderLines;
use bytes::{Bytes, BytesMut};
use pingora_core::protocols::http::v2::server::HttpSession;

use crate::http::attempts::Attempts;
use crate::http::edge::{Dress, EdgePolicy};
use crate::http::service::Bascule;
use crate::http::upstream::{self, Exchange, Sink, READ_CHUNK};
use crate::slots::choice::Choice;
use crate::slots::counters::InflightGuard;
use crate::slots::routing::{Member, Routing};
use crate::wire::access_log::LogRequest;
use crate::wire::pingora::response_from_h1;
use crate::wire::request_id::RequestId;
use crate::wire::response::Framing;
use crate::wire::retry::Failure;

use super::done;

/// A stream taken by the loop for proxying: counted against its slot, its upstream head
/// written.
pub(super) struct Proxied {
    /// The edge policy the stream was taken with, kept to its end.
    pub(super) policy: Arc<EdgePolicy>,
    pub(super) session: HttpSession,
    pub(super) start: Instant,
    pub(super) client: Option<IpAddr>,
    /// The head as sent, when requests are logged.
    pub(super) request: Option<Box<LogRequest>>,
    pub(super) choice: Choice,
    /// The snapshot the stream was routed with, kept to its end.
    pub(super) routing: Arc<Routing>,
    pub(super) _inflight: InflightGuard,
    /// The route's own response headers.
    pub(super) route: Option<HeaderLines>,
    /// The upstream's request head.
    pub(super) head: Vec<u8>,
    pub(super) head_only: bool,
    /// The method may be sent twice.
    pub(super) idempotent: bool,
    /// Its id, under `[request_id]`.
    pub(super) id: Option<RequestId>,
}

/// How a proxied stream ended, for the metrics and the log.
struct Outcome<'r> {
    status: u16,
    bytes: u64,
    member: Option<&'r Member>,
}

impl Bascule {
    /// Proxies `p` to a member of its slot and the response back; answers 502/503/504 when no
    /// attempt succeeds while nothing has reached the client.
    pub(super) async fn proxy_h2(&self, mut p: Proxied) {
        let routing = p.routing.clone();
        let out = self.exchange(&mut p, &routing).await;
        let slot = Some(p.choice.slot);
        let mut d = done(
            p.start,
            p.client,
            p.request.take(),
            (out.status, out.bytes),
            slot,
            p.id.take(),
        );
        d.upstream = out.member.map(|m| m.address.clone());
        p.policy.record(d);
    }

    async fn exchange<'r>(&self, p: &mut Proxied, routing: &'r Routing) -> Outcome<'r> {
        // Its own handle: the attempts borrow the stream mutably.
        let policy = p.policy.clone();
        let mut tries = Attempts::new(routing, p.choice.slot, &policy);
        let code = loop {
            let t = match tries.next() {
                Ok(t) => t,
                Err(code) => break code,
            };
            match self.attempt(p, routing, t.member, t.fresh_only).await {
                Ok(out) => {
                    tries.answered(out.status);
                    return out;
                }
                Err(f) => {
                    if let Err(code) = tries.failed(f, p.idempotent) {
                        break code;
                    }
                }
            }
        };
        Outcome {
            member: tries.last(),
            ..self.fail(p, code)
        }
    }

    /// One attempt on `member`; errors are returned only while nothing has reached the client.
    async fn attempt<'r>(
        &self,
        p: &mut Proxied,
        routing: &Routing,
        member: &'r Member,
        fresh_only: bool,
    ) -> Result<Outcome<'r>, Failure> {
        let slot = p.choice.slot;
        let exchanges = &routing.counters.exchanges;
        let mut ex: Exchange<'_> =
            upstream::send(member, exchanges, slot, fresh_only, &p.head).await?;
        let policy = &p.policy;
        let route = p.route.as_deref().unwrap_or_default();
        let drop = |name: &[u8]| policy.edge.drops(route, name);
        let mut ubuf = BytesMut::with_capacity(READ_CHUNK);
        let mut out = Vec::with_capacity(1024);
        let mut sink = Sink::H2(&mut p.session);
        let h = upstream::read_head(&mut ex, &mut sink, p.head_only, &drop, &mut ubuf, &mut out)
            .await?;
        let mut resp = response_from_h1(&out).ok_or(Failure::Exchange)?;
        // The upstream's headers the edge sets or hides were left out by the parser.
        policy.dress(Dress::of(p.choice, route, p.id.as_ref()), &mut resp, false);
        let mut body = Vec::new();
        let start = upstream::start(&h, &ubuf[h.len..], &mut body, true)?;
        let whole = start.whole().map(|in_step| in_step && !h.close);
        let (empty, status) = (h.framing == Framing::Empty, h.status);
        let done = if p
            .session
            .write_response_header(Box::new(resp), empty)
            .is_err()
        {
            upstream::Relayed {
                upstream_ok: whole == Some(true),
                ..upstream::Relayed::broken(0)
            }
        } else if let Some(upstream_ok) = whole {
            // All of it came with the head: sent at once.
            let sent = body.len() as u64;
            let client_ok = empty || crate::statics::send_now(&mut p.session, Bytes::from(body));
            upstream::Relayed {
                upstream_ok,
                client_ok,
                sent,
                whole: true,
            }
        } else {
            let mut sink = Sink::H2(&mut p.session);
            let r = upstream::relay_body(&mut ex, &mut sink, &h, start, &body, &mut ubuf).await;
            // The end of the stream says the body is whole: a close-delimited body ends with the
            // upstream's close, any other cut short resets the stream.
            let client_ok = r.whole && p.session.finish().is_ok();
            upstream::Relayed { client_ok, ..r }
        };
        // A slot that left duty while this request ran does not get its connection back; a
        // preview's does.
        if done.upstream_ok && (p.choice.preview || self.takes_traffic(slot)) {
            member.idle.put(ex.conn.release(), policy.pool_max);
        }
        // A stream whose body was cut short is reset, never ended as if whole.
        if !done.client_ok {
            p.session.shutdown();
        }
        Ok(Outcome {
            status,
            bytes: done.sent,
            member: Some(member),
        })
    }

    /// Answers the stream with the proxy's own error.
    fn fail<'r>(&self, p: &mut Proxied, code: u16) -> Outcome<'r> {
        let route = p.route.as_deref().unwrap_or_default();
        let mut out = Outcome {
            status: 0,
            bytes: 0,
            member: None,
        };
        let d = Dress::of(p.choice, route, p.id.as_ref());
        if let Some((resp, body)) = p.policy.error_answer(code, d) {
            let len = body.len() as u64;
            if p.session
                .write_response_header(Box::new(resp), false)
                .is_ok()
                && crate::statics::send_now(&mut p.session, body)
            {
                out.status = code;
                out.bytes = len;
            }
        }
        out
    }
}
