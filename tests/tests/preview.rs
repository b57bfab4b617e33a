//! Previewing the idle slot (`[preview]`) and sticky canaries (`[canary]`), on both request
//! paths, and over TLS.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use bascule_admin::StatsReply;
use bascule_tests::http::{Conn, Response};
use bascule_tests::tls::{TestCert, TlsConn};
use bascule_tests::{scripted_slots, wait_until, Mode, Proxy, ProxyConfig, Upstream, MODES};

const TOKEN: &str = "s3cret";

/// A blue and a green upstream, each slot with its own static root (`/assets/app.txt` names
/// the slot), and a proxy over them on `mode`'s path with `extra` appended.
struct Setup {
    _blue: Upstream,
    _green: Upstream,
    _roots: tempfile::TempDir,
    proxy: Proxy,
}

fn setup(mode: Mode, extra: &str) -> Setup {
    setup_with(mode, extra, String::new())
}

fn setup_with(mode: Mode, extra: &str, listen: String) -> Setup {
    let blue = Upstream::start("127.0.0.1:0", "blue", "1.0.0").unwrap();
    let green = Upstream::start("127.0.0.1:0", "green", "1.1.0").unwrap();
    let roots = tempfile::tempdir().unwrap();
    let root = |name: &str| {
        let dir = roots.path().join(name);
        std::fs::create_dir_all(dir.join("assets")).unwrap();
        std::fs::write(dir.join("assets/app.txt"), format!("{name} asset\n")).unwrap();
        dir
    };
    let proxy = Proxy::start(&ProxyConfig {
        blue: vec![blue.addr()],
        green: vec![green.addr()],
        blue_root: Some(root("blue")),
        green_root: Some(root("green")),
        server: mode.server(),
        listen,
        extra: format!("[[routes]]\nprefix = \"/assets/\"\nto = \"static\"\n\n{extra}"),
        ..Default::default()
    });
    Setup {
        _blue: blue,
        _green: green,
        _roots: roots,
        proxy,
    }
}

fn request(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)]) -> Response {
    let mut conn = Conn::connect(addr).unwrap();
    if method == "POST" {
        let mut raw = format!(
            "POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\n\
             Content-Type: text/plain\r\n"
        );
        for (k, v) in headers {
            raw.push_str(&format!("{k}: {v}\r\n"));
        }
        raw.push_str("\r\nhello");
        conn.send_raw(raw.as_bytes()).unwrap();
        conn.read_response(false).unwrap()
    } else {
        conn.request(method, path, headers).unwrap()
    }
}

fn stats(proxy: &Proxy) -> StatsReply {
    proxy.call("stats").unwrap()
}

