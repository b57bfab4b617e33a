//! Drain and health: in-flight accounting that never leaks, drain states and waits, WebSockets
//! cut at the drain timeout, health-gated flips, retries past a dead member, graceful shutdown.

use std::io::Write;
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bascule_admin::{DrainReply, FlipReply, HealthReply, SlotState};
use bascule_tests::http::{get, Conn, Response};
use bascule_tests::ws::WsUpstream;
use bascule_tests::{two_slots, wait_until, Proxy, ProxyConfig, SlotName, Upstream};

fn inflight(proxy: &Proxy, slot: SlotName) -> u64 {
    proxy.status().slots.get(slot).inflight
}

fn state(proxy: &Proxy, slot: SlotName) -> SlotState {
    proxy.status().slots.get(slot).state
}

/// Waits for blue's upstream connection to be back in the pool, which happens just after
/// the response is written.
fn wait_blue_pooled(proxy: &Proxy) {
    assert!(wait_until(Duration::from_secs(5), || proxy
        .status()
        .slots
        .blue
        .pooled
        >= 1));
}

/// A request to blue that its upstream answers after `delay_ms`, once it is in flight.
fn long_poll_on_blue(proxy: &Proxy, delay_ms: u64) -> JoinHandle<std::io::Result<Response>> {
    let addr = proxy.addr;
    let poll = std::thread::spawn(move || get(addr, &format!("/poll?delay_ms={delay_ms}")));
    assert!(wait_until(Duration::from_secs(5), || inflight(
        proxy,
        SlotName::Blue
    ) == 1));
    poll
}

#[test]
fn a_long_request_keeps_its_slot_draining_then_idle_and_drain_wait_returns() {
    let (_b, _g, proxy) = two_slots("");
    let addr = proxy.addr;
    assert_eq!(get(addr, "/").unwrap().status, 200);
    wait_blue_pooled(&proxy);
    let slow = std::thread::spawn(move || get(addr, "/?delay_ms=1500").unwrap());
    assert!(wait_until(Duration::from_secs(5), || inflight(
        &proxy,
        SlotName::Blue
    ) == 1));
    proxy.admin_ok("flip green");
    assert_eq!(state(&proxy, SlotName::Blue), SlotState::Draining);
    // Idle upstream connections of the slot that left duty are released.
    assert_eq!(proxy.status().slots.blue.pooled, 0);
    let now: DrainReply = proxy.call("drain blue").unwrap();
    assert_eq!((now.drained, now.inflight), (false, 1));
    let drain = proxy.status().slots.blue.drain;
    assert!(drain.and_then(|d| d.drain_started).is_some());

    let started = Instant::now();
    let waited: DrainReply = proxy.call("drain blue --wait --timeout 10s").unwrap();
    assert!(waited.drained);
    assert_eq!(waited.inflight, 0);
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "returned before the request ended"
    );
    assert_eq!(slow.join().unwrap().text(), "blue 1.0.0\n");
    assert_eq!(state(&proxy, SlotName::Blue), SlotState::Idle);
    assert_eq!(proxy.status().slots.blue.pooled, 0);

    // A drain that cannot finish in time says so.
    let slow = std::thread::spawn(move || get(addr, "/?delay_ms=1500").unwrap());
    assert!(wait_until(Duration::from_secs(5), || inflight(
        &proxy,
        SlotName::Green
    ) == 1));
    let short: DrainReply = proxy.call("drain green --wait --timeout 100ms").unwrap();
    assert!(!short.drained);
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
        &proxy,
        SlotName::Blue
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
        wait_until(Duration::from_secs(10), || inflight(&proxy, SlotName::Blue)
            == 0),
        "in-flight count leaked: {}",
        inflight(&proxy, SlotName::Blue)
    );
    assert_eq!(inflight(&proxy, SlotName::Green), 0);
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
    let blue = proxy.status().slots.blue;
    assert_eq!((blue.inflight, blue.upgraded), (1, 1));

    proxy.admin_ok("flip green --force");
    assert_eq!(state(&proxy, SlotName::Blue), SlotState::Draining);
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
        &proxy,
        SlotName::Blue
    ) == 0));
    let blue = proxy.status().slots.blue;
    assert_eq!(blue.state, SlotState::Idle);
    assert!(blue.cut >= 1, "{blue:?}");
    assert_eq!(blue.upgraded, 0);
}

