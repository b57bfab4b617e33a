//! Properties of the wire code that must hold for any input: the entry points of the fuzz
//! targets (`proxy/fuzz/`) and of the mutation tests below, so both check the same things.
//!
//! - A request head the policy accepts is written upstream as a head that parses back, whole,
//!   into the same method, normalised target, `Host` and framing, with no hop-by-hop header
//!   left, and that the policy accepts again unchanged (normalising is idempotent).
//! - A response head is written back as a head that parses, with at most one framing header
//!   and no hop-by-hop header.
//! - The chunked parser finds the same end whatever the split of its input.

use bascule_config::LimitsConfig;

use super::chunked::Chunked;
use super::request::{
    check, kind, write_upstream_h1, Forwarding, Kind, RequestHead, Version, MAX_REQUEST_HEADERS,
};
use super::response::{parse_response, response_kind, Parsed, ResponseKind};

/// Runs a request head through the policy and the upstream writer; panics on a broken property.
pub fn request_head(data: &[u8]) {
    let mut headers = [httparse::EMPTY_HEADER; MAX_REQUEST_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let Ok(httparse::Status::Complete(head_len)) = req.parse(data) else {
        return;
    };
    let head = RequestHead::from_h1(&req, head_len);
    let limits = LimitsConfig::default();
    let Ok(c) = check(&head, &limits, Forwarding::Replace, None) else {
        return;
    };
    let mut out = Vec::new();
    write_upstream_h1(&mut out, &head, &c, |_| {});

    let mut again = [httparse::EMPTY_HEADER; MAX_REQUEST_HEADERS + 4];
    let mut parsed = httparse::Request::new(&mut again);
    let n = match parsed.parse(&out) {
        Ok(httparse::Status::Complete(n)) => n,
        other => panic!("written head does not parse: {other:?}: {out:?}"),
    };
    assert_eq!(n, out.len(), "written head has trailing bytes");
    assert_eq!(parsed.method, Some(head.method));
    assert_eq!(parsed.path, Some(&*c.target.path_and_query));
    assert_eq!(parsed.version, Some(1));
    let mut hosts = 0;
    for h in parsed.headers.iter() {
        match kind(h.name.as_bytes()) {
            Kind::Host => hosts += 1,
            Kind::HopByHop => panic!("hop-by-hop header written: {}", h.name),
            Kind::Connection | Kind::Upgrade => assert!(c.upgrade, "{} without upgrade", h.name),
            _ => {}
        }
    }
    assert_eq!(hosts, usize::from(c.host.is_some()), "Host count");

    // An HTTP/1.0 request may come without `Host`; it then goes without one too (the full
    // proxy forwards it as HTTP/1.0), so it is checked again as what it was.
    let version = if c.host.is_none() {
        Version::H10
    } else {
        Version::H11
    };
    let rehead = RequestHead {
        method: parsed.method.unwrap_or(""),
        target: parsed.path.unwrap_or(""),
        version,
        headers: parsed.headers,
        head_len: n,
    };
    let re = check(&rehead, &limits, Forwarding::Off, None)
        .unwrap_or_else(|r| panic!("written head refused: {r}: {out:?}"));
    assert_eq!(re.target.path_and_query, c.target.path_and_query);
    assert_eq!(re.body, c.body);
    assert_eq!(re.host, c.host);
}

/// Runs a response head (and the body bytes after it) through the response writer and the
/// chunked parser; panics on a broken property.
pub fn response(data: &[u8]) {
    for head_request in [false, true] {
        let mut out = Vec::new();
        let Parsed::Head(h) = parse_response(
            data,
            head_request,
            &|n| n.eq_ignore_ascii_case(b"x-slot"),
            &mut out,
        ) else {
            continue;
        };
        out.extend_from_slice(b"\r\n");
        let mut again = [httparse::EMPTY_HEADER; 300];
        let mut parsed = httparse::Response::new(&mut again);
        match parsed.parse(&out) {
            Ok(httparse::Status::Complete(n)) => assert_eq!(n, out.len()),
            other => panic!("written head does not parse: {other:?}: {out:?}"),
        }
        assert_eq!(parsed.code, Some(h.status));
        let mut framing = 0;
        for hd in parsed.headers.iter() {
            match response_kind(hd.name.as_bytes()) {
                ResponseKind::ContentLength | ResponseKind::TransferEncoding => framing += 1,
                ResponseKind::Connection | ResponseKind::HopByHop => {
                    panic!("hop-by-hop header written: {}", hd.name)
                }
                _ => assert!(!hd.name.eq_ignore_ascii_case("x-slot")),
            }
        }
        assert!(framing <= 1, "two framing headers: {out:?}");
    }
    chunked_splits(data);
}

/// The chunked parser's verdict on `data` does not depend on how it is split.
pub fn chunked_splits(data: &[u8]) {
    let whole = Chunked::default().feed(data).ok();
    for split in [
        1,
        data.len() / 3,
        data.len() / 2,
        data.len().saturating_sub(1),
    ] {
        if split == 0 || split >= data.len() {
            continue;
        }
        let mut c = Chunked::default();
        let parts = match c.feed(&data[..split]) {
            Ok(Some(end)) => Some(Some(end)),
            Ok(None) => c.feed(&data[split..]).ok().map(|r| r.map(|e| e + split)),
            Err(_) => None,
        };
        assert_eq!(parts, whole, "split at {split} changes the verdict");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Seeds: valid and hostile heads, as the conformance corpus has them.
    const REQUESTS: &[&[u8]] = &[
        b"GET /a/../b?x=1 HTTP/1.1\r\nHost: a\r\nConnection: close, X-Foo\r\nX-Foo: 1\r\n\r\n",
        b"GET http://h:8/p/./q HTTP/1.1\r\nHost: h:8\r\nKeep-Alive: 1\r\nTE: trailers\r\n\r\n",
        b"POST /p HTTP/1.1\nHost: a\nTransfer-Encoding: chunked\nX-Forwarded-For: 1.2.3.4\n\n",
        b"POST /p HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nProxy-Connection: x\r\n\r\n",
        b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
        b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET /%2e%2E/x HTTP/1.0\r\n\r\n",
    ];

    const RESPONSES: &[&[u8]] = &[
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\nConnection: keep-alive, X-A\nX-A: 1\nContent-Length: 2\n\nok",
        b"HTTP/1.0 304 Not Modified\r\nX-Slot: forged\r\nKeep-Alive: 5\r\n\r\n",
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4;a=b\r\nWiki\r\n0\r\nT: 1\r\n\r\n",
    ];

    /// A small deterministic generator, so a failure replays.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n.max(1) as u64) as usize
        }
    }

    const ALPHABET: &[u8] = b"\r\n :;,./%2eE0123456789aAzZ\t\x00\x7f\x80-_*?#@[]chunkedclosehost";

    /// Mutates `seed` by inserting, deleting, replacing or duplicating a few bytes.
    fn mutate(rng: &mut Rng, seed: &[u8]) -> Vec<u8> {
        let mut v = seed.to_vec();
        for _ in 0..1 + rng.below(4) {
            let at = rng.below(v.len() + 1);
            match rng.below(4) {
                0 => v.insert(at, ALPHABET[rng.below(ALPHABET.len())]),
                1 if at < v.len() => {
                    v.remove(at);
                }
                2 if at < v.len() => v[at] = ALPHABET[rng.below(ALPHABET.len())],
                _ => {
                    let end = (at + rng.below(12)).min(v.len());
                    let piece = v[at..end].to_vec();
                    v.splice(at..at, piece);
                }
            }
        }
        v
    }

    #[test]
    fn seeds_hold() {
        for r in REQUESTS {
            request_head(r);
        }
        for r in RESPONSES {
            response(r);
        }
    }

    #[test]
    fn mutations_hold() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for _ in 0..100_000 {
            let seed = REQUESTS[rng.below(REQUESTS.len())];
            let req = mutate(&mut rng, seed);
            request_head(&req);
            let seed = RESPONSES[rng.below(RESPONSES.len())];
            let resp = mutate(&mut rng, seed);
            response(&resp);
        }
    }
}
