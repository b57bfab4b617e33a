//! HTTP conformance at the edge, differentially: the same raw bytes through Bascule's fast path,
//! Bascule's full proxy (`[server] fast_path = false`) and, when installed, nginx as the
//! reference. Both Bascule paths must give the same outcome; a rejected request must never
//! reach the upstream; whatever nginx rejects by itself, Bascule must reject too.
//!
//! The submodules under `corpus/` hold one test per contract point ("HTTP semantics at the
//! edge" in the spec), each run on both paths.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::Duration;

use bascule_tests::raw::{
    echo, has_bare_lf, response, show, Action, End, Exchange, Nginx, RawClient, RawResponse,
    Received, ScriptedUpstream,
};
use bascule_tests::tls::{https_for, TlsConn};
use bascule_tests::{Mode, Proxy, ProxyConfig, PATHS};

#[path = "corpus/failover.rs"]
mod failover;
#[path = "corpus/framing.rs"]
mod framing;
#[path = "corpus/headers.rs"]
mod headers;
#[path = "corpus/pipelining.rs"]
mod pipelining;
#[path = "corpus/pool.rs"]
mod pool;
#[path = "corpus/routing.rs"]
mod routing;

// ---------------------------------------------------------------------------------------------
// Shared setup
// ---------------------------------------------------------------------------------------------

/// The body of the static file that answers `/private`.
const PRIVATE: &str = "PRIVATE STATIC FILE\n";
/// Longest wait for one exchange.
const READ: Duration = Duration::from_secs(3);

/// Routes every edge in this file uses: `/private` static, the rest upstream.
const ROUTES: &str = "[[routes]]\nprefix = \"/private\"\nto = \"static\"\n\n\
                      [[routes]]\nprefix = \"/\"\nto = \"upstream\"\n";

/// A static root holding the file `private`.
fn static_root() -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("bascule-corpus-static-")
        .tempdir()
        .expect("temp dir");
    std::fs::write(dir.path().join("private"), PRIVATE).expect("write static file");
    dir
}

/// Bascule in `mode` over one scripted upstream (both slots), with [`ROUTES`] and `extra`
/// TOML (tables such as `[limits]`).
struct Edge {
    proxy: Proxy,
    up: ScriptedUpstream,
    /// The https listener, in [`Mode::Tls`]: where clients connect.
    https: Option<SocketAddr>,
    _root: tempfile::TempDir,
    _certs: Option<tempfile::TempDir>,
}

impl Edge {
    fn start(
        mode: Mode,
        script: impl Fn(&Received) -> Vec<Action> + Send + Sync + 'static,
        extra: &str,
    ) -> Edge {
        Edge::start_with(mode, ScriptedUpstream::start(script), extra)
    }

    fn start_with(mode: Mode, up: ScriptedUpstream, extra: &str) -> Edge {
        Edge::start_threads(mode, up, extra, None)
    }

    /// [`Edge::start_with`] with `[server] threads` set.
    fn start_threads(
        mode: Mode,
        up: ScriptedUpstream,
        extra: &str,
        threads: Option<usize>,
    ) -> Edge {
        let root = static_root();
        let extra = format!("{extra}\n{ROUTES}");
        let mut config = ProxyConfig::on_one_upstream(up.addr(), root.path(), mode, extra);
        config.threads = threads;
        let (https, certs) = https_for(mode, &mut config).unzip();
        let proxy = Proxy::start(&config);
        if let Some(addr) = https {
            TlsConn::wait_ready(addr, "localhost");
        }
        Edge {
            proxy,
            up,
            https,
            _root: root,
            _certs: certs,
        }
    }

    /// Where clients connect: the https listener in [`Mode::Tls`], else the plain one.
    fn addr(&self) -> SocketAddr {
        self.https.unwrap_or(self.proxy.addr)
    }

    /// A new client connection, over TLS in [`Mode::Tls`].
    fn client(&self) -> RawClient {
        RawClient::connect_to(self.addr(), self.https.is_some()).expect("connect to bascule")
    }

    /// Writes `bytes` on a new connection and reads up to `n` responses.
    fn exchange(&self, bytes: &[u8], n: usize) -> Exchange {
        let mut c = self.client();
        let _ = c.send(bytes);
        c.read(n, READ)
    }
}

/// Failures of one test across modes, reported together so one run shows every path.
#[derive(Default)]
struct Failures(Vec<String>);

