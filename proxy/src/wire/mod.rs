//! HTTP on the wire, below every request path: the request policy ([`request`]), target
//! normalisation ([`target`]), forwarded headers ([`forward`]), request ids ([`request_id`]),
//! upstream response heads
//! ([`response`]) and chunked framing ([`chunked`]), the retry rules ([`retry`]), and what the
//! proxy writes itself (the `Date` line, its own error responses). Knows nothing of slots or
//! snapshots; both request paths call into it, so each rule exists once.

pub mod access_log;
pub(crate) mod chunked;
pub(crate) mod compress;
pub(crate) mod forward;
pub(crate) mod headers;
pub mod invariants;
pub(crate) mod pingora;
pub(crate) mod rate_limit;
pub(crate) mod request;
pub(crate) mod request_id;
pub(crate) mod response;
pub(crate) mod retry;
pub(crate) mod target;

/// Why a request is refused before it goes anywhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Reject {
    /// Malformed or ambiguous: 400.
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    /// Head beyond `[limits] max_header_bytes` (or too many headers): 431.
    #[error("request header fields too large")]
    HeadTooLarge,
    /// Body beyond `[limits] max_body_bytes`: 413.
    #[error("content too large")]
    BodyTooLarge,
    /// Head not complete within `[limits] header_timeout`: 408.
    #[error("request timeout: the request head did not arrive in time")]
    HeadTimeout,
    /// No request body byte within `[limits] body_timeout`: 408.
    #[error("request timeout: the request body stalled")]
    BodyTimeout,
    /// A feature the proxy does not relay (a transfer coding other than chunked): 501.
    #[error("not implemented: {0}")]
    NotImplemented(&'static str),
    /// Over a `[[rate_limits]]` limit: 429, to try again after this many seconds.
    #[error("too many requests: try again in {0} s")]
    TooManyRequests(u32),
}

impl Reject {
    /// The status code of the refusal.
    pub(crate) fn status(&self) -> u16 {
        match self {
            Reject::BadRequest(_) => 400,
            Reject::HeadTooLarge => 431,
            Reject::BodyTooLarge => 413,
            Reject::HeadTimeout | Reject::BodyTimeout => 408,
            Reject::NotImplemented(_) => 501,
            Reject::TooManyRequests(_) => 429,
        }
    }

    /// The `Retry-After` seconds of the refusal, if it has one.
    pub(crate) fn retry_after(&self) -> Option<u32> {
        match self {
            Reject::TooManyRequests(s) => Some(*s),
            _ => None,
        }
    }
}

thread_local! {
    /// `date: …\r\n` for the current second, formatted once per second per thread.
    static DATE: std::cell::RefCell<(u64, Vec<u8>)> = const { std::cell::RefCell::new((0, Vec::new())) };
}

/// Appends the `date` header line (RFC 9110 §6.6.1) for responses the proxy makes itself.
pub(crate) fn date_line(out: &mut Vec<u8>) {
    let now = std::time::SystemTime::now();
    let secs = now
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    DATE.with(|cell| {
        let mut cached = cell.borrow_mut();
        if cached.0 != secs || cached.1.is_empty() {
            cached.0 = secs;
            cached.1 = format!("date: {}\r\n", httpdate::fmt_http_date(now)).into_bytes();
        }
        out.extend_from_slice(&cached.1);
    });
}

/// The short text body of the proxy's own error responses.
pub(crate) fn error_body(code: u16) -> &'static str {
    match code {
        400 => "bad request\n",
        408 => "request timeout\n",
        413 => "content too large\n",
        429 => "too many requests\n",
        431 => "request header fields too large\n",
        502 => "bad gateway: the upstream could not be reached\n",
        503 => "service unavailable: no healthy upstream in the serving slot\n",
        504 => "gateway timeout: the upstream did not answer in time\n",
        _ => "proxy error\n",
    }
}

/// The reason phrase of `code`, or nothing.
pub(crate) fn reason(code: u16) -> &'static str {
    http::StatusCode::from_u16(code)
        .ok()
        .and_then(|c| c.canonical_reason())
        .unwrap_or("")
}

/// The headers of every response the proxy makes itself, besides `date`: both request paths
/// write exactly these.
pub(crate) const OWN_CONTENT_TYPE: &str = "text/plain; charset=utf-8";

/// Writes the proxy's own response (`code`, short text `body`, `connection: close`) in
/// HTTP/1.1; `extra` holds header lines to add (the slot header).
pub(crate) fn own_response_h1(code: u16, body: &str, extra: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(itoa::Buffer::new().format(code).as_bytes());
    out.push(b' ');
    out.extend_from_slice(reason(code).as_bytes());
    out.extend_from_slice(b"\r\ncontent-type: ");
    out.extend_from_slice(OWN_CONTENT_TYPE.as_bytes());
    out.extend_from_slice(b"\r\ncontent-length: ");
    out.extend_from_slice(itoa::Buffer::new().format(body.len()).as_bytes());
    out.extend_from_slice(b"\r\nconnection: close\r\n");
    date_line(out);
    out.extend_from_slice(extra);
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body.as_bytes());
}

/// `https://host[:port]/path?query`: where `[listen] redirect_http` sends a plain request.
/// `host` is the request's authority (its port, if any, is replaced by `https_port`, left out
/// when 443). `None` without a host to send the client to.
pub(crate) fn https_location(
    host: Option<&str>,
    path_and_query: &str,
    https_port: u16,
) -> Option<String> {
    let host = host?;
    let name = match host.rsplit_once(':') {
        // An IPv6 literal keeps its brackets; a trailing `:digits` is a port.
        Some((n, p)) if p.bytes().all(|b| b.is_ascii_digit()) && !n.ends_with(':') => n,
        _ => host,
    };
    let path = if path_and_query == "*" {
        "/"
    } else {
        path_and_query
    };
    Some(if https_port == 443 {
        format!("https://{name}{path}")
    } else {
        format!("https://{name}:{https_port}{path}")
    })
}

/// The https port plain requests are redirected to, under `[listen] redirect_http`.
pub(crate) fn redirect_port(config: &bascule_config::Config) -> Option<u16> {
    let https = config.https.first()?;
    (config.redirect_http && config.tls.is_some()).then_some(https.port())
}
