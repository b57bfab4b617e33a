//! TLS termination and HTTP/2: certificates made here, the real binary, a real TLS client.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use bascule_tests::raw::ScriptedUpstream;
use bascule_tests::tls::{TestCert, TlsConn};
use bascule_tests::{bascule_bin, free_addr, Proxy, ProxyConfig};

/// A proxy with an https listener serving `certs` (the first is the default).
fn tls_proxy(
    dir: &Path,
    up: &ScriptedUpstream,
    certs: &[&TestCert],
    tls: &str,
    listen: &str,
) -> (Proxy, std::net::SocketAddr) {
    let https = free_addr();
    let _ = dir;
    let mut extra = format!("[tls]\n{tls}\n");
    for c in certs {
        extra.push_str(&c.toml());
    }
    let proxy = Proxy::start(&ProxyConfig {
        blue: vec![up.addr()],
        green: vec![up.addr()],
        listen: format!("https = [\"{https}\"]\n{listen}"),
        extra,
        ..ProxyConfig::default()
    });
    TlsConn::wait_ready(https, "a.test");
    (proxy, https)
}

fn get(host: &str, path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n")
}

#[test]
fn sni_picks_the_certificate_and_keep_alive_works_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    let a = TestCert::make(dir.path(), &["a.test"]);
    let b = TestCert::make(dir.path(), &["b.test", "*.b.test"]);
    let up = ScriptedUpstream::echo();
    let (_proxy, https) = tls_proxy(dir.path(), &up, &[&a, &b], "", "");

    let mut conn = TlsConn::connect(https, "b.test", &[b"http/1.1"], false).unwrap();
    assert_eq!(conn.peer_cert(), b.der, "SNI b.test gets b's certificate");
    assert_eq!(conn.alpn().as_deref(), Some(&b"http/1.1"[..]));
    for i in 0..3 {
        let (head, body) = conn.request(&get("b.test", &format!("/k{i}"))).unwrap();
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert!(
            head.to_ascii_lowercase().contains("x-bascule-slot: blue"),
            "{head}"
        );
        assert_eq!(body, format!("GET /k{i}"));
    }
    let wild = TlsConn::connect(https, "www.b.test", &[], false).unwrap();
    assert_eq!(wild.peer_cert(), b.der, "a wildcard name matches");
    let unknown = TlsConn::connect(https, "c.test", &[], false).unwrap();
    assert_eq!(
        unknown.peer_cert(),
        a.der,
        "an unknown name gets the first certificate"
    );
    let h2 = TlsConn::connect(https, "a.test", &[b"h2", b"http/1.1"], false).unwrap();
    assert_eq!(h2.alpn().as_deref(), Some(&b"h2"[..]), "h2 offered by ALPN");
}

#[test]
fn the_request_policy_and_forwarded_headers_apply_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    let a = TestCert::make(dir.path(), &["a.test"]);
    let up = ScriptedUpstream::echo();
    let (_proxy, https) = tls_proxy(dir.path(), &up, &[&a], "", "");
    let mut conn = TlsConn::connect(https, "a.test", &[], false).unwrap();
    let mark = up.mark();
    let (head, _) = conn
        .request("GET /x HTTP/1.1\r\nHost: a.test\r\nX-Forwarded-Proto: http\r\n\r\n")
        .unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let seen = up.requests_since(mark);
    let r = seen.last().expect("the request reached the upstream");
    assert_eq!(r.header("x-forwarded-proto").as_deref(), Some("https"));
    assert_eq!(r.header("x-forwarded-for").as_deref(), Some("127.0.0.1"));
    let mut conn = TlsConn::connect(https, "a.test", &[], false).unwrap();
    let mark = up.mark();
    let (head, _) = conn
        .request("GET /x HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n")
        .unwrap();
    assert!(head.starts_with("HTTP/1.1 400"), "{head}");
    assert!(
        up.requests_since(mark).is_empty(),
        "a refused request reached the upstream"
    );
}

