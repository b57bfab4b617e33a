//! Request bodies on the fast path: relayed to the upstream as they arrive, through a buffer of
//! one read, their framing followed (and so checked) on the way and counted against
//! `[limits]`; never held whole.
//!
//! The upstream may answer before the body is all sent (a 413 or 401 to an upload, a reply to
//! `Expect: 100-continue`): the upstream side is watched while the body goes out, interim
//! responses are relayed, and a final one ends the body there. The client's connection then
//! closes, its unsent body unread, and the upstream connection is not reused.

use std::time::Duration;

use bascule_config::LimitsConfig;
use bytes::{Buf, BytesMut};
use pingora_core::protocols::Stream;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::wire::chunked::Chunked;
use crate::wire::request::Body;
use crate::wire::Reject;

use super::READ_CHUNK;
use crate::http::upstream::{head_in, Exchange, Seen, Sink};

/// The body of one request, as far as it has been read.
pub(super) struct Incoming {
    framing: Framing,
    /// `[limits] max_body_bytes`.
    limit: u64,
    /// `[limits] body_timeout`: the longest wait between two reads.
    timeout: Duration,
}

enum Framing {
    /// Bytes still to come.
    Length(u64),
    Chunked(Chunked),
}

/// How relaying a body ended.
pub(super) enum Streamed {
    /// All of it went upstream.
    Sent,
    /// The upstream answered first: its final head is at the start of the upstream buffer.
    Answered,
}

/// Why relaying a body stopped.
pub(super) enum BodyError {
    /// The body is at fault (framing, size, a stall): the client is answered with this.
    Client(Reject),
    /// The client went away mid-body.
    Gone,
    /// The upstream connection failed.
    Upstream,
}

impl Incoming {
    /// The body `body` announces, or `None` when there is none.
    pub(super) fn new(body: Body, limits: &LimitsConfig) -> Option<Incoming> {
        let framing = match body {
            Body::None => return None,
            Body::Length(n) => Framing::Length(n),
            Body::Chunked => Framing::Chunked(Chunked::default()),
        };
        Some(Incoming {
            framing,
            limit: limits.max_body_bytes,
            timeout: limits.body_timeout,
        })
    }

    /// How many bytes at the start of `avail` belong to the body, and whether they end it.
    /// A chunked body over the limit is refused before any byte of the chunk that crosses it
    /// is relayed.
    pub(super) fn take(&mut self, avail: &[u8]) -> Result<(usize, bool), Reject> {
        match &mut self.framing {
            Framing::Length(left) => {
                let n = (avail.len() as u64).min(*left);
                *left -= n;
                Ok((n as usize, *left == 0))
            }
            Framing::Chunked(t) => {
                let end = t
                    .feed(avail)
                    .map_err(|_| Reject::BadRequest("malformed chunked body"))?;
                if t.declared() > self.limit {
                    return Err(Reject::BodyTooLarge);
                }
                Ok(end.map_or((avail.len(), false), |n| (n, true)))
            }
        }
    }
}

/// Relays the rest of the body from the client (what `buf` holds first, then reads) to the
/// upstream, watching the upstream for an early answer; bytes past the body stay in `buf`.
#[allow(clippy::too_many_arguments)]
pub(super) async fn stream(
    ex: &mut Exchange<'_>,
    client: &mut Stream,
    buf: &mut BytesMut,
    body: &mut Incoming,
    ubuf: &mut BytesMut,
    drop: &(dyn Fn(&[u8]) -> bool + Sync),
    head_request: bool,
    out: &mut Vec<u8>,
) -> Result<Streamed, BodyError> {
    let (mut up_read, mut up_write) = ex.conn.stream().split();
    loop {
        if !buf.is_empty() {
            let (n, done) = body.take(buf).map_err(BodyError::Client)?;
            let mut sent = 0;
            while sent < n {
                // A write is either done or not started when the other branch wins: the
                // position stays exact.
                tokio::select! {
                    biased;
                    r = up_write.write(&buf[sent..n]) => match r {
                        Ok(w) if w > 0 => sent += w,
                        _ => return Err(BodyError::Upstream),
                    },
                    r = up_read.read_buf(ubuf) => {
                        if answered(r, ubuf, client, head_request, drop, out).await? {
                            return Ok(Streamed::Answered);
                        }
                    }
                }
            }
            buf.advance(n);
            if done {
                return Ok(Streamed::Sent);
            }
            continue;
        }
        buf.reserve(READ_CHUNK);
        tokio::select! {
            r = tokio::time::timeout(body.timeout, client.read_buf(buf)) => match r {
                Ok(Ok(n)) if n > 0 => {}
                Ok(_) => return Err(BodyError::Gone),
                Err(_) => return Err(BodyError::Client(Reject::BodyTimeout)),
            },
            r = up_read.read_buf(ubuf) => {
                if answered(r, ubuf, client, head_request, drop, out).await? {
                    return Ok(Streamed::Answered);
                }
            }
        }
    }
}

/// After a read from the upstream while the body goes out: whether a final response head has
/// arrived (interim ones are relayed and removed).
async fn answered(
    read: std::io::Result<usize>,
    ubuf: &mut BytesMut,
    client: &mut Stream,
    head_request: bool,
    drop: &(dyn Fn(&[u8]) -> bool + Sync),
    out: &mut Vec<u8>,
) -> Result<bool, BodyError> {
    match read {
        Ok(n) if n > 0 => {}
        _ => return Err(BodyError::Upstream),
    }
    match head_in(ubuf, &mut Sink::H1(client), head_request, drop, out).await {
        Ok(Seen::Final(_)) => Ok(true),
        Ok(Seen::Partial) => Ok(false),
        Err(_) => Err(BodyError::Upstream),
    }
}

/// Closes a client connection whose request body was not all read, as nginx's lingering
/// close: the response is sent, the write side shut, and what the client still sends is read
/// and dropped for a short while, so the response is not lost to a reset.
pub(super) async fn linger(client: &mut Stream) {
    const LINGER: Duration = Duration::from_secs(2);
    let _ = client.flush().await;
    let _ = client.shutdown().await;
    let deadline = tokio::time::Instant::now() + LINGER;
    let mut sink = [0u8; 4096];
    while let Ok(Ok(n)) = tokio::time::timeout_at(deadline, client.read(&mut sink)).await {
        if n == 0 {
            break;
        }
    }
}
