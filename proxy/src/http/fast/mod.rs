//! The fast path: a lean HTTP/1.1 request loop on Pingora's listeners and runtimes.
//!
//! Pingora's full proxy spends most of a small request's CPU time in general machinery (boxed
//! hook futures, header maps, module and cache plumbing). The common request — `GET` or `HEAD`,
//! HTTP/1.1, no body, no upgrade — needs none of it: the fast path parses the head in place,
//! routes it with the same snapshot, relays the head bytes unchanged to a pooled upstream
//! connection and the response back with the slot header added, delimiting the body by its
//! framing so both connections stay alive. Anything else (bodies, upgrades, HTTP/1.0,
//! `Expect`, malformed or oversized heads) is handed, with the bytes already read put back, to
//! Pingora's full proxy ([`crate::http::service::Bascule`]) for the rest of the connection.

mod park;
mod relay;
mod request;

use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bascule_config::RouteTarget;
use bytes::BytesMut;
use pingora::proxy::HttpProxy;
use pingora_core::apps::{HttpServerApp, ServerApp};
use pingora_core::protocols::http::ServerSession;
use pingora_core::protocols::l4::stream::Stream as L4Stream;
use pingora_core::protocols::{GetSocketDigest, SocketDigest, Stream};
use pingora_core::server::ShutdownWatch;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::control::Control;
use crate::http::service::Bascule;
use crate::slots::routing::{Member, Routing};
use crate::statics::StaticFiles;
use crate::wire::{date_line, error_body};
use crate::SlotName;
use park::Parking;
use relay::{Chunked, Framing, Parsed, ResponseHead};
use request::{parse_request, static_request, Head, Request};

/// Longest request head the fast path reads before handing over.
const MAX_HEAD: usize = 64 * 1024;
/// Bytes read before a request's buffer exists.
const FIRST_READ: usize = 512;
/// Smallest request buffer.
const IDLE_BUF: usize = 1024;
/// Read size for both sides.
const READ_CHUNK: usize = 16 * 1024;

/// The listener's application: the fast path in front of Pingora's full proxy.
pub struct FastApp {
    control: Arc<Control>,
    statics: Arc<StaticFiles>,
    full: Arc<HttpProxy<Bascule>>,
    slot_header: Option<Vec<u8>>,
    /// `[server] keepalive_timeout`: also the limit on a slow request head.
    keepalive: Duration,
    /// `[upstream] keepalive_pool`: idle upstream connections kept per member.
    upstream_idle_max: usize,
    /// Idle time after which a connection is parked; `None` when it would time out first.
    park_after: Option<Duration>,
    /// `[server] fast_path`: off, every connection is handed to the full proxy at once.
    enabled: bool,
    /// The idle set, started by the first connection parked; `None` if it could not start.
    parking: OnceLock<Option<Arc<Parking>>>,
}

impl FastApp {
    /// The fast path over `control`, handing over to `full`.
    pub fn new(
        control: Arc<Control>,
        statics: Arc<StaticFiles>,
        full: HttpProxy<Bascule>,
    ) -> FastApp {
        let server = &control.config().server;
        let slot_header = server.slot_header.as_ref().map(|h| h.as_bytes().to_vec());
        let keepalive = server.keepalive_timeout;
        let upstream_idle_max = control.config().upstream.keepalive_pool;
        let park_after = Some(server.park_idle_after).filter(|&p| p < keepalive);
        FastApp {
            control,
            statics,
            full: Arc::new(full),
            slot_header,
            keepalive,
            upstream_idle_max,
            park_after,
            enabled: server.fast_path,
            parking: OnceLock::new(),
        }
    }

    /// The idle set, started on first use.
    fn parking(self: &Arc<Self>, shutdown: &ShutdownWatch) -> Option<&Arc<Parking>> {
        self.parking
            .get_or_init(|| {
                let gauge = self.control.metrics().parked.clone();
                Parking::start(Arc::downgrade(self), shutdown.clone(), gauge)
                    .map_err(|e| tracing::warn!(error = %e, "idle connections stay in their tasks"))
                    .ok()
            })
            .as_ref()
    }

