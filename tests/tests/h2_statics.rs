//! HTTP/2 streams on a static route: those answered from memory in the connection's own loop
//! get what the HTTP/1.1 fast path gives the same request (status, headers, body), are counted
//! and logged as requests, share one rate-limit count with the other paths, and many of them
//! at once on one connection each get their own bytes, whatever their size.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use bascule_tests::h2::exchange;
use bascule_tests::http::{get, Conn, Response};
use bascule_tests::tls::{TestCert, TlsConn};
use bascule_tests::{counter, free_addr, wait_until, Proxy, ProxyConfig, Upstream};

/// Hashed assets on both sides of the sizes the HTTP/2 writer treats apart (1 KiB frames,
/// 8 KiB bodies), and one large enough to be kept in a sealed file (64 KiB and more), which
/// plain HTTP/1.1 sends with `sendfile`; each with its own bytes.
const SIZES: [(&str, usize); 6] = [
    ("tiny-0a1b2c3d.js", 10),
    ("one-0a1b2c3d.js", 1024),
    ("five-0a1b2c3d.js", 5 * 1024 + 7),
    ("eight-0a1b2c3d.js", 8 * 1024),
    ("big-0a1b2c3d.js", 40 * 1024 + 3),
    ("sealed-0a1b2c3d.js", 100 * 1024 + 5),
];

fn bytes(seed: usize, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| b'a' + ((i * 7 + seed) % 26) as u8)
        .collect()
}

