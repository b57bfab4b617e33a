//! The edge policy: everything a request reads from the config, built once per config into one
//! immutable [`EdgePolicy`] behind an `ArcSwap` ([`Policies`]) that `reload` replaces, and the
//! steps of the request lifecycle that read it — admit (check, rate limit, slot choice), dress
//! (slot header, sticky cookie, request id, edge and route headers: [`Dress`]) and finish
//! (metrics, access log) — written once for every engine: the HTTP/1 fast path, the HTTP/2
//! loop and Pingora's full proxy. A request loads the policy once, beside the routing snapshot, and keeps it to its end:
//! a reload changes the next request, never half of one.
//!
//! What a reload keeps: the access log's writer when `[access_log]` is unchanged, the static
//! cache when `[static]` is, and the counts of every `[[rate_limits]]` entry left as it was.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use bascule_config::{Config, ForwardingConfig, LimitsConfig, OutlierConfig};
use bytes::Bytes;
use http::{HeaderName, HeaderValue};
use pingora_http::{RequestHeader, ResponseHeader};

use crate::control::{Prepared, Reloadable};
use crate::slots::choice::{Asked, Choice, SlotPolicy};
use crate::slots::counters::InflightGuard;
use crate::slots::metrics::Metrics;
use crate::slots::routing::Routing;
use crate::statics::StaticFiles;
use crate::wire::access_log::{AccessLog, AccessLogError, Entry, LogRequest};
use crate::wire::compress::Compression;
use crate::wire::headers::{EdgeHeaders, RouteHeaders};
use crate::wire::rate_limit::RateLimits;
use crate::wire::request::Forwarding;
use crate::wire::request_id::{IdRule, RequestId};
use crate::wire::{error_body, forward, pingora, Reject};
use crate::SlotName;

/// Everything derived from one config that a request reads, whichever engine serves it.
pub(crate) struct EdgePolicy {
    pub(crate) metrics: Arc<Metrics>,
    /// `[server] slot_header`, when on.
    pub(crate) slot_header: Option<Bytes>,
    /// `[headers]`, with the slot header.
    pub(crate) edge: EdgeHeaders,
    pub(crate) limits: LimitsConfig,
    pub(crate) forwarding: ForwardingConfig,
    /// `[listen] redirect_http`: plain requests get a 308 to this https port.
    pub(crate) redirect_to: Option<u16>,
    /// `[access_log]`, when on.
    pub(crate) log: Option<Arc<AccessLog>>,
    /// `[[rate_limits]]`, one count for every path.
    pub(crate) rate: Arc<RateLimits>,
    /// `[preview]` and `[canary]`.
    pub(crate) slots: SlotPolicy,
    /// `[compression]`, when on.
    pub(crate) compression: Option<Compression>,
    /// `[static]`: the static file server and its cache.
    pub(crate) statics: Arc<StaticFiles>,
    /// `[server] keepalive_timeout`: how long an idle connection waits for its next request.
    pub(crate) keepalive: Duration,
    /// Idle time after which a connection is parked; `None` when it would time out first.
    pub(crate) park_after: Option<Duration>,
    /// `[server] fast_path`.
    pub(crate) fast_path: bool,
    /// `[upstream] keepalive_pool`: idle upstream connections kept per member.
    pub(crate) pool_max: usize,
    /// `[request_id]`: the header, when on.
    pub(crate) request_id: Option<HeaderName>,
    /// `[outlier]`, when on.
    pub(crate) outlier: Option<OutlierConfig>,
}

/// Why a config's policy could not be built.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// The access log could not be opened.
    #[error("access_log: {0}")]
    AccessLog(#[from] AccessLogError),
}

