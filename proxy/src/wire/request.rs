//! The request policy: what a request head may be, and what of it goes upstream.
//!
//! Both request paths call [`check`] on every request head — the fast path on the headers it
//! parsed in place, Pingora's full proxy on the headers Pingora parsed — so a request is refused
//! or rewritten the same way whichever path it takes. Nothing of the client's head is relayed
//! as bytes: the upstream request is written from the checked fields ([`write_upstream_h1`]) or
//! Pingora's header is edited to match ([`super::pingora::apply_request`]).

use bascule_config::LimitsConfig;

use super::request_id::{IdRule, RequestId};
use super::target::{self, Target};
use super::Reject;

/// Most request headers accepted; more is a 431 (Pingora's own parser stops at 256).
pub(crate) const MAX_REQUEST_HEADERS: usize = 128;

/// One header as parsed: name and raw value.
pub(crate) type Header<'a> = httparse::Header<'a>;

/// The protocol a request arrived with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Version {
    /// HTTP/1.0.
    H10,
    /// HTTP/1.1.
    H11,
    /// HTTP/2 (no `Host` needed: `:authority` stands in; no hop-by-hop headers at all).
    H2,
}

/// How a request body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Body {
    /// No body.
    None,
    /// `Content-Length` bytes.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
}

/// A request head as a request path parsed it.
#[derive(Debug)]
pub(crate) struct RequestHead<'a> {
    /// The method token.
    pub(crate) method: &'a str,
    /// The request target, as sent.
    pub(crate) target: &'a str,
    /// The protocol.
    pub(crate) version: Version,
    /// Every header, in order.
    pub(crate) headers: &'a [Header<'a>],
    /// Bytes of the head, for `[limits] max_header_bytes`.
    pub(crate) head_len: usize,
}

impl<'a> RequestHead<'a> {
    /// The head httparse parsed (HTTP/1.x), `head_len` bytes long.
    pub(crate) fn from_h1<'h: 'a, 'b: 'a>(
        req: &'a httparse::Request<'h, 'b>,
        head_len: usize,
    ) -> RequestHead<'a> {
        RequestHead {
            method: req.method.unwrap_or(""),
            target: req.path.unwrap_or(""),
            version: if req.version == Some(0) {
                Version::H10
            } else {
                Version::H11
            },
            headers: &*req.headers,
            head_len,
        }
    }
}

/// Which headers of the head stay behind (bit `i` for header `i`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Dropped(u128);

impl Dropped {
    fn add(&mut self, i: usize) {
        self.0 |= 1 << i;
    }

    /// Whether header `i` is not forwarded.
    pub(crate) fn contains(self, i: usize) -> bool {
        self.0 & (1 << i) != 0
    }
}

/// A request head that passed the policy, and what the upstream gets of it.
#[derive(Debug)]
pub(crate) struct Checked<'a> {
    /// The normalised target: routing and the upstream request use it.
    pub(crate) target: Target<'a>,
    /// The authority the request is for (absolute-form target, else `Host`); `None` only for
    /// an HTTP/1.0 request without one.
    pub(crate) host: Option<&'a str>,
    /// The request body's framing.
    pub(crate) body: Body,
    /// The client asked to close after this request (or spoke HTTP/1.0 without keep-alive).
    pub(crate) close: bool,
    /// A protocol upgrade (`Connection: upgrade` and `Upgrade`), e.g. a WebSocket handshake.
    pub(crate) upgrade: bool,
    /// `Expect: 100-continue`.
    pub(crate) expect_continue: bool,
    /// Headers not forwarded: hop-by-hop ones, those `Connection` names, `Host` (written from
    /// [`Self::host`]), framing headers (written from [`Self::body`]) and incoming forwarded
    /// headers that [`super::forward`] replaces.
    pub(crate) dropped: Dropped,
    /// Index of each incoming `X-Forwarded-For` header whose value is kept (trusted peer).
    pub(crate) xff: Dropped,
    /// Whether the client sent `X-Real-IP`, `X-Forwarded-Proto`, `X-Forwarded-Host`.
    pub(crate) has_real_ip: bool,
    /// See [`Self::has_real_ip`].
    pub(crate) has_proto: bool,
    /// See [`Self::has_real_ip`].
    pub(crate) has_fwd_host: bool,
    /// The first `Accept-Encoding` value (forwarded as it is; read by `[compression]`).
    pub(crate) accept_encoding: Option<&'a [u8]>,
    /// `[request_id]`, when on: the header and the request's id (incoming ones were dropped).
    pub(crate) request_id: Option<(&'a str, RequestId)>,
}

