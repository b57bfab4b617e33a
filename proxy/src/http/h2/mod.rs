//! HTTP/2 connections (ALPN `h2` on https listeners): Bascule's accept loop over Pingora's
//! HTTP/2 sessions.
//!
//! Pingora's own loop gives every stream a task running its full proxy. For a small static
//! asset most of a stream's CPU time went to that machinery (a large future moved into a new
//! task, the proxy's phases, a second conversion of the head), not to the answer; a proxied
//! stream also took its upstream connection from Pingora's pool, beside the members' own. Here
//! each stream is read by the same policy functions the full proxy calls ([`Bascule`]), then:
//!
//! - a `GET` or `HEAD` on a static route whose file is kept in memory is answered in the loop;
//! - a request without a body that goes upstream is proxied in a task of its own the way the
//!   fast path proxies ([`proxy`]): the same upstream head, pool, retries and response checks;
//! - every other stream (a body, `CONNECT`, a refused head, `[compression]` on) gets its task
//!   and the full proxy, untouched: nothing is counted or rewritten before it is handed on.
//!
//! The loop keeps what Pingora's does: its acceptance checks (streams are accepted through
//! [`HttpSession::from_h2_conn`]), a budget of malformed streams per connection, and the
//! graceful shutdown (GOAWAY, then the streams already sent are still served).

use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use bascule_config::RouteTarget;
use pingora::proxy::HttpProxy;
use pingora_core::apps::HttpServerApp;
use pingora_core::protocols::http::v2::server::{handshake, H2Accept, HttpSession};
use pingora_core::protocols::http::ServerSession;
use pingora_core::protocols::Digest;
use pingora_core::protocols::Stream;
use pingora_core::server::ShutdownWatch;

mod proxy;

use crate::http::coalesce::Coalesced;
use crate::http::edge::{Done, Dress};
use crate::http::service::Bascule;
use crate::wire::access_log::LogRequest;
use crate::wire::request_id::RequestId;

/// Malformed streams a connection may open before it is closed, as Pingora's loop allows.
const MAX_MALFORMED: usize = 32;

/// Serves one HTTP/2 connection until the client closes it or the server shuts down; without
/// `lean` (`[server] fast_path = false`) every stream goes to the full proxy.
pub(crate) async fn serve(
    stream: Stream,
    full: &Arc<HttpProxy<Bascule>>,
    lean: Option<&Arc<Bascule>>,
    send_timeout: std::time::Duration,
    shutdown: &ShutdownWatch,
) {
    let digest = Arc::new(Digest {
        ssl_digest: stream.get_ssl_digest(),
        timing_digest: stream.get_timing_digest(),
        proxy_digest: stream.get_proxy_digest(),
        socket_digest: stream.get_socket_digest(),
    });
    let client = digest
        .socket_digest
        .as_ref()
        .and_then(|d| d.peer_addr())
        .and_then(|a| a.as_inet())
        .map(|a| a.ip());
    let stream: Stream = Box::new(Coalesced::new(stream, send_timeout));
    let Ok(mut conn) = handshake(stream, full.h2_options.clone()).await else {
        return;
    };
    let mut watch = shutdown.clone();
    let (mut closing, mut malformed) = (false, 0);
    // Streams accepted and not yet answered. The connection flushes what its streams have
    // queued each time it runs out of frames to read: answered as each is accepted, every
    // response would leave in its own write; answered once nothing more has arrived, those
    // of one read leave together, as when each stream has its own task.
    let mut accepted: Vec<HttpSession> = Vec::new();
    loop {
        let next = if !accepted.is_empty() {
            match now(HttpSession::from_h2_conn(&mut conn, digest.clone())) {
                Some(next) => next,
                None => {
                    for session in accepted.drain(..) {
                        answer(session, full, lean, client, shutdown);
                    }
                    continue;
                }
            }
        } else if closing {
            HttpSession::from_h2_conn(&mut conn, digest.clone()).await
        } else {
            tokio::select! {
                biased;
                _ = watch.changed() => {
                    // GOAWAY; the streams the client sent before it still come out of accept.
                    conn.graceful_shutdown();
                    closing = true;
                    continue;
                }
                s = HttpSession::from_h2_conn(&mut conn, digest.clone()) => s,
            }
        };
        match next {
            // A client often leaves without closing HTTP/2 properly: nothing to report.
            Err(_) | Ok(None) => return,
            Ok(Some(H2Accept::Rejected)) => {
                malformed += 1;
                if malformed > MAX_MALFORMED {
                    return;
                }
            }
            Ok(Some(H2Accept::Session(s))) => accepted.push(s),
        }
    }
}

/// Answers `session` in place when it can be, proxies it in a task of its own when the loop
/// can (see [`proxy`]), else gives it a task and the full proxy.
fn answer(
    session: HttpSession,
    full: &Arc<HttpProxy<Bascule>>,
    lean: Option<&Arc<Bascule>>,
    client: Option<IpAddr>,
    shutdown: &ShutdownWatch,
) {
    let to_full = |session: HttpSession| {
        let (full, shutdown) = (full.clone(), shutdown.clone());
        tokio::spawn(async move {
            full.process_new_http(ServerSession::new_http2(session), &shutdown)
                .await;
        });
    };
    let Some(lean) = lean else {
        return to_full(session);
    };
    match lean.answer_h2(session, client) {
        Taken::Answered => {}
        Taken::Proxied(p) => {
            let lean = lean.clone();
            tokio::spawn(async move { lean.proxy_h2(*p).await });
        }
        Taken::Full(session) => to_full(*session),
    }
}

