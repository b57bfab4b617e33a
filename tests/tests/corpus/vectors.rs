//! The corpus: raw request and response vectors, each with what the contract says of it and
//! any check of what the client or the upstream got.

use super::*;

/// What the contract says about a vector.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Expect {
    /// Served by the upstream: 2xx, and the upstream received it.
    Upstream,
    /// Served by the proxy itself (the static file): 200, the upstream not contacted.
    Static,
    /// Rejected with this status without contacting the upstream.
    Status(u16),
    /// Rejected with one of these statuses (or a close without a response), without
    /// contacting the upstream.
    RejectAny(&'static [u16]),
    /// Answered with this status, the upstream contacted (response-side vectors: the
    /// upstream's answer is what is under test).
    Answer(u16),
    /// Answered somehow, the upstream contacted; the client check decides.
    Response,
    /// These statuses in order (pipelining).
    Statuses(&'static [u16]),
    /// The contract says nothing exact: only the cross-path rules apply.
    Any,
}

/// A check of what the client or the upstream got, on Bascule's paths.
pub(crate) type ClientCheck = fn(&Exchange) -> Result<(), String>;
pub(crate) type UpstreamCheck = fn(&[Received]) -> Result<(), String>;

pub(crate) struct Vector {
    pub(crate) name: &'static str,
    pub(crate) bytes: Vec<u8>,
    /// Responses to read (pipelined vectors expect more than one).
    pub(crate) responses: usize,
    /// Whether the first request is a HEAD.
    pub(crate) head: bool,
    pub(crate) expect: Expect,
    pub(crate) client: Option<ClientCheck>,
    pub(crate) upstream: Option<UpstreamCheck>,
    /// Why nginx's behaviour is not the reference for this vector.
    pub(crate) unlike_nginx: Option<&'static str>,
    /// The error is in the body: a streaming proxy may have sent the head on before it saw
    /// it, so the request counts as kept from the upstream when no complete request got there.
    pub(crate) body_error: bool,
}

pub(crate) fn v(name: &'static str, bytes: impl Into<Vec<u8>>, expect: Expect) -> Vector {
    Vector {
        name,
        bytes: bytes.into(),
        responses: match expect {
            Expect::Statuses(s) => s.len(),
            _ => 1,
        },
        head: false,
        expect,
        client: None,
        upstream: None,
        unlike_nginx: None,
        body_error: false,
    }
}

impl Vector {
    /// Whether the request is what is under test (not the upstream's answer).
    pub(crate) fn request_side(&self) -> bool {
        !matches!(self.expect, Expect::Answer(_) | Expect::Response)
    }

    /// The contract departs from nginx here on purpose: nginx's own rejection does not bind.
    pub(crate) fn unlike_nginx(mut self, why: &'static str) -> Self {
        self.unlike_nginx = Some(why);
        self
    }

    pub(crate) fn client(mut self, c: ClientCheck) -> Self {
        self.client = Some(c);
        self
    }

    pub(crate) fn upstream(mut self, c: UpstreamCheck) -> Self {
        self.upstream = Some(c);
        self
    }

    pub(crate) fn body_error(mut self) -> Self {
        self.body_error = true;
        self
    }

    pub(crate) fn head(mut self) -> Self {
        self.head = true;
        self
    }
}

/// Upstream answers by path for the response-side vectors; anything else is [`echo`].
pub(crate) fn corpus_script(req: &Received) -> Vec<Action> {
    let raw: &[u8] = match req.target.as_str() {
        "/r/bare-lf" => b"HTTP/1.1 200 OK\nContent-Length: 5\n\nhello",
        "/r/cl-te" => b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        "/r/cl-plus" => b"HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\nhello",
        "/r/cl-nbsp" => b"HTTP/1.1 200 OK\r\nContent-Length: 5\xa0\r\n\r\nhello",
        "/r/cl-hex" => b"HTTP/1.1 200 OK\r\nContent-Length: 0x5\r\n\r\nhello",
        "/r/hop" => b"HTTP/1.1 200 OK\r\nConnection: X-Secret\r\nX-Secret: s3cr3t\r\nKeep-Alive: timeout=5\r\nProxy-Connection: keep-alive\r\nContent-Length: 5\r\n\r\nhello",
        "/r/chunk-ext-lf" => b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;a=b\nhello\r\n0\r\nX-Trailer: 1\n\r\n",
        "/r/204-te" => b"HTTP/1.1 204 No Content\r\nTransfer-Encoding: chunked\r\nX-A: 1\r\n\r\n",
        "/r/304-te" => b"HTTP/1.1 304 Not Modified\r\nTransfer-Encoding: chunked\r\nETag: \"x\"\r\n\r\n",
        "/r/100-headers" => return vec![Action::Write(hundred_headers())],
        _ => return echo(req),
    };
    vec![Action::Write(raw.to_vec())]
}

fn no_transfer_coding(ex: &Exchange) -> Result<(), String> {
    let r = first(ex)?;
    match r.header("transfer-encoding") {
        Some(_) => Err(format!(
            "transfer-encoding on a {}: {}",
            r.status,
            show(&r.head)
        )),
        None => Ok(()),
    }
}

pub(crate) fn hundred_headers() -> Vec<u8> {
    let owned: Vec<(String, String)> = (0..100)
        .map(|i| (format!("X-H-{i}"), format!("v{i}")))
        .collect();
    let refs: Vec<(&str, &str)> = owned
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    response(200, &refs, b"hello")
}

pub(crate) fn first(ex: &Exchange) -> Result<&RawResponse, String> {
    ex.responses
        .first()
        .ok_or_else(|| format!("no response ({:?})", ex.end))
}

pub(crate) fn no_hop_by_hop_in_upstream(reqs: &[Received]) -> Result<(), String> {
    for r in reqs {
        for h in ["x-foo", "keep-alive", "te", "proxy-connection", "upgrade"] {
            if !r.header_all(h).is_empty() {
                return Err(format!("upstream got `{h}`: {}", r.show()));
            }
        }
        for c in r.header_all("connection") {
            if c.to_ascii_lowercase().contains("x-foo") {
                return Err(format!("upstream got `Connection: {c}`"));
            }
        }
    }
    Ok(())
}

pub(crate) fn upstream_heads_crlf(reqs: &[Received]) -> Result<(), String> {
    match reqs.iter().find(|r| r.has_bare_lf()) {
        Some(r) => Err(format!("bare LF relayed: {}", r.show())),
        None => Ok(()),
    }
}

pub(crate) fn upstream_target(reqs: &[Received], want: &str) -> Result<(), String> {
    match reqs.first() {
        Some(r) if r.target == want => Ok(()),
        Some(r) => Err(format!("upstream target {:?}, want {want:?}", r.target)),
        None => Err("never reached the upstream".into()),
    }
}

pub(crate) fn vectors() -> Vec<Vector> {
    use Expect::*;
    let big_head = {
        let mut s = String::from("GET /v/big-head HTTP/1.1\r\nHost: x\r\n");
        for i in 0..200 {
            let _ = write!(s, "X-Pad-{i:03}: {}\r\n", "a".repeat(90));
        }
        s.push_str("\r\n");
        s
    };
    vec![
        // Plain requests every path serves.
        v("get", get("/v/get"), Upstream),
        v("head", b"HEAD /v/head HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(), Upstream).head(),
        v("post-cl", b"POST /v/post HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello".to_vec(), Upstream),
        v("post-chunked", b"POST /v/chunked HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n".to_vec(), Upstream),
        v("get-with-body", b"GET /v/get-body HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello".to_vec(), Upstream),
        v("http10-no-host", b"GET /v/old HTTP/1.0\r\n\r\n".to_vec(), Upstream),
        v("query", get("/v/q?a=1&b=%20"), Upstream),
        v("expect-continue", b"POST /v/expect HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\nhello".to_vec(), Upstream),
        // Targets and routing.
        v("absolute-form", b"GET http://x/v/abs HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(), Upstream)
            .upstream(|r| upstream_target(r, "/v/abs")),
        v("absolute-form-static", b"GET http://x/private HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(), Static),
        v("dot-segments-static", get("/api/../private"), Static),
        v("dot-segments-upstream", get("/v/a/../b"), Upstream)
            .upstream(|r| upstream_target(r, "/v/b")),
        v("asterisk-get", b"GET * HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(), Status(400)),
        v("options-asterisk", b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(), Upstream)
            .unlike_nginx("the contract allows `OPTIONS *` (RFC 9112 §3.2.4); nginx answers 400"),
        v("nul-in-static-path", get("/private/%00"), RejectAny(&[400, 404])),
        // Host.
        v("host-missing", b"GET /v/nohost HTTP/1.1\r\n\r\n".to_vec(), Status(400)),
        v("host-empty", b"GET /v/host HTTP/1.1\r\nHost: \r\n\r\n".to_vec(), Status(400)),
        v("host-duplicate", b"GET /v/host HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n".to_vec(), Status(400)),
        v("host-duplicate-same", b"GET /v/host HTTP/1.1\r\nHost: x\r\nHost: x\r\n\r\n".to_vec(), Status(400)),
        v("host-space", b"GET /v/host HTTP/1.1\r\nHost: a b\r\n\r\n".to_vec(), Status(400)),
        v("host-slash", b"GET /v/host HTTP/1.1\r\nHost: a/b\r\n\r\n".to_vec(), Status(400)),
        v("host-bracket", b"GET /v/host HTTP/1.1\r\nHost: [::1\r\n\r\n".to_vec(), Status(400)),
        // Framing of request bodies.
        v("cl-and-te", b"POST /v/smuggle HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".to_vec(), Status(400)),
        v("cl-duplicate", b"POST /v/dup HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello".to_vec(), Status(400)),
        v("cl-conflicting", b"POST /v/dup HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!".to_vec(), Status(400)),
        v("cl-list", b"POST /v/list HTTP/1.1\r\nHost: x\r\nContent-Length: 5, 5\r\n\r\nhello".to_vec(), Any),
        v("cl-plus", b"POST /v/cl HTTP/1.1\r\nHost: x\r\nContent-Length: +5\r\n\r\nhello".to_vec(), Status(400)),
        v("cl-minus", b"POST /v/cl HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\nhello".to_vec(), Status(400)),
        v("cl-nbsp", b"POST /v/cl HTTP/1.1\r\nHost: x\r\nContent-Length: 5\xa0\r\n\r\nhello".to_vec(), Status(400)),
        v("cl-hex", b"POST /v/cl HTTP/1.1\r\nHost: x\r\nContent-Length: 0x5\r\n\r\nhello".to_vec(), Status(400)),
        v("cl-empty", b"POST /v/cl HTTP/1.1\r\nHost: x\r\nContent-Length: \r\n\r\nhello".to_vec(), Status(400)),
        v("te-gzip", b"POST /v/te HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\nhello".to_vec(), RejectAny(&[400, 501])),
        v("te-gzip-chunked", b"POST /v/te HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n".to_vec(), RejectAny(&[400, 501])),
        v("te-chunked-twice", b"POST /v/te HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n".to_vec(), Any),
        v("te-xchunked", b"POST /v/te HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: xchunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n".to_vec(), RejectAny(&[400, 501])),
        v("chunk-size-bad", b"POST /v/chunk HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n".to_vec(), Any).body_error(),
        v("chunk-size-overflow", b"POST /v/chunk HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n10000000000000001\r\nhello\r\n0\r\n\r\n".to_vec(), Any).body_error(),
        v("body-too-large", b"POST /v/huge HTTP/1.1\r\nHost: x\r\nContent-Length: 20000000\r\n\r\nhello".to_vec(), Status(413)),
        // Header syntax.
        v("obs-fold", b"GET /v/fold HTTP/1.1\r\nHost: x\r\nX-A: a\r\n b\r\n\r\n".to_vec(), Status(400)),
        v("space-before-colon", b"GET /v/colon HTTP/1.1\r\nHost: x\r\nX-A : b\r\n\r\n".to_vec(), Status(400)),
        v("nul-in-header", b"GET /v/nul HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\n\r\n".to_vec(), Any),
        v("space-in-name", b"GET /v/name HTTP/1.1\r\nHost: x\r\nX A: b\r\n\r\n".to_vec(), Any),
        v("lowercase-method", b"get /v/lower HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(), Any),
        v("http-2-0-line", b"GET /v/two HTTP/2.0\r\nHost: x\r\n\r\n".to_vec(), Any),
        v("leading-crlf", b"\r\nGET /v/lead HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(), Any),
        v("head-too-large", big_head.into_bytes(), Status(431)),
        v("bare-lf-request", b"GET /v/lf HTTP/1.1\nHost: x\nX-A: b\n\n".to_vec(), Any)
            .upstream(upstream_heads_crlf),
        v("hop-by-hop-request", b"GET /v/hop HTTP/1.1\r\nHost: x\r\nConnection: X-Foo\r\nX-Foo: secret\r\nKeep-Alive: 300\r\nTE: trailers\r\nProxy-Connection: keep-alive\r\n\r\n".to_vec(), Upstream)
            .upstream(no_hop_by_hop_in_upstream),
        v("upgrade-not-upgrading", b"GET /v/up HTTP/1.1\r\nHost: x\r\nUpgrade: h2c\r\n\r\n".to_vec(), Upstream)
            .upstream(no_hop_by_hop_in_upstream),
        v("hop-by-hop-request-post", b"POST /v/hop HTTP/1.1\r\nHost: x\r\nConnection: X-Foo\r\nX-Foo: secret\r\nKeep-Alive: 300\r\nTE: trailers\r\nProxy-Connection: keep-alive\r\nContent-Length: 5\r\n\r\nhello".to_vec(), Upstream)
            .upstream(no_hop_by_hop_in_upstream),
        // Pipelining.
        v("pipeline-post-get", b"POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhelloGET /api/ok HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(), Statuses(&[200, 200]))
            .client(|ex| {
                let bodies: Vec<String> = ex.responses.iter().map(RawResponse::text).collect();
                if bodies == ["POST /p", "GET /api/ok"] { Ok(()) } else { Err(format!("bodies {bodies:?}")) }
            }),
        v("pipeline-three-gets", [get("/v/1"), get("/v/2"), get("/v/3")].concat(), Statuses(&[200, 200, 200]))
            .client(|ex| {
                let bodies: Vec<String> = ex.responses.iter().map(RawResponse::text).collect();
                if bodies == ["GET /v/1", "GET /v/2", "GET /v/3"] { Ok(()) } else { Err(format!("bodies {bodies:?}")) }
            }),
        v("bad-static-then-get", [get("/private/^`"), get("/v/after-400")].concat(), Statuses(&[400]))
            .client(|ex| {
                let says_close = ex.responses.first().and_then(|r| r.header("connection")).is_some_and(|c| c.eq_ignore_ascii_case("close"));
                if says_close && ex.end != End::Closed { Err(format!("`connection: close` but the connection stayed open ({:?})", ex.end)) } else { Ok(()) }
            }),
        // Upstream responses.
        v("resp-bare-lf", get("/r/bare-lf"), Answer(200)).client(|ex| {
            let r = first(ex)?;
            if has_bare_lf(&r.head) { return Err(format!("bare LF head relayed: {}", show(&r.head))); }
            if r.body != b"hello" { return Err(format!("body {:?}", r.text())); }
            Ok(())
        }),
        v("resp-cl-and-te", get("/r/cl-te"), Answer(200)).client(|ex| {
            let r = first(ex)?;
            if r.header("content-length").is_some() { return Err(format!("content-length kept: {}", show(&r.head))); }
            if r.body != b"hello" { return Err(format!("body {:?}", r.text())); }
            Ok(())
        }),
        // RFC 9112 §6.1: no transfer coding on a response that has no body.
        v("resp-204-te", get("/r/204-te"), Answer(204)).client(no_transfer_coding),
        v("resp-304-te", get("/r/304-te"), Answer(304)).client(no_transfer_coding),
        v("resp-cl-plus", get("/r/cl-plus"), Answer(502)),
        v("resp-cl-nbsp", get("/r/cl-nbsp"), Answer(502)),
        v("resp-cl-hex", get("/r/cl-hex"), Answer(502)),
        v("resp-100-headers", get("/r/100-headers"), Answer(200)).client(|ex| {
            let r = first(ex)?;
            let n = (0..100).filter(|i| r.header(&format!("x-h-{i}")) == Some(format!("v{i}").as_str())).count();
            if n == 100 { Ok(()) } else { Err(format!("{n} of 100 headers reached the client")) }
        }),
        v("resp-hop-by-hop", get("/r/hop"), Answer(200)).client(|ex| {
            let r = first(ex)?;
            for h in ["x-secret", "keep-alive", "proxy-connection"] {
                if r.header(h).is_some() { return Err(format!("`{h}` reached the client: {}", show(&r.head))); }
            }
            if r.header_all("connection").iter().any(|c| c.to_ascii_lowercase().contains("x-secret")) {
                return Err("`Connection: X-Secret` reached the client".into());
            }
            Ok(())
        }),
        v("resp-chunk-ext-lf", get("/r/chunk-ext-lf"), Response).client(|ex| {
            match ex.responses.first() {
                Some(r) if r.status == 200 && has_bare_lf(&r.body_wire) => Err(format!("bare LF relayed in chunked body: {}", show(&r.body_wire))),
                Some(r) if r.status == 200 && r.body != b"hello" => Err(format!("body {:?}", r.text())),
                _ => Ok(()),
            }
        }),
    ]
}
