//! Request heads on the fast path: one parse, the shared policy, and everything the rest of the
//! request needs, prepared before the first await so the parsed headers never live in the
//! connection's task.

use bascule_config::LimitsConfig;
use pingora_http::RequestHeader;

use crate::http::edge::Dress;
use crate::slots::choice::{Asked, SlotPolicy};
use crate::wire::access_log::LogRequest;
use crate::wire::compress::{Compression, Negotiated};
use crate::wire::forward::{Forwarded, Peer};
use crate::wire::headers::RouteHeaders;
use crate::wire::request::{
    check, write_upstream_h1, Body, Forwarding, RequestHead, Version, MAX_REQUEST_HEADERS,
};
use crate::wire::request_id::{IdRule, RequestId};
use crate::wire::{https_location, Reject};
use crate::SlotName;

/// Request headers static serving reads (validators, ranges, encodings).
const STATIC_HEADERS: [&str; 5] = [
    "if-none-match",
    "if-modified-since",
    "range",
    "accept-encoding",
    "if-range",
];

/// A request head that passed the policy and stays on the fast path.
pub(super) struct Request {
    /// Bytes of the head in the connection's buffer.
    pub(super) head_len: usize,
    /// `HEAD`: the response has no body.
    pub(super) head_method: bool,
    /// The connection closes after this request (asked for, or an HTTP/1.0 client).
    pub(super) close: bool,
    /// An HTTP/1.0 client: a chunked response reaches it decoded, delimited by the close.
    pub(super) h10: bool,
    /// The request body's framing.
    pub(super) body: Body,
    /// The method may be sent twice (while its body is still whole).
    pub(super) idempotent: bool,
    /// The normalised path, for routing.
    pub(super) path: PathRef,
    /// Its route in the snapshot the head was checked with, found once.
    pub(super) route: Option<usize>,
    /// For a static route: the header static serving reads (method, path, validators).
    pub(super) statics: Option<Box<RequestHeader>>,
    /// What the access log shows of the head, when the log is on.
    pub(super) log: Option<Box<LogRequest>>,
    /// The slot its headers ask for (preview, sticky canary).
    pub(super) asked: Asked,
    /// The response carries the sticky cookie (set once the slot is chosen).
    pub(super) set_cookie: bool,
    /// Served by the slot it asked for (set once the slot is chosen).
    pub(super) preview: bool,
    /// What `Accept-Encoding` allows, under `[compression]`.
    pub(super) negotiated: Negotiated,
    /// Its id, under `[request_id]`.
    pub(super) id: Option<RequestId>,
}

impl Request {
    /// What dresses its answer from `slot` for a route with `headers`.
    pub(super) fn dress<'a>(&'a self, slot: SlotName, headers: &'a RouteHeaders) -> Dress<'a> {
        Dress {
            slot: Some(slot),
            set_cookie: self.set_cookie,
            route: headers,
            id: self.id.as_ref(),
        }
    }
}

/// The normalised path: where it lies in the connection's buffer, or (rewritten) its own copy.
pub(super) enum PathRef {
    InBuf(usize, usize),
    Owned(String),
}

impl PathRef {
    /// The path, given the buffer the head was parsed from.
    pub(super) fn get<'a>(&'a self, buf: &'a [u8]) -> &'a str {
        match self {
            PathRef::InBuf(s, e) => std::str::from_utf8(&buf[*s..*e]).unwrap_or("/"),
            PathRef::Owned(p) => p,
        }
    }
}

/// What to do with the head at the start of a buffer.
pub(super) enum Head {
    /// More bytes needed.
    Partial,
    /// Served here; the upstream request head (if it goes upstream) is in the scratch buffer.
    Fast(Request),
    /// Valid, but for the full proxy: an upgrade, `CONNECT`, an HTTP/1.0 request without
    /// `Host`, a static route asked for with a body or another method than `GET` or `HEAD`.
    Handover,
    /// Refused by the policy: answered with this, then the connection closes.
    Reject(Reject),
    /// A plain request under `[listen] redirect_http`: a 308 to this location.
    Redirect(String, Option<RequestId>),
}

/// The settings [`parse`] applies.
pub(super) struct Policy<'a> {
    /// `[listen] redirect_http`: the https port plain requests are sent to.
    pub(super) redirect_to: Option<u16>,
    /// The request came over TLS (`X-Forwarded-Proto: https`).
    pub(super) tls: bool,
    /// `[server] fast_path`: off, every valid head is handed over.
    pub(super) serve: bool,
    pub(super) limits: &'a LimitsConfig,
    pub(super) forwarding: Forwarding,
    /// `[request_id]`, when on.
    pub(super) id: Option<IdRule<'a>>,
    pub(super) peer: &'a Peer,
    /// The route `path` takes, as an index into the snapshot's routes, and whether it is
    /// static (the head is then prepared for static serving rather than written upstream).
    pub(super) route_of: &'a dyn Fn(&str) -> (Option<usize>, bool),
    /// The access log is on: copy what it shows of the head.
    pub(super) log: bool,
    /// `[preview]` and `[canary]`, when a header can change the slot under this snapshot.
    pub(super) slots: Option<&'a SlotPolicy>,
    /// `[compression]`, when on.
    pub(super) compression: Option<&'a Compression>,
}