#[test]
fn reload_swaps_certificates_for_new_handshakes_only() {
    let dir = tempfile::tempdir().unwrap();
    let a = TestCert::make(dir.path(), &["a.test"]);
    let up = ScriptedUpstream::echo();
    let (proxy, https) = tls_proxy(dir.path(), &up, &[&a], "", "");
    let mut old = TlsConn::connect(https, "a.test", &[], false).unwrap();
    assert_eq!(old.peer_cert(), a.der);

    // Same file names, a new certificate in them.
    let renewed = TestCert::make(dir.path(), &["a.test"]);
    assert_ne!(renewed.der, a.der);
    proxy.admin_ok("reload");
    let new = TlsConn::connect(https, "a.test", &[], false).unwrap();
    assert_eq!(
        new.peer_cert(),
        renewed.der,
        "a new handshake sees the new certificate"
    );
    let (head, _) = old.request(&get("a.test", "/still")).unwrap();
    assert!(
        head.starts_with("HTTP/1.1 200"),
        "an open connection keeps working: {head}"
    );

    // A broken pair is refused and the certificates in force stay.
    std::fs::write(&a.key, "not a key").unwrap();
    let refused = proxy.admin_err("reload");
    assert!(refused.contains("tls"), "{refused}");
    let after = TlsConn::connect(https, "a.test", &[], false).unwrap();
    assert_eq!(after.peer_cert(), renewed.der);
}

#[test]
fn min_version_1_3_turns_away_tls_1_2_clients() {
    let dir = tempfile::tempdir().unwrap();
    let a = TestCert::make(dir.path(), &["a.test"]);
    let up = ScriptedUpstream::echo();
    let (_proxy, https) = tls_proxy(dir.path(), &up, &[&a], "min_version = \"1.3\"", "");
    // Turned away at the handshake, or closed right after it: never served.
    if let Ok(mut old) = TlsConn::connect(https, "a.test", &[], true) {
        assert!(
            old.request(&get("a.test", "/")).is_err(),
            "served over TLS 1.2"
        );
    }
    let ok = TlsConn::connect(https, "a.test", &[], false).unwrap();
    assert_eq!(ok.version(), Some(rustls::ProtocolVersion::TLSv1_3));
}

#[test]
fn redirect_http_answers_308_on_both_paths() {
    let dir = tempfile::tempdir().unwrap();
    let a = TestCert::make(dir.path(), &["a.test"]);
    let up = ScriptedUpstream::echo();
    for server in ["", "fast_path = false"] {
        let https = free_addr();
        let proxy = Proxy::start(&ProxyConfig {
            blue: vec![up.addr()],
            green: vec![up.addr()],
            listen: format!("https = [\"{https}\"]\nredirect_http = true"),
            server: server.into(),
            extra: format!("[tls]\n{}", a.toml()),
            ..ProxyConfig::default()
        });
        let ex = bascule_tests::raw::exchange(
            proxy.addr,
            b"GET /p?q=1 HTTP/1.1\r\nHost: a.test:8080\r\n\r\n",
            1,
            Duration::from_secs(5),
        );
        let r = ex.responses.first().expect("a response");
        assert_eq!(r.status, 308, "{server}");
        let want = format!("https://a.test:{}/p?q=1", https.port());
        assert_eq!(r.header("location"), Some(want.as_str()), "{server}");
    }
}

