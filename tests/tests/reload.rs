//! Live configuration: every table `reload` applies takes effect on the next request on every
//! path — the fast path, Pingora's full proxy (`fast_path = false`), HTTP/1.1 over TLS and
//! HTTP/2 (the connection's loop, and the full proxy behind it) — keep-alive connections opened
//! before the reload included; what needs a restart is named as such and left alone.

use std::net::SocketAddr;
use std::time::Duration;

use bascule_admin::ReloadReply;
use bascule_tests::clients::{Client, Listeners, CLIENTS};
use bascule_tests::http::{get_with, Conn, Response};
use bascule_tests::tls::{TestCert, TlsConn};
use bascule_tests::{free_addr, wait_until, Mode, Proxy, ProxyConfig, Upstream, MODES};

struct Edge {
    proxy: Proxy,
    https: SocketAddr,
    base: String,
    _blue: Upstream,
    _green: Upstream,
    _cert: tempfile::TempDir,
}

fn edge(mode: Mode) -> Edge {
    let blue = Upstream::start("127.0.0.1:0", "blue", "1.0.0").unwrap();
    let green = Upstream::start("127.0.0.1:0", "green", "1.1.0").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cert = TestCert::make(dir.path(), &["localhost"]);
    let https = free_addr();
    let base = format!(
        "[headers]\nresponse = {{ \"X-Frame-Options\" = \"DENY\" }}\n\n[tls]\n{}",
        cert.toml()
    );
    let proxy = Proxy::start(&ProxyConfig {
        blue: vec![blue.addr()],
        green: vec![green.addr()],
        server: mode.server(),
        listen: format!("https = [\"{https}\"]"),
        extra: base.clone(),
        ..Default::default()
    });
    TlsConn::wait_ready(https, "localhost");
    Edge {
        proxy,
        https,
        base,
        _blue: blue,
        _green: green,
        _cert: dir,
    }
}

impl Edge {
    /// The config file with `base` (the first config's extra tables) replaced by `tables`.
    fn reload(&self, tables: &str) -> ReloadReply {
        let text = std::fs::read_to_string(&self.proxy.config).unwrap();
        assert!(text.contains(&self.base));
        let next = text.replace(&self.base, tables);
        std::fs::write(&self.proxy.config, next).unwrap();
        let reply = self.proxy.call("reload").unwrap();
        std::fs::write(&self.proxy.config, text).unwrap();
        reply
    }

    /// The tables of the first config with `more` after them (the certificate kept).
    fn with(&self, more: &str) -> String {
        format!("{}\n{more}", self.base)
    }

    fn ask(&self, client: Client, path: &str, headers: &[(&str, &str)]) -> Response {
        let to = Listeners {
            plain: self.proxy.addr,
            https: self.https,
        };
        client.get(to, path, headers)
    }
}

