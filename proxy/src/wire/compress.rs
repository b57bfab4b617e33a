//! Compression of proxied responses (`[compression]`): the one policy both request paths call.
//!
//! Per request, [`Compression::negotiate`] reads `Accept-Encoding` once: the first algorithm
//! of the edge's preference list that the client accepts (q > 0, by name or by `*`) wins; a
//! HEAD request or an HTTP/1.0 client (nginx's `gzip_http_version 1.1`) is never compressed.
//! Per response, [`Compression::plan`] decides from the head's [`Facts`]: only a final status
//! with a body (not 1xx, 204, 206, 304), not encoded already, not `no-transform`, of a listed
//! content type, and not known to be shorter than `min_bytes` (a chunked or close-delimited
//! body of unknown length is compressed). Such a response varies by `Accept-Encoding` whether
//! it is compressed or not, so it always gets `Vary: Accept-Encoding`, as nginx's `gzip_vary`.
//!
//! A compressed response loses its `Content-Length` (re-framed as chunked on HTTP/1.1, by the
//! stream on HTTP/2) and `Accept-Ranges`, and its strong `ETag` becomes weak, as nginx does:
//! the bytes differ from the upstream's. The body goes through an [`Encoder`] chunk by chunk,
//! flushed after each so that a streamed response reaches the client as it comes, in memory
//! bounded by the codec's window, never buffered whole.

use std::io::Write;

use bascule_config::{Algorithm, CompressionConfig};
use http::header::{
    ACCEPT_RANGES, CONTENT_ENCODING, CONTENT_LENGTH, ETAG, TRANSFER_ENCODING, VARY,
};
use http::HeaderValue;
use pingora_http::ResponseHeader;

/// gzip level: nginx's default is 1; 5 gets most of the ratio of 9 at a third of its cost.
const GZIP_LEVEL: u32 = 5;
/// Brotli quality: 4 is as fast as gzip 5 and smaller; 11 is for precompressed files.
const BROTLI_QUALITY: u32 = 4;
/// Brotli window, log2 bytes: 512 KiB, as nginx's brotli module.
const BROTLI_WINDOW: u32 = 19;
/// Brotli's input buffer, bytes.
const BROTLI_BUFFER: usize = 4096;
/// zstd level: its default.
const ZSTD_LEVEL: i32 = 3;
/// zstd window, log2 bytes: 512 KiB instead of level 3's 2 MiB, to bound memory per response.
const ZSTD_WINDOW: u32 = 19;

/// `[compression]`, ready for the request paths; absent when off.
#[derive(Debug, Clone)]
pub(crate) struct Compression {
    algorithms: Vec<Algorithm>,
    min_bytes: u64,
    types: Vec<String>,
}

/// What a request allows, decided once from its head.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum Negotiated {
    /// Compression is off, or never applies to this request (HEAD, HTTP/1.0): the response is
    /// left alone.
    #[default]
    Off,
    /// The client accepts none of the algorithms: sent as it is, with `Vary` when eligible.
    Identity,
    /// The algorithm to use on an eligible response.
    Use(Algorithm),
}

/// What eligibility reads of a response head.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Facts<'a> {
    /// Status code.
    pub(crate) status: u16,
    /// `Content-Type`, as sent.
    pub(crate) content_type: Option<&'a [u8]>,
    /// A `Content-Encoding` other than `identity`.
    pub(crate) encoded: bool,
    /// `Content-Length`, when the body's length is known.
    pub(crate) length: Option<u64>,
    /// `Cache-Control: no-transform` (RFC 9111 §5.2.2.6): a proxy leaves the body alone.
    pub(crate) no_transform: bool,
}

/// What becomes of one response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Plan {
    /// Untouched.
    Leave,
    /// Sent as it is, with `Vary: Accept-Encoding`.
    Vary,
    /// Compressed with this algorithm.
    Encode(Algorithm),
}

impl Compression {
    /// From the validated config; `None` when compression is off.
    pub(crate) fn new(config: &CompressionConfig) -> Option<Compression> {
        config.is_on().then(|| Compression {
            algorithms: config.algorithms.clone(),
            min_bytes: config.min_bytes,
            types: config.types.clone(),
        })
    }

