//! `[outlier]`: a member that fails requests in a row (5xx, no connection) is ejected — no new
//! request goes to it — for `eject_time`, then comes back; at most `max_ejected_percent` of a
//! slot is out at once; `health` shows the ejection, `/metrics` counts it; a flip's gate counts
//! an ejected member as unhealthy. The same on every path: the fast path and Pingora's full
//! proxy, each in the clear, over TLS and over HTTP/2. Without the table nothing is ejected.

use std::net::SocketAddr;
use std::time::Duration;

use bascule_admin::{HealthReply, ReloadReply};
use bascule_tests::clients::{Client, Listeners, CLIENTS};
use bascule_tests::http::get;
use bascule_tests::raw::{echo, response, Action, ScriptedUpstream};
use bascule_tests::tls::{TestCert, TlsConn};
use bascule_tests::{counter, free_addr, wait_until, Mode, Proxy, ProxyConfig, MODES};

/// Health checks pass; every other request is answered 500.
fn failing() -> ScriptedUpstream {
    ScriptedUpstream::start(|req| {
        if req.is_health_check() {
            echo(req)
        } else {
            vec![Action::Write(response(500, &[], b"broken"))]
        }
    })
}

fn traffic(up: &ScriptedUpstream) -> usize {
    up.requests()
        .iter()
        .filter(|r| !r.is_health_check())
        .count()
}

struct Edge {
    proxy: Proxy,
    to: Listeners,
    metrics: SocketAddr,
    _cert: tempfile::TempDir,
}

/// Blue is `blue`, green one healthy member; `tables` are appended.
fn edge(mode: Mode, blue: Vec<SocketAddr>, green: SocketAddr, tables: &str) -> Edge {
    let dir = tempfile::tempdir().unwrap();
    let cert = TestCert::make(dir.path(), &["localhost"]);
    let https = free_addr();
    let metrics = free_addr();
    let proxy = Proxy::start(&ProxyConfig {
        blue,
        green: vec![green],
        server: mode.server(),
        listen: format!("https = [\"{https}\"]"),
        extra: format!(
            "[tls]\n{}\n[metrics]\nlisten = \"{metrics}\"\n\n{tables}",
            cert.toml()
        ),
        ..Default::default()
    });
    TlsConn::wait_ready(https, "localhost");
    Edge {
        to: Listeners {
            plain: proxy.addr,
            https,
        },
        proxy,
        metrics,
        _cert: dir,
    }
}

impl Edge {
    /// How many members are ejected after `n` plain requests.
    fn ejected_after(&self, n: usize) -> usize {
        for _ in 0..n {
            Client::Plain.get(self.to, "/x", &[]);
        }
        let health: HealthReply = self.proxy.call("health").unwrap();
        health
            .upstreams
            .iter()
            .filter(|m| m.ejected_until.is_some())
            .count()
    }
}

const OUTLIER: &str = "[outlier]\nconsecutive_failures = 3\neject_time = \"1s\"\n";

#[test]
fn a_member_failing_in_a_row_is_ejected_then_comes_back_on_every_path() {
    for mode in MODES {
        for c in CLIENTS {
            let at = format!("{mode:?} {c:?}");
            let good = ScriptedUpstream::echo();
            let bad = failing();
            let green = ScriptedUpstream::echo();
            let e = edge(mode, vec![good.addr(), bad.addr()], green.addr(), OUTLIER);
            // Round-robin: the bad member answers every other request until its third 500.
            let mut fives = 0;
            for _ in 0..6 {
                if c.get(e.to, "/x", &[]).status == 500 {
                    fives += 1;
                }
            }
            assert_eq!(fives, 3, "{at}: the ejection came after 3 failures");
            let before = traffic(&bad);
            for i in 0..20 {
                let r = c.get(e.to, "/x", &[]);
                assert_eq!(r.status, 200, "{at}: request {i} after the ejection");
            }
            assert_eq!(
                traffic(&bad),
                before,
                "{at}: an ejected member got requests"
            );

            let health: HealthReply = e.proxy.call("health").unwrap();
            let bad_addr = bad.addr().to_string();
            let m = health
                .upstreams
                .iter()
                .find(|m| m.address == bad_addr)
                .unwrap();
            assert!(m.ejected_until.is_some(), "{at}: {m:?}");
            let text = get(e.metrics, "/metrics").unwrap().text();
            let ejections = counter(
                &text,
                "bascule_outlier_ejections_total",
                &[&format!("upstream=\"{bad_addr}\"")],
            );
            assert_eq!(ejections, 1, "{at}");
            let shown = e.proxy.ctl(&["health"]);
            assert!(
                String::from_utf8_lossy(&shown.stdout).contains("ejected until"),
                "{at}: {shown:?}"
            );

            // Back after eject_time: it is tried again.
            assert!(
                wait_until(Duration::from_secs(5), || {
                    c.get(e.to, "/x", &[]);
                    traffic(&bad) > before
                }),
                "{at}: the ejected member never came back"
            );
        }
    }
}

#[test]
fn no_more_than_max_ejected_percent_of_a_slot_is_out_and_reload_turns_it_on() {
    for mode in MODES {
        let good = ScriptedUpstream::echo();
        let (bad1, bad2) = (failing(), failing());
        let green = ScriptedUpstream::echo();
        let blue = vec![good.addr(), bad1.addr(), bad2.addr()];
        // Half of three members: one may be out.
        let e = edge(mode, blue.clone(), green.addr(), OUTLIER);
        assert_eq!(e.ejected_after(30), 1, "{mode:?}");
        drop(e);

        let e = edge(mode, blue, green.addr(), "");
        let before = (traffic(&bad1), traffic(&bad2));
        for _ in 0..30 {
            Client::Plain.get(e.to, "/x", &[]);
        }
        assert_eq!(
            traffic(&bad1),
            before.0 + 10,
            "{mode:?}: ejected without [outlier]"
        );
        assert_eq!(traffic(&bad2), before.1 + 10, "{mode:?}");

        // Turned on by a reload, for the next requests.
        let text = std::fs::read_to_string(&e.proxy.config).unwrap();
        std::fs::write(&e.proxy.config, format!("{text}\n{OUTLIER}")).unwrap();
        let reply: ReloadReply = e.proxy.call("reload").unwrap();
        assert!(reply.changed.contains(&"outlier".to_string()), "{reply:?}");
        assert_eq!(e.ejected_after(30), 1, "{mode:?} after the reload");
    }
}

#[test]
fn a_flip_to_a_slot_whose_members_are_all_ejected_is_refused() {
    let blue = ScriptedUpstream::echo();
    let (bad1, bad2) = (failing(), failing());
    let tables = format!("{OUTLIER}max_ejected_percent = 100\n\n[preview]\n");
    let mut e = edge(Mode::Fast, vec![blue.addr()], bad1.addr(), &tables);
    e.proxy.admin_ok(&format!(
        "set green upstreams {},{}",
        bad1.addr(),
        bad2.addr()
    ));
    // Previews of green judge its members like any request.
    for _ in 0..6 {
        let r = Client::Plain.get(e.to, "/x", &[("x-bascule-preview", "green")]);
        assert_eq!(r.status, 500);
    }
    let refused = e.proxy.admin_err("flip green");
    assert!(
        refused.contains("ejected for failing requests"),
        "{refused}"
    );
    // Blue, the active slot, served nothing of it.
    assert_eq!(traffic(&blue), 0);
    e.proxy.stop();
}