impl EdgePolicy {
    /// The policy of `config`. With `before` (the config and policy in force), what did not
    /// change is kept: the access log's writer, the static cache, unchanged rate-limit counts.
    pub(crate) fn build(
        config: &Config,
        metrics: &Arc<Metrics>,
        before: Option<(&Config, &EdgePolicy)>,
    ) -> Result<EdgePolicy, PolicyError> {
        let server = &config.server;
        let log = match (&config.access_log, before) {
            (Some(c), Some((old, p))) if old.access_log.as_ref() == Some(c) => p.log.clone(),
            (Some(c), _) => Some(Arc::new(AccessLog::start(
                c,
                metrics.access_log_dropped.clone(),
            )?)),
            (None, _) => None,
        };
        let statics = match before {
            Some((old, p)) if old.statics == config.statics => p.statics.clone(),
            _ => Arc::new(StaticFiles::new(&config.statics)),
        };
        let rate = Arc::new(RateLimits::keeping(
            &config.rate_limits,
            &metrics.rate_limited,
            before.map(|(_, p)| &*p.rate),
        ));
        Ok(EdgePolicy {
            metrics: metrics.clone(),
            slot_header: server.slot_header.as_ref().map(|h| Bytes::from(h.clone())),
            edge: EdgeHeaders::new(
                &config.headers,
                server.slot_header.as_deref(),
                config.request_id.as_deref(),
            ),
            limits: config.limits.clone(),
            forwarding: config.forwarding.clone(),
            redirect_to: crate::wire::redirect_port(config),
            log,
            rate,
            slots: SlotPolicy::new(config.preview.as_ref(), &config.canary),
            compression: Compression::new(&config.compression),
            statics,
            keepalive: server.keepalive_timeout,
            park_after: Some(server.park_idle_after).filter(|&p| p < server.keepalive_timeout),
            fast_path: server.fast_path,
            pool_max: config.upstream.keepalive_pool,
            request_id: config
                .request_id
                .as_deref()
                .and_then(|h| HeaderName::from_bytes(h.as_bytes()).ok()),
            outlier: config.outlier.clone(),
        })
    }

    /// The slot header, sticky cookie, request id, route's and edge's headers as HTTP/1 header
    /// lines, after a head the fast path wrote.
    pub(crate) fn dress_h1(&self, d: Dress<'_>, out: &mut Vec<u8>) {
        let mut line = |name: &[u8], value: &[u8]| {
            out.extend_from_slice(name);
            out.extend_from_slice(b": ");
            out.extend_from_slice(value);
            out.extend_from_slice(b"\r\n");
        };
        if let (Some(name), Some(slot)) = (&self.slot_header, d.slot) {
            line(name, slot.as_str().as_bytes());
        }
        if let (true, Some(slot)) = (d.set_cookie, d.slot) {
            line(b"set-cookie", self.slots.set_cookie(slot).as_bytes());
        }
        if let (Some(name), Some(id)) = (&self.request_id, d.id) {
            line(name.as_str().as_bytes(), id.as_str().as_bytes());
        }
        self.edge.write_h1(d.route, out);
    }

    /// The same on a Pingora header; for an `upstream` response, the upstream's headers the
    /// edge sets or hides are removed first.
    pub(crate) fn dress(&self, d: Dress<'_>, resp: &mut ResponseHeader, upstream: bool) {
        self.edge.apply(d.route, resp, upstream);
        if let (Some(name), Some(slot)) = (&self.slot_header, d.slot) {
            let _ = resp.insert_header(name.clone(), HeaderValue::from_static(slot.as_str()));
        }
        if let (true, Some(slot)) = (d.set_cookie, d.slot) {
            let _ = resp.append_header(http::header::SET_COOKIE, self.slots.set_cookie(slot));
        }
        if let (Some(name), Some(id)) = (&self.request_id, d.id) {
            if let Ok(v) = HeaderValue::from_str(id.as_str()) {
                let _ = resp.insert_header(name.clone(), v);
            }
        }
    }

    /// Judges member `i` of `slot` by one request's outcome (`failed`: no connection, a
    /// timeout or a 5xx), under `[outlier]`; an ejection is logged and counted.
    pub(crate) fn judge(&self, routing: &Routing, slot: SlotName, i: usize, failed: bool) {
        let Some(cfg) = &self.outlier else {
            return;
        };
        let pool = &routing.slot(slot).pool;
        if let Some(time) = pool.observe(i, failed, cfg) {
            let address = &pool.members()[i].address;
            self.metrics
                .ejections
                .with_label_values(&[slot.as_str(), address])
                .inc();
            tracing::warn!(
                "{slot} upstream {address} ejected for {}: {} requests in a row failed",
                humantime::format_duration(time),
                cfg.consecutive_failures
            );
        }
    }