#[test]
fn h2_requests_take_the_same_routes_and_headers() {
    let Ok(out) = Command::new("curl").arg("-V").output() else {
        eprintln!("skipped: curl not found");
        return;
    };
    if !String::from_utf8_lossy(&out.stdout).contains("HTTP2") {
        eprintln!("skipped: this curl has no HTTP/2");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let a = TestCert::make(dir.path(), &["a.test"]);
    let up = ScriptedUpstream::echo();
    let (_proxy, https) = tls_proxy(dir.path(), &up, &[&a], "", "");
    let mark = up.mark();
    let out = Command::new("curl")
        .args(["-s", "-i", "--http2", "--cacert"])
        .arg(&a.cert)
        .arg("--resolve")
        .arg(format!("a.test:{}:127.0.0.1", https.port()))
        .arg(format!("https://a.test:{}/h2/../api?x=1", https.port()))
        .arg("--path-as-is")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_ascii_lowercase();
    assert!(text.starts_with("http/2 200"), "{text}");
    assert!(text.contains("x-bascule-slot: blue"), "{text}");
    let seen = up.requests_since(mark);
    let r = seen.last().expect("the h2 request reached the upstream");
    assert_eq!(r.target, "/api?x=1", "the normalised path goes upstream");
    assert_eq!(r.header("x-forwarded-proto").as_deref(), Some("https"));
    assert_eq!(
        r.header("x-forwarded-host").as_deref(),
        Some(format!("a.test:{}", https.port()).as_str())
    );
}

#[test]
fn check_reports_a_bad_pair_at_the_cert_line() {
    let dir = tempfile::tempdir().unwrap();
    let a = TestCert::make(dir.path(), &["a.test"]);
    let b = TestCert::make(dir.path(), &["b.test"]);
    let config = dir.path().join("bascule.toml");
    let text = format!(
        "[listen]\nhttp = [\"127.0.0.1:1\"]\nhttps = [\"127.0.0.1:2\"]\n\n[tls]\n[[tls.certs]]\ncert = \"{}\"\nkey = \"{}\"\n",
        a.cert.display(),
        b.key.display()
    );
    std::fs::write(&config, text).unwrap();
    let (code, err) = check(&config);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains(":7:"), "the `cert` key's line (7): {err}");
    assert!(err.contains("does not match"), "{err}");
    std::fs::remove_file(&a.cert).unwrap();
    let (code, err) = check(&config);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains(":7:") && err.contains("cannot read"), "{err}");
}

/// `bascule check -c config`: exit code and everything it printed.
fn check(config: &Path) -> (Option<i32>, String) {
    let out = Command::new(bascule_bin())
        .args(["check", "-c"])
        .arg(config)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    (out.status.code(), text)
}

#[test]
fn plain_http_on_the_https_port_is_closed_and_harms_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let a = TestCert::make(dir.path(), &["a.test"]);
    let up = ScriptedUpstream::echo();
    let (_proxy, https) = tls_proxy(dir.path(), &up, &[&a], "", "");
    let mark = up.mark();
    let mut raw = bascule_tests::raw::RawClient::connect(https).unwrap();
    let _ = raw.send(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n");
    assert!(
        raw.closed_within(Duration::from_secs(5)),
        "a plain request on the TLS port is not left hanging"
    );
    assert!(
        up.requests_since(mark).is_empty(),
        "nothing reached the upstream"
    );
    let mut conn = TlsConn::connect(https, "a.test", &[], false).unwrap();
    let (head, _) = conn.request(&get("a.test", "/after")).unwrap();
    assert!(
        head.starts_with("HTTP/1.1 200"),
        "still serving TLS: {head}"
    );
}

