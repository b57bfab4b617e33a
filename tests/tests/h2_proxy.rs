//! HTTP/2 streams that go upstream: proxied by the connection's own loop (requests without a
//! body) or by the full proxy (with one), they get what HTTP/1.1 over TLS gets for the same
//! request — the same upstream head, the same response (status, headers, body), the same
//! refusals of a bad upstream response, the same errors — and a pooled upstream connection is
//! reused only when provably idle.

use std::net::SocketAddr;
use std::time::Duration;

use bascule_tests::h2::exchange;
use bascule_tests::http::get;
use bascule_tests::http::Response;
use bascule_tests::raw::{echo, response, Action, RawClient, Received, ScriptedUpstream};
use bascule_tests::tls::https_for;
use bascule_tests::{comparable_value, counter, free_addr, wait_until, Mode, Proxy, ProxyConfig};

const READ: Duration = Duration::from_secs(10);

/// A body larger than a stream's initial window (64 KiB), so flow control has to move.
fn big(len: usize) -> Vec<u8> {
    (0..len).map(|i| b'a' + (i % 26) as u8).collect()
}

/// The upstream's answers, by target.
fn script(req: &Received) -> Vec<Action> {
    let w = |b: &[u8]| Action::Write(b.to_vec());
    match req.target.as_str() {
        "/plain" => vec![w(&response(
            200,
            &[
                ("X-A", "1"),
                ("Connection", "x-hop"),
                ("X-Hop", "secret"),
                ("Keep-Alive", "timeout=5"),
                ("X-Bascule-Slot", "green"),
                ("Set-Cookie", "a=1"),
                ("Set-Cookie", "b=2"),
            ],
            b"plain body",
        ))],
        "/chunked" => vec![w(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
        )],
        "/big" => vec![w(&response(200, &[], &big(200_000)))],
        "/big-chunked" => {
            let mut out = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
            for piece in big(100_000).chunks(9_999) {
                out.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
                out.extend_from_slice(piece);
                out.extend_from_slice(b"\r\n");
            }
            out.extend_from_slice(b"0\r\n\r\n");
            vec![w(&out)]
        }
        "/slow" => vec![
            w(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nfirst"),
            Action::Delay(Duration::from_millis(200)),
            w(b"-last"),
        ],
        "/204" => vec![w(b"HTTP/1.1 204 No Content\r\nX-A: 1\r\n\r\n")],
        "/304" => vec![w(b"HTTP/1.1 304 Not Modified\r\nETag: \"v1\"\r\n\r\n")],
        "/interim" => vec![
            w(b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n"),
            w(&response(200, &[], b"after hints")),
        ],
        "/close" => vec![
            w(b"HTTP/1.1 200 OK\r\nX-A: 1\r\n\r\nuntil the close"),
            Action::Close,
        ],
        "/two-lengths" => vec![w(
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
        )],
        "/gzip-te" => vec![w(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nhello",
        )],
        "/garbage" => vec![w(b"HTTP/1.1 2x0 OK\r\n\r\n"), Action::Close],
        "/switching" => vec![w(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
        )],
        "/cut" => vec![
            w(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly ten b"),
            Action::Close,
        ],
        _ => echo(req),
    }
}

struct Edge {
    proxy: Proxy,
    up: ScriptedUpstream,
    https: SocketAddr,
    metrics: SocketAddr,
    log: std::path::PathBuf,
    _dir: tempfile::TempDir,
    _certs: tempfile::TempDir,
}

fn edge(extra: &str) -> Edge {
    edge_with(extra, "")
}

/// [`edge`] with more `[server]` lines.
fn edge_with(extra: &str, server: &str) -> Edge {
    let up = ScriptedUpstream::start(script);
    let dir = tempfile::tempdir().unwrap();
    let metrics = free_addr();
    let log = dir.path().join("access.log");
    let extra = format!(
        "[metrics]\nlisten = \"{metrics}\"\n\n[access_log]\npath = \"{}\"\n\n\
         [headers]\nresponse = {{ \"x-edge\" = \"on\" }}\nhide = [\"x-a\"]\n\n{extra}",
        log.display()
    );
    let mut config = ProxyConfig::on_one_upstream(up.addr(), dir.path(), Mode::Tls, extra);
    config.server.push_str("slot_header = \"X-Bascule-Slot\"\n");
    config.server.push_str(server);
    let (https, certs) = https_for(Mode::Tls, &mut config).unwrap();
    let proxy = Proxy::start(&config);
    bascule_tests::tls::TlsConn::wait_ready(https, "localhost");
    Edge {
        proxy,
        up,
        https,
        metrics,
        log,
        _dir: dir,
        _certs: certs,
    }
}

/// The same request over HTTP/1.1 on TLS (the fast path, or the full proxy it hands to).
fn over_h1(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)]) -> Response {
    let mut raw = format!("{method} {path} HTTP/1.1\r\nhost: localhost\r\n");
    for (k, v) in headers {
        raw.push_str(&format!("{k}: {v}\r\n"));
    }
    raw.push_str("\r\n");
    let mut c = RawClient::connect_to(addr, true).unwrap();
    c.send(raw.as_bytes()).unwrap();
    let ex = c.read_for(1, &[method == "HEAD"], READ);
    match ex.responses.into_iter().next() {
        Some(r) => Response {
            status: r.status,
            headers: r.headers,
            body: r.body,
        },
        None => Response {
            status: 0,
            headers: Vec::new(),
            body: Vec::new(),
        },
    }
}

/// Headers both protocols must agree on: all but framing, connection and clock.
fn comparable(r: &Response) -> Vec<(String, String)> {
    r.comparable(&[
        "date",
        "connection",
        "keep-alive",
        "content-length",
        "transfer-encoding",
        "x-upstream-conn",
    ])
}

/// A head as the upstream got it, its lines sorted after the request line.
fn head_lines(r: &Received) -> Vec<String> {
    let text = String::from_utf8_lossy(&r.head).into_owned();
    // Names compare without case: Pingora writes a `Host` it sets as `Host`.
    let mut lines: Vec<String> = text
        .split("\r\n")
        .map(|l| match l.split_once(':') {
            Some((n, v)) => format!("{}:{}", n.to_ascii_lowercase(), comparable_value(n, v)),
            None => l.to_string(),
        })
        .collect();
    lines[1..].sort();
    lines
}

#[test]
fn proxied_h2_streams_get_what_http1_over_tls_gets() {
    same_as_http1(&edge(""));
}

/// `[server] fast_path = false`: every stream goes to Pingora's full proxy, with the same
/// outcome.
#[test]
fn with_the_fast_path_off_h2_streams_get_the_same_answers() {
    same_as_http1(&edge_with("", "fast_path = false\n"));
}

fn same_as_http1(e: &Edge) {
    let sent: &[(&str, &str)] = &[
        ("x-client", "1"),
        ("x-forwarded-for", "6.6.6.6"),
        ("accept", "text/plain"),
    ];
    let cases: Vec<bascule_tests::h2::Request<'_>> = vec![
        ("GET", "/plain", sent),
        ("HEAD", "/plain", &[]),
        ("GET", "/chunked", &[]),
        ("GET", "/big", &[]),
        ("GET", "/big-chunked", &[]),
        ("GET", "/slow", &[]),
        ("GET", "/204", &[]),
        ("GET", "/304", &[]),
        ("GET", "/interim", &[]),
        ("GET", "/close", &[]),
        ("GET", "/two-lengths", &[]),
        ("GET", "/gzip-te", &[]),
        ("GET", "/garbage", &[]),
        ("GET", "/switching", &[]),
        ("GET", "/echo/a/../b?q=1", &[]),
        ("DELETE", "/echo/d", &[]),
        ("OPTIONS", "/echo/o", &[]),
    ];
    for round in 0..2 {
        let mark = e.up.mark();
        let answers = exchange(e.https, "localhost", &cases).unwrap();
        let h2_heads = e.up.requests_since(mark);
        let mark = e.up.mark();
        let mut fails = Vec::new();
        for ((method, path, headers), got) in cases.iter().zip(answers) {
            let what = format!("round {round}: {method} {path}");
            let got = match got {
                Ok(r) => r,
                Err(why) => {
                    fails.push(format!("{what}: reset: {why}"));
                    continue;
                }
            };
            let want = over_h1(e.https, method, path, headers);
            if (got.status, &got.body) != (want.status, &want.body) {
                fails.push(format!(
                    "{what}: h2 {} {:?}, h1 {} {:?}",
                    got.status,
                    String::from_utf8_lossy(&got.body[..got.body.len().min(80)]),
                    want.status,
                    String::from_utf8_lossy(&want.body[..want.body.len().min(80)]),
                ));
            }
            if comparable(&got) != comparable(&want) {
                fails.push(format!(
                    "{what}: h2 headers {:?}, h1 {:?}",
                    comparable(&got),
                    comparable(&want)
                ));
            }
            // A length HTTP/2 states is the body's.
            if let Some(n) = got.header("content-length") {
                if *method != "HEAD" && n.parse::<usize>().ok() != Some(got.body.len()) {
                    fails.push(format!(
                        "{what}: content-length {n}, {} bytes",
                        got.body.len()
                    ));
                }
            }
        }
        // The upstream got the same heads, whichever protocol the client spoke.
        let h1_heads = e.up.requests_since(mark);
        let by_target = |rs: &[Received], t: &str| {
            rs.iter()
                .filter(|r| r.target == t && r.method == "GET")
                .map(head_lines)
                .next()
        };
        for target in ["/plain", "/echo/b?q=1", "/big"] {
            let (a, b) = (by_target(&h2_heads, target), by_target(&h1_heads, target));
            if a.is_none() || a != b {
                fails.push(format!(
                    "round {round}: upstream head of {target}: h2 {a:?}, h1 {b:?}"
                ));
            }
        }
        assert!(
            fails.is_empty(),
            "{} failure(s):\n  {}",
            fails.len(),
            fails.join("\n  ")
        );
    }
    // The hop-by-hop and hidden headers never reach the client; the slot header is the proxy's.
    let plain = exchange(e.https, "localhost", &[("GET", "/plain", &[])]).unwrap();
    let plain = plain.into_iter().next().unwrap().unwrap();
    assert_eq!(plain.header("x-bascule-slot"), Some("blue"), "{plain:?}");
    assert_eq!(plain.header("x-edge"), Some("on"), "{plain:?}");
    for gone in ["x-hop", "keep-alive", "connection", "x-a"] {
        assert!(plain.header(gone).is_none(), "{gone}: {plain:?}");
    }
    assert_eq!(plain.header_count("set-cookie"), 2, "{plain:?}");
}

