//! Upstream responses on the fast path: where one ends, so both connections can stay alive, and
//! its head checked and written again in canonical form (hop-by-hop headers left out, framing
//! headers chosen by the proxy), never relayed as it came.

/// How the body of a response is delimited (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framing {
    /// No body (HEAD, 1xx, 204, 304).
    Empty,
    /// `Content-Length` bytes.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// Until the upstream closes.
    UntilClose,
}

/// What the fast path needs from an upstream response head.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ResponseHead {
    /// Bytes of the head, final CRLF included.
    pub(crate) len: usize,
    /// Status code.
    pub(crate) status: u16,
    /// Body framing.
    pub(crate) framing: Framing,
    /// The upstream asked to close (or spoke HTTP/1.0).
    pub(crate) close: bool,
    /// The upstream sent a `Date` header.
    pub(crate) has_date: bool,
}

/// Outcome of parsing the start of `buf` as a response head.
pub(crate) enum Parsed {
    /// A complete head.
    Head(ResponseHead),
    /// More bytes needed.
    Partial,
    /// Not a valid response.
    Invalid,
}

/// Most upstream response headers accepted (as Pingora's parser; nginx passes 70+).
pub(crate) const MAX_RESPONSE_HEADERS: usize = 256;

/// What one response header name means to the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ResponseKind {
    /// Written again by the proxy from the framing it found.
    ContentLength,
    /// Written again by the proxy from the framing it found.
    TransferEncoding,
    /// `Connection`, and what it names.
    Connection,
    /// `Keep-Alive`, `Proxy-Connection`, `TE`, `Upgrade`: between the upstream and us only.
    HopByHop,
    /// `Date`.
    Date,
    /// Anything else: relayed.
    Other,
}

/// Classifies a response header name.
#[inline]
pub(crate) fn response_kind(name: &[u8]) -> ResponseKind {
    let is = |w: &[u8]| name.eq_ignore_ascii_case(w);
    match name.len() {
        2 if is(b"te") => ResponseKind::HopByHop,
        4 if is(b"date") => ResponseKind::Date,
        7 if is(b"upgrade") => ResponseKind::HopByHop,
        10 if is(b"connection") => ResponseKind::Connection,
        10 if is(b"keep-alive") => ResponseKind::HopByHop,
        14 if is(b"content-length") => ResponseKind::ContentLength,
        16 if is(b"proxy-connection") => ResponseKind::HopByHop,
        17 if is(b"transfer-encoding") => ResponseKind::TransferEncoding,
        _ => ResponseKind::Other,
    }
}

/// Whether a response with `status` never has a body, whatever its request (1xx, 204, 304).
#[inline]
pub(crate) fn status_has_no_body(status: u16) -> bool {
    (100..200).contains(&status) || status == 204 || status == 304
}

