//! `[headers]` and a route's `headers`: set on every response (replacing an upstream's value,
//! never duplicating it), hidden from upstream responses, added to one route's responses; the
//! same on the fast path and on Pingora's full proxy, for proxied and static responses, the
//! proxy's own errors and refusals.

use std::time::Duration;

use bascule_tests::raw::{exchange, response, Action, RawResponse, ScriptedUpstream};
use bascule_tests::{Proxy, ProxyConfig, MODES};

const CONFIG: &str = r#"
[headers]
response = { "X-Content-Type-Options" = "nosniff" }
hide = ["Server", "X-Powered-By"]

[[routes]]
prefix = "/api/"
to = "upstream"
headers = { "X-Route" = "api", "Cache-Control" = "no-store" }

[[routes]]
prefix = "/private"
to = "static"
headers = { "X-Static" = "yes" }

[[routes]]
prefix = "/"
to = "upstream"
"#;

/// Every upstream response carries the headers the config sets, hides or leaves alone.
fn upstream() -> ScriptedUpstream {
    ScriptedUpstream::start(|req| {
        if req.target.ends_with("/broken") {
            return vec![Action::Close];
        }
        let headers = [
            ("Server", "upstream/1.0"),
            ("X-Powered-By", "php"),
            ("X-Content-Type-Options", "upstream-value"),
            ("X-Route", "upstream"),
            ("Cache-Control", "max-age=60"),
            ("X-Keep", "1"),
        ];
        vec![Action::Write(response(200, &headers, b"ok"))]
    })
}

fn one(addr: std::net::SocketAddr, raw: &str) -> RawResponse {
    let ex = exchange(addr, raw.as_bytes(), 1, Duration::from_secs(5));
    ex.responses.into_iter().next().expect("a response")
}

fn get(addr: std::net::SocketAddr, path: &str) -> RawResponse {
    one(
        addr,
        &format!("GET {path} HTTP/1.1\r\nHost: e\r\nConnection: close\r\n\r\n"),
    )
}

#[test]
fn headers_are_set_hidden_and_added_per_route_on_both_paths() {
    let root = tempfile::tempdir().unwrap();
    std::fs::write(root.path().join("private"), "static\n").unwrap();
    let up = upstream();
    let mut seen = Vec::new();
    for mode in MODES {
        let config = ProxyConfig::on_one_upstream(up.addr(), root.path(), mode, CONFIG.into());
        let proxy = Proxy::start(&config);
        let m = mode.name();
        let nosniff = |r: &RawResponse| {
            assert_eq!(
                r.header_all("x-content-type-options"),
                ["nosniff"],
                "{m}: {r:?}"
            );
        };

        // Proxied, outside any route with headers: set, hidden, the rest relayed.
        let r = get(proxy.addr, "/plain");
        assert_eq!(r.status, 200, "{m}");
        nosniff(&r);
        assert!(r.header("server").is_none(), "{m}: {r:?}");
        assert!(r.header("x-powered-by").is_none(), "{m}: {r:?}");
        assert_eq!(r.header_all("x-route"), ["upstream"], "{m}");
        assert_eq!(r.header_all("cache-control"), ["max-age=60"], "{m}");
        assert_eq!(r.header_all("x-keep"), ["1"], "{m}");
        assert_eq!(r.text(), "ok");

        // Proxied on a route with its own headers: they replace the upstream's.
        let r = get(proxy.addr, "/api/x");
        nosniff(&r);
        assert_eq!(r.header_all("x-route"), ["api"], "{m}");
        assert_eq!(r.header_all("cache-control"), ["no-store"], "{m}");
        assert!(r.header("server").is_none(), "{m}");

        // A request with a body (handed over to the full proxy on the fast path).
        let r = one(
            proxy.addr,
            "POST /api/p HTTP/1.1\r\nHost: e\r\nContent-Length: 1\r\nConnection: close\r\n\r\nx",
        );
        nosniff(&r);
        assert_eq!(r.header_all("x-route"), ["api"], "{m}");

        // Static.
        let r = get(proxy.addr, "/private");
        assert_eq!((r.status, r.text().as_str()), (200, "static\n"), "{m}");
        nosniff(&r);
        assert_eq!(r.header_all("x-static"), ["yes"], "{m}");
        let r = get(proxy.addr, "/private-none");
        assert_eq!(r.status, 404, "{m}");
        nosniff(&r);

        // The proxy's own error, on a route with headers.
        let r = get(proxy.addr, "/api/broken");
        assert_eq!(r.status, 502, "{m}");
        nosniff(&r);
        assert_eq!(r.header_all("x-route"), ["api"], "{m}");

        // A refusal.
        let r = one(
            proxy.addr,
            "GET /api/x HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        );
        assert_eq!(r.status, 400, "{m}");
        nosniff(&r);
        assert!(r.header("x-route").is_none(), "{m}: a refusal has no route");

        let mut names: Vec<String> = r.headers.iter().map(|(n, _)| n.to_lowercase()).collect();
        names.sort();
        seen.push(names);
    }
    assert_eq!(
        seen[0], seen[1],
        "a refusal's headers are the same on both paths"
    );
}
