//! `[request_id]`: every request gets one id — kept from a trusted peer when valid, made by the
//! proxy otherwise (32 lowercase hex characters) — sent upstream in exactly one header, in the
//! answer (the proxy's own 4xx and 5xx too; an upstream's value of that header is replaced) and
//! in the access log, the same on every path: the fast path and Pingora's full proxy, each in
//! the clear, over TLS and over HTTP/2. `reload` turns ids on and off.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use bascule_admin::ReloadReply;
use bascule_tests::clients::{Client, Listeners, CLIENTS};
use bascule_tests::http::Response;
use bascule_tests::raw::{echo, response, Action, Received, ScriptedUpstream};
use bascule_tests::tls::{TestCert, TlsConn};
use bascule_tests::{free_addr, is_made_id, wait_until, Mode, Proxy, ProxyConfig, MODES};

const WAIT: Duration = Duration::from_secs(10);

struct Edge {
    proxy: Proxy,
    https: SocketAddr,
    up: ScriptedUpstream,
    log: PathBuf,
    /// The config's tables, as `reload` tests replace them.
    tables: String,
    _dirs: (tempfile::TempDir, tempfile::TempDir),
}

/// The one `header` value of `r`.
fn id_of<'a>(r: &'a Response, header: &str) -> &'a str {
    let ids = r.header_all(header);
    assert_eq!(ids.len(), 1, "one {header} expected: {r:?}");
    ids[0]
}

/// `/own` answers with an id of its own, `/broken` closes without answering (a 502), the rest
/// is echoed.
fn script(req: &Received) -> Vec<Action> {
    match req.target.as_str() {
        "/own" => vec![Action::Write(response(
            200,
            &[("X-Request-ID", "from-the-app")],
            b"own",
        ))],
        "/broken" => vec![Action::Close],
        _ => echo(req),
    }
}

fn edge(mode: Mode, tables: &str) -> Edge {
    let up = ScriptedUpstream::start(script);
    let certs = tempfile::tempdir().unwrap();
    let cert = TestCert::make(certs.path(), &["localhost"]);
    let logs = tempfile::tempdir().unwrap();
    let log = logs.path().join("access.log");
    let https = free_addr();
    let proxy = Proxy::start(&ProxyConfig {
        blue: vec![up.addr()],
        green: vec![up.addr()],
        server: mode.server(),
        listen: format!("https = [\"{https}\"]"),
        extra: format!(
            "[tls]\n{}\n[access_log]\npath = \"{}\"\n\n\
             [[rate_limits]]\nprefix = \"/limited/\"\nper_ip = 1\nburst = 1\n\n{tables}",
            cert.toml(),
            log.display()
        ),
        ..Default::default()
    });
    TlsConn::wait_ready(https, "localhost");
    Edge {
        proxy,
        https,
        up,
        log,
        tables: tables.to_string(),
        _dirs: (certs, logs),
    }
}

impl Edge {
    fn to(&self) -> Listeners {
        Listeners {
            plain: self.proxy.addr,
            https: self.https,
        }
    }

    /// The traffic requests the upstream received after `mark`.
    fn upstream_since(&self, mark: usize) -> Vec<Received> {
        self.up
            .requests_since(mark)
            .into_iter()
            .filter(|r| !r.is_health_check())
            .collect()
    }

    /// Waits for an access log line holding `rid=ID`.
    fn logged(&self, id: &str) -> bool {
        let want = format!(" rid={id}");
        wait_until(WAIT, || {
            std::fs::read_to_string(&self.log).is_ok_and(|t| t.lines().any(|l| l.ends_with(&want)))
        })
    }

    /// Reloads with the config's tables replaced by `tables`.
    fn reload(&self, tables: &str) -> ReloadReply {
        let text = std::fs::read_to_string(&self.proxy.config).unwrap();
        let next = text.replace(&self.tables, tables);
        assert_ne!(text, next, "the tables are in the file");
        std::fs::write(&self.proxy.config, next).unwrap();
        self.proxy.call("reload").unwrap()
    }
}