/// Parses a response head from `buf`; `head_request` says the request was HEAD.
///
/// A complete, valid head is written to `out` in canonical form — status line, the headers
/// that are relayed, the framing header the proxy chose — without the blank line, so the
/// caller can add its own lines. `drop` says which other headers to leave out: those the proxy
/// sets itself (the slot header, `[headers]`) or hides (`wire::headers`). Rules (RFC 9112 §6.3): `Transfer-Encoding` wins over
/// `Content-Length`, which is then dropped; a length that is not plain digits, two lengths, or
/// a transfer coding other than a final `chunked` make the response invalid (nginx: 502).
pub(crate) fn parse_response(
    buf: &[u8],
    head_request: bool,
    drop: &dyn Fn(&[u8]) -> bool,
    out: &mut Vec<u8>,
) -> Parsed {
    // Left uninitialised: 256 headers are 8 KiB to clear on every response otherwise.
    let mut headers = [const { std::mem::MaybeUninit::uninit() }; MAX_RESPONSE_HEADERS];
    let mut resp = httparse::Response::new(&mut []);
    let parsed = httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut resp,
        buf,
        &mut headers,
    );
    let len = match parsed {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(_) => return Parsed::Invalid,
    };
    let status = resp.code.unwrap_or(0);
    if !(100..=599).contains(&status) {
        return Parsed::Invalid;
    }
    let mut close = resp.version == Some(0);
    let mut length = None;
    let mut chunked = false;
    let mut has_date = false;
    let mut named = false;
    for h in resp.headers.iter() {
        match response_kind(h.name.as_bytes()) {
            ResponseKind::Date => has_date = true,
            ResponseKind::ContentLength => {
                let Some(n) = crate::wire::request::parse_length(h.value) else {
                    return Parsed::Invalid;
                };
                if length.is_some() {
                    return Parsed::Invalid;
                }
                length = Some(n);
            }
            ResponseKind::TransferEncoding => {
                if chunked {
                    return Parsed::Invalid;
                }
                let last = crate::wire::request::tokens(h.value).last();
                let only_chunked = crate::wire::request::tokens(h.value).count() == 1;
                if !(only_chunked && last.is_some_and(|l| l.eq_ignore_ascii_case(b"chunked"))) {
                    return Parsed::Invalid;
                }
                chunked = true;
            }
            ResponseKind::Connection => {
                for token in crate::wire::request::tokens(h.value) {
                    if token.eq_ignore_ascii_case(b"close") {
                        close = true;
                    } else if token.eq_ignore_ascii_case(b"keep-alive") && resp.version == Some(0) {
                        close = false;
                    } else {
                        named = true;
                    }
                }
            }
            ResponseKind::HopByHop | ResponseKind::Other => {}
        }
    }
    let no_body = head_request || status_has_no_body(status);
    let framing = if no_body {
        Framing::Empty
    } else if chunked {
        Framing::Chunked
    } else if let Some(n) = length {
        Framing::Length(n)
    } else {
        close = true;
        Framing::UntilClose
    };

    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(itoa::Buffer::new().format(status).as_bytes());
    out.push(b' ');
    out.extend_from_slice(resp.reason.unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    let hs = &*resp.headers;
    for h in hs {
        let name = h.name.as_bytes();
        let keep = match response_kind(name) {
            ResponseKind::Other => {
                let ours = drop(name);
                !(ours || named && named_by_connection(hs, name))
            }
            ResponseKind::Date => true,
            _ => false,
        };
        if keep {
            out.extend_from_slice(name);
            out.extend_from_slice(b": ");
            out.extend_from_slice(h.value);
            out.extend_from_slice(b"\r\n");
        }
    }
    // A 304 or a HEAD response carries the length the full response would have. A 1xx, 204
    // or 304 never names a transfer coding (RFC 9112 §6.1; nginx drops it too); a HEAD
    // response keeps the one its GET would have had.
    if chunked && !status_has_no_body(status) {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
    } else if let Some(n) = length.filter(|_| status != 204 && !(100..200).contains(&status)) {
        out.extend_from_slice(b"content-length: ");
        out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    Parsed::Head(ResponseHead {
        len,
        status,
        framing,
        close,
        has_date,
    })
}

/// Whether a `Connection` header of `headers` names `name`.
fn named_by_connection(headers: &[httparse::Header<'_>], name: &[u8]) -> bool {
    headers
        .iter()
        .filter(|h| response_kind(h.name.as_bytes()) == ResponseKind::Connection)
        .flat_map(|h| crate::wire::request::tokens(h.value))
        .any(|t| t.eq_ignore_ascii_case(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(raw: &[u8], head: bool) -> Result<(Framing, bool, String), &'static str> {
        let mut out = Vec::new();
        match parse_response(
            raw,
            head,
            &|n| n.eq_ignore_ascii_case(b"x-bascule-slot"),
            &mut out,
        ) {
            Parsed::Head(h) => Ok((h.framing, h.close, String::from_utf8(out).unwrap())),
            Parsed::Partial => Err("partial"),
            Parsed::Invalid => Err("invalid"),
        }
    }

    fn framing(raw: &[u8], head: bool) -> (Framing, bool) {
        let (f, c, _) = parse(raw, head).unwrap();
        (f, c)
    }

    #[test]
    fn framing_rules() {
        let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n";
        assert_eq!(framing(ok, false), (Framing::Length(5), false));
        assert_eq!(framing(ok, true), (Framing::Empty, false));
        let nm = b"HTTP/1.1 304 Not Modified\r\n\r\n";
        assert_eq!(framing(nm, false), (Framing::Empty, false));
        let ch = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(framing(ch, false), (Framing::Chunked, false));
        let eof = b"HTTP/1.1 200 OK\r\n\r\n";
        assert_eq!(framing(eof, false), (Framing::UntilClose, true));
        let h10 = b"HTTP/1.0 200 OK\r\ncontent-length: 1\r\n\r\n";
        assert_eq!(framing(h10, false), (Framing::Length(1), true));
        let close = b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 1\r\n\r\n";
        assert_eq!(framing(close, false), (Framing::Length(1), true));
        for bad in [
            &b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 1\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ncontent-length: +5\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ncontent-length: 5\xa0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked, gzip\r\n\r\n",
        ] {
            assert_eq!(parse(bad, false).err(), Some("invalid"), "{bad:?}");
        }
        assert_eq!(
            parse(b"HTTP/1.1 200 OK\r\ncont", false).err(),
            Some("partial")
        );
    }

    #[test]
    fn heads_are_written_again_in_canonical_form() {
        let (_, _, out) = parse(b"HTTP/1.1 200 OK\nContent-Length: 5\n\nhello", false).unwrap();
        assert_eq!(out, "HTTP/1.1 200 OK\r\ncontent-length: 5\r\n");
        let (f, _, out) = parse(
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
            false,
        )
        .unwrap();
        assert_eq!(f, Framing::Chunked);
        assert_eq!(out, "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n");
        // No body, so no transfer coding (RFC 9112 §6.1); a HEAD keeps its GET's.
        for status in ["204 No Content", "304 Not Modified", "103 Early Hints"] {
            let raw = format!("HTTP/1.1 {status}\r\nTransfer-Encoding: chunked\r\nX-A: 1\r\n\r\n");
            let (f, _, out) = parse(raw.as_bytes(), false).unwrap();
            assert_eq!(f, Framing::Empty);
            assert_eq!(out, format!("HTTP/1.1 {status}\r\nX-A: 1\r\n"));
        }
        let ch = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";
        let (_, _, out) = parse(ch, true).unwrap();
        assert_eq!(out, "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n");
        let (_, _, out) = parse(
            b"HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Secret\r\nX-Secret: 1\r\nKeep-Alive: timeout=5\r\nProxy-Connection: x\r\nX-Bascule-Slot: forged\r\nX-Kept: 2\r\nContent-Length: 0\r\n\r\n",
            false,
        )
        .unwrap();
        assert_eq!(out, "HTTP/1.1 200 OK\r\nX-Kept: 2\r\ncontent-length: 0\r\n");
        let mut many = b"HTTP/1.1 200 OK\r\n".to_vec();
        for i in 0..100 {
            many.extend_from_slice(format!("x-h-{i}: {i}\r\n").as_bytes());
        }
        many.extend_from_slice(b"content-length: 0\r\n\r\n");
        let (_, _, out) = parse(&many, false).unwrap();
        assert_eq!(out.matches("x-h-").count(), 100);
    }
}