#[test]
fn http1_over_tls_takes_the_fast_path_and_websockets_are_handed_over() {
    use bascule_tests::http::get as plain_get;
    use bascule_tests::ws::WsUpstream;
    use bascule_tests::{counter, wait_until, Upstream};

    let dir = tempfile::tempdir().unwrap();
    let cert = TestCert::make(dir.path(), &["a.test"]);
    let blue = Upstream::start("127.0.0.1:0", "blue", "1.0.0").unwrap();
    let ws_up = WsUpstream::start();
    let (https, metrics) = (free_addr(), free_addr());
    let proxy = Proxy::start(&ProxyConfig {
        blue: vec![blue.addr()],
        green: vec![ws_up.addr()],
        listen: format!("https = [\"{https}\"]"),
        extra: format!(
            "[metrics]\nlisten = \"{metrics}\"\n\n[tls]\n{}",
            cert.toml()
        ),
        ..ProxyConfig::default()
    });
    TlsConn::wait_ready(https, "a.test");
    let scrape = || plain_get(metrics, "/metrics").unwrap().text();
    let fast = |t: &str| counter(t, "bascule_connections_total", &["\"tls\"", "\"fast\""]);
    let handed = |t: &str| counter(t, "bascule_handovers_total", &["\"tls\""]);
    // The handshakes that found the listener ready are counted once the proxy has them.
    assert!(wait_until(Duration::from_secs(5), || fast(&scrape()) >= 1));
    let before = scrape();

    // Twenty requests on one TLS connection: one connection on the fast path, none handed over.
    let mut conn = TlsConn::connect(https, "a.test", &[b"http/1.1"], false).unwrap();
    for i in 0..20 {
        let (head, body) = conn.request(&get("a.test", &format!("/k{i}"))).unwrap();
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert!(body.contains("blue"), "{body}");
    }
    let after = scrape();
    assert!(fast(&after) > fast(&before), "{after}");
    assert_eq!(handed(&after), handed(&before), "{after}");

    // A WebSocket over TLS: read by the fast path, handed to the full proxy with the bytes
    // already decrypted put back, and it echoes.
    proxy.admin_ok("flip green --force");
    let tls = TlsConn::connect(https, "a.test", &[b"http/1.1"], false)
        .unwrap()
        .into_stream();
    let (mut ws, resp) = tungstenite::client::client("wss://a.test/chat", tls).unwrap();
    assert_eq!(resp.status(), 101);
    assert_eq!(resp.headers()["x-bascule-slot"], "green");
    for text in ["hello", "over tls"] {
        ws.send(tungstenite::Message::text(text)).unwrap();
        assert_eq!(ws.read().unwrap().into_text().unwrap().as_str(), text);
    }
    assert_eq!(proxy.status().slots.green.upgraded, 1);
    assert!(wait_until(Duration::from_secs(2), || handed(&scrape())
        == handed(&before) + 1));
    let _ = ws.close(None);
}

/// The proxy's resident memory, KiB.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

#[test]
fn idle_tls_connections_let_go_of_their_buffers() {
    const CONNS: u64 = 200;
    let dir = tempfile::tempdir().unwrap();
    let cert = TestCert::make(dir.path(), &["a.test"]);
    let up = ScriptedUpstream::echo();
    let (proxy, https) = tls_proxy(dir.path(), &up, &[&cert], "", "");
    // Warm up what every connection shares (the session machinery, the upstream pool).
    let mut warm = TlsConn::connect(https, "a.test", &[b"http/1.1"], false).unwrap();
    warm.request(&get("a.test", "/warm")).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let before = rss_kib(proxy.pid());
    let mut held = Vec::new();
    for i in 0..CONNS {
        let mut c = TlsConn::connect(https, "a.test", &[b"http/1.1"], false).unwrap();
        let (head, _) = c.request(&get("a.test", &format!("/idle/{i}"))).unwrap();
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        held.push(c);
    }
    // Past `park_idle_after` (100 ms), an idle connection's read buffer is gone.
    std::thread::sleep(Duration::from_millis(800));
    let per_conn = rss_kib(proxy.pid()).saturating_sub(before) * 1024 / CONNS;
    println!("an idle TLS connection costs about {per_conn} bytes");
    // Each held a 64 KiB L4 read buffer and a 16 KiB request buffer before (~117 KiB in all).
    assert!(
        per_conn < 64 * 1024,
        "{per_conn} bytes per idle TLS connection"
    );
    // They still work.
    for (i, c) in held.iter_mut().enumerate().step_by(50) {
        let (head, body) = c.request(&get("a.test", &format!("/again/{i}"))).unwrap();
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert_eq!(body, format!("GET /again/{i}"));
    }
}
