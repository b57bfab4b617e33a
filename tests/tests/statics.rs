//! Static assets through the real proxy: cache headers, validators, ranges, precompressed
//! siblings, SPA fallback, cross-slot hashed fallback across a flip, and path safety.

use std::io::Read;
use std::path::Path;

use bascule_tests::http::{get, get_with, Conn, Response};
use bascule_tests::{Proxy, ProxyConfig, Upstream};

const APP_JS: &str = "console.log('blue app');\n";
const IMMUTABLE: &str = "public, max-age=31536000, immutable";
const SECRET: &str = "TOP-SECRET-CONTENTS";

struct Site {
    _dirs: tempfile::TempDir,
    proxy: Proxy,
    _up: (Upstream, Upstream),
    blue: std::path::PathBuf,
}

fn write(path: &Path, body: &[u8]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, body).unwrap();
}

fn gzip(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn big() -> Vec<u8> {
    (0..600 * 1024).map(|i| (i % 253) as u8).collect()
}

/// Above the size sent in one buffer with its head, below `[static] cache_max_file`.
fn mid() -> Vec<u8> {
    (0..100 * 1024).map(|i| (i % 241) as u8).collect()
}

/// Cached (below `[static] cache_max_file`) and larger than a slow client's socket takes at once.
fn wide() -> Vec<u8> {
    (0..250 * 1024).map(|i| (i % 239) as u8).collect()
}

fn site() -> Site {
    site_with("")
}

/// [`site`], with extra lines of the `[server]` table.
fn site_with(server: &str) -> Site {
    let dirs = tempfile::tempdir().unwrap();
    let blue = dirs.path().join("blue");
    let green = dirs.path().join("green");
    write(&dirs.path().join("secret.txt"), SECRET.as_bytes());
    write(
        &blue.join("index.html"),
        b"<!doctype html><title>blue</title>",
    );
    write(&blue.join("assets/app-3f9a1c2b.js"), APP_JS.as_bytes());
    write(
        &blue.join("assets/app-3f9a1c2b.js.gz"),
        &gzip(APP_JS.as_bytes()),
    );
    write(&blue.join("assets/only-blue-1a2b3c4d.js"), b"old chunk");
    write(&blue.join("assets/style.css"), b"body{}");
    write(&blue.join("assets/big-0123abcd.bin"), &big());
    write(&blue.join("assets/mid-0123abcd.bin"), &mid());
    write(&blue.join("assets/wide-0123abcd.bin"), &wide());
    std::os::unix::fs::symlink(dirs.path().join("secret.txt"), blue.join("assets/leak.txt"))
        .unwrap();
    std::os::unix::fs::symlink(dirs.path(), blue.join("up")).unwrap();
    write(
        &green.join("index.html"),
        b"<!doctype html><title>green</title>",
    );
    write(&green.join("assets/app-9e8d7c6b.js"), b"green app");
    let up = (
        Upstream::start("127.0.0.1:0", "blue", "1.0.0").unwrap(),
        Upstream::start("127.0.0.1:0", "green", "1.1.0").unwrap(),
    );
    let proxy = Proxy::start(&ProxyConfig {
        blue: vec![up.0.addr()],
        green: vec![up.1.addr()],
        blue_root: Some(blue.clone()),
        green_root: Some(green),
        server: server.into(),
        extra: "[[routes]]\nprefix = \"/api/\"\nto = \"upstream\"\n\n\
                [[routes]]\nprefix = \"/assets/\"\nto = \"static\"\n\n\
                [[routes]]\nprefix = \"/\"\nto = \"static\"\nspa_fallback = \"/index.html\"\n"
            .into(),
        ..Default::default()
    });
    Site {
        _dirs: dirs,
        proxy,
        _up: up,
        blue,
    }
}

fn ok(r: &Response) {
    assert_eq!(r.status, 200, "{r:?}");
}

#[test]
fn hashed_files_are_immutable_and_everything_else_no_cache() {
    let s = site();
    let r = get(s.proxy.addr, "/assets/app-3f9a1c2b.js").unwrap();
    ok(&r);
    assert_eq!(r.text(), APP_JS);
    assert_eq!(r.header_count("cache-control"), 1);
    assert_eq!(r.header("cache-control"), Some(IMMUTABLE));
    assert_eq!(
        r.header("content-type"),
        Some("text/javascript; charset=utf-8")
    );
    assert_eq!(r.header("accept-ranges"), Some("bytes"));
    assert_eq!(r.header("vary"), Some("Accept-Encoding"));
    assert_eq!(r.slot(), Some("blue"));
    let etag = r.header("etag").unwrap();
    assert!(
        etag.starts_with('"') && etag.ends_with('"'),
        "strong ETag: {etag}"
    );
    assert!(r.header("last-modified").unwrap().ends_with("GMT"));
    assert!(r.header("date").is_some());

    for path in ["/", "/index.html", "/assets/style.css"] {
        let r = get(s.proxy.addr, path).unwrap();
        ok(&r);
        assert_eq!(r.header("cache-control"), Some("no-cache"), "{path}");
        assert!(r.header("vary").is_none(), "{path}: no sibling, no Vary");
    }
    let r = get(s.proxy.addr, "/").unwrap();
    assert_eq!(r.header("content-type"), Some("text/html; charset=utf-8"));
    assert_eq!(
        get(s.proxy.addr, "/assets/style.css")
            .unwrap()
            .header("content-type"),
        Some("text/css; charset=utf-8")
    );
    // Routes to the upstream still work beside static ones.
    assert_eq!(get(s.proxy.addr, "/api/x").unwrap().text(), "blue 1.0.0\n");
}

#[test]
fn validators_give_304_and_head_gives_no_body() {
    let s = site();
    for path in ["/assets/app-3f9a1c2b.js", "/index.html"] {
        let r = get(s.proxy.addr, path).unwrap();
        let (etag, lm) = (
            r.header("etag").unwrap().to_string(),
            r.header("last-modified").unwrap().to_string(),
        );
        let r = get_with(s.proxy.addr, path, &[("If-None-Match", &etag)]).unwrap();
        assert_eq!(r.status, 304, "{path}");
        assert!(r.body.is_empty());
        assert_eq!(r.header("etag"), Some(etag.as_str()));
        let list = format!("\"nope\", W/{etag}");
        assert_eq!(
            get_with(s.proxy.addr, path, &[("If-None-Match", &list)])
                .unwrap()
                .status,
            304
        );
        assert_eq!(
            get_with(s.proxy.addr, path, &[("If-None-Match", "\"other\"")])
                .unwrap()
                .status,
            200
        );
        assert_eq!(
            get_with(s.proxy.addr, path, &[("If-Modified-Since", &lm)])
                .unwrap()
                .status,
            304
        );
        let old = "Mon, 01 Jan 2001 00:00:00 GMT";
        assert_eq!(
            get_with(s.proxy.addr, path, &[("If-Modified-Since", old)])
                .unwrap()
                .status,
            200
        );

        let r = Conn::connect(s.proxy.addr)
            .unwrap()
            .request("HEAD", path, &[])
            .unwrap();
        ok(&r);
        assert!(r.body.is_empty());
        assert!(
            r.header("content-length")
                .unwrap()
                .parse::<usize>()
                .unwrap()
                > 0
        );
    }
}

#[test]
fn byte_ranges() {
    let s = site();
    let path = "/assets/app-3f9a1c2b.js";
    let len = APP_JS.len();
    let r = get_with(s.proxy.addr, path, &[("Range", "bytes=0-9")]).unwrap();
    assert_eq!(r.status, 206);
    assert_eq!(r.text(), &APP_JS[..10]);
    assert_eq!(
        r.header("content-range"),
        Some(format!("bytes 0-9/{len}").as_str())
    );
    assert!(r.header("content-encoding").is_none());
    let r = get_with(
        s.proxy.addr,
        path,
        &[("Range", "bytes=-5"), ("Accept-Encoding", "gzip")],
    )
    .unwrap();
    assert_eq!((r.status, r.text().as_str()), (206, &APP_JS[len - 5..]));
    let r = get_with(s.proxy.addr, path, &[("Range", "bytes=10-")]).unwrap();
    assert_eq!((r.status, r.text().as_str()), (206, &APP_JS[10..]));
    let r = get_with(s.proxy.addr, path, &[("Range", &format!("bytes={len}-"))]).unwrap();
    assert_eq!(r.status, 416);
    assert_eq!(
        r.header("content-range"),
        Some(format!("bytes */{len}").as_str())
    );
    // Non-hashed files too (served from disk).
    let r = get_with(s.proxy.addr, "/assets/style.css", &[("Range", "bytes=1-2")]).unwrap();
    assert_eq!((r.status, r.text().as_str()), (206, "od"));
}

#[test]
fn precompressed_siblings_follow_accept_encoding() {
    let s = site();
    let path = "/assets/app-3f9a1c2b.js";
    let r = get_with(s.proxy.addr, path, &[("Accept-Encoding", "br;q=0, gzip")]).unwrap();
    ok(&r);
    assert_eq!(r.header("content-encoding"), Some("gzip"));
    assert_eq!(r.header("vary"), Some("Accept-Encoding"));
    assert_eq!(r.header("cache-control"), Some(IMMUTABLE));
    let mut text = String::new();
    flate2::read::GzDecoder::new(&r.body[..])
        .read_to_string(&mut text)
        .unwrap();
    assert_eq!(text, APP_JS);
    let gz_etag = r.header("etag").unwrap().to_string();

    let r = get_with(s.proxy.addr, path, &[("Accept-Encoding", "gzip;q=0")]).unwrap();
    assert!(r.header("content-encoding").is_none());
    assert_eq!(r.header("vary"), Some("Accept-Encoding"));
    assert_eq!(r.text(), APP_JS);
    assert_ne!(
        r.header("etag").unwrap(),
        gz_etag,
        "each representation has its own ETag"
    );
    let r = get(s.proxy.addr, path).unwrap();
    assert!(r.header("content-encoding").is_none());
}

#[test]
fn spa_fallback_for_pages_and_404_for_missing_chunks() {
    let s = site();
    let r = get(s.proxy.addr, "/settings/profile").unwrap();
    ok(&r);
    assert_eq!(r.text(), "<!doctype html><title>blue</title>");
    assert_eq!(r.header("cache-control"), Some("no-cache"));
    let r = get(s.proxy.addr, "/assets/missing-deadbeef.js").unwrap();
    assert_eq!(r.status, 404);
    assert!(
        !r.text().contains("<title>"),
        "a missing chunk must never get the HTML shell"
    );
    let r = get(s.proxy.addr, "/assets/missing.js").unwrap();
    assert_eq!(r.status, 404, "/assets/ has no fallback");
}

#[test]
fn hashed_files_of_the_previous_slot_survive_a_flip() {
    let s = site();
    assert_eq!(get(s.proxy.addr, "/").unwrap().slot(), Some("blue"));
    s.proxy.admin_ok("flip green --force");
    let r = get(s.proxy.addr, "/index.html").unwrap();
    assert_eq!(
        (r.text().as_str(), r.slot()),
        ("<!doctype html><title>green</title>", Some("green"))
    );
    // Only blue has this chunk: a page loaded before the flip still gets it.
    let r = get(s.proxy.addr, "/assets/only-blue-1a2b3c4d.js").unwrap();
    ok(&r);
    assert_eq!(r.text(), "old chunk");
    assert_eq!(r.header("cache-control"), Some(IMMUTABLE));
    assert_eq!(
        get(s.proxy.addr, "/assets/app-9e8d7c6b.js").unwrap().text(),
        "green app"
    );
    // Non-hashed files are never borrowed from the other slot.
    assert_eq!(get(s.proxy.addr, "/assets/style.css").unwrap().status, 404);
}

#[test]
fn nothing_outside_the_root_is_ever_served() {
    let s = site();
    for path in [
        "/../secret.txt",
        "/assets/../../secret.txt",
        "/%2e%2e/secret.txt",
        "/%2E%2E/secret.txt",
        "/assets/..%2f..%2fsecret.txt",
        "/assets/%2e%2e%2f%2e%2e%2fsecret.txt",
        "/assets%2f..%2f..%2fsecret.txt",
        "/assets/app-3f9a1c2b.js%00.txt",
        "/assets/..%5c..%5csecret.txt",
        "/assets/..\\..\\secret.txt",
        "/assets/leak.txt",
        "/up/secret.txt",
        "/assets/%zz",
    ] {
        let r = get(s.proxy.addr, path).unwrap();
        assert!(!r.text().contains(SECRET), "{path} leaked the secret");
        assert!(matches!(r.status, 400 | 404), "{path}: {}", r.status);
    }
}

#[test]
fn a_replaced_file_is_seen_on_the_next_request() {
    let s = site();
    let before = get(s.proxy.addr, "/index.html").unwrap();
    std::thread::sleep(std::time::Duration::from_millis(20));
    write(
        &s.blue.join("index.html"),
        b"<!doctype html><title>blue v2</title>",
    );
    let after = get(s.proxy.addr, "/index.html").unwrap();
    assert_eq!(after.text(), "<!doctype html><title>blue v2</title>");
    assert_ne!(before.header("etag"), after.header("etag"));
}

#[test]
fn large_hashed_files_stream_whole_and_by_range() {
    let s = site();
    let body = big();
    let r = get(s.proxy.addr, "/assets/big-0123abcd.bin").unwrap();
    ok(&r);
    assert_eq!(r.body.len(), body.len());
    assert!(r.body == body, "600 KiB body corrupted");
    assert_eq!(r.header("cache-control"), Some(IMMUTABLE));
    let r = get_with(
        s.proxy.addr,
        "/assets/big-0123abcd.bin",
        &[("Range", "bytes=300000-300099")],
    )
    .unwrap();
    assert_eq!(r.status, 206);
    assert!(r.body == body[300000..300100]);
}

#[test]
fn cached_hashed_files_above_one_buffer_come_whole_on_keep_alive() {
    let s = site();
    let body = mid();
    let mut c = Conn::connect(s.proxy.addr).unwrap();
    for _ in 0..2 {
        let r = c.get("/assets/mid-0123abcd.bin", &[]).unwrap();
        ok(&r);
        assert!(r.body == body, "100 KiB body corrupted");
        assert_eq!(r.header("content-length"), Some("102400"));
    }
    let r = c.request("HEAD", "/assets/mid-0123abcd.bin", &[]).unwrap();
    ok(&r);
    assert!(r.body.is_empty());
    assert_eq!(
        c.get("/assets/app-3f9a1c2b.js", &[]).unwrap().text(),
        APP_JS
    );
}

/// Reads one response with a Content-Length body from `s`, `buf` holding what came before it.
fn read_sized(s: &mut std::net::TcpStream, buf: &mut Vec<u8>) -> (String, Vec<u8>) {
    let mut chunk = [0u8; 8192];
    let end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = s.read(&mut chunk).unwrap();
        assert!(n > 0, "closed before the head");
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..end]).to_string();
    let len: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().parse().unwrap())
        })
        .expect("content-length");
    while buf.len() < end + len {
        let n = s.read(&mut chunk).unwrap();
        assert!(n > 0, "closed inside the body");
        buf.extend_from_slice(&chunk[..n]);
    }
    let body = buf[end..end + len].to_vec();
    buf.drain(..end + len);
    (head, body)
}

