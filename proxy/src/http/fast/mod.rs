//! The fast path: a lean HTTP/1.1 request loop on Pingora's listeners and runtimes.
//!
//! Pingora's full proxy spends most of a small request's CPU time in general machinery (boxed
//! hook futures, header maps, module and cache plumbing). An HTTP/1.x request needs none of it:
//! the fast path parses the head in place, runs the shared request policy on it
//! ([`crate::wire::request`]), routes the normalised path with the same snapshot, writes the
//! upstream head again from the checked fields to a provably idle pooled connection, streams the
//! request body behind it ([`body`]), and the response back with its head checked and rewritten,
//! delimiting the body by its framing so both connections stay alive. A head the policy refuses
//! is answered here (4xx, then close). What only Pingora's full proxy has the machinery for —
//! upgrades (a tunnel), `CONNECT`, an HTTP/1.0 request without `Host`, a body sent to a static
//! route — is handed over with the bytes already read put back ([`handover`]) to
//! [`crate::http::service::Bascule`] for the rest of the connection; it applies the same
//! policy. HTTP/1.x over TLS takes this path too (the loop reads and writes any Pingora
//! stream); HTTP/2, chosen by ALPN, goes to [`crate::http::h2`].

mod answer;
mod body;
mod compress;
mod handover;
mod park;
mod proxying;
mod request;

use std::net::IpAddr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bascule_config::RouteTarget;
use bytes::BytesMut;
use pingora::proxy::HttpProxy;
use pingora_core::apps::ServerApp;
use pingora_core::protocols::l4::stream::Stream as L4Stream;
use pingora_core::protocols::{GetSocketDigest, SocketDigest, Stream, ALPN};
use pingora_core::server::ShutdownWatch;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use crate::control::Control;
use crate::http::edge::{Done, Dress, EdgePolicy, Policies};
use crate::http::service::Bascule;
use crate::http::upstream::READ_CHUNK;
use crate::slots::routing::{Member, Routing};
use crate::wire::forward::Peer;
use crate::wire::headers::RouteHeaders;
use crate::wire::{error_body, Reject};
use answer::Unrouted;
use body::Incoming;
use park::Parking;
use request::{Head, Policy, Request};

/// Bytes read before a request's buffer exists.
const FIRST_READ: usize = 512;
/// Smallest request buffer.
const IDLE_BUF: usize = 1024;
/// Free room below which a head's buffer grows before the next read.
const HEAD_GROW_MIN: usize = 256;

/// The listener's application: the fast path in front of Pingora's full proxy.
pub struct FastApp {
    control: Arc<Control>,
    /// The edge policy in force (shared with the full proxy), loaded once per request.
    policies: Arc<Policies>,
    full: Arc<HttpProxy<Bascule>>,
    /// The full proxy's service, for the HTTP/2 streams served in their connection's loop.
    lean: Arc<Bascule>,
    /// `[tls] min_version = "1.3"` (a restart applies a change: the listeners' TLS settings
    /// are built once).
    tls13_only: bool,
    /// The idle set, started by the first connection parked; `None` if it could not start.
    parking: OnceLock<Option<Arc<Parking>>>,
}

impl FastApp {
    /// The fast path over `control` and `policies`, handing over to `full`, whose service
    /// `lean` is (HTTP/2 streams are served with it).
    pub(crate) fn new(
        control: Arc<Control>,
        policies: Arc<Policies>,
        full: HttpProxy<Bascule>,
        lean: Bascule,
    ) -> FastApp {
        let config = control.config();
        FastApp {
            tls13_only: config
                .tls
                .as_ref()
                .is_some_and(|t| t.min_version == bascule_config::TlsVersion::V1_3),
            control,
            policies,
            full: Arc::new(full),
            lean: Arc::new(lean),
            parking: OnceLock::new(),
        }
    }

    /// The edge policy now; a request keeps the one it loaded.
    #[inline]
    fn policy(&self) -> Arc<EdgePolicy> {
        self.policies.load()
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
}

/// The client's address as a connection's requests read it.
fn client_addr(client: &Stream) -> IpAddr {
    client
        .get_socket_digest()
        .and_then(|d| d.peer_addr().and_then(|a| a.as_inet()).map(|a| a.ip()))
        .unwrap_or(std::net::Ipv4Addr::UNSPECIFIED.into())
}

/// The request body still to relay, if any, and where it comes from.
struct Relay<'b> {
    /// The connection's buffer: the body's next bytes, then whatever the client sent after.
    buf: &'b mut BytesMut,
    /// The body's framing, as far as it has been read; `None` when it went with the head.
    rest: &'b mut Option<Incoming>,
    /// Part of the body has left: the request cannot be sent again.
    started: bool,
}