/// Parses and checks the request head at the start of `buf`; for an upstream request, writes
/// the upstream head into `out`.
pub(super) fn parse(buf: &[u8], policy: &Policy<'_>, out: &mut Vec<u8>) -> Head {
    // Left uninitialised: clearing 128 headers would cost 4 KiB of writes per request.
    let mut headers = [const { std::mem::MaybeUninit::uninit() }; MAX_REQUEST_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    let head_len = match req.parse_with_uninit_headers(buf, &mut headers) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() > policy.limits.max_header_bytes => {
            return Head::Reject(Reject::HeadTooLarge)
        }
        Ok(httparse::Status::Partial) => return Head::Partial,
        Err(httparse::Error::TooManyHeaders) => return Head::Reject(Reject::HeadTooLarge),
        Err(_) => return Head::Reject(Reject::BadRequest("malformed request head")),
    };
    let head = RequestHead::from_h1(&req, head_len);
    let mut c = match check(&head, policy.limits, policy.forwarding, policy.id) {
        Ok(c) => c,
        Err(r) => return Head::Reject(r),
    };
    if let Some(port) = policy.redirect_to {
        return match https_location(c.host, &c.target.path_and_query, port) {
            Some(location) => Head::Redirect(location, c.request_id.map(|(_, id)| id)),
            None => Head::Reject(Reject::BadRequest("no Host to redirect to")),
        };
    }
    let head_method = head.method == "HEAD";
    let h10 = head.version == Version::H10;
    // An upgrade turns the connection into a tunnel, CONNECT has no path to route, and an
    // HTTP/1.0 request without `Host` has none to write upstream: Pingora's proxy has the
    // machinery for each.
    if !policy.serve || c.upgrade || head.method == "CONNECT" || (h10 && c.host.is_none()) {
        return Head::Handover;
    }
    let path_str = c.target.path();
    let (route, is_static) = (policy.route_of)(path_str);
    // Static files read no body: one would have to be read and dropped first.
    if is_static && ((head.method != "GET" && !head_method) || c.body != Body::None) {
        return Head::Handover;
    }
    let path = match &c.target.path_and_query {
        // Borrowed from the head itself (not a constant such as the `/` of `http://h`).
        std::borrow::Cow::Borrowed(b) if buf.as_ptr_range().contains(&b.as_ptr()) => {
            let start = path_str.as_ptr() as usize - buf.as_ptr() as usize;
            PathRef::InBuf(start, start + path_str.len())
        }
        _ => PathRef::Owned(path_str.to_string()),
    };
    let statics = if is_static {
        let method = if head_method { "HEAD" } else { "GET" };
        let Ok(mut h) = RequestHeader::build(method, path_str.as_bytes(), Some(6)) else {
            return Head::Reject(Reject::BadRequest("the path is not a URI path"));
        };
        for w in head.headers.iter() {
            if let Some(name) = STATIC_HEADERS
                .iter()
                .find(|s| w.name.eq_ignore_ascii_case(s))
            {
                let _ = h.append_header(*name, w.value);
            }
        }
        Some(Box::new(h))
    } else {
        out.clear();
        write_upstream_h1(out, &head, &c, |out| {
            if policy.forwarding != Forwarding::Off {
                Forwarded::new(head.headers, &c, policy.peer, policy.tls).write_h1(out);
            }
        });
        None
    };
    let mut asked = Asked::default();
    if let Some(slots) = policy.slots {
        for h in head.headers.iter() {
            slots.read_header(h.name.as_bytes(), h.value, &mut asked);
        }
    }
    let log = policy.log.then(|| {
        let headers = head.headers.iter().map(|h| (h.name, h.value));
        Box::new(LogRequest::new(head.method, head.target, h10, headers))
    });
    let negotiated = match policy.compression {
        Some(comp) if !is_static => comp.negotiate(head_method, h10, c.accept_encoding),
        _ => Negotiated::Off,
    };
    Head::Fast(Request {
        head_len,
        head_method,
        close: c.close || h10,
        h10,
        body: c.body,
        idempotent: crate::wire::retry::idempotent(head.method),
        path,
        route,
        statics,
        log,
        asked,
        set_cookie: false,
        preview: false,
        negotiated,
        id: c.request_id.take().map(|(_, id)| id),
    })
}