#[test]
fn a_large_cached_asset_reaches_a_slow_reader_whole_and_in_order() {
    // A client that asks for the asset many times in one go and waits before reading, with a
    // small receive buffer: the socket takes the first answers at once, then fills, and the
    // rest follows as the client reads. Every body must come whole, each response starting
    // exactly where the one before it ends.
    const TIMES: usize = 24;
    let s = site();
    let body = wide();
    // Fills the cache: the pipelined answers come from it.
    ok(&get(s.proxy.addr, "/assets/wide-0123abcd.bin").unwrap());
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    sock.connect(&s.proxy.addr.into()).unwrap();
    let mut c: std::net::TcpStream = sock.into();
    c.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let mut reqs = b"GET /assets/wide-0123abcd.bin HTTP/1.1\r\nHost: x\r\n\r\n".repeat(TIMES);
    reqs.extend_from_slice(b"GET /assets/app-3f9a1c2b.js HTTP/1.1\r\nHost: x\r\n\r\n");
    std::io::Write::write_all(&mut c, &reqs).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(200));
    let mut buf = Vec::new();
    for i in 0..TIMES {
        let (head, got) = read_sized(&mut c, &mut buf);
        assert!(head.starts_with("HTTP/1.1 200"), "answer {i}: {head}");
        assert_eq!(got.len(), body.len(), "answer {i}");
        assert!(got == body, "answer {i}: 250 KiB body corrupted");
    }
    let (head, got) = read_sized(&mut c, &mut buf);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(got, APP_JS.as_bytes());
    assert!(buf.is_empty(), "bytes after the responses");
}