/// What the loop did with a stream.
enum Taken {
    /// Answered in the loop.
    Answered,
    /// To be proxied by the loop's own exchange, in a task.
    Proxied(Box<proxy::Proxied>),
    /// For the full proxy, untouched.
    Full(Box<HttpSession>),
}

/// How the loop answers a stream it takes.
// A local of one call: boxing the static answer would cost an allocation per answer.
#[allow(clippy::large_enum_variant)]
enum Plan {
    /// With this static answer, in memory.
    Static(crate::statics::StaticResponse),
    /// From the upstream, with the route's own response headers.
    Upstream(Option<bascule_config::HeaderLines>),
}

/// `f`'s output if it is ready at once; `f` is dropped otherwise (accepting a stream is
/// cancel-safe: nothing is lost).
fn now<F: Future>(f: F) -> Option<F::Output> {
    let mut f = std::pin::pin!(f);
    let mut cx = Context::from_waker(Waker::noop());
    match f.as_mut().poll(&mut cx) {
        Poll::Ready(v) => Some(v),
        Poll::Pending => None,
    }
}

impl Bascule {
    /// Answers `session` here when its answer is ready without waiting, prepares it for the
    /// loop's proxying when it goes upstream without a body (see the module's doc); gives it
    /// back untouched otherwise, for the full proxy.
    fn answer_h2(&self, mut session: HttpSession, client: Option<IpAddr>) -> Taken {
        let start = Instant::now();
        let p = self.policy();
        let req = session.req_header();
        if !session.is_body_empty() || req.method == http::Method::CONNECT {
            return Taken::Full(Box::new(session));
        }
        // A refused head is answered by the full proxy, with the same policy.
        let mut head = Vec::with_capacity(256);
        let Ok(mut verdict) = p.upstream_head(req, client, &mut head) else {
            return Taken::Full(Box::new(session));
        };
        let routing = self.routing();
        let ip = client.unwrap_or(std::net::Ipv4Addr::UNSPECIFIED.into());
        let choice = p.choose(req, &routing, ip);
        let head_only = req.method == http::Method::HEAD;
        let idempotent = crate::wire::retry::idempotent(req.method.as_str());
        let (target, route) = routing.target(&verdict.path);
        let plan = match target {
            // The static files are looked up by the target in normal form.
            RouteTarget::Static
                if !verdict.rewritten && (head_only || req.method == http::Method::GET) =>
            {
                match p.statics.answer_now(req, &routing, choice.slot) {
                    Some(resp) => Plan::Static(resp),
                    None => return Taken::Full(Box::new(session)),
                }
            }
            RouteTarget::Upstream if p.proxies_h2() => {
                Plan::Upstream(route.map(|r| r.headers.clone()))
            }
            _ => return Taken::Full(Box::new(session)),
        };
        // Taken here from now on: counted, logged, answered.
        let request = p.logs().then(|| Box::new(LogRequest::from_pingora(req)));
        let id = verdict.request_id.take();
        if let Err(why) = p.rate.check(&verdict.path, ip) {
            let (mut status, mut len) = (0, 0);
            if let Some((head, body)) = p.refusal(&why, id.as_ref()) {
                let code = head.status.as_u16();
                len = body.len() as u64;
                if session.write_response_header(Box::new(head), false).is_ok()
                    && crate::statics::send_now(&mut session, body)
                {
                    status = code;
                }
            }
            p.record(done(start, client, request, (status, len), None, id));
            return Taken::Answered;
        }
        let inflight = p.admit(&routing, choice);
        match plan {
            Plan::Static(mut resp) => {
                let route = route.map_or(&[][..], |r| &r.headers[..]);
                p.dress(
                    Dress::of(choice, route, id.as_ref()),
                    &mut resp.header,
                    false,
                );
                let bytes = resp.body_len(head_only);
                let status = resp.write_h2_now(&mut session, head_only);
                let slot = Some(choice.slot);
                p.record(done(start, client, request, (status, bytes), slot, id));
                Taken::Answered
            }
            Plan::Upstream(route) => Taken::Proxied(Box::new(proxy::Proxied {
                policy: p,
                session,
                start,
                client,
                request,
                choice,
                routing,
                _inflight: inflight,
                route,
                head,
                head_only,
                idempotent,
                id,
            })),
        }
    }
}

/// A stream's end, for the record: its `(status, body bytes)` answer (status 0: none).
fn done(
    start: Instant,
    client: Option<IpAddr>,
    request: Option<Box<LogRequest>>,
    (status, bytes): (u16, u64),
    slot: Option<crate::SlotName>,
    request_id: Option<RequestId>,
) -> Done {
    Done {
        start,
        client,
        request,
        status,
        bytes: if status == 0 { 0 } else { bytes },
        slot,
        upstream: None,
        request_id,
    }
}