#[test]
fn every_path_sends_answers_and_logs_one_id_per_request() {
    for mode in MODES {
        let e = edge(mode, "");
        let mut seen = Vec::new();
        for c in CLIENTS {
            let at = format!("{mode:?} {c:?}");
            // An untrusted client's id is replaced, not passed on beside ours.
            let mark = e.up.mark();
            let r = c.get(e.to(), "/a", &[("X-Request-ID", "forged")]);
            assert_eq!(r.status, 200, "{at}");
            let id = id_of(&r, "x-request-id").to_string();
            assert!(is_made_id(&id), "{at}: {id}");
            let got = e.upstream_since(mark);
            assert_eq!(got.len(), 1, "{at}");
            assert_eq!(got[0].header_all("x-request-id"), [id.as_str()], "{at}");
            assert!(e.logged(&id), "{at}: no log line with rid={id}");
            seen.push(id);

            // The upstream's own value of the header is replaced by the request's id.
            let r = c.get(e.to(), "/own", &[]);
            assert!(is_made_id(id_of(&r, "x-request-id")), "{at}: {r:?}");
            assert!(e.logged(id_of(&r, "x-request-id")), "{at}");

            // The proxy's own 502.
            let r = c.get(e.to(), "/broken", &[]);
            assert_eq!(r.status, 502, "{at}");
            assert!(is_made_id(id_of(&r, "x-request-id")), "{at}: {r:?}");
            assert!(e.logged(id_of(&r, "x-request-id")), "{at}");

            // A refusal by the rate limit (one per client address, counted on every path).
            let refused = (0..3)
                .map(|_| c.get(e.to(), "/limited/x", &[]))
                .find(|r| r.status == 429)
                .unwrap_or_else(|| panic!("{at}: never limited"));
            assert!(
                is_made_id(id_of(&refused, "x-request-id")),
                "{at}: {refused:?}"
            );
            assert!(e.logged(id_of(&refused, "x-request-id")), "{at}");

            // A head the policy refuses never reaches the upstream, and has an id too.
            if c != Client::H2 {
                let mark = e.up.mark();
                let bad = "GET / HTTP/1.1\r\nHost: a/b\r\n\r\n";
                let r = c.raw(e.to(), bad);
                assert_eq!(r.status, 400, "{at}");
                assert!(is_made_id(id_of(&r, "x-request-id")), "{at}: {r:?}");
                assert!(e.logged(id_of(&r, "x-request-id")), "{at}");
                assert!(e.upstream_since(mark).is_empty(), "{at}");
            }
        }
        seen.sort();
        seen.dedup();
        assert_eq!(seen.len(), CLIENTS.len(), "{mode:?}: ids repeat");
    }
}

#[test]
fn a_trusted_peer_keeps_a_valid_id_under_the_configured_header() {
    let tables =
        "[forwarding]\ntrusted = [\"127.0.0.1\"]\n\n[request_id]\nheader = \"X-Trace-Id\"\n";
    for mode in MODES {
        let e = edge(mode, tables);
        for c in CLIENTS {
            let at = format!("{mode:?} {c:?}");
            let mark = e.up.mark();
            let r = c.get(e.to(), "/a", &[("x-trace-id", "edge-7f3a.1")]);
            assert_eq!(r.header_all("x-trace-id"), ["edge-7f3a.1"], "{at}");
            let got = e.upstream_since(mark);
            assert_eq!(got[0].header_all("x-trace-id"), ["edge-7f3a.1"], "{at}");
            // The default header is nothing special once another is configured.
            assert!(got[0].header_all("x-request-id").is_empty(), "{at}");
            assert!(e.logged("edge-7f3a.1"), "{at}");

            // Too long, or not visible ASCII: replaced even from a trusted peer.
            let long = "x".repeat(201);
            for bad in [long.as_str(), "has space"] {
                let mark = e.up.mark();
                let r = c.get(e.to(), "/a", &[("x-trace-id", bad)]);
                assert!(
                    is_made_id(id_of(&r, "x-trace-id")),
                    "{at}: {bad:?} kept: {r:?}"
                );
                let got = e.upstream_since(mark);
                assert_eq!(
                    got[0].header_all("x-trace-id"),
                    r.header_all("x-trace-id"),
                    "{at}"
                );
            }
        }
    }
}

#[test]
fn reload_turns_ids_off_and_on() {
    let off = "[request_id]\nenabled = false\n";
    for mode in MODES {
        let e = edge(mode, off);
        for c in CLIENTS {
            let at = format!("{mode:?} {c:?}");
            let mark = e.up.mark();
            let r = c.get(e.to(), "/a", &[("x-request-id", "app-1")]);
            assert!(r.header_all("x-request-id").is_empty(), "{at}: {r:?}");
            // Off, the header is any other header: passed on as it came.
            let got = e.upstream_since(mark);
            assert_eq!(got[0].header_all("x-request-id"), ["app-1"], "{at}");
        }
        let reply = e.reload("[request_id]\nenabled = true\n");
        assert!(
            reply.changed.contains(&"request_id".to_string()),
            "{reply:?}"
        );
        assert!(reply.restart_needed.is_empty(), "{reply:?}");
        for c in CLIENTS {
            let at = format!("{mode:?} {c:?}");
            let mark = e.up.mark();
            let r = c.get(e.to(), "/a", &[]);
            assert!(is_made_id(id_of(&r, "x-request-id")), "{at}: {r:?}");
            let got = e.upstream_since(mark);
            assert_eq!(
                got[0].header_all("x-request-id"),
                r.header_all("x-request-id"),
                "{at}"
            );
        }
    }
}