    /// `name: slot\r\n`, or nothing when the header is off.
    fn slot_line(&self, slot: SlotName, out: &mut Vec<u8>) {
        if let Some(name) = &self.slot_header {
            out.extend_from_slice(name);
            out.extend_from_slice(b": ");
            out.extend_from_slice(slot.as_str().as_bytes());
            out.extend_from_slice(b"\r\n");
        }
    }
}

/// One try of a request on one member.
struct Attempt<'a> {
    member: &'a Member,
    slot: SlotName,
    /// Skip pooled connections (one just turned out stale).
    fresh_only: bool,
}

/// How one request on the fast path ended.
enum Next {
    KeepAlive,
    Close,
}

/// Why an upstream exchange failed before any response byte reached the client.
enum UpstreamError {
    /// A pooled connection turned out closed: try again on a fresh one.
    Stale,
    /// Connect or exchange failed: 502, or another member.
    Failed,
    /// No answer in time: 504.
    Timeout,
}

#[async_trait]
impl ServerApp for FastApp {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        // Plain TCP listeners hand over Pingora's L4 stream; anything else goes the full way.
        let client = stream.into_any().downcast::<L4Stream>().ok()?;
        if !self.enabled {
            return Box::pin(self.hand_over(client, &[], shutdown)).await;
        }
        self.connection(client, shutdown).await
    }
}

impl FastApp {
    /// Takes back a parked connection that turned readable, on the runtime it left.
    async fn resume(self: Arc<Self>, fd: OwnedFd, shutdown: ShutdownWatch) {
        // The descriptor shares its open file, non-blocking already, with the socket Tokio
        // accepted; registering it here ties it to this runtime's reactor.
        let Ok(tcp) = TcpStream::from_std(std::net::TcpStream::from(fd)) else {
            return;
        };
        let mut client = L4Stream::from(tcp);
        // As Pingora's listener does, so a hand-over still knows the client's address.
        client.set_socket_digest(SocketDigest::from_raw_fd(client.as_raw_fd()));
        self.connection(Box::new(client), &shutdown).await;
    }

    /// The request loop of one client connection, until it closes, is parked or handed over.
    async fn connection(
        self: &Arc<Self>,
        mut client: Box<L4Stream>,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let mut buf = BytesMut::new();
        loop {
            let head = loop {
                if !buf.is_empty() {
                    if let Some(h) = parse_request(&buf) {
                        break h;
                    }
                    if buf.len() >= MAX_HEAD {
                        break Head::Handover;
                    }
                }
                let read = if buf.is_empty() {
                    // An idle connection holds no buffer: the first bytes land in the task's
                    // own state and are copied into one sized for them.
                    let mut first = [0u8; FIRST_READ];
                    let wait = self.park_after.unwrap_or(self.keepalive);
                    let mut read = tokio::time::timeout(wait, client.read(&mut first)).await;
                    if let (Err(_), Some(waited)) = (&read, self.park_after) {
                        // Silent for `waited` already: the rest of its keep-alive time is left.
                        let left = self.keepalive - waited;
                        match self.parking(shutdown) {
                            Some(parking) => {
                                parking.park(client, Instant::now() + left);
                                return None;
                            }
                            None => {
                                read = tokio::time::timeout(left, client.read(&mut first)).await;
                            }
                        }
                    }
                    if let Ok(Ok(n)) = read {
                        buf = BytesMut::with_capacity(n.max(IDLE_BUF));
                        buf.extend_from_slice(&first[..n]);
                    }
                    read
                } else {
                    buf.reserve(READ_CHUNK);
                    tokio::time::timeout(self.keepalive, client.read_buf(&mut buf)).await
                };
                match read {
                    Ok(Ok(n)) if n > 0 => {}
                    _ => return None,
                }
            };
            let req = match head {
                Head::Fast(req) => req,
                // Boxed: Pingora's session future is large, and inline it would size every
                // connection's task.
                Head::Handover => return Box::pin(self.hand_over(client, &buf, shutdown)).await,
            };
            let next = self.serve(&mut client, &buf, &req).await;
            let _ = buf.split_to(req.head_len);
            if buf.is_empty() {
                buf = BytesMut::new();
            }
            match next {
                Next::KeepAlive if !*shutdown.borrow() => continue,
                _ => return None,
            }
        }
    }

