//! `[compression]`: proxied responses compressed by `Accept-Encoding`, content type and size,
//! streamed, with `Vary: Accept-Encoding`, never twice; the same on the fast path and on
//! Pingora's full proxy (and over TLS with HTTP/2).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use bascule_tests::http::{Conn, Response};
use bascule_tests::raw::{response, Action, ScriptedUpstream};
use bascule_tests::{wait_until, Mode, Proxy, ProxyConfig, MODES};

/// A JSON body well above `min_bytes`, compressible.
fn json(n: usize) -> Vec<u8> {
    let items: Vec<String> = (0..n)
        .map(|i| format!("{{\"id\":{i},\"name\":\"item {i}\",\"tags\":[\"a\",\"b\"]}}"))
        .collect();
    format!("[{}]", items.join(",")).into_bytes()
}

/// Text that compresses, but not to nothing: words picked by a small LCG.
fn text(len: usize) -> Vec<u8> {
    const WORDS: [&str; 8] = [
        "edge ", "slot ", "blue ", "green ", "flip ", "drain ", "42 ", "\n",
    ];
    let mut x: u32 = 7;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        out.extend_from_slice(WORDS[(x >> 16) as usize % WORDS.len()].as_bytes());
    }
    out.truncate(len);
    out
}

const LARGE: usize = 5 * 1024 * 1024;

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

/// The upstream: what each path answers.
fn upstream() -> ScriptedUpstream {
    ScriptedUpstream::start(|req| {
        let json_type = ("Content-Type", "application/json; charset=utf-8");
        let resp = match req.target.as_str() {
            "/json" => response(
                200,
                &[json_type, ("ETag", "\"v1\""), ("Accept-Ranges", "bytes")],
                &json(200),
            ),
            "/vary" => response(200, &[json_type, ("Vary", "Origin")], &json(200)),
            "/small" => response(200, &[json_type], &json(2)),
            "/png" => response(200, &[("Content-Type", "image/png")], &text(4096)),
            "/encoded" => response(
                200,
                &[("Content-Type", "text/plain"), ("Content-Encoding", "gzip")],
                &gzip(&text(4096)),
            ),
            "/no-transform" => response(
                200,
                &[
                    ("Content-Type", "text/plain"),
                    ("Cache-Control", "no-transform"),
                ],
                &text(4096),
            ),
            "/not-modified" => {
                b"HTTP/1.1 304 Not Modified\r\nETag: \"v1\"\r\nContent-Type: text/plain\r\n\r\n"
                    .to_vec()
            }
            "/chunked" => {
                let mut r =
                    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n"
                        .to_vec();
                for piece in text(30_000).chunks(7000) {
                    r.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
                    r.extend_from_slice(piece);
                    r.extend_from_slice(b"\r\n");
                }
                r.extend_from_slice(b"0\r\n\r\n");
                r
            }
            "/large" => response(200, &[("Content-Type", "text/plain")], &text(LARGE)),
            _ => response(404, &[], b"no"),
        };
        let mut resp = resp;
        if req.method == "HEAD" {
            let end = resp.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
            resp.truncate(end);
        }
        vec![Action::Write(resp)]
    })
}

fn decode(encoding: &str, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    match encoding {
        "gzip" => flate2::read::GzDecoder::new(data).read_to_end(&mut out),
        "br" => brotli::Decompressor::new(data, 4096).read_to_end(&mut out),
        "zstd" => zstd::stream::read::Decoder::new(data).and_then(|mut d| d.read_to_end(&mut out)),
        other => panic!("unexpected encoding {other}"),
    }
    .unwrap_or_else(|e| panic!("{encoding} body does not decode: {e}"));
    out
}

fn start(mode: Mode, upstream: SocketAddr, compression: &str, extra: &str) -> Proxy {
    Proxy::start(&ProxyConfig {
        blue: vec![upstream],
        green: vec![upstream],
        server: mode.server(),
        extra: format!("[compression]\n{compression}\n{extra}"),
        ..ProxyConfig::default()
    })
}

fn get(addr: SocketAddr, path: &str, accept: Option<&str>) -> Response {
    let headers: Vec<(&str, &str)> = accept.map(|a| ("Accept-Encoding", a)).into_iter().collect();
    Conn::connect(addr).unwrap().get(path, &headers).unwrap()
}