fn gzip(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

struct Edge {
    proxy: Proxy,
    https: SocketAddr,
    metrics: SocketAddr,
    log: PathBuf,
    root: PathBuf,
    _dir: tempfile::TempDir,
    _up: Upstream,
}

fn edge(extra: &str) -> Edge {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("site");
    std::fs::create_dir_all(root.join("assets")).unwrap();
    for (i, (name, len)) in SIZES.iter().enumerate() {
        std::fs::write(root.join("assets").join(name), bytes(i, *len)).unwrap();
    }
    let one = bytes(1, 1024);
    std::fs::write(root.join("assets/one-0a1b2c3d.js.gz"), gzip(&one)).unwrap();
    std::fs::write(root.join("assets/plain.css"), b"body{}").unwrap();
    let cert = TestCert::make(dir.path(), &["a.test"]);
    let up = Upstream::start("127.0.0.1:0", "blue", "1.0.0").unwrap();
    let (https, metrics) = (free_addr(), free_addr());
    let log = dir.path().join("access.log");
    let proxy = Proxy::start(&ProxyConfig {
        blue: vec![up.addr()],
        green: vec![up.addr()],
        blue_root: Some(root.clone()),
        green_root: Some(root.clone()),
        listen: format!("https = [\"{https}\"]"),
        extra: format!(
            "[metrics]\nlisten = \"{metrics}\"\n\n[access_log]\npath = \"{}\"\n\n\
             [[routes]]\nprefix = \"/assets/\"\nto = \"static\"\n\n{extra}\n[tls]\n{}",
            log.display(),
            cert.toml()
        ),
        ..ProxyConfig::default()
    });
    TlsConn::wait_ready(https, "a.test");
    Edge {
        proxy,
        https,
        metrics,
        log,
        root,
        _dir: dir,
        _up: up,
    }
}

/// A request's extra headers.
type Headers<'a> = Vec<(&'a str, &'a str)>;

/// The headers both paths must agree on: all but those of the connection and the clock.
fn comparable(r: &Response) -> Vec<(String, String)> {
    r.comparable(&["date", "connection", "keep-alive"])
}

#[test]
fn static_answers_over_h2_match_the_fast_path() {
    let e = edge("");
    let etag = get(e.proxy.addr, "/assets/one-0a1b2c3d.js")
        .unwrap()
        .header("etag")
        .unwrap()
        .to_string();
    let cases: Vec<(&str, &str, Headers<'_>)> = vec![
        ("GET", "/assets/one-0a1b2c3d.js", vec![]),
        ("HEAD", "/assets/one-0a1b2c3d.js", vec![]),
        (
            "GET",
            "/assets/one-0a1b2c3d.js",
            vec![("if-none-match", &etag)],
        ),
        (
            "GET",
            "/assets/one-0a1b2c3d.js",
            vec![("range", "bytes=10-19")],
        ),
        (
            "GET",
            "/assets/one-0a1b2c3d.js",
            vec![("accept-encoding", "gzip")],
        ),
        ("GET", "/assets/big-0a1b2c3d.js", vec![]),
        ("GET", "/assets/sealed-0a1b2c3d.js", vec![]),
        ("HEAD", "/assets/sealed-0a1b2c3d.js", vec![]),
        (
            "GET",
            "/assets/sealed-0a1b2c3d.js",
            vec![("range", "bytes=70000-70099")],
        ),
        ("GET", "/assets/plain.css", vec![]),
        ("GET", "/assets/gone-0a1b2c3d.js", vec![]),
        ("GET", "/assets/../assets/five-0a1b2c3d.js", vec![]),
        ("DELETE", "/assets/one-0a1b2c3d.js", vec![]),
    ];
    // Twice: the first answers read the disk (and fill the cache), the second come from memory.
    for round in 0..2 {
        let reqs: Vec<_> = cases.iter().map(|(m, p, h)| (*m, *p, &h[..])).collect();
        let h2 = exchange(e.https, "a.test", &reqs).unwrap();
        let mut conn = Conn::connect(e.proxy.addr).unwrap();
        for ((method, path, headers), got) in cases.iter().zip(h2) {
            let got = got.unwrap_or_else(|why| panic!("{method} {path}: reset: {why}"));
            let want = conn.request(method, path, headers).unwrap();
            let what = format!("round {round}: {method} {path} {headers:?}");
            assert_eq!(got.status, want.status, "{what}");
            assert_eq!(got.body, want.body, "{what}");
            assert_eq!(comparable(&got), comparable(&want), "{what}");
        }
    }
}

#[test]
fn many_streams_at_once_each_get_their_own_bytes() {
    let e = edge("");
    let paths: Vec<String> = (0..60)
        .map(|i| format!("/assets/{}", SIZES[i % SIZES.len()].0))
        .collect();
    let reqs: Vec<_> = paths.iter().map(|p| ("GET", p.as_str(), &[][..])).collect();
    for _ in 0..3 {
        let answers = exchange(e.https, "a.test", &reqs).unwrap();
        for (i, got) in answers.into_iter().enumerate() {
            let got = got.unwrap();
            let want = std::fs::read(e.root.join(&paths[i][1..])).unwrap();
            assert_eq!(got.status, 200, "{}", paths[i]);
            assert!(got.body == want, "{}: other bytes", paths[i]);
        }
    }
}

#[test]
fn h2_static_answers_are_counted_logged_and_rate_limited_with_the_others() {
    let e = edge("[[rate_limits]]\nprefix = \"/assets/\"\nper_ip = 1\nburst = 6\n");
    let scrape = || get(e.metrics, "/metrics").unwrap().text();
    let served = |t: &str| counter(t, "bascule_requests_total", &["code=\"200\""]);
    let limited = |t: &str| counter(t, "bascule_rate_limited_total", &["/assets/"]);
    let before = scrape();
    // Filled into the cache by HTTP/1.1 (2 requests), then 4 from memory over HTTP/2: the
    // burst of 6 is spent across both paths, so the seventh, over HTTP/2, is refused.
    for _ in 0..2 {
        assert_eq!(
            get(e.proxy.addr, "/assets/one-0a1b2c3d.js").unwrap().status,
            200
        );
    }
    let four = [("GET", "/assets/one-0a1b2c3d.js", &[][..]); 4];
    for r in exchange(e.https, "a.test", &four).unwrap() {
        assert_eq!(r.unwrap().status, 200);
    }
    let refused = exchange(e.https, "a.test", &four[..1]).unwrap();
    let refused = refused.into_iter().next().unwrap().unwrap();
    assert_eq!(refused.status, 429, "{refused:?}");
    assert!(refused.header("retry-after").is_some(), "{refused:?}");
    let after = scrape();
    assert_eq!(served(&after) - served(&before), 6, "{after}");
    assert_eq!(limited(&after) - limited(&before), 1, "{after}");
    // One access-log line per request, HTTP/2 ones named so.
    let lines = || std::fs::read_to_string(&e.log).unwrap_or_default();
    assert!(
        wait_until(Duration::from_secs(5), || lines().lines().count() >= 7),
        "{}",
        lines()
    );
    let text = lines();
    let h2: Vec<_> = text.lines().filter(|l| l.contains(" HTTP/2.0\"")).collect();
    assert_eq!(h2.len(), 5, "{text}");
    assert_eq!(
        h2.iter().filter(|l| l.contains("\" 200 1024 ")).count(),
        4,
        "{text}"
    );
    assert_eq!(
        h2.iter().filter(|l| l.contains("\" 429 ")).count(),
        1,
        "{text}"
    );
}