/// What one header name means to the policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Host,
    ContentLength,
    TransferEncoding,
    Connection,
    /// `Keep-Alive`, `Proxy-Connection`, `TE`, `Trailer`: never forwarded.
    HopByHop,
    Upgrade,
    Expect,
    XForwardedFor,
    XRealIp,
    XForwardedProto,
    XForwardedHost,
    /// `Accept-Encoding`: forwarded, and noted for `[compression]`.
    AcceptEncoding,
    Other,
}

/// Classifies a header name; the length switch keeps the common case to one comparison.
#[inline]
pub(crate) fn kind(name: &[u8]) -> Kind {
    let is = |w: &[u8]| name.eq_ignore_ascii_case(w);
    match name.len() {
        2 if is(b"te") => Kind::HopByHop,
        4 if is(b"host") => Kind::Host,
        6 if is(b"expect") => Kind::Expect,
        7 if is(b"upgrade") => Kind::Upgrade,
        7 if is(b"trailer") => Kind::HopByHop,
        9 if is(b"x-real-ip") => Kind::XRealIp,
        10 if is(b"connection") => Kind::Connection,
        10 if is(b"keep-alive") => Kind::HopByHop,
        14 if is(b"content-length") => Kind::ContentLength,
        15 if is(b"x-forwarded-for") => Kind::XForwardedFor,
        15 if is(b"accept-encoding") => Kind::AcceptEncoding,
        16 if is(b"proxy-connection") => Kind::HopByHop,
        16 if is(b"x-forwarded-host") => Kind::XForwardedHost,
        17 if is(b"transfer-encoding") => Kind::TransferEncoding,
        17 if is(b"x-forwarded-proto") => Kind::XForwardedProto,
        _ => Kind::Other,
    }
}

/// What happens to incoming forwarded headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Forwarding {
    /// `[forwarding] x_forwarded = false`: passed on as they are, none added.
    Off,
    /// From an untrusted peer: dropped, and ours written instead.
    Replace,
    /// From a trusted peer: kept, and `X-Forwarded-For` appended to.
    Append,
}