/// A response sent compressed with `encoding`, whose body decodes to `want`.
fn assert_compressed(r: &Response, encoding: &str, want: &[u8], what: &str) {
    assert_eq!(r.status, 200, "{what}");
    assert_eq!(
        r.header("content-encoding"),
        Some(encoding),
        "{what}: {:?}",
        r.headers
    );
    assert_eq!(r.header_count("content-encoding"), 1, "{what}");
    assert_eq!(r.header("content-length"), None, "{what}");
    assert_eq!(r.header("transfer-encoding"), Some("chunked"), "{what}");
    assert!(r.body.len() < want.len(), "{what}: not smaller");
    assert!(
        decode(encoding, &r.body) == want,
        "{what}: decoded body differs"
    );
    let vary: Vec<_> = r.headers.iter().filter(|(k, _)| k == "vary").collect();
    assert_eq!(vary.len(), 1, "{what}: {vary:?}");
    let tokens = vary[0].1.to_ascii_lowercase();
    assert_eq!(
        tokens.matches("accept-encoding").count(),
        1,
        "{what}: {tokens}"
    );
}

/// A response relayed as the upstream sent it.
fn assert_untouched(r: &Response, want: &[u8], what: &str) {
    assert_eq!(
        r.header("content-encoding"),
        None,
        "{what}: {:?}",
        r.headers
    );
    assert!(r.body == want, "{what}: body changed");
}

#[test]
fn algorithms_are_negotiated_by_preference_and_q_values_on_both_paths() {
    let up = upstream();
    let body = json(200);
    for mode in MODES {
        let proxy = start(
            mode,
            up.addr(),
            "algorithms = [\"br\", \"zstd\", \"gzip\"]",
            "",
        );
        let m = mode.name();
        for (accept, want) in [
            ("gzip, deflate, br, zstd", "br"),
            ("gzip", "gzip"),
            ("zstd, gzip", "zstd"),
            ("br;q=0, gzip;q=0.5, zstd;q=1", "zstd"),
            ("*", "br"),
            ("*;q=0.1, br;q=0, zstd;q=0", "gzip"),
        ] {
            let r = get(proxy.addr, "/json", Some(accept));
            assert_compressed(&r, want, &body, &format!("{m}: {accept}"));
            assert_eq!(r.header("etag"), Some("W/\"v1\""), "{m}: weak ETag");
            assert_eq!(r.header("accept-ranges"), None, "{m}: no ranges");
        }
        // An upstream's `Vary` is merged with it, into one line.
        let r = get(proxy.addr, "/vary", Some("gzip"));
        assert_compressed(&r, "gzip", &body, &format!("{m}: vary merged"));
        assert_eq!(r.header("vary"), Some("Origin, Accept-Encoding"), "{m}");
        // Nothing acceptable: sent as it is, still marked as varying.
        for accept in [None, Some("identity"), Some("gzip;q=0, deflate")] {
            let r = get(proxy.addr, "/json", accept);
            assert_untouched(&r, &body, &format!("{m}: {accept:?}"));
            assert_eq!(r.header("vary"), Some("Accept-Encoding"), "{m}: {accept:?}");
            assert_eq!(r.header("etag"), Some("\"v1\""), "{m}: strong ETag kept");
            assert_eq!(
                r.header("content-length"),
                Some(body.len().to_string().as_str())
            );
        }
    }
}

#[test]
fn small_unlisted_encoded_head_and_304_responses_are_untouched_on_both_paths() {
    let up = upstream();
    for mode in MODES {
        let proxy = start(mode, up.addr(), "algorithms = [\"gzip\"]", "");
        let m = mode.name();
        for (path, want) in [
            ("/small", json(2)),
            ("/png", text(4096)),
            ("/encoded", gzip(&text(4096))),
            ("/no-transform", text(4096)),
        ] {
            let r = get(proxy.addr, path, Some("gzip"));
            assert_eq!(r.status, 200, "{m} {path}");
            if path == "/encoded" {
                assert_eq!(
                    r.header("content-encoding"),
                    Some("gzip"),
                    "{m}: never twice"
                );
                assert!(r.body == want, "{m} {path}: body changed");
            } else {
                assert_untouched(&r, &want, &format!("{m} {path}"));
            }
            assert_eq!(r.header("vary"), None, "{m} {path}");
        }
        let mut c = Conn::connect(proxy.addr).unwrap();
        let r = c
            .request("HEAD", "/json", &[("Accept-Encoding", "gzip")])
            .unwrap();
        assert_eq!(r.status, 200, "{m}: HEAD");
        assert_eq!(r.header("content-encoding"), None, "{m}: HEAD");
        assert_eq!(
            r.header("content-length"),
            Some(json(200).len().to_string().as_str()),
            "{m}: HEAD keeps the length"
        );
        // An HTTP/1.0 client cannot take a chunked answer, and nginx leaves its answers
        // alone (gzip_http_version 1.1).
        let ex = bascule_tests::raw::exchange(
            proxy.addr,
            b"GET /json HTTP/1.0\r\nHost: e\r\nAccept-Encoding: gzip\r\n\r\n",
            1,
            std::time::Duration::from_secs(5),
        );
        assert_eq!(ex.statuses(), vec![200], "{m}: HTTP/1.0");
        assert_eq!(
            ex.responses[0].header("content-encoding"),
            None,
            "{m}: HTTP/1.0"
        );
        assert!(ex.responses[0].body == json(200), "{m}: HTTP/1.0 body");
        let r = get(proxy.addr, "/not-modified", Some("gzip"));
        assert_eq!(r.status, 304, "{m}");
        assert_eq!(r.header("content-encoding"), None, "{m}: 304");
        assert_eq!(r.header("etag"), Some("\"v1\""), "{m}: 304");
    }
}