#[test]
fn preview_by_header_or_cookie_with_the_right_token_on_get_and_post() {
    for mode in MODES {
        let s = setup(mode, &format!("[preview]\ntoken = \"{TOKEN}\"\n"));
        let addr = s.proxy.addr;
        let right_header = ("x-bascule-preview", "green:s3cret");
        let right_cookie = ("Cookie", "theme=dark; bascule_preview=green:s3cret");
        let mut previews = 0;
        for method in ["GET", "POST"] {
            for asks in [right_header, right_cookie] {
                let r = request(addr, method, "/", &[asks]);
                assert_eq!(r.status, 200, "{mode:?} {method} {asks:?}");
                assert_eq!(r.text(), "green 1.1.0\n", "{mode:?} {method} {asks:?}");
                assert_eq!(r.slot(), Some("green"), "{mode:?} {method} {asks:?}");
                assert_eq!(r.header_count("set-cookie"), 0, "{mode:?}");
                previews += 1;
            }
            // A wrong token, no token, an unknown slot: served as if nothing was asked.
            for wrong in [
                ("x-bascule-preview", "green:s3crex"),
                ("x-bascule-preview", "green"),
                ("x-bascule-preview", "purple:s3cret"),
                ("Cookie", "bascule_preview=green:wrong"),
                ("Cookie", "bascule_preview=green"),
            ] {
                let r = request(addr, method, "/", &[wrong]);
                assert_eq!(r.status, 200, "{mode:?} {method} {wrong:?}");
                assert_eq!(r.text(), "blue 1.0.0\n", "{mode:?} {method} {wrong:?}");
            }
        }
        // Static routes are answered from the previewed slot's root.
        let r = request(addr, "GET", "/assets/app.txt", &[right_header]);
        assert_eq!(
            (r.status, r.text().as_str()),
            (200, "green asset\n"),
            "{mode:?}"
        );
        assert_eq!(r.slot(), Some("green"), "{mode:?}");
        previews += 1;
        let r = request(addr, "GET", "/assets/app.txt", &[]);
        assert_eq!(r.text(), "blue asset\n", "{mode:?}");

        // Counted as previews, and as green's requests (green is idle: only previews reach it).
        assert!(
            wait_until(Duration::from_secs(5), || {
                let st = stats(&s.proxy);
                st.preview_requests == previews && st.green.requests == previews
            }),
            "{mode:?}: {:?} previews expected, stats {:?}",
            previews,
            stats(&s.proxy)
        );
        assert_eq!(s.proxy.status().active, bascule_tests::SlotName::Blue);
    }
}

#[test]
fn preview_without_a_token_and_after_a_flip() {
    for mode in MODES {
        let s = setup(mode, "[preview]\n");
        let addr = s.proxy.addr;
        for method in ["GET", "POST"] {
            let r = request(addr, method, "/", &[("X-Bascule-Preview", "green")]);
            assert_eq!(r.text(), "green 1.1.0\n", "{mode:?} {method}");
            let r = request(addr, method, "/", &[("Cookie", "bascule_preview=green")]);
            assert_eq!(r.text(), "green 1.1.0\n", "{mode:?} {method}");
            // A token where none is configured is not a slot name.
            let r = request(addr, method, "/", &[("x-bascule-preview", "green:x")]);
            assert_eq!(r.text(), "blue 1.0.0\n", "{mode:?} {method}");
        }
        // Whatever is active: after a flip, blue is the one previewed.
        s.proxy.admin_ok("flip green");
        let r = request(addr, "GET", "/", &[("x-bascule-preview", "blue")]);
        assert_eq!(r.text(), "blue 1.0.0\n", "{mode:?}");
        let r = request(addr, "GET", "/", &[]);
        assert_eq!(r.text(), "green 1.1.0\n", "{mode:?}");
        // And whatever is weighted.
        s.proxy.admin_ok("weights blue=0 green=1");
        for _ in 0..4 {
            let r = request(addr, "GET", "/", &[("x-bascule-preview", "blue")]);
            assert_eq!(r.text(), "blue 1.0.0\n", "{mode:?}");
        }
        assert!(wait_until(Duration::from_secs(5), || stats(&s.proxy)
            .preview_requests
            == 9));
    }
}

#[test]
fn without_preview_the_header_is_ignored() {
    for mode in MODES {
        let s = setup(mode, "");
        let r = request(s.proxy.addr, "GET", "/", &[("x-bascule-preview", "green")]);
        assert_eq!(r.text(), "blue 1.0.0\n", "{mode:?}");
        assert_eq!(r.header_count("set-cookie"), 0, "{mode:?}");
        assert_eq!(stats(&s.proxy).preview_requests, 0);
    }
}

