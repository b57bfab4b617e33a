//! One upstream exchange over HTTP/1.1, in three steps: send the request head on a provably
//! idle pooled connection or a fresh one ([`send`]), read and rewrite the response head
//! ([`read_head`]), relay the body by its framing ([`relay_body`]) to a [`Sink`]: the client's
//! connection on the fast path, an HTTP/2 stream in the HTTP/2 loop.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use pingora_core::protocols::http::v2::server::HttpSession as H2Session;
use pingora_core::protocols::Stream;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::slots::routing::Member;
use crate::slots::upgraded::{Exchanges, Registered};
use crate::wire::chunked::Chunked;
use crate::wire::response::{parse_response, Framing, Parsed, ResponseHead};
use crate::wire::retry::Failure;
use crate::SlotName;

/// Longest response head read from an upstream.
pub(crate) const MAX_HEAD: usize = 64 * 1024;
/// Read size for both sides.
pub(crate) const READ_CHUNK: usize = 16 * 1024;

/// Where a response goes: the client's connection (the fast path), or an HTTP/2 stream (the
/// HTTP/2 loop, which writes the head itself and has no interim responses).
pub(crate) enum Sink<'c> {
    H1(&'c mut Stream),
    H2(&'c mut H2Session),
}

impl Sink<'_> {
    /// Writes all of `bytes`; false when the client is gone.
    async fn put(&mut self, bytes: &[u8]) -> bool {
        match self {
            Sink::H1(s) => s.write_all(bytes).await.is_ok(),
            Sink::H2(s) if bytes.is_empty() => true,
            Sink::H2(s) => s
                .write_body(Bytes::copy_from_slice(bytes), false)
                .await
                .is_ok(),
        }
    }

    /// Sends what has been written; false when the client is gone.
    async fn flush(&mut self) -> bool {
        match self {
            Sink::H1(s) => s.flush().await.is_ok(),
            // The connection's task writes what the streams queue.
            Sink::H2(_) => true,
        }
    }

    /// An interim response (100, 103), rewritten, blank line included.
    async fn interim(&mut self, head: &[u8]) {
        if let Sink::H1(s) = self {
            let _ = s.write_all(head).await;
        }
    }
}

/// An upstream connection carrying one request.
pub(crate) struct Exchange<'r> {
    pub(crate) conn: Registered<'r>,
    /// It came from the pool (a failure before any response byte may mean it went stale).
    pub(crate) reused: bool,
    pub(crate) read_timeout: Duration,
}

impl Exchange<'_> {
    /// How a failure before any response byte counts: a pooled connection may simply have
    /// been closed by the upstream while idle.
    fn failure(&self) -> Failure {
        if self.reused {
            Failure::Stale
        } else {
            Failure::Exchange
        }
    }
}

/// Opens (or reuses) a connection to `member`, registers it with `slot`'s exchanges and
/// writes the request head.
pub(crate) async fn send<'r>(
    member: &Member,
    exchanges: &'r Exchanges,
    slot: SlotName,
    fresh_only: bool,
    head: &[u8],
) -> Result<Exchange<'r>, Failure> {
    let opts = &member.peer.options;
    let read_timeout = opts.read_timeout.unwrap_or(Duration::from_secs(60));
    let idle_max = opts.idle_timeout.unwrap_or(Duration::from_secs(60));
    let pooled = if fresh_only {
        None
    } else {
        member.idle.take(idle_max)
    };
    let reused = pooled.is_some();
    let stream = match pooled {
        Some(c) => c,
        None => connect(member.socket, opts.connection_timeout).await?,
    };
    let mut ex = Exchange {
        conn: exchanges.register(slot, stream),
        reused,
        read_timeout,
    };
    if ex.conn.stream().write_all(head).await.is_err() {
        return Err(ex.failure());
    }
    Ok(ex)
}

/// What the start of an upstream buffer holds of the response.
pub(crate) enum Seen {
    /// Not a whole head yet.
    Partial,
    /// The final response head, rewritten into `out`.
    Final(ResponseHead),
}