#[test]
fn chunked_and_large_bodies_round_trip_and_the_connection_stays_alive_on_both_paths() {
    let up = upstream();
    let dir = tempfile::tempdir().unwrap();
    for mode in MODES {
        let m = mode.name();
        let log = dir.path().join(format!("{m}.log"));
        let access = format!(
            "[access_log]\npath = \"{}\"\nformat = \"json\"\n",
            log.display()
        );
        let proxy = start(
            mode,
            up.addr(),
            "algorithms = [\"zstd\", \"gzip\"]",
            &access,
        );
        let mut c = Conn::connect(proxy.addr).unwrap();
        let r = c.get("/chunked", &[("Accept-Encoding", "gzip")]).unwrap();
        assert_compressed(&r, "gzip", &text(30_000), &format!("{m}: chunked upstream"));
        let first_size = r.body.len();
        // The same connection serves the next request.
        let r = c.get("/large", &[("Accept-Encoding", "zstd")]).unwrap();
        assert_compressed(&r, "zstd", &text(LARGE), &format!("{m}: 5 MiB"));
        let large_size = r.body.len();
        let r = c.get("/small", &[("Accept-Encoding", "zstd")]).unwrap();
        assert_untouched(&r, &json(2), &format!("{m}: after two compressed"));

        // The access log counts the bytes sent: the compressed ones.
        let mut lines = Vec::new();
        let logged = wait_until(Duration::from_secs(5), || {
            lines = std::fs::read_to_string(&log)
                .unwrap_or_default()
                .lines()
                .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
                .collect();
            lines.len() >= 3
        });
        assert!(logged, "{m}: {lines:?}");
        let bytes: Vec<u64> = lines.iter().map(|l| l["bytes"].as_u64().unwrap()).collect();
        let want = [first_size as u64, large_size as u64, json(2).len() as u64];
        assert_eq!(bytes, want, "{m}: logged bytes");
    }
}

/// An upstream that sends its head and a first piece of a chunked body, then waits (with a
/// deadline) for the word that the client has seen it before it sends the rest.
fn streaming_upstream(seen: mpsc::Receiver<()>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { continue };
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && s.read(&mut byte).unwrap_or(0) == 1 {
                head.push(byte[0]);
            }
            if head.starts_with(b"GET /health") {
                let _ = s.write_all(&response(200, &[("Connection", "close")], b"ok"));
                continue;
            }
            let first = b"data: first event\n\n";
            let mut out = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
            out.extend_from_slice(format!("{:x}\r\n", first.len()).as_bytes());
            out.extend_from_slice(first);
            out.extend_from_slice(b"\r\n");
            let _ = s.write_all(&out);
            // Without the word, the rest comes anyway after the deadline: the client's own
            // check then fails instead of hanging.
            let _ = seen.recv_timeout(Duration::from_secs(10));
            let _ = s.write_all(b"14\r\ndata: second event\n\n\r\n0\r\n\r\n");
            return;
        }
    });
    addr
}