    /// Puts the bytes read back in front of the stream and lets Pingora's full proxy serve the
    /// rest of the connection, keep-alive included.
    async fn hand_over(
        self: &Arc<Self>,
        mut client: Box<L4Stream>,
        buf: &[u8],
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        if !buf.is_empty() {
            client.rewind(buf);
        }
        let mut session = ServerSession::new_http1(client);
        let keepalive = self.keepalive.as_secs().max(1);
        session.set_keepalive(if *shutdown.borrow() {
            None
        } else {
            Some(keepalive)
        });
        let mut result = self.full.process_new_http(session, shutdown).await;
        while let Some((stream, settings)) = result.map(|r| r.consume()) {
            let mut session = ServerSession::new_http1(stream);
            if let Some(settings) = settings {
                settings.apply_to_session(&mut session);
            }
            result = self.full.process_new_http(session, shutdown).await;
        }
        None
    }

    /// Serves one request whose head is `buf[..req.head_len]`.
    async fn serve(&self, client: &mut L4Stream, buf: &[u8], req: &Request) -> Next {
        let start = Instant::now();
        let routing = self.control.load();
        let slot = routing.pick_slot();
        let _guard = routing.counters.enter(slot);
        let path = std::str::from_utf8(&buf[req.path.0..req.path.1]).unwrap_or("/");
        let (status, next) = match routing.target(path) {
            (RouteTarget::Static, Some(route)) => {
                let status = self
                    .serve_static(client, buf, req, &routing, slot, route)
                    .await;
                (
                    status,
                    if req.close {
                        Next::Close
                    } else {
                        Next::KeepAlive
                    },
                )
            }
            _ => self.proxy(client, buf, req, &routing, slot).await,
        };
        self.control
            .metrics()
            .observe(slot, status, start.elapsed());
        next
    }

    async fn serve_static(
        &self,
        client: &mut L4Stream,
        buf: &[u8],
        req: &Request,
        routing: &Routing,
        slot: SlotName,
        route: &bascule_config::Route,
    ) -> u16 {
        let Some(header) = static_request(buf, req) else {
            return self.respond_error(client, slot, 400).await;
        };
        let resp = self.statics.answer(&header, routing, slot, route).await;
        let mut extra = Vec::with_capacity(32);
        self.slot_line(slot, &mut extra);
        resp.write_h1(client, req.head_method, &extra)
            .await
            .unwrap_or(0)
    }

    /// Relays the request to a member of `slot` and the response back.
    async fn proxy(
        &self,
        client: &mut L4Stream,
        buf: &[u8],
        req: &Request,
        routing: &Routing,
        slot: SlotName,
    ) -> (u16, Next) {
        let pool = &routing.slot(slot).pool;
        let epoch = routing.counters.exchanges.cut_epoch(slot);
        let mut avoid = None;
        let mut fresh_only = false;
        loop {
            let Some(i) = pool.pick(avoid) else {
                return (self.respond_error(client, slot, 503).await, Next::Close);
            };
            let attempt = Attempt {
                member: &pool.members()[i],
                slot,
                fresh_only,
            };
            let err = match self.exchange(client, buf, req, routing, attempt).await {
                Ok(done) => return done,
                Err(e) => e,
            };
            // A slot whose drain timed out is not retried on: its exchanges were cut on purpose.
            if routing.counters.exchanges.cut_epoch(slot) != epoch {
                return (self.respond_error(client, slot, 503).await, Next::Close);
            }
            match err {
                UpstreamError::Stale => fresh_only = true,
                UpstreamError::Failed if avoid.is_none() && pool.members().len() > 1 => {
                    avoid = Some(i);
                    fresh_only = false;
                }
                UpstreamError::Failed => {
                    return (self.respond_error(client, slot, 502).await, Next::Close)
                }
                UpstreamError::Timeout => {
                    return (self.respond_error(client, slot, 504).await, Next::Close)
                }
            }
        }
    }