    /// The algorithm for a request: `head`, `http10` say whether its response may be compressed
    /// at all; `accept_encoding` is its header's value.
    pub(crate) fn negotiate(
        &self,
        head: bool,
        http10: bool,
        accept_encoding: Option<&[u8]>,
    ) -> Negotiated {
        if head || http10 {
            return Negotiated::Off;
        }
        let accepted = Accepted::parse(accept_encoding);
        match self.algorithms.iter().find(|a| accepted.accepts(**a)) {
            Some(a) => Negotiated::Use(*a),
            None => Negotiated::Identity,
        }
    }

    /// What becomes of a response with head `facts` to a request that negotiated `n`.
    pub(crate) fn plan(&self, n: Negotiated, facts: &Facts<'_>) -> Plan {
        let bodiless = matches!(facts.status, 100..=199 | 204 | 206 | 304);
        let eligible = n != Negotiated::Off
            && !bodiless
            && !facts.encoded
            && !facts.no_transform
            && facts.length.is_none_or(|l| l > 0 && l >= self.min_bytes)
            && facts.content_type.is_some_and(|t| self.listed(t));
        match n {
            _ if !eligible => Plan::Leave,
            Negotiated::Use(a) => Plan::Encode(a),
            _ => Plan::Vary,
        }
    }

    /// Whether `content_type` starts with a listed prefix (case-insensitive).
    fn listed(&self, content_type: &[u8]) -> bool {
        let t = trim(content_type);
        self.types
            .iter()
            .any(|p| t.len() >= p.len() && t[..p.len()].eq_ignore_ascii_case(p.as_bytes()))
    }
}

/// The codings a client accepts, from its `Accept-Encoding` (RFC 9110 §12.5.3): a coding
/// listed with q > 0, or not listed while `*` has q > 0. No header: none.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Accepted {
    br: bool,
    zstd: bool,
    gzip: bool,
}

impl Accepted {
    /// Parses an `Accept-Encoding` value; an entry whose q-value does not parse is ignored.
    pub(crate) fn parse(header: Option<&[u8]>) -> Accepted {
        let Some(header) = header else {
            return Accepted::default();
        };
        let (mut br, mut zstd, mut gzip, mut star) = (None, None, None, None);
        for item in header.split(|&b| b == b',') {
            let mut parts = item.split(|&b| b == b';');
            let name = trim(parts.next().unwrap_or_default());
            let mut q = Some(1.0f32);
            for p in parts {
                let p = trim(p);
                if p.len() >= 2 && p[..2].eq_ignore_ascii_case(b"q=") {
                    q = std::str::from_utf8(&p[2..])
                        .ok()
                        .and_then(|v| v.trim().parse::<f32>().ok())
                        .filter(|q| (0.0..=1.0).contains(q));
                }
            }
            let Some(q) = q else { continue };
            let slot = match name.to_ascii_lowercase().as_slice() {
                b"br" => &mut br,
                b"zstd" => &mut zstd,
                b"gzip" | b"x-gzip" => &mut gzip,
                b"*" => &mut star,
                _ => continue,
            };
            *slot = Some(q > 0.0);
        }
        let star = star.unwrap_or(false);
        Accepted {
            br: br.unwrap_or(star),
            zstd: zstd.unwrap_or(star),
            gzip: gzip.unwrap_or(star),
        }
    }

    /// Whether `a` may be sent.
    pub(crate) fn accepts(&self, a: Algorithm) -> bool {
        match a {
            Algorithm::Brotli => self.br,
            Algorithm::Zstd => self.zstd,
            Algorithm::Gzip => self.gzip,
        }
    }
}

fn trim(v: &[u8]) -> &[u8] {
    v.trim_ascii()
}

/// Whether a `Cache-Control` value holds `no-transform`.
fn is_no_transform(v: &[u8]) -> bool {
    v.split(|&b| b == b',')
        .any(|d| trim(d).eq_ignore_ascii_case(b"no-transform"))
}

/// Whether a `Content-Encoding` value says the body is encoded.
fn is_encoded(v: &[u8]) -> bool {
    let v = trim(v);
    !v.is_empty() && !v.eq_ignore_ascii_case(b"identity")
}