/// Waits up to `wait` for an idle connection's next bytes: into `buf` when it kept one, else
/// into `first`; `Err` when `wait` passed first.
///
/// `idle` is the connection's one idle timer, moved to the new deadline rather than made anew:
/// Tokio wakes its driver (an eventfd write and one more `epoll_wait`) whenever a timer is
/// set earlier than the wake-up it is parked for. A new timer per request, set after the
/// upstream's answer (parked on the upstream read timeout), did that on every request; the
/// kept one still holds the previous idle deadline, earlier than the new one.
async fn idle_read(
    client: &mut Stream,
    keep: bool,
    buf: &mut BytesMut,
    first: &mut [u8],
    wait: Duration,
    mut idle: std::pin::Pin<&mut tokio::time::Sleep>,
) -> Result<std::io::Result<usize>, ()> {
    idle.as_mut().reset(tokio::time::Instant::now() + wait);
    let read = async {
        if keep {
            client.read_buf(buf).await
        } else {
            client.read(first).await
        }
    };
    tokio::select! {
        biased;
        r = read => Ok(r),
        () = idle => Err(()),
    }
}

/// How one request on the fast path ended.
enum Next {
    KeepAlive,
    Close,
}

/// How a request was answered: for the metrics and the access log.
struct Answered<'r> {
    /// 0 when no response head could be written.
    status: u16,
    next: Next,
    /// Body bytes written to the client.
    bytes: u64,
    /// The upstream member that answered.
    member: Option<&'r Member>,
}

impl<'r> Answered<'r> {
    /// The proxy's own error response, written by [`FastApp::respond_error`].
    fn error(status: u16) -> Answered<'r> {
        Answered {
            status,
            next: Next::Close,
            bytes: error_body(status).len() as u64,
            member: None,
        }
    }
}