#[test]
fn every_table_applies_to_the_next_request_on_every_path() {
    let log_dir = tempfile::tempdir().unwrap();
    for mode in MODES {
        let e = edge(mode);
        let mut kept = Conn::connect(e.proxy.addr).unwrap();
        for c in CLIENTS {
            let r = e.ask(c, "/", &[]);
            assert_eq!(r.header("x-frame-options"), Some("DENY"), "{mode:?} {c:?}");
        }
        assert_eq!(
            kept.get("/", &[]).unwrap().header("x-frame-options"),
            Some("DENY")
        );

        // [headers]
        let base = e.base.replace("DENY", "SAMEORIGIN");
        let reply = e.reload(&base);
        assert!(reply.changed.contains(&"headers".to_string()), "{reply:?}");
        assert!(reply.restart_needed.is_empty(), "{reply:?}");
        for c in CLIENTS {
            let r = e.ask(c, "/", &[]);
            assert_eq!(
                r.header("x-frame-options"),
                Some("SAMEORIGIN"),
                "{mode:?} {c:?}: [headers] not applied"
            );
        }
        let r = kept.get("/", &[]).unwrap();
        assert_eq!(
            r.header("x-frame-options"),
            Some("SAMEORIGIN"),
            "{mode:?} kept"
        );

        // [[rate_limits]], [preview], [limits] and [access_log] at once.
        let log = log_dir.path().join(format!("{}.log", mode.name()));
        let tables = e.with(&format!(
            "[[rate_limits]]\nprefix = \"/limited/\"\nper_ip = 1\nburst = 20\n\n\
             [preview]\nheader = \"x-bascule-preview\"\n\n\
             [limits]\nmax_header_bytes = 2048\n\n\
             [access_log]\npath = \"{}\"\nformat = \"json\"\n",
            log.display()
        ));
        let reply = e.reload(&tables);
        for table in ["rate_limits", "preview", "limits", "access_log"] {
            assert!(
                reply.changed.contains(&table.to_string()),
                "{table}: {reply:?}"
            );
        }
        for c in CLIENTS {
            let statuses: Vec<u16> = (0..21)
                .map(|_| e.ask(c, "/limited/x", &[]).status)
                .collect();
            // Twenty per client address and prefix, counted on every path together.
            assert!(statuses.contains(&429), "{mode:?} {c:?}: {statuses:?}");
            let r = e.ask(c, "/", &[("x-bascule-preview", "green")]);
            assert_eq!(
                r.slot(),
                Some("green"),
                "{mode:?} {c:?}: [preview] not applied"
            );
            let big = "x".repeat(3000);
            let r = e.ask(c, "/", &[("x-big", &big)]);
            assert!(
                matches!(r.status, 431 | 400),
                "{mode:?} {c:?}: [limits] not applied ({})",
                r.status
            );
        }
        let r = kept.get("/", &[("x-bascule-preview", "green")]).unwrap();
        assert_eq!(r.slot(), Some("green"), "{mode:?} kept connection");
        assert!(
            wait_until(Duration::from_secs(10), || std::fs::read_to_string(&log)
                .is_ok_and(|t| t.lines().count() >= 10)),
            "{mode:?}: [access_log] not applied"
        );

        // A reload that leaves the rate limit as it is keeps its counts: still limited.
        let reply = e.reload(&tables.replace("max_header_bytes = 2048", "max_header_bytes = 4096"));
        assert!(reply.changed.contains(&"limits".to_string()), "{reply:?}");
        assert!(
            !reply.changed.contains(&"rate_limits".to_string()),
            "{reply:?}"
        );
        assert_eq!(
            e.ask(Client::Plain, "/limited/x", &[]).status,
            429,
            "{mode:?}"
        );

        // What needs a restart is named, and not applied.
        let text = std::fs::read_to_string(&e.proxy.config).unwrap();
        let moved = free_addr();
        std::fs::write(
            &e.proxy.config,
            text.replace(&e.proxy.addr.to_string(), &moved.to_string()),
        )
        .unwrap();
        let reply: ReloadReply = e.proxy.call("reload").unwrap();
        std::fs::write(&e.proxy.config, text).unwrap();
        assert_eq!(
            reply.restart_needed,
            vec!["listen.http".to_string()],
            "{reply:?}"
        );
        assert_eq!(get_with(e.proxy.addr, "/", &[]).unwrap().status, 200);
        let human = e.proxy.ctl(&["reload"]);
        assert!(human.status.success());
    }
}

#[test]
fn a_reload_that_cannot_open_its_access_log_changes_nothing() {
    let e = edge(Mode::Fast);
    let tables = e
        .with("[access_log]\npath = \"/nonexistent-dir/x/access.log\"\n")
        .replace("DENY", "SAMEORIGIN");
    let text = std::fs::read_to_string(&e.proxy.config).unwrap();
    std::fs::write(&e.proxy.config, text.replace(&e.base, &tables)).unwrap();
    let err = e.proxy.admin_err("reload");
    assert!(err.contains("access_log"), "{err}");
    for c in CLIENTS {
        assert_eq!(
            e.ask(c, "/", &[]).header("x-frame-options"),
            Some("DENY"),
            "{c:?}: a failed reload changed the headers"
        );
    }
}
