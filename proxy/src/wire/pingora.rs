//! The request policy applied to Pingora's parsed heads, for the full proxy: the same
//! [`check`](super::request::check) the fast path runs, then Pingora's header edited to what
//! the fast path would have written.

use std::net::IpAddr;

use bascule_config::LimitsConfig;
use pingora_http::{RequestHeader, ResponseHeader};

use super::forward::{Forwarded, Peer};
use super::request::{self, check, Checked, Forwarding, Header, Kind, RequestHead, Version};
use super::request_id::{IdRule, RequestId};
use super::response::{response_kind, ResponseKind};
use super::Reject;

/// What checking a Pingora request head decided.
#[derive(Debug)]
pub(crate) struct Verdict {
    /// The normalised path (no query), for routing.
    pub(crate) path: String,
    /// Where `[listen] redirect_http` sends it, when it is to be redirected.
    pub(crate) redirect: Option<String>,
    /// The target was not in normal form: the upstream gets it rewritten.
    pub(crate) rewritten: bool,
    /// The request's id, under `[request_id]`.
    pub(crate) request_id: Option<RequestId>,
}

/// Checks `req` like the fast path checks its heads, without editing it: the verdict, and the
/// edit that makes it the upstream's head (normalised target, hop-by-hop headers and those
/// `Connection` names removed, forwarded headers set when `mode` is not `Off`, for a client at
/// `peer`, the request id under `id`). Editing apart lets the HTTP/2 loop see where a stream
/// goes before either path takes it; the one that does edits it once.
pub(crate) fn check_pingora(
    req: &RequestHeader,
    limits: &LimitsConfig,
    (mode, id): (Forwarding, Option<IdRule<'_>>),
    peer: Option<IpAddr>,
    tls: bool,
    redirect_to: Option<u16>,
) -> Result<(Verdict, Edit), Reject> {
    with_head(req, |head, authority| {
        let c = check(head, limits, mode, id)?;
        let mut edit = Edit::new(head, &c, mode, peer, tls);
        edit.authority = authority.map(str::to_string);
        let verdict = verdict(&c, tls, redirect_to)?;
        Ok((verdict, edit))
    })
}

/// Checks `req` the same way and writes the upstream's HTTP/1.1 head for it into `out`, as the
/// fast path writes it ([`request::write_upstream_h1`]): for an HTTP/2 stream proxied from the
/// HTTP/2 loop.
pub(crate) fn upstream_h1(
    req: &RequestHeader,
    limits: &LimitsConfig,
    (mode, id): (Forwarding, Option<IdRule<'_>>),
    peer: Option<IpAddr>,
    tls: bool,
    out: &mut Vec<u8>,
) -> Result<Verdict, Reject> {
    with_head(req, |head, _| {
        let c = check(head, limits, mode, id)?;
        request::write_upstream_h1(out, head, &c, |out| {
            if let (Some(peer), false) = (peer, mode == Forwarding::Off) {
                Forwarded::new(head.headers, &c, &Peer::new(peer), tls).write_h1(out);
            }
        });
        verdict(&c, tls, None)
    })
}

/// What the routing reads of a checked head.
fn verdict(c: &Checked<'_>, tls: bool, redirect_to: Option<u16>) -> Result<Verdict, Reject> {
    let redirect = match redirect_to.filter(|_| !tls) {
        Some(port) => Some(
            super::https_location(c.host, &c.target.path_and_query, port)
                .ok_or(Reject::BadRequest("no Host to redirect to"))?,
        ),
        None => None,
    };
    Ok(Verdict {
        path: c.target.path().to_string(),
        redirect,
        rewritten: rewritten(c),
        request_id: c.request_id.as_ref().map(|(_, id)| id.clone()),
    })
}

/// Whether the target is not in normal form (the upstream gets it rewritten).
fn rewritten(c: &Checked<'_>) -> bool {
    matches!(c.target.path_and_query, std::borrow::Cow::Owned(_)) || c.target.authority.is_some()
}

/// Calls `f` with `req` as the policy reads heads, and the `Host` an HTTP/2 request names in
/// `:authority` only.
fn with_head<R>(req: &RequestHeader, f: impl FnOnce(&RequestHead<'_>, Option<&str>) -> R) -> R {
    let version = match req.version {
        http::Version::HTTP_10 | http::Version::HTTP_09 => Version::H10,
        http::Version::HTTP_2 | http::Version::HTTP_3 => Version::H2,
        _ => Version::H11,
    };
    // HTTP/2 names the host in `:authority`; the policy and the upstream read `Host`.
    let authority = match version {
        Version::H2 if req.headers.get(http::header::HOST).is_none() => {
            req.uri.authority().map(|a| a.as_str())
        }
        _ => None,
    };
    let target = String::from_utf8_lossy(req.raw_path());
    let mut headers: Vec<Header<'_>> = req
        .headers
        .iter()
        .map(|(n, v)| Header {
            name: n.as_str(),
            value: v.as_bytes(),
        })
        .collect();
    if let Some(a) = authority {
        headers.push(Header {
            name: "host",
            value: a.as_bytes(),
        });
    }
    let method = req.method.as_str();
    let head_len = method.len()
        + target.len()
        + 12
        + headers
            .iter()
            .map(|h| h.name.len() + h.value.len() + 4)
            .sum::<usize>()
        + 2;
    let head = RequestHead {
        method,
        target: &target,
        version,
        headers: &headers,
        head_len,
    };
    f(&head, authority)
}

/// The changes to make to a Pingora request header, owned so the header can be borrowed
/// mutably once they are known.
pub(crate) struct Edit {
    /// An HTTP/2 request's `:authority`, as the `Host` it had none of.
    authority: Option<String>,
    uri: Option<String>,
    host: Option<String>,
    remove: Vec<http::HeaderName>,
    set: Vec<(http::HeaderName, Vec<u8>)>,
}

impl Edit {
    fn new(
        head: &RequestHead<'_>,
        c: &Checked<'_>,
        mode: Forwarding,
        peer: Option<IpAddr>,
        tls: bool,
    ) -> Edit {
        let mut remove = Vec::new();
        for (i, h) in head.headers.iter().enumerate() {
            // Pingora frames the body itself from these, and `Host` stays unless replaced.
            let keep = matches!(
                request::kind(h.name.as_bytes()),
                Kind::ContentLength | Kind::TransferEncoding | Kind::Host
            );
            if c.dropped.contains(i) && !keep {
                if let Ok(name) = http::HeaderName::from_bytes(h.name.as_bytes()) {
                    if !remove.contains(&name) {
                        remove.push(name);
                    }
                }
            }
        }
        let mut set = Vec::new();
        if let (Some(peer), false) = (peer, mode == Forwarding::Off) {
            let peer = Peer::new(peer);
            Forwarded::new(head.headers, c, &peer, tls).each(|name, parts| {
                set.push((http::HeaderName::from_static(name), parts.concat()));
            });
        }
        if let Some((name, id)) = &c.request_id {
            if let Ok(name) = http::HeaderName::from_bytes(name.as_bytes()) {
                set.push((name, id.as_str().as_bytes().to_vec()));
            }
        }
        Edit {
            authority: None,
            uri: rewritten(c).then(|| c.target.path_and_query.to_string()),
            host: c.target.authority.map(str::to_string),
            remove,
            set,
        }
    }

    pub(crate) fn apply(self, req: &mut RequestHeader) {
        if let Some(authority) = self.authority {
            let _ = req.insert_header(http::header::HOST, authority);
        }
        if let Some(uri) = self.uri.and_then(|u| u.parse::<http::Uri>().ok()) {
            req.set_uri(uri);
        }
        if let Some(host) = self.host {
            let _ = req.insert_header(http::header::HOST, host);
        }
        for name in self.remove {
            req.remove_header(&name);
        }
        for (name, value) in self.set {
            let _ = req.insert_header(name, value);
        }
    }
}

/// The proxy's own response head for the full proxy: the same headers [`super::own_response_h1`]
/// writes on the fast path (`connection: close` follows from the session closing).
pub(crate) fn own_response_header(code: u16, body_len: usize) -> Option<ResponseHeader> {
    let mut resp = ResponseHeader::build(code, Some(4)).ok()?;
    let _ = resp.insert_header(http::header::CONTENT_TYPE, super::OWN_CONTENT_TYPE);
    let _ = resp.insert_header(http::header::CONTENT_LENGTH, body_len);
    let _ = resp.insert_header(
        http::header::DATE,
        httpdate::fmt_http_date(std::time::SystemTime::now()),
    );
    Some(resp)
}

/// An upstream response head as [`super::response::parse_response`] wrote it (canonical, no
/// blank line) as a Pingora header, for an HTTP/2 stream: the framing headers HTTP/2 has no
/// use for are left out. `None` if a header cannot be carried (never for a head that parsed).
pub(crate) fn response_from_h1(head: &[u8]) -> Option<ResponseHeader> {
    let mut lines = head
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    let status_line = lines.next()?;
    let code = status_line.get(9..12)?;
    let code: u16 = std::str::from_utf8(code).ok()?.parse().ok()?;
    let mut resp = ResponseHeader::build(code, Some(8)).ok()?;
    for line in lines.filter(|l| !l.is_empty()) {
        let at = line.iter().position(|&b| b == b':')?;
        let (name, value) = (&line[..at], line[at + 1..].trim_ascii_start());
        if name.eq_ignore_ascii_case(b"transfer-encoding") {
            continue;
        }
        let name = http::HeaderName::from_bytes(name).ok()?;
        let value = http::HeaderValue::from_bytes(value).ok()?;
        resp.append_header(name, value).ok()?;
    }
    Some(resp)
}

/// Why the full proxy must refuse an upstream response head the fast path refuses too
/// ([`super::response::parse_response`]): a transfer coding other than a final `chunked`, or a
/// `101` to a request that asked for no upgrade. `None` when it may be relayed.
pub(crate) fn refused_response(resp: &ResponseHeader, upgrade_asked: bool) -> Option<&'static str> {
    if resp.status == 101 && !upgrade_asked {
        return Some("101 to a request that asked for no upgrade");
    }
    let mut codings = resp.headers.get_all(http::header::TRANSFER_ENCODING).iter();
    match (codings.next(), codings.next()) {
        (None, _) => None,
        (Some(v), None) => {
            let mut tokens = request::tokens(v.as_bytes());
            let only_chunked = tokens
                .next()
                .is_some_and(|t| t.eq_ignore_ascii_case(b"chunked"))
                && tokens.next().is_none();
            (!only_chunked).then_some("a transfer coding other than chunked")
        }
        (Some(_), Some(_)) => Some("two Transfer-Encoding headers"),
    }
}

/// Removes from an upstream response what the fast path does not relay either: hop-by-hop
/// headers and those `Connection` names (an `Upgrade` of a 101 stays), `Content-Length` beside
/// `Transfer-Encoding`, `Transfer-Encoding` of a 1xx, 204 or 304, and `drop` (the slot header, which the proxy sets itself).
pub(crate) fn clean_response(resp: &mut ResponseHeader, drop: Option<&str>) {
    let mut remove: Vec<http::HeaderName> = Vec::new();
    let mut chunked = false;
    for (name, value) in resp.headers.iter() {
        match response_kind(name.as_str().as_bytes()) {
            ResponseKind::Connection => {
                if resp.status != 101 {
                    remove.push(name.clone());
                }
                for t in request::tokens(value.as_bytes()) {
                    if let Ok(n) = http::HeaderName::from_bytes(t) {
                        let framing = matches!(
                            response_kind(n.as_str().as_bytes()),
                            ResponseKind::ContentLength | ResponseKind::TransferEncoding
                        );
                        if !(framing || resp.status == 101 && n == http::header::UPGRADE) {
                            remove.push(n);
                        }
                    }
                }
            }
            ResponseKind::HopByHop if !(resp.status == 101 && name == http::header::UPGRADE) => {
                remove.push(name.clone());
            }
            ResponseKind::TransferEncoding => chunked = true,
            _ => {}
        }
    }
    if chunked {
        remove.push(http::header::CONTENT_LENGTH);
        // RFC 9112 §6.1: a response that has no body says nothing of a transfer coding.
        if crate::wire::response::status_has_no_body(resp.status.as_u16()) {
            remove.push(http::header::TRANSFER_ENCODING);
        }
    }
    if let Some(d) = drop {
        if let Ok(n) = http::HeaderName::from_bytes(d.as_bytes()) {
            remove.push(n);
        }
    }
    for name in remove {
        resp.remove_header(&name);
    }
}
