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
    for mode in PATHS {
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
    for mode in PATHS {
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
    for mode in PATHS {
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

/// Static targets the static handler refuses (400), each with a pipelined request after it.
const BAD_STATIC: [&[u8]; 8] = [
    b"/private/%00",
    b"/private/%2f",
    b"/private/\"x",
    b"/private/{x}",
    b"/private/|",
    b"/private/\\",
    b"/private/^`",
    b"/private/\xc3\xa9",
];

#[test]
fn a_400_that_says_close_is_followed_by_a_close() {
    let mut fails = Failures::default();
    let mut closing = 0;
    for mode in PATHS {
        let edge = Edge::start(mode, echo, "");
        for target in BAD_STATIC {
            let mark = edge.up.mark();
            let mut c = edge.client();
            let bytes = [
                b"GET ",
                target,
                b" HTTP/1.1\r\nHost: x\r\n\r\n",
                &get("/v/after"),
            ]
            .concat();
            let _ = c.send(&bytes);
            // Two at most: a close after the first ends the read at once.
            let ex = c.read(2, READ);
            let up = edge.up.requests_since(mark);
            let first = ex.responses.first();
            let says_close = first
                .and_then(|r| r.header("connection"))
                .is_some_and(|v| v.eq_ignore_ascii_case("close"));
            if first.is_none_or(|r| r.status != 400) {
                // Served (404) or refused otherwise: not what this test is about.
                continue;
            }
            closing += usize::from(says_close);
            fails.check(mode, !says_close || (ex.responses.len() == 1 && ex.end == End::Closed && up.is_empty()), || {
                format!(
                    "GET {}: `400` with `connection: close`, yet the pipelined request was served: {} (upstream got {:?})",
                    show(target),
                    outcome(&ex),
                    up.iter().map(|r| &r.target).collect::<Vec<_>>()
                )
            });
        }
    }
    assert!(
        closing > 0,
        "no target drew a `400` with `connection: close`: the test checked nothing"
    );
    fails.assert_none();
}