#[test]
fn a_body_cut_short_resets_the_stream_and_the_others_go_on() {
    let e = edge("");
    let reqs = [
        ("GET", "/cut", &[][..]),
        ("GET", "/plain", &[][..]),
        ("GET", "/big", &[][..]),
    ];
    let answers = exchange(e.https, "localhost", &reqs).unwrap();
    assert!(
        answers[0].is_err(),
        "a cut body was ended as whole: {:?}",
        answers[0]
    );
    assert_eq!(answers[1].as_ref().unwrap().body, b"plain body");
    assert_eq!(answers[2].as_ref().unwrap().body, big(200_000));
}

#[test]
fn unreachable_upstream_is_the_same_error_on_both_protocols() {
    let dead = free_addr();
    let dir = tempfile::tempdir().unwrap();
    let mut config = ProxyConfig::on_one_upstream(dead, dir.path(), Mode::Tls, String::new());
    config.server.push_str("slot_header = \"X-Bascule-Slot\"\n");
    let (https, _certs) = https_for(Mode::Tls, &mut config).unwrap();
    let _proxy = Proxy::start(&config);
    bascule_tests::tls::TlsConn::wait_ready(https, "localhost");
    let got = exchange(https, "localhost", &[("GET", "/x", &[])]).unwrap();
    let got = got.into_iter().next().unwrap().unwrap();
    let want = over_h1(https, "GET", "/x", &[]);
    assert!(matches!(got.status, 502 | 503), "{got:?}");
    // Health checks may mark the member down between the two: compare like with like.
    if got.status == want.status {
        assert_eq!(got.body, want.body);
        assert_eq!(comparable(&got), comparable(&want));
    }
    assert_eq!(got.header("x-bascule-slot"), Some("blue"), "{got:?}");
}

