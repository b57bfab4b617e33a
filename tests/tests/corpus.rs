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
#[path = "corpus/vectors.rs"]
mod vectors;

use vectors::*;

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