    /// One attempt on `member`. Errors are returned only while nothing has reached the client.
    async fn exchange(
        &self,
        client: &mut L4Stream,
        buf: &[u8],
        req: &Request,
        routing: &Routing,
        attempt: Attempt<'_>,
    ) -> Result<(u16, Next), UpstreamError> {
        let Attempt {
            member,
            slot,
            fresh_only,
        } = attempt;
        let opts = &member.peer.options;
        let read_timeout = opts.read_timeout.unwrap_or(Duration::from_secs(60));
        let idle_max = opts.idle_timeout.unwrap_or(Duration::from_secs(60));
        let pooled = if fresh_only {
            None
        } else {
            member.idle.take(idle_max)
        };
        let reused = pooled.is_some();
        let mut up = match pooled {
            Some(c) => c,
            None => connect(member.socket, opts.connection_timeout).await?,
        };
        // Dropped before `up` (declared after it), so never outlives the socket.
        let registered = routing.counters.exchanges.register(slot, up.as_raw_fd());
        let stale = |e: UpstreamError| if reused { UpstreamError::Stale } else { e };
        if up.write_all(&buf[..req.head_len]).await.is_err() {
            return Err(stale(UpstreamError::Failed));
        }
        let mut ubuf = BytesMut::with_capacity(READ_CHUNK);
        let head: ResponseHead = loop {
            match relay::parse_response(&ubuf, req.head_method) {
                Parsed::Partial if ubuf.len() < MAX_HEAD => {}
                Parsed::Partial | Parsed::Invalid => return Err(UpstreamError::Failed),
                // Interim responses (103) are relayed; the final one follows.
                Parsed::Head(h) if (100..200).contains(&h.status) => {
                    if h.status == 101 {
                        return Err(UpstreamError::Failed);
                    }
                    let interim = ubuf.split_to(h.len);
                    let _ = client.write_all(&interim).await;
                    continue;
                }
                Parsed::Head(h) => break h,
            }
            ubuf.reserve(READ_CHUNK);
            match tokio::time::timeout(read_timeout, up.read_buf(&mut ubuf)).await {
                Err(_) => return Err(UpstreamError::Timeout),
                Ok(Ok(0)) | Ok(Err(_)) if ubuf.is_empty() => {
                    return Err(stale(UpstreamError::Failed))
                }
                Ok(Ok(0)) | Ok(Err(_)) => return Err(UpstreamError::Failed),
                Ok(Ok(_)) => {}
            }
        };
        // The head with the slot header added, and as much of the body as has arrived.
        let mut out = Vec::with_capacity(ubuf.len() + 32);
        out.extend_from_slice(&ubuf[..head.len - 2]);
        if !head.has_date {
            date_line(&mut out);
        }
        self.slot_line(slot, &mut out);
        out.extend_from_slice(b"\r\n");
        let body = &ubuf[head.len..];
        let (body_in_buf, complete, mut tracker) = match head.framing {
            Framing::Empty => (0, true, None),
            Framing::Length(n) => {
                let have = (body.len() as u64).min(n) as usize;
                (have, have as u64 == n, None)
            }
            Framing::Chunked => {
                let mut t = Chunked::default();
                match t.feed(body) {
                    Ok(Some(end)) => (end, true, None),
                    Ok(None) => (body.len(), false, Some(t)),
                    Err(_) => return Err(UpstreamError::Failed),
                }
            }
            Framing::UntilClose => (body.len(), false, None),
        };
        // Bytes past the response would mean the upstream is out of step: do not reuse it.
        let trailing = body.len() > body_in_buf;
        out.extend_from_slice(&body[..body_in_buf]);
        let sent = client.write_all(&out).await.is_ok();
        let mut upstream_ok = !head.close && !trailing;
        let mut client_ok = sent;
        if sent && !complete {
            let mut left = match head.framing {
                Framing::Length(n) => n - body_in_buf as u64,
                _ => u64::MAX,
            };
            loop {
                if client.flush().await.is_err() {
                    client_ok = false;
                    upstream_ok = false;
                    break;
                }
                ubuf.clear();
                ubuf.reserve(READ_CHUNK);
                let n = match tokio::time::timeout(read_timeout, up.read_buf(&mut ubuf)).await {
                    Ok(Ok(0)) if head.framing == Framing::UntilClose => {
                        upstream_ok = false;
                        client_ok = false;
                        break;
                    }
                    Ok(Ok(n)) if n > 0 => n,
                    _ => {
                        upstream_ok = false;
                        client_ok = false;
                        break;
                    }
                };
                let chunk = &ubuf[..n];
                let (take, done) = match (&mut tracker, head.framing) {
                    (Some(t), _) => match t.feed(chunk) {
                        Ok(Some(end)) => (end, true),
                        Ok(None) => (n, false),
                        Err(_) => {
                            upstream_ok = false;
                            client_ok = false;
                            break;
                        }
                    },
                    (None, Framing::Length(_)) => {
                        let take = (n as u64).min(left) as usize;
                        left -= take as u64;
                        (take, left == 0)
                    }
                    _ => (n, false),
                };
                if take < n {
                    upstream_ok = false;
                }
                if client.write_all(&chunk[..take]).await.is_err() {
                    client_ok = false;
                    upstream_ok = false;
                    break;
                }
                if done {
                    break;
                }
            }
        }
        if client.flush().await.is_err() {
            client_ok = false;
        }
        // A slot that left duty while this request ran does not get its connection back.
        drop(registered);
        if upstream_ok && (complete || client_ok) && self.control.takes_traffic(slot) {
            member.idle.put(up, self.upstream_idle_max);
        }
        let next = if client_ok && !req.close && !head.close {
            Next::KeepAlive
        } else {
            Next::Close
        };
        Ok((head.status, next))
    }

    /// The proxy's own error response, tagged with the slot.
    async fn respond_error(&self, client: &mut L4Stream, slot: SlotName, code: u16) -> u16 {
        let body = error_body(code);
        let reason = http::StatusCode::from_u16(code)
            .ok()
            .and_then(|c| c.canonical_reason())
            .unwrap_or("");
        let mut out = format!(
            "HTTP/1.1 {code} {reason}\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\nconnection: close\r\n",
            body.len()
        )
        .into_bytes();
        date_line(&mut out);
        self.slot_line(slot, &mut out);
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(body.as_bytes());
        let _ = client.write_all(&out).await;
        let _ = client.flush().await;
        code
    }
}

async fn connect(addr: SocketAddr, timeout: Option<Duration>) -> Result<TcpStream, UpstreamError> {
    let attempt = TcpStream::connect(addr);
    let stream = match timeout {
        Some(t) => match tokio::time::timeout(t, attempt).await {
            Ok(r) => r.map_err(|_| UpstreamError::Failed)?,
            Err(_) => return Err(UpstreamError::Timeout),
        },
        None => attempt.await.map_err(|_| UpstreamError::Failed)?,
    };
    let _ = stream.set_nodelay(true);
    Ok(stream)
}
