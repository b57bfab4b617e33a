//! The fast path's upstream side of a request: members tried by the shared retry rules, the
//! request (and its body) sent, the response head rewritten and its body relayed.

use bytes::BytesMut;
use pingora_core::protocols::Stream;

use crate::http::edge::EdgePolicy;
use crate::slots::routing::{Member, Routing};
use crate::wire::date_line;
use crate::wire::headers::RouteHeaders;
use crate::wire::response::Framing;
use crate::wire::retry::Failure;
use crate::SlotName;

use super::body::{self, BodyError, Streamed};
use super::request::Request;
use super::{compress, Answered, FastApp, Next, Relay, READ_CHUNK};
use crate::http::attempts::Attempts;
use crate::http::upstream::{self, Exchange, Sink};

impl FastApp {
    /// Relays the request to a member of `slot` and the response back, trying other members
    /// by the shared retry rules while nothing has reached the client.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn proxy<'r>(
        &self,
        p: &EdgePolicy,
        client: &mut Stream,
        req: &Request,
        routing: &'r Routing,
        slot: SlotName,
        head: &[u8],
        headers: &RouteHeaders,
        body: &mut Relay<'_>,
    ) -> Answered<'r> {
        let mut tries = Attempts::new(routing, slot, p);
        let code = loop {
            let t = match tries.next() {
                Ok(t) => t,
                Err(code) => break code,
            };
            let tried = self
                .attempt(
                    p,
                    client,
                    req,
                    routing,
                    slot,
                    t.member,
                    t.fresh_only,
                    head,
                    headers,
                    body,
                )
                .await;
            // Sent again only while the body is whole (it all went with the head).
            let replayable = req.idempotent && !body.started;
            match tried {
                Ok(done) => {
                    tries.answered(done.status);
                    return done;
                }
                Err(f) => {
                    if let Err(code) = tries.failed(f, replayable) {
                        break code;
                    }
                }
            }
        };
        Answered {
            member: tries.last(),
            ..Answered::error(
                self.respond_error(p, client, code, req.dress(slot, headers))
                    .await,
            )
        }
    }

    /// One attempt on `member`. Errors are returned only while nothing has reached the client.
    #[allow(clippy::too_many_arguments)]
    async fn attempt<'r>(
        &self,
        p: &EdgePolicy,
        client: &mut Stream,
        req: &Request,
        routing: &Routing,
        slot: SlotName,
        member: &'r Member,
        fresh_only: bool,
        head: &[u8],
        headers: &RouteHeaders,
        body: &mut Relay<'_>,
    ) -> Result<Answered<'r>, Failure> {
        let exchanges = &routing.counters.exchanges;
        let mut ex: Exchange<'_> =
            upstream::send(member, exchanges, slot, fresh_only, head).await?;
        let mut ubuf = BytesMut::with_capacity(READ_CHUNK);
        let mut out = Vec::with_capacity(1024);
        let drop = |name: &[u8]| p.edge.drops(headers, name);
        // The upstream answered before the whole body was sent: the client's connection ends
        // after the response, the rest of its body unread.
        let mut early = false;
        if let Some(rest) = body.rest.as_mut() {
            body.started = true;
            let m = req.head_method;
            let streamed = body::stream(
                &mut ex, client, body.buf, rest, &mut ubuf, &drop, m, &mut out,
            );
            match streamed.await {
                Ok(Streamed::Sent) => {}
                Ok(Streamed::Answered) => early = true,
                Err(BodyError::Upstream) => return Err(Failure::Exchange),
                Err(BodyError::Client(r)) => {
                    let code = r.status();
                    self.respond_error(p, client, code, req.dress(slot, headers))
                        .await;
                    body::linger(client).await;
                    return Ok(Answered {
                        member: Some(member),
                        ..Answered::error(code)
                    });
                }
                Err(BodyError::Gone) => {
                    return Ok(Answered {
                        bytes: 0,
                        member: Some(member),
                        ..Answered::error(400)
                    })
                }
            }
        }
        let h = upstream::read_head(
            &mut ex,
            &mut Sink::H1(client),
            req.head_method,
            &drop,
            &mut ubuf,
            &mut out,
        )
        .await?;
        // An HTTP/1.0 client reads no chunked framing: the body goes decoded, ended by close
        // (the framing header is the last line of the head as rewritten).
        let decode = req.h10 && h.framing == Framing::Chunked;
        if decode {
            const TE: &[u8] = b"transfer-encoding: chunked\r\n";
            if out.ends_with(TE) {
                out.truncate(out.len() - TE.len());
            }
        }
        if !h.has_date {
            date_line(&mut out);
        }
        p.dress_h1(req.dress(slot, headers), &mut out);
        // Planned on the head as the client would get it, as the full proxy does: a `Vary`
        // set by `[headers]` is merged with the one compression adds, not written twice.
        let encoder = p
            .compression
            .as_ref()
            .and_then(|c| compress::plan(c, req.negotiated, &h, &mut out));
        let close_client = req.close || early || h.framing == Framing::UntilClose;
        if close_client {
            out.extend_from_slice(b"connection: close\r\n");
        }
        out.extend_from_slice(b"\r\n");
        let done = match encoder {
            Some(e) => compress::relay(&mut ex, client, &h, e, &mut out, &mut ubuf).await?,
            None => {
                let start = upstream::start(&h, &ubuf[h.len..], &mut out, decode)?;
                upstream::relay_body(&mut ex, &mut Sink::H1(client), &h, start, &out, &mut ubuf)
                    .await
            }
        };
        // A slot that left duty while this request ran does not get its connection back; a
        // preview's does (else every preview of the idle slot opens a new connection): at
        // most `keepalive_pool` per member, dropped with the member or taken when stale.
        if done.upstream_ok && !early && (req.preview || self.control.takes_traffic(slot)) {
            member.idle.put(ex.conn.release(), p.pool_max);
        } else if early {
            std::mem::drop(ex);
            body::linger(client).await;
        }
        let next = if done.client_ok && !close_client {
            Next::KeepAlive
        } else {
            Next::Close
        };
        Ok(Answered {
            status: h.status,
            next,
            bytes: done.sent,
            member: Some(member),
        })
    }
}