/// Parses the response head at the start of `ubuf`: interim responses (1xx but 101) are
/// rewritten, relayed to the client and removed; a final head is rewritten into `out`.
/// `drop`: the header names the upstream may not set.
pub(crate) async fn head_in(
    ubuf: &mut BytesMut,
    client: &mut Sink<'_>,
    head_request: bool,
    drop: &(dyn Fn(&[u8]) -> bool + Sync),
    out: &mut Vec<u8>,
) -> Result<Seen, Failure> {
    loop {
        out.clear();
        match parse_response(ubuf, head_request, drop, out) {
            Parsed::Partial if ubuf.len() < MAX_HEAD => return Ok(Seen::Partial),
            Parsed::Partial | Parsed::Invalid => return Err(Failure::Exchange),
            Parsed::Head(h) if h.status == 101 => return Err(Failure::Exchange),
            // Interim responses (100, 103) are relayed as they are rewritten; the final one
            // follows.
            Parsed::Head(h) if (100..200).contains(&h.status) => {
                out.extend_from_slice(b"\r\n");
                client.interim(out).await;
                let _ = ubuf.split_to(h.len);
            }
            Parsed::Head(h) => return Ok(Seen::Final(h)),
        }
    }
}

/// Reads the response head into `ubuf` (which may hold its start already); writes it,
/// rewritten, to `out`.
pub(crate) async fn read_head(
    ex: &mut Exchange<'_>,
    client: &mut Sink<'_>,
    head_request: bool,
    drop: &(dyn Fn(&[u8]) -> bool + Sync),
    ubuf: &mut BytesMut,
    out: &mut Vec<u8>,
) -> Result<ResponseHead, Failure> {
    loop {
        if let Seen::Final(h) = head_in(ubuf, client, head_request, drop, out).await? {
            return Ok(h);
        }
        ubuf.reserve(READ_CHUNK);
        let read = ex.conn.stream().read_buf(ubuf);
        match tokio::time::timeout(ex.read_timeout, read).await {
            Err(_) => return Err(Failure::Timeout),
            Ok(Ok(0)) | Ok(Err(_)) if ubuf.is_empty() => return Err(ex.failure()),
            Ok(Ok(0)) | Ok(Err(_)) => return Err(Failure::Exchange),
            Ok(Ok(_)) => {}
        }
    }
}

/// How relaying a body ended.
pub(crate) struct Relayed {
    /// The upstream connection may go back to the pool.
    pub(crate) upstream_ok: bool,
    /// The client connection may serve another request.
    pub(crate) client_ok: bool,
    /// Body bytes written to the client.
    pub(crate) sent: u64,
    /// The body reached its end as framed (a close-delimited one, the upstream's close).
    pub(crate) whole: bool,
}

impl Relayed {
    /// Relaying failed after `sent` bytes: neither connection goes on.
    pub(crate) fn broken(sent: u64) -> Relayed {
        Relayed {
            upstream_ok: false,
            client_ok: false,
            sent,
            whole: false,
        }
    }
}

/// Where the body stands once the head is read: how much of the bytes read with the head
/// belong to it, whether that is all of it, and the chunked parser's state.
pub(crate) struct Start {
    /// Bytes after the response came with it: the upstream is out of step.
    trailing: bool,
    in_buf: usize,
    /// Body bytes appended to `out` (fewer than `in_buf` when decoding).
    in_out: usize,
    done: bool,
    tracker: Option<Chunked>,
    /// A chunked body goes to the client decoded (an HTTP/1.0 client), delimited by close.
    decode: bool,
}

impl Start {
    /// When the whole body came with the head: whether nothing followed it (the upstream is
    /// still in step).
    pub(crate) fn whole(&self) -> Option<bool> {
        self.done.then_some(!self.trailing)
    }
}