#[test]
fn pooled_connections_are_reused_only_when_idle() {
    // The upstream answers /a, then 100 ms later writes a whole response nobody asked for.
    const UNSOLICITED: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\npoisoned";
    let up = ScriptedUpstream::start(|req| match req.target.as_str() {
        "/a" => vec![
            Action::Write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello".to_vec()),
            Action::Later(Duration::from_millis(100), UNSOLICITED.to_vec()),
        ],
        _ => echo(req),
    });
    let dir = tempfile::tempdir().unwrap();
    let mut config = ProxyConfig::on_one_upstream(up.addr(), dir.path(), Mode::Tls, String::new());
    let (https, _certs) = https_for(Mode::Tls, &mut config).unwrap();
    let _proxy = Proxy::start(&config);
    bascule_tests::tls::TlsConn::wait_ready(https, "localhost");
    for round in 0..3 {
        let a = exchange(https, "localhost", &[("GET", "/a", &[])]).unwrap();
        assert_eq!(a[0].as_ref().unwrap().body, b"hello", "round {round}");
        std::thread::sleep(Duration::from_millis(250));
        let path = format!("/b{round}");
        let b = exchange(https, "localhost", &[("GET", &path, &[])]).unwrap();
        let b = b.into_iter().next().unwrap().unwrap();
        assert_eq!(b.text(), format!("GET {path}"), "round {round}: {b:?}");
    }
    // Idle connections are reused: 40 requests in sequence open few upstream connections.
    let before = up.traffic_connections().len();
    for i in 0..40 {
        let path = format!("/seq{i}");
        let r = exchange(https, "localhost", &[("GET", &path, &[])]).unwrap();
        assert_eq!(r[0].as_ref().unwrap().status, 200);
    }
    let opened = up.traffic_connections().len() - before;
    assert!(
        opened <= 2,
        "{opened} upstream connections for 40 sequential requests"
    );
}

