//! Routing by the normalised path: absolute-form targets, dot segments and `*` cannot reach
//! what the routes keep apart (here: `/private` is static, never the upstream).

use super::*;

/// Sends `bytes` in `mode` and returns what the client got and what reached the upstream.
fn through(edge: &Edge, bytes: &[u8]) -> (Exchange, Vec<Received>) {
    let mark = edge.up.mark();
    let ex = edge.exchange(bytes, 1);
    (ex, edge.up.requests_since(mark))
}

fn is_private(ex: &Exchange) -> bool {
    ex.responses
        .first()
        .is_some_and(|r| r.status == 200 && r.text() == PRIVATE)
}

#[test]
fn absolute_form_target_routes_by_its_path() {
    let mut fails = Failures::default();
    for mode in MODES {
        let edge = Edge::start(mode, echo, "");
        let (ex, up) = through(&edge, b"GET http://x/private HTTP/1.1\r\nHost: x\r\n\r\n");
        fails.check(mode, is_private(&ex) && up.is_empty(), || {
            format!(
                "GET http://x/private: {} (upstream got {} request(s))",
                outcome(&ex),
                up.len()
            )
        });
    }
    fails.assert_none();
}

#[test]
fn asterisk_is_only_for_options() {
    let mut fails = Failures::default();
    for mode in MODES {
        let edge = Edge::start(mode, echo, "");
        let (ex, up) = through(&edge, b"GET * HTTP/1.1\r\nHost: x\r\n\r\n");
        fails.check(
            mode,
            ex.statuses().first() == Some(&400) && up.is_empty(),
            || {
                format!(
                    "GET *: {} (upstream got {} request(s))",
                    outcome(&ex),
                    up.len()
                )
            },
        );
        let (ex, _) = through(&edge, b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n");
        fails.check(
            mode,
            ex.statuses().first().is_some_and(|s| *s < 400),
            || format!("OPTIONS * refused: {}", outcome(&ex)),
        );
    }
    fails.assert_none();
}

#[test]
fn dot_segments_are_resolved_before_routing() {
    let mut fails = Failures::default();
    for mode in MODES {
        let edge = Edge::start(mode, echo, "");
        for target in ["/api/../private", "/./private", "/api/x/../../private"] {
            let (ex, up) = through(&edge, &get(target));
            // Resolved, it is the static file; refused (400) is allowed too. Never upstream.
            let ok = (is_private(&ex) || ex.statuses().first() == Some(&400)) && up.is_empty();
            fails.check(mode, ok, || {
                format!(
                    "GET {target}: {} (upstream got {:?})",
                    outcome(&ex),
                    up.iter().map(|r| &r.target).collect::<Vec<_>>()
                )
            });
        }
        let (ex, up) = through(&edge, &get("/v/a/../b"));
        let target = up.first().map(|r| r.target.clone());
        let ok = ex.statuses().first() == Some(&400) && up.is_empty()
            || target.as_deref() == Some("/v/b");
        fails.check(mode, ok, || {
            format!(
                "GET /v/a/../b: upstream got target {target:?}, want \"/v/b\" ({})",
                outcome(&ex)
            )
        });
    }
    fails.assert_none();
}

#[test]
fn a_400_that_says_close_is_followed_by_a_close() {
    let mut fails = Failures::default();
    for mode in MODES {
        let edge = Edge::start(mode, echo, "");
        let mark = edge.up.mark();
        let mut c = RawClient::connect(edge.addr()).expect("connect");
        let _ = c.send(&[get("/private/%00"), get("/v/after")].concat());
        let ex = c.read_to_end(READ);
        let up = edge.up.requests_since(mark);
        let first = ex.responses.first();
        fails.check(mode, first.is_some_and(|r| r.status == 400), || {
            format!("GET /private/%00: {}", outcome(&ex))
        });
        let says_close = first
            .and_then(|r| r.header("connection"))
            .is_some_and(|v| v.eq_ignore_ascii_case("close"));
        fails.check(mode, !says_close || (ex.responses.len() == 1 && ex.end == End::Closed && up.is_empty()), || {
            format!(
                "after `400` with `connection: close` the pipelined request was served: {} (upstream got {:?})",
                outcome(&ex),
                up.iter().map(|r| &r.target).collect::<Vec<_>>()
            )
        });
    }
    fails.assert_none();
}