/// The `Vary` value once `Accept-Encoding` is in it, from the values the response has; `None`
/// when it is there already (or `*` covers it).
fn merged_vary<'a>(values: impl Iterator<Item = &'a [u8]>) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    for v in values {
        let covered = v
            .split(|&b| b == b',')
            .map(trim)
            .any(|t| t == b"*" || t.eq_ignore_ascii_case(b"accept-encoding"));
        if covered {
            return None;
        }
        if !trim(v).is_empty() {
            out.extend_from_slice(trim(v));
            out.extend_from_slice(b", ");
        }
    }
    out.extend_from_slice(b"Accept-Encoding");
    Some(out)
}

/// The `ETag` of the compressed representation: a strong tag made weak, a weak one kept, one
/// that is not a quoted tag dropped (`None`), as nginx's gzip filter.
fn weak_etag(v: &[u8]) -> Option<Vec<u8>> {
    if v.starts_with(b"W/") {
        Some(v.to_vec())
    } else if v.starts_with(b"\"") {
        Some([&b"W/"[..], v].concat())
    } else {
        None
    }
}

impl<'a> Facts<'a> {
    /// From a Pingora response head.
    pub(crate) fn of_pingora(resp: &'a ResponseHeader) -> Facts<'a> {
        let h = &resp.headers;
        Facts {
            status: resp.status.as_u16(),
            content_type: h.get(http::header::CONTENT_TYPE).map(|v| v.as_bytes()),
            encoded: h
                .get_all(CONTENT_ENCODING)
                .iter()
                .any(|v| is_encoded(v.as_bytes())),
            length: h
                .get(CONTENT_LENGTH)
                .and_then(|v| crate::wire::request::parse_length(v.as_bytes())),
            no_transform: h
                .get_all(http::header::CACHE_CONTROL)
                .iter()
                .any(|v| is_no_transform(v.as_bytes())),
        }
    }

    /// From a head the fast path wrote in canonical form (`wire::response`): a status line,
    /// then `name: value\r\n` lines, without the blank line.
    pub(crate) fn of_h1(status: u16, head: &'a [u8]) -> Facts<'a> {
        let mut f = Facts {
            status,
            ..Facts::default()
        };
        for (name, value) in h1_lines(head) {
            let is = |n: &[u8]| name.eq_ignore_ascii_case(n);
            if is(b"content-type") {
                f.content_type = f.content_type.or(Some(value));
            } else if is(b"content-encoding") {
                f.encoded |= is_encoded(value);
            } else if is(b"content-length") {
                f.length = crate::wire::request::parse_length(value);
            } else if is(b"cache-control") {
                f.no_transform |= is_no_transform(value);
            }
        }
        f
    }
}

/// The header lines of a canonical head, past its status line.
fn h1_lines(head: &[u8]) -> impl Iterator<Item = (&[u8], &[u8])> {
    head.split(|&b| b == b'\n').skip(1).filter_map(|line| {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let colon = line.iter().position(|&b| b == b':')?;
        Some((&line[..colon], trim(&line[colon + 1..])))
    })
}

/// Applies `plan` to a Pingora response head; `h1`: the client speaks HTTP/1.1, so the body
/// is re-framed as chunked (HTTP/2 frames it itself).
pub(crate) fn apply_pingora(plan: Plan, resp: &mut ResponseHeader, h1: bool) {
    if plan == Plan::Leave {
        return;
    }
    let vary = merged_vary(resp.headers.get_all(VARY).iter().map(|v| v.as_bytes()));
    if let Some(v) = vary.and_then(|v| HeaderValue::from_bytes(&v).ok()) {
        let _ = resp.insert_header(VARY, v);
    }
    let Plan::Encode(a) = plan else { return };
    resp.remove_header(&CONTENT_LENGTH);
    resp.remove_header(&ACCEPT_RANGES);
    let etag = resp.headers.get(ETAG).map(|v| weak_etag(v.as_bytes()));
    match etag.map(|e| e.and_then(|e| HeaderValue::from_bytes(&e).ok())) {
        Some(Some(e)) => {
            let _ = resp.insert_header(ETAG, e);
        }
        Some(None) => {
            resp.remove_header(&ETAG);
        }
        None => {}
    }
    let _ = resp.insert_header(CONTENT_ENCODING, a.as_str());
    if h1 {
        let _ = resp.insert_header(TRANSFER_ENCODING, "chunked");
    } else {
        resp.remove_header(&TRANSFER_ENCODING);
    }
}

/// Applies `plan` to a canonical HTTP/1.1 `head` (see [`Facts::of_h1`]), written to `out`
/// in the same form; a compressed body is chunked.
pub(crate) fn apply_h1(plan: Plan, head: &[u8], out: &mut Vec<u8>) {
    let status_end = head
        .iter()
        .position(|&b| b == b'\n')
        .map_or(head.len(), |i| i + 1);
    out.extend_from_slice(&head[..status_end]);
    let vary = merged_vary(
        h1_lines(head)
            .filter(|(n, _)| n.eq_ignore_ascii_case(b"vary"))
            .map(|(_, v)| v),
    );
    let encode = matches!(plan, Plan::Encode(_));
    let mut etag = None;
    for (name, value) in h1_lines(head) {
        let is = |n: &[u8]| name.eq_ignore_ascii_case(n);
        let framing = is(b"content-length") || is(b"transfer-encoding") || is(b"accept-ranges");
        if vary.is_some() && is(b"vary") || encode && framing {
            continue;
        }
        if encode && is(b"etag") {
            etag = weak_etag(value);
            continue;
        }
        line(out, name, value);
    }
    if let Some(v) = &vary {
        line(out, b"vary", v);
    }
    if let Plan::Encode(a) = plan {
        if let Some(e) = &etag {
            line(out, b"etag", e);
        }
        line(out, b"content-encoding", a.as_str().as_bytes());
        line(out, b"transfer-encoding", b"chunked");
    }
}

fn line(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// A streaming compressor: each input chunk comes out flushed, decodable by the client so far.
pub(crate) enum Encoder {
    /// gzip.
    Gzip(flate2::write::GzEncoder<Vec<u8>>),
    /// Brotli (boxed: its state is several kilobytes).
    Brotli(Box<brotli::CompressorWriter<Vec<u8>>>),
    /// zstd.
    Zstd(zstd::stream::write::Encoder<'static, Vec<u8>>),
}

impl Encoder {
    /// A new stream for `a`.
    pub(crate) fn new(a: Algorithm) -> std::io::Result<Encoder> {
        Ok(match a {
            Algorithm::Gzip => Encoder::Gzip(flate2::write::GzEncoder::new(
                Vec::new(),
                flate2::Compression::new(GZIP_LEVEL),
            )),
            Algorithm::Brotli => Encoder::Brotli(Box::new(brotli::CompressorWriter::new(
                Vec::new(),
                BROTLI_BUFFER,
                BROTLI_QUALITY,
                BROTLI_WINDOW,
            ))),
            Algorithm::Zstd => {
                let mut z = zstd::stream::write::Encoder::new(Vec::new(), ZSTD_LEVEL)?;
                z.window_log(ZSTD_WINDOW)?;
                Encoder::Zstd(z)
            }
        })
    }

    /// Compresses `input` and flushes; appends what came out to `out`.
    pub(crate) fn chunk(&mut self, input: &[u8], out: &mut Vec<u8>) -> std::io::Result<()> {
        let inner = match self {
            Encoder::Gzip(e) => {
                e.write_all(input)?;
                e.flush()?;
                e.get_mut()
            }
            Encoder::Brotli(e) => {
                e.write_all(input)?;
                e.flush()?;
                e.get_mut()
            }
            Encoder::Zstd(e) => {
                e.write_all(input)?;
                e.flush()?;
                e.get_mut()
            }
        };
        // The codec's own buffer is reused: its size is bounded by one chunk's output.
        out.extend_from_slice(inner);
        inner.clear();
        Ok(())
    }

    /// Compresses the last piece, `input`, and ends the stream (no flush before: a body read
    /// whole is one block); appends what came out to `out`.
    pub(crate) fn finish(self, input: &[u8], out: &mut Vec<u8>) -> std::io::Result<()> {
        let tail = match self {
            Encoder::Gzip(mut e) => {
                e.write_all(input)?;
                e.finish()?
            }
            Encoder::Brotli(mut e) => {
                e.write_all(input)?;
                e.into_inner()
            }
            Encoder::Zstd(mut e) => {
                e.write_all(input)?;
                e.finish()?
            }
        };
        out.extend_from_slice(&tail);
        Ok(())
    }
}

#[cfg(test)]
mod tests;