#[test]
fn an_unhealthy_slot_refuses_a_flip_unless_forced() {
    let (_b, green, proxy) =
        two_slots("[health]\ninterval = \"200ms\"\ntimeout = \"100ms\"\nunhealthy_threshold = 1\n");
    green.set_healthy(false);
    let health = || proxy.call::<HealthReply>("health").unwrap();
    assert!(wait_until(Duration::from_secs(5), || {
        health().upstreams[1].healthy == Some(false)
    }));
    let err = proxy.admin_err("flip green");
    assert!(
        err.contains(&green.addr().to_string()) && err.contains("status 503"),
        "{err}"
    );
    assert_eq!(proxy.status().active, SlotName::Blue);
    let out = proxy.ctl(&["rollback"]);
    assert_eq!(out.status.code(), Some(1));

    proxy.admin_ok("flip green --force");
    assert_eq!(proxy.status().active, SlotName::Green);
    // No usable member: 503 from the proxy, tagged green.
    let r = get(proxy.addr, "/").unwrap();
    assert_eq!((r.status, r.slot()), (503, Some("green")));

    green.set_healthy(true);
    assert!(wait_until(Duration::from_secs(5), || get(proxy.addr, "/")
        .unwrap()
        .status
        == 200));
    assert!(health().upstreams[1].last_check.is_some());
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
    // Both members busy, then one dies: the load goes on until the checker has marked it
    // down and well past that.
    assert!(wait_until(Duration::from_secs(10), || blue_b.served() > 20
        && ok.load(Ordering::Relaxed) > 100));
    let before = blue_b.served();
    blue_b.stop();
    let marked_down = wait_until(Duration::from_secs(10), || {
        proxy.call::<HealthReply>("health").unwrap().upstreams[1].healthy == Some(false)
    });
    let at_mark = ok.load(Ordering::Relaxed);
    assert!(wait_until(Duration::from_secs(10), || ok
        .load(Ordering::Relaxed)
        > at_mark + 200));
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().unwrap();
    }
    assert!(before > 0, "the second member never took traffic");
    assert_eq!(failed.load(Ordering::Relaxed), 0);
    assert!(ok.load(Ordering::Relaxed) > 200);
    assert!(marked_down, "the dead member was never marked down");
}

#[test]
fn sigterm_lets_started_requests_finish() {
    let (_b, _g, mut proxy) = two_slots("");
    let addr = proxy.addr;
    let slow: Vec<_> = (0..5)
        .map(|_| std::thread::spawn(move || get(addr, "/?delay_ms=1000")))
        .collect();
    assert!(wait_until(Duration::from_secs(5), || inflight(
        &proxy,
        SlotName::Blue
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
    let poll = long_poll_on_blue(&proxy, 8000);
    proxy.admin_ok("flip green");
    let r = poll.join().unwrap().unwrap();
    let took = started.elapsed();
    assert!(took < Duration::from_secs(6), "not cut: took {took:?}");
    assert_eq!((r.status, r.slot()), (503, Some("blue")));
    assert!(wait_until(Duration::from_secs(5), || inflight(
        &proxy,
        SlotName::Blue
    ) == 0));
    let blue = proxy.status().slots.blue;
    assert_eq!(blue.cut, 1, "{blue:?}");
    assert_eq!(blue.state, SlotState::Idle);
    // The new active slot is untouched.
    assert_eq!(get(addr, "/").unwrap().text(), "green 1.1.0\n");
}

#[test]
fn a_drain_keeps_its_own_deadline_when_its_slot_comes_back_and_leaves_again() {
    let (_b, _g, proxy) = two_slots("[drain]\ntimeout = \"3s\"\n");
    let poll = long_poll_on_blue(&proxy, 15000);
    // Blue's first drain (deadline in 3 s), ended at once by blue's return...
    proxy.admin_ok("flip green");
    proxy.admin_ok("flip blue");
    // ...then, well within that deadline, a second drain with a deadline of its own.
    // A time gap is the point here, not a condition to await.
    std::thread::sleep(Duration::from_millis(1500));
    let last = Instant::now();
    proxy.admin_ok("flip green");
    let r = poll.join().unwrap().unwrap();
    let took = last.elapsed();
    assert!(
        took >= Duration::from_millis(2500),
        "cut {took:?} after the last flip: the first drain's deadline was applied to the second"
    );
    assert!(took < Duration::from_secs(7), "not cut: took {took:?}");
    assert_eq!((r.status, r.slot()), (503, Some("blue")));
}

#[test]
fn a_flip_whose_state_file_cannot_be_written_is_live_and_keeps_its_drain_deadline() {
    let blue = Upstream::start("127.0.0.1:0", "blue", "1.0.0").unwrap();
    let green = Upstream::start("127.0.0.1:0", "green", "1.1.0").unwrap();
    let state_dir = tempfile::tempdir().unwrap();
    let proxy = Proxy::start(&ProxyConfig {
        blue: vec![blue.addr()],
        green: vec![green.addr()],
        state: Some(state_dir.path().join("sub/state.json")),
        extra: "[drain]\ntimeout = \"1s\"\n".into(),
        ..Default::default()
    });
    // The state file's folder is a file: every write fails from now on (even as root).
    std::fs::write(state_dir.path().join("sub"), "not a folder").unwrap();
    let addr = proxy.addr;
    assert_eq!(get(addr, "/").unwrap().status, 200);
    wait_blue_pooled(&proxy);
    let started = Instant::now();
    let poll = long_poll_on_blue(&proxy, 8000);

    let flip: FlipReply = proxy
        .call("flip green")
        .expect("a flip that is live is not reported as refused");
    assert_eq!(flip.active, SlotName::Green);
    let warning = flip
        .warning
        .expect("the reply says the state was not saved");
    assert!(warning.contains("state file"), "{warning}");
    // Every side effect of the flip happened: pool released, drain watched and cut on time.
    assert_eq!(proxy.status().slots.blue.pooled, 0);
    assert_eq!(get(addr, "/").unwrap().text(), "green 1.1.0\n");
    let r = poll.join().unwrap().unwrap();
    let took = started.elapsed();
    assert!(took < Duration::from_secs(6), "not cut: took {took:?}");
    assert_eq!((r.status, r.slot()), (503, Some("blue")));
    assert!(wait_until(Duration::from_secs(5), || {
        proxy.status().slots.blue.cut == 1
    }));
    // ctl shows the change as done, with the warning.
    let out = proxy.ctl(&["flip", "blue"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stderr).contains("warning: applied, but not saved"));
}
