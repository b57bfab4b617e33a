//! Drain and health: in-flight accounting that never leaks, drain states and waits, WebSockets
//! cut at the drain timeout, health-gated flips, retries past a dead member, graceful shutdown.

use std::io::Write;
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bascule_tests::http::{get, Conn};
use bascule_tests::ws::WsUpstream;
use bascule_tests::{two_slots, wait_until, Proxy, ProxyConfig, Upstream};

fn inflight(proxy: &Proxy, slot: &str) -> u64 {
    proxy.admin_ok("status")["slots"][slot]["inflight"]
        .as_u64()
        .unwrap()
}

fn state(proxy: &Proxy, slot: &str) -> String {
    proxy.admin_ok("status")["slots"][slot]["state"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn a_long_request_keeps_its_slot_draining_then_idle_and_drain_wait_returns() {
    let (_b, _g, proxy) = two_slots("");
    let addr = proxy.addr;
    assert_eq!(get(addr, "/").unwrap().status, 200);
    assert!(
        proxy.admin_ok("status")["slots"]["blue"]["pooled"]
            .as_u64()
            .unwrap()
            >= 1
    );
    let slow = std::thread::spawn(move || get(addr, "/?delay_ms=1500").unwrap());
    assert!(wait_until(Duration::from_secs(5), || inflight(
        &proxy, "blue"
    ) == 1));
    proxy.admin_ok("flip green");
    assert_eq!(state(&proxy, "blue"), "draining");
    // Idle upstream connections of the slot that left duty are released.
    assert_eq!(proxy.admin_ok("status")["slots"]["blue"]["pooled"], 0);
    let now = proxy.admin_ok("drain blue");
    assert_eq!(
        (now["drained"].as_bool(), now["inflight"].as_u64()),
        (Some(false), Some(1))
    );
    let status = proxy.admin_ok("status");
    assert!(status["slots"]["blue"]["drain_started"].is_string());

    let started = Instant::now();
    let waited = proxy.admin_ok("drain blue --wait --timeout 10s");
    assert_eq!(waited["drained"], true);
    assert_eq!(waited["inflight"], 0);
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "returned before the request ended"
    );
    assert_eq!(slow.join().unwrap().text(), "blue 1.0.0\n");
    assert_eq!(state(&proxy, "blue"), "idle");
    assert_eq!(proxy.admin_ok("status")["slots"]["blue"]["pooled"], 0);

    // A drain that cannot finish in time says so.
    let slow = std::thread::spawn(move || get(addr, "/?delay_ms=1500").unwrap());
    assert!(wait_until(Duration::from_secs(5), || inflight(
        &proxy, "green"
    ) == 1));
    let short = proxy.admin_ok("drain green --wait --timeout 100ms");
    assert_eq!(short["drained"], false);
    slow.join().unwrap();
}

#[test]
fn aborted_requests_leave_inflight_at_zero() {
    let (_b, _g, proxy) = two_slots("");
    let mut conns: Vec<TcpStream> = (0..8)
        .map(|_| {
            let mut s = TcpStream::connect(proxy.addr).unwrap();
            s.write_all(b"GET /?delay_ms=800 HTTP/1.1\r\nHost: x\r\n\r\n")
                .unwrap();
            s
        })
        .collect();
    assert!(wait_until(Duration::from_secs(5), || inflight(
        &proxy, "blue"
    ) == 8));
    // Half hang up while waiting for the upstream, half after sending half a request.
    conns.truncate(4);
    drop(conns);
    let mut partial = TcpStream::connect(proxy.addr).unwrap();
    partial
        .write_all(b"GET /?delay_ms=800 HTTP/1.1\r\nHo")
        .unwrap();
    drop(partial);
    assert!(
        wait_until(Duration::from_secs(10), || inflight(&proxy, "blue") == 0),
        "in-flight count leaked: {}",
        inflight(&proxy, "blue")
    );
    assert_eq!(inflight(&proxy, "green"), 0);
    assert_eq!(get(proxy.addr, "/").unwrap().status, 200);
}

#[test]
fn websocket_is_proxied_counted_and_cut_when_the_drain_times_out() {
    let ws_up = WsUpstream::start();
    let green = Upstream::start("127.0.0.1:0", "green", "1.1.0").unwrap();
    let proxy = Proxy::start(&ProxyConfig {
        blue: vec![ws_up.addr()],
        green: vec![green.addr()],
        extra: "[drain]\ntimeout = \"1s\"\n".into(),
        ..Default::default()
    });
    let stream = TcpStream::connect(proxy.addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let (mut ws, resp) = tungstenite::client::client("ws://localhost/chat", stream).unwrap();
    assert_eq!(resp.status(), 101);
    assert_eq!(resp.headers()["x-bascule-slot"], "blue");
    ws.send(tungstenite::Message::text("hello")).unwrap();
    assert_eq!(ws.read().unwrap().into_text().unwrap().as_str(), "hello");
    let status = proxy.admin_ok("status");
    assert_eq!(status["slots"]["blue"]["inflight"], 1);
    assert_eq!(status["slots"]["blue"]["upgraded"], 1);

    proxy.admin_ok("flip green --force");
    assert_eq!(state(&proxy, "blue"), "draining");
    // The drain times out after 1 s: the client gets a close frame with 1001 (going away).
    let started = Instant::now();
    let close = loop {
        match ws.read() {
            Ok(tungstenite::Message::Close(frame)) => break frame,
            Ok(_) => continue,
            Err(e) => panic!("connection ended without a close frame: {e}"),
        }
    };
    assert!(started.elapsed() >= Duration::from_millis(500));
    assert_eq!(close.map(|f| u16::from(f.code)), Some(1001));
    assert_eq!(ws_up.last_close_code(), 1001);
    assert!(wait_until(Duration::from_secs(5), || inflight(
        &proxy, "blue"
    ) == 0));
    let status = proxy.admin_ok("status");
    assert_eq!(status["slots"]["blue"]["state"], "idle");
    assert!(
        status["slots"]["blue"]["cut"].as_u64().unwrap() >= 1,
        "{status}"
    );
    assert_eq!(status["slots"]["blue"]["upgraded"], 0);
}

#[test]
fn an_unhealthy_slot_refuses_a_flip_unless_forced() {
    let (_b, green, proxy) =
        two_slots("[health]\ninterval = \"200ms\"\ntimeout = \"100ms\"\nunhealthy_threshold = 1\n");
    green.set_healthy(false);
    assert!(wait_until(Duration::from_secs(5), || {
        proxy.admin_ok("health")["upstreams"][1]["healthy"] == false
    }));
    let v = proxy.admin("flip green");
    assert_eq!(v["ok"], false);
    let err = v["error"].as_str().unwrap();
    assert!(
        err.contains(&green.addr().to_string()) && err.contains("status 503"),
        "{err}"
    );
    assert_eq!(proxy.admin_ok("status")["active"], "blue");
    let out = proxy.ctl(&["rollback"]);
    assert_eq!(out.status.code(), Some(1));

    proxy.admin_ok("flip green --force");
    assert_eq!(proxy.admin_ok("status")["active"], "green");
    // No usable member: 503 from the proxy, tagged green.
    let r = get(proxy.addr, "/").unwrap();
    assert_eq!((r.status, r.slot()), (503, Some("green")));

    green.set_healthy(true);
    assert!(wait_until(Duration::from_secs(5), || get(proxy.addr, "/")
        .unwrap()
        .status
        == 200));
    let health = proxy.admin_ok("health");
    assert!(health["upstreams"][1]["last_check"].is_string());
}

#[test]
fn a_member_killed_under_load_fails_no_get() {
    let blue_a = Upstream::start("127.0.0.1:0", "blue", "1.0.0").unwrap();
    let mut blue_b = Upstream::start("127.0.0.1:0", "blue", "1.0.0").unwrap();
    let green = Upstream::start("127.0.0.1:0", "green", "1.1.0").unwrap();
    let proxy = Proxy::start(&ProxyConfig {
        blue: vec![blue_a.addr(), blue_b.addr()],
        green: vec![green.addr()],
        extra: "[health]\ninterval = \"300ms\"\ntimeout = \"200ms\"\n".into(),
        ..Default::default()
    });
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let clients: Vec<_> = (0..8)
        .map(|_| {
            let (stop, ok, failed, addr) = (stop.clone(), ok.clone(), failed.clone(), proxy.addr);
            std::thread::spawn(move || {
                let mut conn = Conn::connect(addr).unwrap();
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) && n < 50_000 {
                    n += 1;
                    match conn.get("/", &[]) {
                        Ok(r) if r.status == 200 => ok.fetch_add(1, Ordering::Relaxed),
                        other => {
                            eprintln!("failed: {other:?}");
                            conn = Conn::connect(addr).unwrap();
                            failed.fetch_add(1, Ordering::Relaxed)
                        }
                    };
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(700));
    let before = blue_b.served();
    blue_b.stop();
    std::thread::sleep(Duration::from_millis(1500));
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().unwrap();
    }
    assert!(before > 0, "the second member never took traffic");
    assert_eq!(failed.load(Ordering::Relaxed), 0);
    assert!(ok.load(Ordering::Relaxed) > 200);
    let health = proxy.admin_ok("health");
    assert_eq!(health["upstreams"][1]["healthy"], false, "{health}");
}

#[test]
fn sigterm_lets_started_requests_finish() {
    let (_b, _g, mut proxy) = two_slots("");
    let addr = proxy.addr;
    let slow: Vec<_> = (0..5)
        .map(|_| std::thread::spawn(move || get(addr, "/?delay_ms=1000")))
        .collect();
    assert!(wait_until(Duration::from_secs(5), || inflight(
        &proxy, "blue"
    ) == 5));
    proxy.signal("TERM");
    for s in slow {
        let r = s
            .join()
            .unwrap()
            .expect("request started before SIGTERM was lost");
        assert_eq!((r.status, r.text().as_str()), (200, "blue 1.0.0\n"));
    }
    assert_eq!(proxy.wait_exit(Duration::from_secs(15)), Some(0));
    assert!(
        TcpStream::connect(addr).is_err(),
        "still accepting after exit"
    );
}

/// An upstream that passes its health checks but drops every other request unanswered.
fn slammer() -> std::net::SocketAddr {
    use std::io::{BufRead, BufReader};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            let mut line = String::new();
            let _ = BufReader::new(&stream).read_line(&mut line);
            if line.starts_with("GET /health ") {
                let _ = stream.write_all(
                    b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                );
            }
            // Otherwise: close without a byte of response.
        }
    });
    addr
}

#[test]
fn a_dropped_connection_is_retried_on_another_member_for_idempotent_methods_only() {
    let good = Upstream::start("127.0.0.1:0", "blue", "1.0.0").unwrap();
    let green = Upstream::start("127.0.0.1:0", "green", "1.1.0").unwrap();
    let proxy = Proxy::start(&ProxyConfig {
        blue: vec![slammer(), good.addr()],
        green: vec![green.addr()],
        ..Default::default()
    });
    for _ in 0..20 {
        let r = get(proxy.addr, "/").unwrap();
        assert_eq!((r.status, r.text().as_str()), (200, "blue 1.0.0\n"));
    }
    // POST is not idempotent: at least one of a few lands on the bad member and is not retried.
    let mut codes = Vec::new();
    for _ in 0..4 {
        let mut c = Conn::connect(proxy.addr).unwrap();
        c.send_raw(b"POST / HTTP/1.1\r\nHost: x\r\ncontent-length: 2\r\n\r\nhi")
            .unwrap();
        codes.push(c.read_response(false).unwrap().status);
    }
    assert!(codes.contains(&502), "{codes:?}");
    assert!(codes.contains(&200), "{codes:?}");
}

#[test]
fn a_long_poll_is_cut_when_the_drain_times_out() {
    let (_b, _g, proxy) = two_slots("[drain]\ntimeout = \"1s\"\n");
    let addr = proxy.addr;
    let started = Instant::now();
    let poll = std::thread::spawn(move || get(addr, "/poll?delay_ms=8000"));
    assert!(wait_until(Duration::from_secs(5), || inflight(
        &proxy, "blue"
    ) == 1));
    proxy.admin_ok("flip green");
    let r = poll.join().unwrap().unwrap();
    let took = started.elapsed();
    assert!(took < Duration::from_secs(6), "not cut: took {took:?}");
    assert_eq!((r.status, r.slot()), (503, Some("blue")));
    assert!(wait_until(Duration::from_secs(5), || inflight(
        &proxy, "blue"
    ) == 0));
    let status = proxy.admin_ok("status");
    assert_eq!(status["slots"]["blue"]["cut"], 1, "{status}");
    assert_eq!(status["slots"]["blue"]["state"], "idle");
    // The new active slot is untouched.
    assert_eq!(get(addr, "/").unwrap().text(), "green 1.1.0\n");
}