/// The slot each of 20 clients got over its 10 requests; `connect` opens client `i`'s
/// connection, `cookie` says whether the client sends back the cookie it was given.
fn clients(connect: impl Fn(u8) -> Conn, cookie: bool) -> Vec<BTreeSet<String>> {
    let mut seen = Vec::new();
    for i in 1..=20u8 {
        let mut jar: Option<String> = None;
        let mut slots = BTreeSet::new();
        for n in 0..10 {
            let mut conn = connect(i);
            let sent: Vec<(&str, &str)> = jar.iter().map(|c| ("Cookie", c.as_str())).collect();
            let r = conn.get("/", &sent).unwrap();
            assert_eq!(r.status, 200);
            let slot = r.slot().unwrap().to_string();
            assert_eq!(
                r.text(),
                format!("{slot} 1.{}.0\n", u8::from(slot == "green"))
            );
            match r.header("set-cookie") {
                Some(set) => {
                    assert!(cookie && n == 0, "client {i} request {n}: {set}");
                    assert_eq!(
                        set,
                        format!("bascule_slot={slot}; Path=/; HttpOnly; SameSite=Lax")
                    );
                    jar = Some(set.split(';').next().unwrap().to_string());
                }
                None => assert!(
                    !cookie || n > 0,
                    "client {i}: no cookie on the first answer"
                ),
            }
            slots.insert(slot);
        }
        seen.push(slots);
    }
    seen
}

fn check_sticky(mode: Mode, seen: &[BTreeSet<String>]) {
    for (i, slots) in seen.iter().enumerate() {
        assert_eq!(slots.len(), 1, "{mode:?}: client {} saw {slots:?}", i + 1);
    }
    let green = seen.iter().filter(|s| s.contains("green")).count();
    assert!(
        (6..=14).contains(&green),
        "{mode:?}: {green} of 20 clients on green, outside 30-70%"
    );
}

fn after_flip_all_on_green(proxy: &Proxy, connect: impl Fn(u8) -> Conn, mode: Mode) {
    proxy.admin_ok("flip green");
    for i in 1..=20u8 {
        for cookie in ["bascule_slot=blue", "bascule_slot=green"] {
            let r = connect(i).get("/", &[("Cookie", cookie)]).unwrap();
            assert_eq!(r.slot(), Some("green"), "{mode:?} client {i} {cookie}");
            assert_eq!(r.header_count("set-cookie"), 0, "{mode:?}");
        }
    }
}

#[test]
fn sticky_cookie_keeps_each_client_on_its_slot_until_a_flip() {
    for mode in MODES {
        let s = setup(mode, "");
        let addr = s.proxy.addr;
        s.proxy.admin_ok("weights blue=1 green=1");
        let seen = clients(|_| Conn::connect(addr).unwrap(), true);
        check_sticky(mode, &seen);
        // A client that never keeps its cookie is split request by request.
        let loose: BTreeSet<String> = (0..10)
            .map(|_| request(addr, "GET", "/", &[]).slot().unwrap().to_string())
            .collect();
        assert_eq!(loose.len(), 2, "{mode:?}");
        // A cookie naming a slot out of the split no longer holds.
        s.proxy.admin_ok("weights blue=1 green=0");
        let r = request(addr, "GET", "/", &[("Cookie", "bascule_slot=green")]);
        assert_eq!(r.slot(), Some("blue"), "{mode:?}");
        assert_eq!(
            r.header("set-cookie"),
            Some("bascule_slot=blue; Path=/; HttpOnly; SameSite=Lax"),
            "{mode:?}"
        );
        // Static routes keep the client too.
        s.proxy.admin_ok("weights blue=1 green=1");
        for slot in ["blue", "green"] {
            let cookie = format!("bascule_slot={slot}");
            for _ in 0..3 {
                let r = request(addr, "GET", "/assets/app.txt", &[("Cookie", &cookie)]);
                assert_eq!(r.text(), format!("{slot} asset\n"), "{mode:?}");
            }
        }
        after_flip_all_on_green(&s.proxy, |_| Conn::connect(addr).unwrap(), mode);
    }
}