    /// How the request policy finds the id of a request from `client`, when ids are on.
    #[inline]
    pub(crate) fn id_rule(&self, client: Option<IpAddr>) -> Option<IdRule<'_>> {
        let header = self.request_id.as_ref()?;
        Some(IdRule {
            header: header.as_str(),
            forwarding: &self.forwarding,
            peer: client,
        })
    }

    /// A new id, when ids are on: for a request refused before its head could be read.
    pub(crate) fn new_id(&self) -> Option<RequestId> {
        self.request_id.as_ref().map(|_| RequestId::new())
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

    /// The answer to a head the policy refused, with the edge's headers and the request id.
    pub(crate) fn refusal(
        &self,
        why: &Reject,
        id: Option<&RequestId>,
    ) -> Option<(ResponseHeader, Bytes)> {
        let body = Bytes::from(format!("{why}\n"));
        let mut resp = pingora::own_response_header(why.status(), body.len())?;
        if let Some(s) = why.retry_after() {
            let _ = resp.insert_header(http::header::RETRY_AFTER, s);
        }
        self.dress(Dress::bare(id), &mut resp, false);
        Some((resp, body))
    }

    /// The proxy's own error answer (502, 503, 504) dressed as `d` says (no sticky cookie:
    /// the slot failed it).
    pub(crate) fn error_answer(&self, code: u16, d: Dress<'_>) -> Option<(ResponseHeader, Bytes)> {
        let body = Bytes::from_static(error_body(code).as_bytes());
        let mut resp = pingora::own_response_header(code, body.len())?;
        let d = Dress {
            set_cookie: false,
            ..d
        };
        self.dress(d, &mut resp, false);
        Some((resp, body))
    }

    /// The slot for an accepted request under `routing`, chosen without counting anything.
    pub(crate) fn choose(&self, req: &RequestHeader, routing: &Routing, client: IpAddr) -> Choice {
        let asked = self.asked(req, routing);
        self.slots.choose(routing, asked, client)
    }

    /// Counts a request served by `choice` (in flight until the guard drops).
    #[inline]
    pub(crate) fn admit(&self, routing: &Routing, choice: Choice) -> InflightGuard {
        if choice.preview {
            self.metrics.preview_requests.inc();
        }
        routing.counters.enter(choice.slot)
    }

    /// The end of every request, whatever its outcome: metrics (of a request given to a slot)
    /// and the access log line (of every request, refused ones too).
    pub(crate) fn record(&self, done: Done) {
        let elapsed = done.start.elapsed();
        if let Some(slot) = done.slot {
            self.metrics.observe(slot, done.status, elapsed);
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
            request_id: done.request_id,
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
        let rules = (self.forwarding_for(client), self.id_rule(client));
        pingora::check_pingora(req, &self.limits, rules, client, tls, self.redirect_to)
    }

    /// Runs the request policy on `req` from `client` (over TLS) and writes the upstream's
    /// HTTP/1.1 head for it into `out`, as the fast path would.
    pub(crate) fn upstream_head(
        &self,
        req: &RequestHeader,
        client: Option<IpAddr>,
        out: &mut Vec<u8>,
    ) -> std::result::Result<pingora::Verdict, Reject> {
        let rules = (self.forwarding_for(client), self.id_rule(client));
        pingora::upstream_h1(req, &self.limits, rules, client, true, out)
    }

    /// What becomes of the forwarded headers of a request from `client` (unknown: as from an
    /// untrusted peer).
    #[inline]
    pub(crate) fn forwarding_for(&self, client: Option<IpAddr>) -> Forwarding {
        let peer = client.unwrap_or(std::net::Ipv4Addr::UNSPECIFIED.into());
        forward::mode(&self.forwarding, peer)
    }

    /// Whether the HTTP/2 loop may proxy a request itself: with `[compression]` on, the full
    /// proxy does (it compresses per body piece).
    pub(crate) fn proxies_h2(&self) -> bool {
        self.compression.is_none()
    }

    /// Whether requests are logged: the head is then copied as sent, before any rewrite.
    #[inline]
    pub(crate) fn logs(&self) -> bool {
        self.log.is_some()
    }
}

/// A finished request, for [`EdgePolicy::record`].
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
    /// The upstream member that answered (or the last one tried).
    pub(crate) upstream: Option<String>,
    /// The request's id, under `[request_id]`.
    pub(crate) request_id: Option<RequestId>,
}