impl Failures {
    fn check(&mut self, mode: Mode, ok: bool, what: impl FnOnce() -> String) {
        if !ok {
            self.0.push(format!("[{}] {}", mode.name(), what()));
        }
    }

    fn assert_none(self) {
        assert!(
            self.0.is_empty(),
            "{} failure(s):\n  {}",
            self.0.len(),
            self.0.join("\n  ")
        );
    }
}

/// One line describing what a client got, for failure messages.
fn outcome(ex: &Exchange) -> String {
    let mut s = String::new();
    for r in &ex.responses {
        let _ = write!(s, "{} {:?}; ", r.status, clip(&r.text(), 60));
    }
    let _ = write!(s, "end {:?}", ex.end);
    if !ex.leftover.is_empty() {
        let _ = write!(s, ", leftover {}", clip(&show(&ex.leftover), 80));
    }
    s
}

fn clip(s: &str, n: usize) -> String {
    if s.len() <= n {
        s.to_string()
    } else {
        let mut end = n;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}…", &s[..end])
    }
}

/// `GET path` with `Host: x`.
fn get(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").into_bytes()
}

// ---------------------------------------------------------------------------------------------
// The corpus
// ---------------------------------------------------------------------------------------------

/// What the contract says about a vector.
#[derive(Debug, Clone, Copy)]
enum Expect {
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
type ClientCheck = fn(&Exchange) -> Result<(), String>;
type UpstreamCheck = fn(&[Received]) -> Result<(), String>;

struct Vector {
    name: &'static str,
    bytes: Vec<u8>,
    /// Responses to read (pipelined vectors expect more than one).
    responses: usize,
    /// Whether the first request is a HEAD.
    head: bool,
    expect: Expect,
    client: Option<ClientCheck>,
    upstream: Option<UpstreamCheck>,
    /// Why nginx's behaviour is not the reference for this vector.
    unlike_nginx: Option<&'static str>,
    /// The error is in the body: a streaming proxy may have sent the head on before it saw
    /// it, so the request counts as kept from the upstream when no complete request got there.
    body_error: bool,
}

fn v(name: &'static str, bytes: impl Into<Vec<u8>>, expect: Expect) -> Vector {
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
    fn request_side(&self) -> bool {
        !matches!(self.expect, Expect::Answer(_) | Expect::Response)
    }

    /// The contract departs from nginx here on purpose: nginx's own rejection does not bind.
    fn unlike_nginx(mut self, why: &'static str) -> Self {
        self.unlike_nginx = Some(why);
        self
    }

    fn client(mut self, c: ClientCheck) -> Self {
        self.client = Some(c);
        self
    }

    fn upstream(mut self, c: UpstreamCheck) -> Self {
        self.upstream = Some(c);
        self
    }

    fn body_error(mut self) -> Self {
        self.body_error = true;
        self
    }

    fn head(mut self) -> Self {
        self.head = true;
        self
    }
}

/// Upstream answers by path for the response-side vectors; anything else is [`echo`].
fn corpus_script(req: &Received) -> Vec<Action> {
    let raw: &[u8] = match req.target.as_str() {
        "/r/bare-lf" => b"HTTP/1.1 200 OK\nContent-Length: 5\n\nhello",
        "/r/cl-te" => b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        "/r/cl-plus" => b"HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\nhello",
        "/r/cl-nbsp" => b"HTTP/1.1 200 OK\r\nContent-Length: 5\xa0\r\n\r\nhello",
        "/r/cl-hex" => b"HTTP/1.1 200 OK\r\nContent-Length: 0x5\r\n\r\nhello",
        "/r/hop" => b"HTTP/1.1 200 OK\r\nConnection: X-Secret\r\nX-Secret: s3cr3t\r\nKeep-Alive: timeout=5\r\nProxy-Connection: keep-alive\r\nContent-Length: 5\r\n\r\nhello",
        "/r/chunk-ext-lf" => b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;a=b\nhello\r\n0\r\nX-Trailer: 1\n\r\n",
        "/r/100-headers" => return vec![Action::Write(hundred_headers())],
        _ => return echo(req),
    };
    vec![Action::Write(raw.to_vec())]
}

fn hundred_headers() -> Vec<u8> {
    let owned: Vec<(String, String)> = (0..100)
        .map(|i| (format!("X-H-{i}"), format!("v{i}")))
        .collect();
    let refs: Vec<(&str, &str)> = owned
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    response(200, &refs, b"hello")
}

fn first(ex: &Exchange) -> Result<&RawResponse, String> {
    ex.responses
        .first()
        .ok_or_else(|| format!("no response ({:?})", ex.end))
}

fn no_hop_by_hop_in_upstream(reqs: &[Received]) -> Result<(), String> {
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

fn upstream_heads_crlf(reqs: &[Received]) -> Result<(), String> {
    match reqs.iter().find(|r| r.has_bare_lf()) {
        Some(r) => Err(format!("bare LF relayed: {}", r.show())),
        None => Ok(()),
    }
}

fn upstream_target(reqs: &[Received], want: &str) -> Result<(), String> {
    match reqs.first() {
        Some(r) if r.target == want => Ok(()),
        Some(r) => Err(format!("upstream target {:?}, want {want:?}", r.target)),
        None => Err("never reached the upstream".into()),
    }
}

fn vectors() -> Vec<Vector> {
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

/// What one path made of one vector.
struct Run {
    ex: Exchange,
    /// Requests the upstream received for it.
    reached: Vec<Received>,
}

impl Run {
    /// The outcome class: the statuses, or how the connection ended without any.
    fn class(&self) -> String {
        if self.ex.responses.is_empty() {
            return match &self.ex.end {
                End::Closed => "closed".into(),
                End::Timeout => "timeout".into(),
                End::Garbage(_) => "garbage".into(),
                End::Open => "none".into(),
            };
        }
        let s: Vec<String> = self.ex.statuses().iter().map(u16::to_string).collect();
        s.join(",")
    }

    /// The class compared across paths. An upstream response found broken is a 502 when the
    /// broken bytes arrive before the head has gone out, and a cut connection when they arrive
    /// later (always so on a path that streams the head first): both are the same verdict.
    fn verdict(&self, vec: &Vector) -> String {
        let class = self.class();
        if !vec.request_side() && (class == "502" || class == "closed") {
            return "upstream failure (502 or cut)".into();
        }
        class
    }

    /// Answered by an error status (or not at all).
    fn rejected(&self) -> bool {
        self.ex.responses.first().is_none_or(|r| r.status >= 400)
    }

    /// Rejected without the upstream ever seeing the request.
    fn rejected_itself(&self) -> bool {
        self.rejected() && self.reached.is_empty()
    }

    fn cell(&self) -> String {
        format!(
            "{}{}",
            self.class(),
            if self.reached.is_empty() { "" } else { "↑" }
        )
    }
}

fn run(addr: SocketAddr, tls: bool, up: &ScriptedUpstream, vec: &Vector) -> Run {
    let mark = up.mark();
    let mut c = RawClient::connect_to(addr, tls).expect("connect");
    let _ = c.send(&vec.bytes);
    let heads = vec![vec.head; vec.responses];
    let mut ex = c.read_for(vec.responses, &heads, READ);
    if ex.end == End::Open {
        // Anything more (a second response where one was expected) shows up quickly.
        let more = c.read_for(usize::MAX, &[], Duration::from_millis(100));
        ex.responses.extend(more.responses);
        ex.leftover = more.leftover;
        if more.end != End::Timeout {
            ex.end = more.end;
        }
    }
    let mut reached = up.requests_since(mark);
    if vec.body_error {
        // A head whose body never completed did not get a request through.
        reached.retain(|r| r.complete);
    }
    Run { ex, reached }
}

/// Checks the contract's expectation for one Bascule run.
fn expect(vec: &Vector, r: &Run) -> Result<(), String> {
    let first = r.ex.responses.first().map(|r| r.status);
    let reached = !r.reached.is_empty();
    match vec.expect {
        Expect::Upstream => {
            if !matches!(first, Some(200..=299)) || !reached {
                return Err(format!("want a 2xx from the upstream, got {}", r.cell()));
            }
        }
        Expect::Static => {
            if first != Some(200) || reached {
                return Err(format!("want 200 static, got {}", r.cell()));
            }
            if r.ex.responses[0].text() != PRIVATE {
                return Err(format!(
                    "not the static file: {:?}",
                    r.ex.responses[0].text()
                ));
            }
        }
        Expect::Status(s) => {
            if first != Some(s) || reached {
                return Err(format!("want {s} without the upstream, got {}", r.cell()));
            }
        }
        Expect::RejectAny(codes) => {
            if first.is_some_and(|f| !codes.contains(&f)) || reached {
                return Err(format!(
                    "want one of {codes:?} (or a close) without the upstream, got {}",
                    r.cell()
                ));
            }
        }
        Expect::Answer(s) => {
            if first != Some(s) {
                return Err(format!("want {s}, got {}", r.cell()));
            }
        }
        Expect::Response => {}
        Expect::Statuses(s) => {
            if r.ex.statuses() != s {
                return Err(format!("want {s:?}, got {}", r.cell()));
            }
        }
        Expect::Any => {}
    }
    if r.rejected() && reached && vec.request_side() {
        return Err(format!(
            "rejected yet the upstream got {}",
            r.reached[0].show()
        ));
    }
    if let Some(check) = vec.client {
        check(&r.ex)?;
    }
    if let Some(check) = vec.upstream {
        if reached {
            check(&r.reached)?;
        }
    }
    Ok(())
}

#[test]
fn corpus_agrees_across_paths_and_with_nginx() {
    let fast = Edge::start(Mode::Fast, corpus_script, "");
    let full = Edge::start(Mode::Full, corpus_script, "");
    let tls = Edge::start(Mode::Tls, corpus_script, "");
    let nginx_up = ScriptedUpstream::start(corpus_script);
    let nginx_root = static_root();
    let nginx = Nginx::start(nginx_up.addr(), nginx_root.path());

    let mut table = format!(
        "{:<26} {:<12} {:<12} {:<12} {:<12} notes\n",
        "vector", "fast", "full", "tls", "nginx"
    );
    let mut failures = Vec::new();
    for vec in vectors() {
        let f = run(fast.addr(), false, &fast.up, &vec);
        let u = run(full.addr(), false, &full.up, &vec);
        let t = run(tls.addr(), true, &tls.up, &vec);
        let n = nginx.as_ref().map(|n| run(n.addr, false, &nginx_up, &vec));
        let mut notes = Vec::new();
        for (mode, r) in [(Mode::Full, &u), (Mode::Tls, &t)] {
            if f.verdict(&vec) != r.verdict(&vec) {
                failures.push(format!(
                    "{}: fast {} ≠ {} {}\n      fast: {}\n      {}: {}",
                    vec.name,
                    f.cell(),
                    mode.name(),
                    r.cell(),
                    outcome(&f.ex),
                    mode.name(),
                    outcome(&r.ex)
                ));
            }
        }
        for (mode, r) in [(Mode::Fast, &f), (Mode::Full, &u), (Mode::Tls, &t)] {
            if r.rejected() && !r.reached.is_empty() && vec.request_side() {
                failures.push(format!(
                    "{} [{}]: rejected ({}) but reached the upstream: {}",
                    vec.name,
                    mode.name(),
                    r.class(),
                    r.reached[0].show()
                ));
            }
            if let Err(e) = expect(&vec, r) {
                failures.push(format!("{} [{}]: {e}", vec.name, mode.name()));
            }
            if let Some(n) = &n {
                if n.rejected_itself() && !r.rejected_itself() && vec.unlike_nginx.is_none() {
                    failures.push(format!(
                        "{} [{}]: nginx rejects it itself ({}) but bascule gives {}",
                        vec.name,
                        mode.name(),
                        n.class(),
                        r.cell()
                    ));
                }
            }
        }
        if let Some(n) = &n {
            // Informational: how the reference fares against the contract's own checks.
            if let Err(e) = expect(&vec, n) {
                notes.push(format!("nginx vs contract: {e}"));
            }
            if let Some(why) = vec.unlike_nginx {
                notes.push(why.to_string());
            }
            if let Some(r) = n.reached.first() {
                if vec.upstream.is_some() || r.target != first_target(&vec.bytes) {
                    notes.push(format!("nginx sent {:?}", r.target));
                }
            }
        }
        let _ = writeln!(
            table,
            "{:<26} {:<12} {:<12} {:<12} {:<12} {}",
            vec.name,
            f.cell(),
            u.cell(),
            t.cell(),
            n.as_ref().map_or("-".into(), Run::cell),
            notes.join("; ")
        );
    }
    println!("outcomes (status list, `closed`/`timeout` without a response; ↑ = reached the upstream):\n{table}");
    assert!(
        failures.is_empty(),
        "{} corpus failure(s) (outcome table in the test's output):\n  {}",
        failures.len(),
        failures.join("\n  ")
    );
}

/// The target of the first request line in `bytes`.
fn first_target(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes)
        .split_whitespace()
        .nth(1)
        .unwrap_or("")
        .to_string()
}