#[test]
fn sticky_ip_keeps_each_address_on_its_slot_until_a_flip() {
    for mode in MODES {
        let s = setup(mode, "[canary]\nsticky = \"ip\"\n");
        let addr = s.proxy.addr;
        let from = |i: u8| {
            let ip = IpAddr::V4(Ipv4Addr::new(127, 0, 0, i));
            Conn::connect_from(addr, ip).unwrap()
        };
        s.proxy.admin_ok("weights blue=1 green=1");
        let seen = clients(from, false);
        check_sticky(mode, &seen);
        after_flip_all_on_green(&s.proxy, from, mode);
    }
}

#[test]
fn sticky_none_splits_every_request() {
    for mode in MODES {
        let s = setup(mode, "[canary]\nsticky = \"none\"\n");
        s.proxy.admin_ok("weights blue=1 green=1");
        let slots: Vec<String> = (0..4)
            .map(|_| {
                let r = request(s.proxy.addr, "GET", "/", &[("Cookie", "bascule_slot=blue")]);
                assert_eq!(r.header_count("set-cookie"), 0);
                r.slot().unwrap().to_string()
            })
            .collect();
        assert_eq!(slots, ["blue", "green", "blue", "green"], "{mode:?}");
    }
}

fn tls_get(https: SocketAddr, headers: &str) -> (String, String) {
    let mut conn = TlsConn::connect(https, "a.test", &[b"http/1.1"], false).unwrap();
    conn.request(&format!("GET / HTTP/1.1\r\nHost: a.test\r\n{headers}\r\n"))
        .unwrap()
}

#[test]
fn preview_and_sticky_cookie_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    let cert = TestCert::make(dir.path(), &["a.test"]);
    let https = bascule_tests::free_addr();
    let s = setup_with(
        Mode::Fast,
        &format!("[preview]\ntoken = \"{TOKEN}\"\n\n[tls]\n{}", cert.toml()),
        format!("https = [\"{https}\"]\n"),
    );
    TlsConn::wait_ready(https, "a.test");
    let (head, body) = tls_get(https, "x-bascule-preview: green:s3cret\r\n");
    assert_eq!(body, "green 1.1.0\n", "{head}");
    let (_, body) = tls_get(https, "x-bascule-preview: green:nope\r\n");
    assert_eq!(body, "blue 1.0.0\n");

    s.proxy.admin_ok("weights blue=1 green=1");
    let (head, body) = tls_get(https, "");
    let set = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(": ")?;
            name.eq_ignore_ascii_case("set-cookie").then_some(value)
        })
        .unwrap_or_else(|| panic!("no set-cookie in {head}"));
    let slot = set
        .strip_prefix("bascule_slot=")
        .and_then(|v| v.split(';').next())
        .unwrap()
        .to_string();
    assert!(body.starts_with(&slot), "{head}\n{body}");
    for _ in 0..6 {
        let (head, body) = tls_get(https, &format!("Cookie: bascule_slot={slot}\r\n"));
        assert!(body.starts_with(&slot), "{head}\n{body}");
        assert!(!head.to_ascii_lowercase().contains("set-cookie"), "{head}");
    }
    assert!(wait_until(Duration::from_secs(5), || stats(&s.proxy)
        .preview_requests
        == 1));
}

#[test]
fn previews_of_the_idle_slot_reuse_upstream_connections() {
    for mode in MODES {
        let (blue, green, proxy) = scripted_slots(&mode.server(), "[preview]\n");
        let mut conn = Conn::connect(proxy.addr).unwrap();
        for _ in 0..10 {
            let r = conn.get("/", &[("x-bascule-preview", "green")]).unwrap();
            assert_eq!((r.status, r.slot()), (200, Some("green")), "{mode:?}");
        }
        assert_eq!(green.requests().len(), 10, "{mode:?}");
        let used = green.traffic_connections().len();
        assert!(
            used <= 2,
            "{mode:?}: 10 previews opened {used} upstream connections"
        );
        assert!(blue.traffic_connections().is_empty(), "{mode:?}");
    }
}