/// Checks `head` against the policy and `limits`; `mode` says what becomes of the incoming
/// forwarded headers, `id` how the request id is found (when `[request_id]` is on).
pub(crate) fn check<'a>(
    head: &RequestHead<'a>,
    limits: &LimitsConfig,
    mode: Forwarding,
    id: Option<IdRule<'a>>,
) -> Result<Checked<'a>, Reject> {
    if head.head_len > limits.max_header_bytes || head.headers.len() > MAX_REQUEST_HEADERS {
        return Err(Reject::HeadTooLarge);
    }
    // As nginx: methods are upper-case letters, `_` and `-`; `get` is not `GET`, and an
    // upstream that folds case could read it as one.
    let method_ok = !head.method.is_empty()
        && head
            .method
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b == b'_' || b == b'-');
    if !method_ok {
        return Err(Reject::BadRequest("the method is not upper-case letters"));
    }
    let target = target::normalise(head.method, head.target)?;
    let mut c = Checked {
        target,
        host: None,
        body: Body::None,
        close: head.version == Version::H10,
        upgrade: false,
        expect_continue: false,
        dropped: Dropped::default(),
        xff: Dropped::default(),
        has_real_ip: false,
        has_proto: false,
        has_fwd_host: false,
        accept_encoding: None,
        request_id: None,
    };
    let mut incoming_id: Option<&[u8]> = None;
    let mut host_header: Option<&str> = None;
    let mut length: Option<u64> = None;
    let mut chunked = false;
    let mut conn_upgrade = false;
    let mut upgrade_header = false;
    for (i, h) in head.headers.iter().enumerate() {
        let value = h.value;
        match kind(h.name.as_bytes()) {
            Kind::Other => {
                // Always written again: kept from a trusted peer, made here otherwise.
                if id.is_some_and(|r| r.is(h.name.as_bytes())) {
                    incoming_id = incoming_id.or(Some(trim(value)));
                    c.dropped.add(i);
                }
                continue;
            }
            Kind::AcceptEncoding => {
                c.accept_encoding = c.accept_encoding.or(Some(value));
                continue;
            }
            Kind::Host => {
                if host_header.is_some() {
                    return Err(Reject::BadRequest("more than one Host"));
                }
                host_header = Some(valid_host(value)?);
            }
            Kind::ContentLength => {
                if length.is_some() {
                    return Err(Reject::BadRequest("more than one Content-Length"));
                }
                length = Some(
                    parse_length(value)
                        .ok_or(Reject::BadRequest("Content-Length is not a number"))?,
                );
            }
            Kind::TransferEncoding => {
                if head.version != Version::H11 || chunked {
                    return Err(Reject::BadRequest("Transfer-Encoding not allowed here"));
                }
                if !trim(value).eq_ignore_ascii_case(b"chunked") {
                    return Err(Reject::NotImplemented("only chunked transfer coding"));
                }
                chunked = true;
            }
            Kind::Connection => {
                for token in tokens(value) {
                    if token.eq_ignore_ascii_case(b"close") {
                        c.close = true;
                    } else if token.eq_ignore_ascii_case(b"keep-alive") {
                        if head.version == Version::H10 {
                            c.close = false;
                        }
                    } else if token.eq_ignore_ascii_case(b"upgrade") {
                        conn_upgrade = true;
                    }
                }
            }
            Kind::Upgrade => upgrade_header = true,
            Kind::HopByHop => {}
            Kind::Expect => {
                c.expect_continue = trim(value).eq_ignore_ascii_case(b"100-continue");
                continue;
            }
            Kind::XForwardedFor if mode == Forwarding::Off => continue,
            // Always written again: appended to from a trusted peer, replaced otherwise.
            Kind::XForwardedFor => {
                if mode == Forwarding::Append {
                    c.xff.add(i);
                }
            }
            Kind::XRealIp | Kind::XForwardedProto | Kind::XForwardedHost => match mode {
                Forwarding::Off => continue,
                Forwarding::Replace => {}
                Forwarding::Append => {
                    let k = kind(h.name.as_bytes());
                    c.has_real_ip |= k == Kind::XRealIp;
                    c.has_proto |= k == Kind::XForwardedProto;
                    c.has_fwd_host |= k == Kind::XForwardedHost;
                    continue;
                }
            },
        }
        c.dropped.add(i);
    }
    if head.version == Version::H2 && (conn_upgrade || upgrade_header) {
        return Err(Reject::BadRequest("connection-specific header in HTTP/2"));
    }
    c.upgrade = conn_upgrade && upgrade_header && head.version == Version::H11;
    if c.upgrade {
        // The upgrade itself needs both on the upstream side.
        for (i, h) in head.headers.iter().enumerate() {
            if matches!(kind(h.name.as_bytes()), Kind::Upgrade | Kind::Connection) {
                c.dropped.0 &= !(1 << i);
            }
        }
    }
    drop_named_by_connection(head.headers, &mut c);
    c.host = match (c.target.authority, host_header) {
        // RFC 9112 §3.2.2: a client sends `Host` equal to the target's authority; two
        // different names for one request are refused rather than reconciled (as Pingora).
        (Some(a), Some(h)) if !a.eq_ignore_ascii_case(h) => {
            return Err(Reject::BadRequest(
                "Host differs from the target's authority",
            ))
        }
        (Some(a), _) => Some(valid_host(a.as_bytes())?),
        (None, Some(h)) => Some(h),
        (None, None) if head.version == Version::H11 => {
            return Err(Reject::BadRequest("HTTP/1.1 needs a Host"))
        }
        (None, None) => None,
    };
    c.body = match (chunked, length) {
        (true, Some(_)) => {
            return Err(Reject::BadRequest(
                "both Content-Length and Transfer-Encoding",
            ))
        }
        (true, None) => Body::Chunked,
        (false, Some(0)) | (false, None) => Body::None,
        (false, Some(n)) => Body::Length(n),
    };
    if let Body::Length(n) = c.body {
        if n > limits.max_body_bytes {
            return Err(Reject::BodyTooLarge);
        }
    }
    c.request_id = id.map(|r| (r.header, r.id(incoming_id)));
    Ok(c)
}