/// What dresses one answer besides the edge's own headers: the parts that are the request's.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Dress<'a> {
    /// The serving slot (its header), once the request was given one.
    pub(crate) slot: Option<SlotName>,
    /// The answer carries the sticky cookie naming the slot.
    pub(crate) set_cookie: bool,
    /// The route's headers.
    pub(crate) route: &'a RouteHeaders,
    /// The request's id.
    pub(crate) id: Option<&'a RequestId>,
}

impl<'a> Dress<'a> {
    /// An answer given before routing: no slot, no route.
    pub(crate) fn bare(id: Option<&'a RequestId>) -> Dress<'a> {
        Dress {
            slot: None,
            set_cookie: false,
            route: &[],
            id,
        }
    }

    /// An answer of `slot` for `route`.
    pub(crate) fn of(
        choice: Choice,
        route: &'a RouteHeaders,
        id: Option<&'a RequestId>,
    ) -> Dress<'a> {
        Dress {
            slot: Some(choice.slot),
            set_cookie: choice.set_cookie,
            route,
            id,
        }
    }
}

/// The policy in force, shared by every engine; `reload` replaces it whole.
pub struct Policies {
    current: ArcSwap<EdgePolicy>,
    metrics: Arc<Metrics>,
}

impl Policies {
    /// The policy of `config`.
    pub fn new(config: &Config, metrics: Arc<Metrics>) -> Result<Policies, PolicyError> {
        let policy = EdgePolicy::build(config, &metrics, None)?;
        Ok(Policies {
            current: ArcSwap::from_pointee(policy),
            metrics,
        })
    }

    /// The policy in force; a request loads it once and keeps it to its end.
    #[inline]
    pub(crate) fn load(&self) -> Arc<EdgePolicy> {
        self.current.load_full()
    }
}

/// The tables of the policy, by their name in the file, and whether `a` and `b` differ in them.
fn changed_tables(a: &Config, b: &Config) -> Vec<String> {
    let (s, t) = (&a.server, &b.server);
    [
        ("headers", a.headers != b.headers),
        ("forwarding", a.forwarding != b.forwarding),
        ("limits", a.limits != b.limits),
        ("rate_limits", a.rate_limits != b.rate_limits),
        ("compression", a.compression != b.compression),
        ("access_log", a.access_log != b.access_log),
        ("static", a.statics != b.statics),
        ("preview", a.preview != b.preview),
        ("canary", a.canary != b.canary),
        ("request_id", a.request_id != b.request_id),
        ("outlier", a.outlier != b.outlier),
        ("listen.redirect_http", a.redirect_http != b.redirect_http),
        ("server.slot_header", s.slot_header != t.slot_header),
        (
            "server.keepalive_timeout",
            s.keepalive_timeout != t.keepalive_timeout,
        ),
        (
            "server.park_idle_after",
            s.park_idle_after != t.park_idle_after,
        ),
        ("server.fast_path", s.fast_path != t.fast_path),
        (
            "upstream.keepalive_pool",
            a.upstream.keepalive_pool != b.upstream.keepalive_pool,
        ),
    ]
    .into_iter()
    .filter(|(_, changed)| *changed)
    .map(|(name, _)| name.to_string())
    .collect()
}

impl Reloadable for Policies {
    fn prepare(self: Arc<Self>, old: &Config, new: &Config) -> Result<Prepared, String> {
        let changed = changed_tables(old, new);
        if changed.is_empty() {
            return Ok(Prepared::nothing());
        }
        let current = self.load();
        let next = EdgePolicy::build(new, &self.metrics, Some((old, &current)))
            .map_err(|e| e.to_string())?;
        let next = Arc::new(next);
        Ok(Prepared {
            changed,
            commit: Box::new(move || self.current.store(next)),
        })
    }
}