#[test]
fn proxied_h2_streams_are_counted_and_logged_with_their_upstream() {
    let e = edge("");
    let scrape = || get(e.metrics, "/metrics").unwrap().text();
    let served = |t: &str| counter(t, "bascule_requests_total", &["code=\"200\""]);
    let bad = |t: &str| counter(t, "bascule_requests_total", &["code=\"502\""]);
    let before = scrape();
    let reqs = [
        ("GET", "/plain", &[][..]),
        ("GET", "/echo/1", &[][..]),
        ("GET", "/two-lengths", &[][..]),
    ];
    for r in exchange(e.https, "localhost", &reqs).unwrap() {
        r.unwrap();
    }
    let after = scrape();
    assert_eq!(served(&after) - served(&before), 2, "{after}");
    assert_eq!(bad(&after) - bad(&before), 1, "{after}");
    let lines = || std::fs::read_to_string(&e.log).unwrap_or_default();
    assert!(
        wait_until(Duration::from_secs(5), || lines().lines().count() >= 3),
        "{}",
        lines()
    );
    let text = lines();
    let upstream = e.up.addr().to_string();
    let line = |path: &str| {
        text.lines()
            .find(|l| l.contains(&format!("GET {path} HTTP/2.0\"")))
            .unwrap_or_else(|| panic!("no line for {path}:\n{text}"))
            .to_string()
    };
    assert!(line("/plain").contains("\" 200 10 "), "{text}");
    assert!(line("/plain").contains(&upstream), "{text}");
    assert!(line("/two-lengths").contains("\" 502 "), "{text}");
    let _ = &e.proxy;
}