#[test]
fn a_sealed_asset_is_the_same_answer_on_the_fast_path_and_the_full_proxy() {
    // 100 KiB: kept in a sealed file once cached, sent with sendfile on the fast path and from
    // its mapping by Pingora's full proxy; the client must not tell the two apart.
    let fast = site();
    let full = site_with("fast_path = false\n");
    let body = mid();
    let answers = |s: &Site| {
        let mut c = Conn::connect(s.proxy.addr).unwrap();
        // The first answer reads the disk and fills the cache; the next two come from memory.
        (0..3)
            .map(|_| c.get("/assets/mid-0123abcd.bin", &[]).unwrap())
            .collect::<Vec<_>>()
    };
    let (fast, full) = (answers(&fast), answers(&full));
    for (a, b) in fast.iter().zip(&full) {
        for r in [a, b] {
            ok(r);
            assert!(r.body == body, "100 KiB body corrupted");
        }
        for name in ["content-length", "content-type", "cache-control"] {
            assert_eq!(a.header(name), b.header(name), "{name}");
        }
    }
    // The ETag comes from each site's own file (its mtime), and does not change once cached.
    for answers in [&fast, &full] {
        assert!(answers
            .iter()
            .all(|r| r.header("etag") == answers[0].header("etag")));
    }
}

#[test]
fn other_methods_get_405() {
    let s = site();
    let mut c = Conn::connect(s.proxy.addr).unwrap();
    c.send_raw(b"POST /assets/app-3f9a1c2b.js HTTP/1.1\r\nHost: x\r\ncontent-length: 0\r\n\r\n")
        .unwrap();
    let r = c.read_response(false).unwrap();
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("GET, HEAD"));
    assert_eq!(r.slot(), Some("blue"));
}