/// Drops the headers that `Connection` names (RFC 9110 §7.6.1), except the framing and
/// routing headers whose meaning the proxy keeps.
fn drop_named_by_connection(headers: &[Header<'_>], c: &mut Checked<'_>) {
    for h in headers {
        if kind(h.name.as_bytes()) != Kind::Connection {
            continue;
        }
        for token in tokens(h.value) {
            if token.eq_ignore_ascii_case(b"close")
                || token.eq_ignore_ascii_case(b"keep-alive")
                || (c.upgrade && token.eq_ignore_ascii_case(b"upgrade"))
            {
                continue;
            }
            for (i, other) in headers.iter().enumerate() {
                let k = kind(other.name.as_bytes());
                let protected = matches!(k, Kind::Host | Kind::ContentLength);
                if !protected && other.name.as_bytes().eq_ignore_ascii_case(token) {
                    c.dropped.add(i);
                }
            }
        }
    }
}

/// The comma-separated tokens of a list header, trimmed, empty ones skipped.
pub(crate) fn tokens(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| b == b',')
        .map(trim)
        .filter(|t| !t.is_empty())
}

/// `value` without leading and trailing spaces and tabs (and nothing else).
pub(crate) fn trim(value: &[u8]) -> &[u8] {
    let start = value
        .iter()
        .position(|&b| b != b' ' && b != b'\t')
        .unwrap_or(value.len());
    let end = value
        .iter()
        .rposition(|&b| b != b' ' && b != b'\t')
        .map_or(start, |e| e + 1);
    &value[start..end]
}

/// A `Content-Length` value: digits only (RFC 9110 §8.6), spaces and tabs around allowed.
pub(crate) fn parse_length(value: &[u8]) -> Option<u64> {
    let digits = trim(value);
    if digits.is_empty() || digits.len() > 18 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// A `Host` value (RFC 9110 §7.2): `reg-name` or IP literal, with an optional port.
fn valid_host(value: &[u8]) -> Result<&str, Reject> {
    const BAD: Reject = Reject::BadRequest("Host is not a host name");
    let v = std::str::from_utf8(trim(value)).map_err(|_| BAD)?;
    let (host, port) = if let Some(rest) = v.strip_prefix('[') {
        let end = rest.find(']').ok_or(BAD)?;
        let literal = &rest[..end];
        if literal.is_empty()
            || !literal
                .bytes()
                .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
        {
            return Err(BAD);
        }
        match &rest[end + 1..] {
            "" => (literal, None),
            p => (literal, Some(p.strip_prefix(':').ok_or(BAD)?)),
        }
    } else {
        match v.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (v, None),
        }
    };
    if host.is_empty() || host.starts_with('.') || host.contains("..") {
        return Err(BAD);
    }
    let name_ok = v.starts_with('[')
        || host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b));
    let port_ok = port.is_none_or(|p| p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()));
    if name_ok && port_ok {
        Ok(v)
    } else {
        Err(BAD)
    }
}