/// Follows the framing over the body bytes that came with the head; a malformed chunked body
/// is found here, while a 502 can still be sent.
/// The body bytes that belong to the response are appended to `out` (decoded from chunked
/// framing when `decode`).
pub(crate) fn start(
    head: &ResponseHead,
    body: &[u8],
    out: &mut Vec<u8>,
    decode: bool,
) -> Result<Start, Failure> {
    let decode = decode && head.framing == Framing::Chunked;
    let at = out.len();
    let s = match head.framing {
        Framing::Empty => Start {
            trailing: false,
            in_buf: 0,
            in_out: 0,
            done: true,
            tracker: None,
            decode,
        },
        Framing::Length(n) => {
            let have = (body.len() as u64).min(n) as usize;
            Start {
                trailing: false,
                in_buf: have,
                in_out: 0,
                done: have as u64 == n,
                tracker: None,
                decode,
            }
        }
        Framing::Chunked => {
            let mut t = Chunked::default();
            let fed = if decode {
                t.feed_with(body, |d| out.extend_from_slice(d))
            } else {
                t.feed(body)
            };
            match fed.map_err(|_| Failure::Exchange)? {
                Some(end) => Start {
                    trailing: false,
                    in_buf: end,
                    in_out: 0,
                    done: true,
                    tracker: None,
                    decode,
                },
                None => Start {
                    trailing: false,
                    in_buf: body.len(),
                    in_out: 0,
                    done: false,
                    tracker: Some(t),
                    decode,
                },
            }
        }
        Framing::UntilClose => Start {
            trailing: false,
            in_buf: body.len(),
            in_out: 0,
            done: false,
            tracker: None,
            decode,
        },
    };
    if !decode {
        out.extend_from_slice(&body[..s.in_buf]);
    }
    Ok(Start {
        trailing: body.len() > s.in_buf,
        in_out: out.len() - at,
        ..s
    })
}

/// Sends `out` (the rewritten head and the body bytes read with it), then relays the rest of
/// the body by `head.framing`.
pub(crate) async fn relay_body(
    ex: &mut Exchange<'_>,
    client: &mut Sink<'_>,
    head: &ResponseHead,
    start: Start,
    out: &[u8],
    ubuf: &mut BytesMut,
) -> Relayed {
    let Start {
        trailing,
        in_buf,
        in_out,
        mut done,
        mut tracker,
        decode,
    } = start;
    // Bytes past the response mean the upstream is out of step: never reuse it.
    let mut upstream_ok = !head.close && !trailing;
    let mut sent = 0;
    if !client.put(out).await {
        return Relayed::broken(sent);
    }
    sent += in_out as u64;
    let mut decoded = Vec::new();
    let mut left = match head.framing {
        Framing::Length(n) => n - in_buf as u64,
        _ => u64::MAX,
    };
    while !done {
        if !client.flush().await {
            return Relayed::broken(sent);
        }
        ubuf.clear();
        ubuf.reserve(READ_CHUNK);
        let read = ex.conn.stream().read_buf(ubuf);
        let n = match tokio::time::timeout(ex.read_timeout, read).await {
            Ok(Ok(n)) if n > 0 => n,
            // EOF ends a close-delimited body: the client connection closes to mark its end.
            Ok(Ok(0)) if head.framing == Framing::UntilClose => {
                return Relayed {
                    whole: true,
                    ..Relayed::broken(sent)
                }
            }
            _ => return Relayed::broken(sent),
        };
        let chunk = &ubuf[..n];
        decoded.clear();
        let fed = match &mut tracker {
            Some(t) if decode => t.feed_with(chunk, |d| decoded.extend_from_slice(d)),
            Some(t) => t.feed(chunk),
            None => Ok(None),
        };
        let take = match (&tracker, head.framing) {
            (Some(_), _) => match fed {
                Ok(Some(end)) => {
                    done = true;
                    end
                }
                Ok(None) => n,
                Err(_) => return Relayed::broken(sent),
            },
            (None, Framing::Length(_)) => {
                let take = (n as u64).min(left) as usize;
                left -= take as u64;
                done = left == 0;
                take
            }
            _ => n,
        };
        upstream_ok &= take == n;
        let relay = if decode { &decoded[..] } else { &chunk[..take] };
        if !client.put(relay).await {
            return Relayed::broken(sent);
        }
        sent += relay.len() as u64;
    }
    let client_ok = client.flush().await;
    Relayed {
        upstream_ok,
        client_ok,
        sent,
        whole: true,
    }
}

async fn connect(addr: SocketAddr, timeout: Option<Duration>) -> Result<TcpStream, Failure> {
    let attempt = TcpStream::connect(addr);
    let stream = match timeout {
        Some(t) => match tokio::time::timeout(t, attempt).await {
            Ok(r) => r.map_err(|_| Failure::Connect)?,
            Err(_) => return Err(Failure::ConnectTimeout),
        },
        None => attempt.await.map_err(|_| Failure::Connect)?,
    };
    let _ = stream.set_nodelay(true);
    Ok(stream)
}