#[async_trait]
impl ServerApp for FastApp {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        // Plain TCP listeners hand over Pingora's L4 stream, https listeners a TLS stream:
        // HTTP/1.x on either is served here; HTTP/2 (by ALPN) by the HTTP/2 loop, which answers
        // or proxies a stream itself only while the fast path is on (`[server] fast_path`).
        let tls = !stream.as_any().is::<L4Stream>();
        // `[limits] send_timeout` for every protocol on this connection: a client that takes no
        // byte of an answer that long is cut by the kernel, and what it held is freed.
        let (send_timeout, fast_path) = {
            let p = self.policy();
            (p.limits.send_timeout, p.fast_path)
        };
        // SAFETY: the stream owns the descriptor and lives through the call.
        #[allow(unsafe_code)]
        if let Err(e) = unsafe { crate::fd::set_user_timeout(stream.id(), send_timeout) } {
            tracing::debug!(error = %e, "TCP_USER_TIMEOUT not set on a client connection");
        }
        if tls {
            // `min_version = "1.3"`: the certificate resolver turns away clients that offer no
            // TLS 1.3 suite; one that offered them but settled on 1.2 is closed here, before
            // any request is read.
            let old = stream
                .get_ssl_digest()
                .is_some_and(|d| d.version != "TLSv1.3");
            if self.tls13_only && old {
                return None;
            }
            if matches!(stream.selected_alpn_proto(), Some(ALPN::H2)) {
                self.control.metrics().connections.h2.inc();
                let lean = fast_path.then_some(&self.lean);
                crate::http::h2::serve(stream, &self.full, lean, send_timeout, shutdown).await;
                return None;
            }
        }
        self.control.metrics().connections.fast(tls);
        self.connection(stream, tls, shutdown).await
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
        self.connection(Box::new(client), false, &shutdown).await;
    }

    /// The request loop of one client connection, until it closes, is parked or handed over.
    /// `tls`: the connection is a TLS one, never parked (its state lives in this task): once
    /// idle for `park_idle_after` it lets go of its read buffer instead.
    async fn connection(
        self: &Arc<Self>,
        mut client: Stream,
        tls: bool,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let client_ip = client_addr(&client);
        let peer = Peer::new(client_ip);
        // The policy of the last request, for the idle wait before the next one, which loads
        // its own.
        let mut policy = self.policy();
        let mut buf = BytesMut::new();
        let idle = tokio::time::sleep(policy.keepalive);
        tokio::pin!(idle);
        // The upstream request head, written from the checked fields; reused across requests.
        let mut scratch = Vec::new();
        loop {
            // Bytes already read (a pipelined request) start the head's clock now.
            let mut head_started = (!buf.is_empty()).then(Instant::now);
            let (routing, head) = loop {
                if !buf.is_empty() {
                    let routing = self.control.load();
                    policy = self.policy();
                    let p = &*policy;
                    let route_of = |path: &str| {
                        let i = routing.route_index(path);
                        let to = i.map(|i| routing.routes[i].to);
                        (i, to == Some(RouteTarget::Static))
                    };
                    let checks = Policy {
                        // A TLS request is never sent to https: it is there.
                        redirect_to: if tls { None } else { p.redirect_to },
                        tls,
                        serve: p.fast_path,
                        limits: &p.limits,
                        forwarding: p.forwarding_for(Some(client_ip)),
                        id: p.id_rule(Some(client_ip)),
                        peer: &peer,
                        route_of: &route_of,
                        log: p.logs(),
                        slots: p.slots.reads_headers(&routing).then_some(&p.slots),
                        compression: p.compression.as_ref(),
                    };
                    match request::parse(&buf, &checks, &mut scratch) {
                        Head::Partial => {}
                        head => break (routing, head),
                    }
                }
                let read = if buf.is_empty() {
                    // A connection keeps its buffer between requests while it is busy; a new
                    // one (or one resumed from parking) holds none: its first bytes land in the
                    // task's own state and are copied into one sized for them.
                    let mut first = [0u8; FIRST_READ];
                    let mut keep = buf.capacity() > 0;
                    if keep {
                        buf.reserve(READ_CHUNK);
                    }
                    let wait = policy.park_after.unwrap_or(policy.keepalive);
                    let mut read =
                        idle_read(&mut client, keep, &mut buf, &mut first, wait, idle.as_mut())
                            .await;
                    if let (Err(_), Some(waited)) = (&read, policy.park_after) {
                        // Silent for `waited` already: the rest of its keep-alive time is left.
                        let left = policy.keepalive.saturating_sub(waited);
                        let parking = if tls { None } else { self.parking(shutdown) };
                        match parking {
                            Some(parking) => {
                                let plain = client.into_any().downcast::<L4Stream>().ok()?;
                                parking.park(plain, Instant::now() + left);
                                return None;
                            }
                            None => {
                                // It waits in its task, without the buffer meanwhile.
                                buf = BytesMut::new();
                                keep = false;
                                let again = idle.as_mut();
                                read =
                                    idle_read(&mut client, keep, &mut buf, &mut first, left, again)
                                        .await;
                            }
                        }
                    }
                    if let Ok(Ok(n)) = read {
                        if !keep {
                            buf = BytesMut::with_capacity(n.max(IDLE_BUF));
                            buf.extend_from_slice(&first[..n]);
                        }
                        head_started = Some(Instant::now());
                    }
                    read
                } else {
                    // The whole head must arrive within `header_timeout` of its first byte,
                    // however it trickles in.
                    let started = *head_started.get_or_insert_with(Instant::now);
                    let deadline = started + policy.limits.header_timeout;
                    // Grown by doubling from the first read's 1 KiB (nginx's
                    // `client_header_buffer_size`), not by a read chunk: a head that trickles
                    // in holds no more than twice what it sent.
                    if buf.capacity() - buf.len() < HEAD_GROW_MIN {
                        buf.reserve(buf.capacity().max(IDLE_BUF));
                    }
                    let read = client.read_buf(&mut buf);
                    match tokio::time::timeout_at(deadline.into(), read).await {
                        Ok(r) => Ok(r),
                        Err(_) => {
                            let why = Reject::HeadTimeout;
                            let r = Unrouted::new(&buf, client_ip, Some(started), policy.new_id());
                            self.refuse(&policy, &mut client, why, r).await;
                            return None;
                        }
                    }
                };
                match read {
                    Ok(Ok(n)) if n > 0 => {}
                    _ => return None,
                }
            };
            let mut req = match head {
                Head::Fast(req) => req,
                Head::Partial => unreachable!("the loop above ends on a complete head"),
                Head::Reject(why) => {
                    let r = Unrouted::new(&buf, client_ip, head_started, policy.new_id());
                    self.refuse(&policy, &mut client, why, r).await;
                    // The client may be sending a body (a 413): it is read and dropped a
                    // while, so the answer is not lost to a reset.
                    body::linger(&mut client).await;
                    return None;
                }
                Head::Redirect(location, id) => {
                    let r = Unrouted::new(&buf, client_ip, head_started, id);
                    self.redirect(&policy, &mut client, &location, r).await;
                    return None;
                }
                // Boxed: Pingora's session future is large, and inline it would size every
                // connection's task.
                Head::Handover => {
                    return Box::pin(self.hand_over(client, tls, &buf, shutdown)).await
                }
            };
            if let Err(why) = policy.rate.check(req.path.get(&buf), client_ip) {
                let r = Unrouted::new(&buf, client_ip, head_started, req.id.take());
                self.refuse(&policy, &mut client, why, r).await;
                return None;
            }
            // What of the body came with the head goes upstream in the head's write; the rest
            // is relayed as it arrives.
            let mut body = Incoming::new(req.body, &policy.limits);
            let mut consumed = req.head_len;
            if let Some(b) = &mut body {
                match b.take(&buf[consumed..]) {
                    Ok((n, done)) => {
                        scratch.extend_from_slice(&buf[consumed..consumed + n]);
                        consumed += n;
                        if done {
                            body = None;
                        }
                    }
                    Err(why) => {
                        let r = Unrouted::new(&buf, client_ip, head_started, req.id.take());
                        self.refuse(&policy, &mut client, why, r).await;
                        body::linger(&mut client).await;
                        return None;
                    }
                }
            }
            let _ = buf.split_to(consumed);
            let next = self
                .serve(
                    &policy,
                    &mut client,
                    &mut req,
                    &routing,
                    &scratch,
                    (&mut buf, body),
                    client_ip,
                )
                .await;
            drop(routing);
            match next {
                Next::KeepAlive if !*shutdown.borrow() => continue,
                _ => return None,
            }
        }
    }

    /// Serves one checked request; `head` is its upstream head (and the body bytes read with
    /// it), when it goes upstream; `body`: the connection's buffer, past the head, and the rest
    /// of the body still to relay from it and the client.
    #[allow(clippy::too_many_arguments)]
    async fn serve(
        &self,
        p: &EdgePolicy,
        client: &mut Stream,
        req: &mut Request,
        routing: &Arc<Routing>,
        head: &[u8],
        body: (&mut BytesMut, Option<Incoming>),
        client_ip: IpAddr,
    ) -> Next {
        let start = Instant::now();
        let choice = p.slots.choose(routing, req.asked, client_ip);
        let slot = choice.slot;
        req.set_cookie = choice.set_cookie;
        req.preview = choice.preview;
        let _guard = p.admit(routing, choice);
        // Found while the head was checked, with this same snapshot.
        let route = req.route.map(|i| &routing.routes[i]);
        let headers: &RouteHeaders = route.map_or(&[], |r| &r.headers);
        let done = match (&req.statics, route) {
            (Some(header), Some(route)) => {
                let mut resp = p.statics.answer(header, routing, slot, route).await;
                // On the header itself: an edge header replaces the file's own of that name.
                p.dress(
                    Dress::of(choice, headers, req.id.as_ref()),
                    &mut resp.header,
                    false,
                );
                let bytes = resp.body_len(req.head_method);
                let mut extra = Vec::new();
                if req.close {
                    extra.extend_from_slice(b"connection: close\r\n");
                }
                // A plain connection's descriptor, for a large cached body sent without a copy.
                let socket = client.as_any().is::<L4Stream>().then(|| client.id());
                let status = resp
                    .write_h1(client, req.head_method, &extra, socket)
                    .await
                    .unwrap_or(0);
                let next = if req.close || status == 0 {
                    Next::Close
                } else {
                    Next::KeepAlive
                };
                Answered {
                    status,
                    next,
                    bytes,
                    member: None,
                }
            }
            _ => {
                let (buf, mut rest) = body;
                let mut relay = Relay {
                    buf,
                    rest: &mut rest,
                    started: false,
                };
                self.proxy(p, client, req, routing, slot, head, headers, &mut relay)
                    .await
            }
        };
        p.record(Done {
            start,
            client: Some(client_ip),
            request: req.log.take(),
            status: done.status,
            bytes: done.bytes,
            slot: Some(slot),
            upstream: done.member.map(|m| m.address.clone()),
            request_id: req.id.take(),
        });
        done.next
    }
}
