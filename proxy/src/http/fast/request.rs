//! Request heads on the fast path: one parse that finds everything the fast path needs.

use pingora_http::RequestHeader;

/// What the fast path learned from a request head.
pub(super) struct Request {
    pub(super) head_len: usize,
    pub(super) head_method: bool,
    pub(super) path: (usize, usize),
    pub(super) close: bool,
    /// Headers static serving reads, as ranges of the buffer (name, value), found in the same
    /// pass that parses the head.
    pub(super) conditional: Vec<((usize, usize), (usize, usize))>,
}

/// Request headers static serving reads (validators, ranges, encodings).
const STATIC_HEADERS: [&str; 5] = [
    "if-none-match",
    "if-modified-since",
    "range",
    "accept-encoding",
    "if-range",
];

/// A parsed head: served on the fast path, or handed to the full proxy.
pub(super) enum Head {
    Fast(Request),
    Handover,
}

/// Where `part` (a slice of `buf`) lies in `buf`.
fn span(buf: &[u8], part: &[u8]) -> (usize, usize) {
    let start = part.as_ptr() as usize - buf.as_ptr() as usize;
    (start, start + part.len())
}

/// Parses the request head at the start of `buf`; `None` when more bytes are needed.
pub(super) fn parse_request(buf: &[u8]) -> Option<Head> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return None,
        Err(_) => return Some(Head::Handover),
    };
    let method = req.method.unwrap_or("");
    let head_method = method == "HEAD";
    if (method != "GET" && !head_method) || req.version != Some(1) {
        return Some(Head::Handover);
    }
    let mut close = false;
    let mut conditional = Vec::new();
    for h in req.headers.iter() {
        let name = h.name.as_bytes();
        match name.len() {
            7 if name.eq_ignore_ascii_case(b"upgrade") => return Some(Head::Handover),
            6 if name.eq_ignore_ascii_case(b"expect") => return Some(Head::Handover),
            14 if name.eq_ignore_ascii_case(b"content-length") && h.value.trim_ascii() != b"0" => {
                return Some(Head::Handover)
            }
            17 if name.eq_ignore_ascii_case(b"transfer-encoding") => return Some(Head::Handover),
            10 if name.eq_ignore_ascii_case(b"connection") => {
                let v = String::from_utf8_lossy(h.value).to_ascii_lowercase();
                if v.split(',').any(|t| t.trim() == "upgrade") {
                    return Some(Head::Handover);
                }
                close = v.split(',').any(|t| t.trim() == "close");
            }
            _ if STATIC_HEADERS
                .iter()
                .any(|w| name.eq_ignore_ascii_case(w.as_bytes())) =>
            {
                conditional.push((span(buf, name), span(buf, h.value)));
            }
            _ => {}
        }
    }
    let path = req.path.unwrap_or("/");
    let start = path.as_ptr() as usize - buf.as_ptr() as usize;
    Some(Head::Fast(Request {
        head_len,
        head_method,
        path: (start, start + path.len()),
        close,
        conditional,
    }))
}

/// A Pingora request header carrying what static serving reads: method, path and validators.
pub(super) fn static_request(buf: &[u8], req: &Request) -> Option<RequestHeader> {
    let method = if req.head_method { "HEAD" } else { "GET" };
    let mut h = RequestHeader::build(method, &buf[req.path.0..req.path.1], Some(6)).ok()?;
    for &((n0, n1), (v0, v1)) in &req.conditional {
        let name = String::from_utf8_lossy(&buf[n0..n1]).to_ascii_lowercase();
        let _ = h.append_header(name, &buf[v0..v1]);
    }
    Some(h)
}