#[test]
fn a_streamed_response_reaches_the_client_before_the_upstream_finishes_on_both_paths() {
    for mode in MODES {
        let m = mode.name();
        let (tx, rx) = mpsc::channel();
        let up = streaming_upstream(rx);
        let proxy = start(
            mode,
            up,
            "algorithms = [\"gzip\"]\nmin_bytes = 1\ntypes = [\"text/event-stream\"]",
            "",
        );
        let mut s = TcpStream::connect(proxy.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        s.write_all(b"GET /events HTTP/1.1\r\nHost: e\r\nAccept-Encoding: gzip\r\n\r\n")
            .unwrap();
        // Read until the first event decodes from what arrived, within a deadline.
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut got = Vec::new();
        let mut first_seen = false;
        while Instant::now() < deadline && !first_seen {
            let mut buf = [0u8; 4096];
            if let Ok(n) = s.read(&mut buf) {
                got.extend_from_slice(&buf[..n]);
            }
            first_seen = String::from_utf8_lossy(&prefix_decoded(&got)).contains("first event");
        }
        assert!(
            first_seen,
            "{m}: the first event did not reach the client while the upstream waited: {}",
            String::from_utf8_lossy(&got)
        );
        tx.send(()).unwrap();
        let text = String::from_utf8_lossy(&got).to_ascii_lowercase();
        assert!(text.contains("content-encoding: gzip"), "{m}: {text}");
        // The rest follows and the stream ends properly.
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline && !got.ends_with(b"0\r\n\r\n") {
            let mut buf = [0u8; 4096];
            if let Ok(n) = s.read(&mut buf) {
                got.extend_from_slice(&buf[..n]);
            }
        }
        let all = decode("gzip", &dechunk(&got));
        assert_eq!(
            String::from_utf8_lossy(&all),
            "data: first event\n\ndata: second event\n\n",
            "{m}"
        );
    }
}

/// The chunked body after the head in `raw`, decoded from its framing as far as it goes.
fn dechunk(raw: &[u8]) -> Vec<u8> {
    let Some(start) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Vec::new();
    };
    let mut rest = &raw[start + 4..];
    let mut body = Vec::new();
    while let Some(eol) = rest.windows(2).position(|w| w == b"\r\n") {
        let Ok(size) = usize::from_str_radix(&String::from_utf8_lossy(&rest[..eol]), 16) else {
            break;
        };
        if size == 0 || rest.len() < eol + 2 + size {
            body.extend_from_slice(&rest[eol + 2..(eol + 2 + size).min(rest.len())]);
            break;
        }
        body.extend_from_slice(&rest[eol + 2..eol + 2 + size]);
        rest = &rest[(eol + 4 + size).min(rest.len())..];
    }
    body
}

/// What a gzip decoder makes of the body so far.
fn prefix_decoded(raw: &[u8]) -> Vec<u8> {
    let body = dechunk(raw);
    let mut d = flate2::read::GzDecoder::new(&body[..]);
    let mut out = Vec::new();
    let mut buf = [0u8; 1024];
    while let Ok(n) = d.read(&mut buf) {
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    out
}

#[test]
fn a_vary_set_by_the_headers_table_is_merged_once_on_both_paths() {
    let up = upstream();
    let body = json(200);
    for mode in MODES {
        let extra = "[headers]\nresponse = { \"Vary\" = \"Cookie\" }\n";
        let proxy = start(mode, up.addr(), "algorithms = [\"gzip\"]", extra);
        let m = mode.name();
        let r = get(proxy.addr, "/json", Some("gzip"));
        assert_compressed(&r, "gzip", &body, &format!("{m}: configured vary"));
        assert_eq!(r.header("vary"), Some("Cookie, Accept-Encoding"), "{m}");
    }
}

#[test]
fn compression_is_off_without_the_table() {
    let up = upstream();
    for mode in MODES {
        let proxy = Proxy::start(&ProxyConfig {
            blue: vec![up.addr()],
            green: vec![up.addr()],
            server: mode.server(),
            ..ProxyConfig::default()
        });
        let r = get(proxy.addr, "/json", Some("gzip, br"));
        assert_untouched(&r, &json(200), mode.name());
        assert_eq!(r.header("vary"), None, "{}", mode.name());
    }
}

#[test]
fn h2_responses_are_compressed_too() {
    use std::process::Command;
    let Ok(out) = Command::new("curl").arg("-V").output() else {
        eprintln!("skipped: curl not found");
        return;
    };
    let features = String::from_utf8_lossy(&out.stdout).to_string();
    if !features.contains("HTTP2") || !features.contains("brotli") {
        eprintln!("skipped: this curl has no HTTP/2 or no brotli");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let cert = bascule_tests::tls::TestCert::make(dir.path(), &["a.test"]);
    let up = upstream();
    let https = bascule_tests::free_addr();
    let proxy = Proxy::start(&ProxyConfig {
        blue: vec![up.addr()],
        green: vec![up.addr()],
        listen: format!("https = [\"{https}\"]"),
        extra: format!("[tls]\n{}\n[compression]\n", cert.toml()),
        ..ProxyConfig::default()
    });
    let out = Command::new("curl")
        .args(["-s", "--http2", "--compressed", "-D", "-", "--cacert"])
        .arg(&cert.cert)
        .arg("--resolve")
        .arg(format!("a.test:{}:127.0.0.1", https.port()))
        .arg(format!("https://a.test:{}/json", https.port()))
        .output()
        .unwrap();
    let all = String::from_utf8_lossy(&out.stdout).to_string();
    let (head, body) = all.split_once("\r\n\r\n").unwrap_or((&all, ""));
    let head = head.to_ascii_lowercase();
    assert!(head.starts_with("http/2 200"), "{head}");
    assert!(head.contains("content-encoding: br"), "{head}");
    assert!(!head.contains("content-length"), "{head}");
    assert!(head.contains("vary: accept-encoding"), "{head}");
    assert!(
        body.as_bytes() == json(200),
        "curl decoded a different body"
    );
    drop(proxy);
}