/// Writes the upstream request head (HTTP/1.1) from the checked fields: request line, `Host`,
/// the headers that stay, the request id, the framing header, `extra` (forwarded headers),
/// blank line.
pub(crate) fn write_upstream_h1(
    out: &mut Vec<u8>,
    head: &RequestHead<'_>,
    c: &Checked<'_>,
    extra: impl FnOnce(&mut Vec<u8>),
) {
    out.extend_from_slice(head.method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(c.target.path_and_query.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    if let Some(host) = c.host {
        out.extend_from_slice(b"host: ");
        out.extend_from_slice(host.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    for (i, h) in head.headers.iter().enumerate() {
        if !c.dropped.contains(i) {
            out.extend_from_slice(h.name.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(h.value);
            out.extend_from_slice(b"\r\n");
        }
    }
    if let Some((name, id)) = &c.request_id {
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(id.as_str().as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    match c.body {
        Body::None => {}
        Body::Length(n) => {
            out.extend_from_slice(b"content-length: ");
            out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        Body::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
    }
    extra(out);
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    type Parsed = (Vec<(String, Vec<u8>)>, String, String, u8, usize);

    fn parse(raw: &[u8]) -> Parsed {
        let mut h = [httparse::EMPTY_HEADER; 64];
        let mut r = httparse::Request::new(&mut h);
        let n = match r.parse(raw).expect("parses") {
            httparse::Status::Complete(n) => n,
            httparse::Status::Partial => panic!("partial"),
        };
        let hs = r
            .headers
            .iter()
            .map(|h| (h.name.to_string(), h.value.to_vec()))
            .collect();
        (
            hs,
            r.method.unwrap().to_string(),
            r.path.unwrap().to_string(),
            r.version.unwrap(),
            n,
        )
    }

    fn run(raw: &[u8]) -> Result<String, u16> {
        let (hs, method, target, v, n) = parse(raw);
        let headers: Vec<Header<'_>> = hs
            .iter()
            .map(|(n, v)| Header { name: n, value: v })
            .collect();
        let head = RequestHead {
            method: &method,
            target: &target,
            version: if v == 0 { Version::H10 } else { Version::H11 },
            headers: &headers,
            head_len: n,
        };
        let limits = LimitsConfig {
            max_body_bytes: 1000,
            ..LimitsConfig::default()
        };
        let c = check(&head, &limits, Forwarding::Replace, None).map_err(|r| r.status())?;
        let mut out = Vec::new();
        write_upstream_h1(&mut out, &head, &c, |_| {});
        Ok(String::from_utf8(out).unwrap())
    }

    #[test]
    fn host_rules() {
        assert_eq!(run(b"GET / HTTP/1.1\r\n\r\n"), Err(400));
        assert_eq!(run(b"get / HTTP/1.1\r\nHost: a\r\n\r\n"), Err(400));
        assert_eq!(run(b"GET / HTTP/1.1\r\nHost:\r\n\r\n"), Err(400));
        assert_eq!(
            run(b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"),
            Err(400)
        );
        assert_eq!(run(b"GET / HTTP/1.1\r\nHost: a/b\r\n\r\n"), Err(400));
        assert_eq!(run(b"GET / HTTP/1.1\r\nHost: a@b\r\n\r\n"), Err(400));
        assert_eq!(run(b"GET / HTTP/1.1\r\nHost: a:8x\r\n\r\n"), Err(400));
        assert!(run(b"GET / HTTP/1.1\r\nHost: [::1]:80\r\n\r\n").is_ok());
        assert!(run(b"GET / HTTP/1.0\r\n\r\n").is_ok());
        assert_eq!(
            run(b"GET http://x.example/p HTTP/1.1\r\nHost: other\r\n\r\n"),
            Err(400)
        );
        let abs = run(b"GET http://x.example/p HTTP/1.1\r\nHost: x.example\r\n\r\n").unwrap();
        assert!(
            abs.starts_with("GET /p HTTP/1.1\r\nhost: x.example\r\n"),
            "{abs}"
        );
    }

    #[test]
    fn framing_rules() {
        let te_cl = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(run(te_cl), Err(400));
        assert_eq!(
            run(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n"),
            Err(400)
        );
        for bad in [&b"+5"[..], b"0x5", b"-1", b"5 5", b"5\xa0"] {
            let mut raw = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: ".to_vec();
            raw.extend_from_slice(bad);
            raw.extend_from_slice(b"\r\n\r\n");
            assert_eq!(run(&raw), Err(400), "{:?}", String::from_utf8_lossy(bad));
        }
        assert_eq!(
            run(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"),
            Err(501)
        );
        assert_eq!(
            run(b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n"),
            Err(400)
        );
        assert_eq!(
            run(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1001\r\n\r\n"),
            Err(413)
        );
        let ok = run(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: Chunked\r\n\r\n").unwrap();
        assert!(ok.contains("transfer-encoding: chunked\r\n"), "{ok}");
    }

    #[test]
    fn hop_by_hop_and_forwarded_headers_stay_behind() {
        let out = run(b"GET /x HTTP/1.1\r\nHost: a\r\nConnection: close, X-Foo\r\nX-Foo: secret\r\nKeep-Alive: 5\r\nTE: trailers\r\nProxy-Connection: x\r\nUpgrade: h2c\r\nX-Forwarded-For: 1.2.3.4\r\nX-Real-IP: 1.2.3.4\r\nAccept: */*\r\n\r\n").unwrap();
        assert_eq!(out, "GET /x HTTP/1.1\r\nhost: a\r\nAccept: */*\r\n\r\n");
        let ws = run(
            b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
        )
        .unwrap();
        assert!(ws.contains("Connection: Upgrade\r\n") && ws.contains("Upgrade: websocket\r\n"));
    }
}
