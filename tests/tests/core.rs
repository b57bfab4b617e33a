//! Core: flips, rollbacks, in-flight requests across a flip, flips under load, state across
//! restarts, the admin socket under bad input, the proxy's own error responses, and upstream
//! connection reuse.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bascule_admin::{parse_reply, FlipReply, HelpReply, SetReply, SlotState, Status};
use bascule_proxy::control::state::PersistedState;
use bascule_tests::http::{get, Conn};
use bascule_tests::{
    free_addr, scripted_slots, wait_until, Proxy, ProxyConfig, SlotName, Upstream, MODES,
};

struct Pair {
    blue: Upstream,
    green: Upstream,
}

fn pair() -> Pair {
    Pair {
        blue: Upstream::start("127.0.0.1:0", "blue", "1.0.0").unwrap(),
        green: Upstream::start("127.0.0.1:0", "green", "1.1.0").unwrap(),
    }
}

fn config(p: &Pair) -> ProxyConfig {
    ProxyConfig {
        blue: vec![p.blue.addr()],
        green: vec![p.green.addr()],
        ..Default::default()
    }
}

#[test]
fn flip_and_rollback_move_the_next_request() {
    let p = pair();
    let proxy = Proxy::start(&config(&p));

    let r = get(proxy.addr, "/").unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "blue 1.0.0\n");
    assert_eq!(r.slot(), Some("blue"));

    let flip: FlipReply = proxy.call("flip green").unwrap();
    assert_eq!(flip.active, SlotName::Green);
    assert_eq!(flip.previous, Some(SlotName::Blue));
    let r = get(proxy.addr, "/").unwrap();
    assert_eq!(
        (r.text().as_str(), r.slot()),
        ("green 1.1.0\n", Some("green"))
    );

    let back: FlipReply = proxy.call("rollback").unwrap();
    assert_eq!(back.active, SlotName::Blue);
    assert!(back.generation > flip.generation);
    assert_eq!(get(proxy.addr, "/").unwrap().text(), "blue 1.0.0\n");

    let status = proxy.status();
    assert_eq!(status.active, SlotName::Blue);
    assert_eq!(status.previous, Some(SlotName::Green));
    assert!(status.last_switch.unwrap().ends_with('Z'));
    assert_eq!(status.slots.green.version.as_deref(), Some("1.1.0"));
    assert_eq!(status.slots.blue.state, SlotState::Active);
    assert_eq!(
        status.slots.blue.upstreams[0].address,
        p.blue.addr().to_string()
    );
}

#[test]
fn a_request_in_flight_finishes_on_the_slot_it_started_on() {
    let p = pair();
    let proxy = Proxy::start(&config(&p));
    let addr = proxy.addr;
    let slow = std::thread::spawn(move || get(addr, "/slow?delay_ms=2000").unwrap());
    assert!(
        wait_until(Duration::from_secs(5), || proxy
            .status()
            .slots
            .blue
            .inflight
            == 1),
        "the slow request never showed as in flight"
    );
    proxy.admin_ok("flip green");
    assert_eq!(proxy.status().slots.blue.state, SlotState::Draining);
    assert_eq!(get(proxy.addr, "/").unwrap().text(), "green 1.1.0\n");

    let r = slow.join().unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(
        r.text(),
        "blue 1.0.0\n",
        "the in-flight request must finish on blue"
    );
    assert_eq!(r.slot(), Some("blue"));
    assert!(wait_until(Duration::from_secs(5), || {
        proxy.status().slots.blue.state == SlotState::Idle
    }));
}

#[test]
fn flips_every_100ms_under_load_lose_no_request() {
    let p = pair();
    let proxy = Proxy::start(&config(&p));
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed, blue, green) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
    );
    let clients: Vec<_> = (0..32)
        .map(|_| {
            let (stop, ok, failed, blue, green) = (
                stop.clone(),
                ok.clone(),
                failed.clone(),
                blue.clone(),
                green.clone(),
            );
            let addr = proxy.addr;
            std::thread::spawn(move || {
                let mut conn = Conn::connect(addr).unwrap();
                let mut n = 0;
                // Bounded in count and in time.
                while !stop.load(Ordering::Relaxed) && n < 100_000 {
                    n += 1;
                    match conn.get("/", &[]) {
                        Ok(r) if r.status == 200 => {
                            ok.fetch_add(1, Ordering::Relaxed);
                            match r.slot() {
                                Some("blue") => blue.fetch_add(1, Ordering::Relaxed),
                                Some("green") => green.fetch_add(1, Ordering::Relaxed),
                                _ => failed.fetch_add(1, Ordering::Relaxed),
                            };
                        }
                        other => {
                            eprintln!("failed request: {other:?}");
                            failed.fetch_add(1, Ordering::Relaxed);
                            conn = Conn::connect(addr).unwrap();
                        }
                    }
                }
            })
        })
        .collect();
    let started = Instant::now();
    let mut flips = 0;
    // At least 3 s and 20 flips (a loaded machine answers admin commands slower), at most 15 s.
    while (started.elapsed() < Duration::from_secs(3) || flips < 20)
        && started.elapsed() < Duration::from_secs(15)
    {
        let slot = if flips % 2 == 0 { "green" } else { "blue" };
        proxy.admin_ok(&format!("flip {slot}"));
        flips += 1;
        std::thread::sleep(Duration::from_millis(100));
    }
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().unwrap();
    }
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    eprintln!(
        "{flips} flips, {ok} ok, {failed} failed, blue {}, green {}",
        blue.load(Ordering::Relaxed),
        green.load(Ordering::Relaxed)
    );
    assert!(flips >= 20);
    assert_eq!(failed, 0);
    assert!(ok > 1000, "too little load to mean anything: {ok}");
    assert!(blue.load(Ordering::Relaxed) > 0 && green.load(Ordering::Relaxed) > 0);
}

#[test]
fn restart_restores_active_slot_and_runtime_sets() {
    let p = pair();
    let extra = Upstream::start("127.0.0.1:0", "green-b", "2.0.0").unwrap();
    let proxy = Proxy::start(&config(&p));
    proxy.admin_ok(&format!("set green upstreams {}", extra.addr()));
    proxy.admin_ok("set green version 2.0.0");
    proxy.admin_ok("flip green");
    assert_eq!(get(proxy.addr, "/").unwrap().text(), "green-b 2.0.0\n");
    let generation = proxy.status().generation;

    let proxy = proxy.restart();
    let status = proxy.status();
    assert_eq!(status.active, SlotName::Green);
    assert_eq!(status.previous, Some(SlotName::Blue));
    assert_eq!(status.generation, generation);
    assert_eq!(status.slots.green.version.as_deref(), Some("2.0.0"));
    assert_eq!(get(proxy.addr, "/").unwrap().text(), "green-b 2.0.0\n");
    let state: PersistedState =
        serde_json::from_str(&std::fs::read_to_string(&proxy.state).unwrap()).unwrap();
    assert_eq!(state.active, SlotName::Green);
}

#[test]
fn a_corrupt_state_file_starts_with_the_config_defaults() {
    let p = pair();
    let proxy = Proxy::start(&config(&p));
    proxy.admin_ok("flip green");
    let mut proxy = proxy;
    proxy.stop();
    std::fs::write(&proxy.state, "{\"active\": \"gre").unwrap();
    let proxy = proxy.restart();
    assert!(
        proxy.stderr().contains("corrupt"),
        "no warning: {}",
        proxy.stderr()
    );
    assert_eq!(proxy.status().active, SlotName::Blue);
    assert_eq!(get(proxy.addr, "/").unwrap().text(), "blue 1.0.0\n");
}

#[test]
fn bad_admin_input_gets_errors_and_the_socket_keeps_serving() {
    use std::io::{BufRead, BufReader, Write};
    use std::os::unix::net::UnixStream;

    let p = pair();
    let proxy = Proxy::start(&config(&p));
    let stream = UnixStream::connect(&proxy.socket).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut w = stream.try_clone().unwrap();
    let mut r = BufReader::new(stream);
    let mut ask = |bytes: &[u8]| -> Result<Status, String> {
        w.write_all(bytes).unwrap();
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        parse_reply(&line).unwrap()
    };
    for (input, needle) in [
        (&b"frobnicate\n"[..], "unknown command"),
        (b"flip purple\n", "unknown slot"),
        (b"flip\n", "missing slot"),
        (b"\xff\xfe status\n", "UTF-8"),
        (b"set blue upstreams not-an-address\n", "host:port"),
        (b"rollback\n", "nothing to roll back"),
    ] {
        let err = ask(input).unwrap_err();
        assert!(err.contains(needle), "{err}");
    }
    let mut long = vec![b'x'; 70 * 1024];
    long.push(b'\n');
    let err = ask(&long).unwrap_err();
    assert!(err.contains("longer than 64 KiB"), "{err}");
    // Same connection, still in step.
    assert!(ask(b"status\n").is_ok());

    // A client that hangs up mid-line.
    let mut half = UnixStream::connect(&proxy.socket).unwrap();
    half.write_all(b"flip gr").unwrap();
    drop(half);

    assert!(proxy.call::<Status>("status").is_ok());
    assert_eq!(get(proxy.addr, "/").unwrap().status, 200);
    let help: HelpReply = proxy.call("help").unwrap();
    assert!(help.commands.len() >= 10);
}

#[test]
fn set_changes_only_idle_slots_unless_forced() {
    let p = pair();
    let proxy = Proxy::start(&config(&p));
    let err = proxy.admin_err(&format!("set blue upstreams {}", p.green.addr()));
    assert!(err.contains("--force"), "{err}");
    let v: SetReply = proxy.call("set green version 9.9.9").unwrap();
    assert_eq!(v.status.version.as_deref(), Some("9.9.9"));
    assert_eq!(v.status.state, SlotState::Idle);
    proxy.admin_ok(&format!("set blue upstreams {} --force", p.green.addr()));
    assert_eq!(get(proxy.addr, "/").unwrap().text(), "green 1.1.0\n");
    let err = proxy.admin_err("set green static_root /nonexistent/dir");
    assert!(err.contains("not a directory"), "{err}");
}

#[test]
fn ctl_prints_tables_and_exits_0_1_2() {
    let p = pair();
    let dead = free_addr();
    let mut cfg = config(&p);
    cfg.green = vec![dead];
    let proxy = Proxy::start(&cfg);

    let out = proxy.ctl(&["status"]);
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("SLOT") && text.contains("blue") && text.contains("active"),
        "{text}"
    );

    let out = proxy.ctl(&["--json", "status"]);
    let status = parse_reply::<Status>(&String::from_utf8_lossy(&out.stdout)).unwrap();
    assert_eq!(status.unwrap().active, SlotName::Blue);

    // Green's only member is down: refused, exit 1, the member named.
    let out = proxy.ctl(&["flip", "green"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&dead.to_string()), "{err}");
    assert_eq!(proxy.status().active, SlotName::Blue);

    // --force overrides; the proxy's own 502 carries the slot.
    assert_eq!(
        proxy.ctl(&["flip", "green", "--force"]).status.code(),
        Some(0)
    );
    let r = get(proxy.addr, "/").unwrap();
    assert_eq!((r.status, r.slot()), (503, Some("green")));

    assert_eq!(proxy.ctl(&["flip", "purple"]).status.code(), Some(2));
    let out = std::process::Command::new(bascule_tests::bascule_bin())
        .args(["ctl", "-s", "/nonexistent/admin.sock", "status"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("Is the proxy up"));
}

#[test]
fn proxy_errors_are_502_503_504_with_short_bodies() {
    let p = pair();
    let dead = free_addr();
    let mut cfg = config(&p);
    cfg.green = vec![dead];
    let proxy = Proxy::start(&cfg);
    proxy.admin_ok("flip green --force");
    // The health checker has not run yet or has marked it down: 502 (refused) or 503 (none usable).
    let r = get(proxy.addr, "/").unwrap();
    assert!(matches!(r.status, 502 | 503), "{r:?}");
    assert_eq!(r.slot(), Some("green"));
    assert!(r.text().len() < 100 && !r.text().is_empty());
    assert!(wait_until(Duration::from_secs(10), || get(proxy.addr, "/")
        .unwrap()
        .status
        == 503));
    assert!(get(proxy.addr, "/")
        .unwrap()
        .text()
        .contains("no healthy upstream"));

    proxy.admin_ok("rollback");
    // read_timeout is 5 s in the harness config.
    let r = get(proxy.addr, "/slow?delay_ms=7000").unwrap();
    assert_eq!(r.status, 504, "{r:?}");
    assert_eq!(r.slot(), Some("blue"));
}

#[test]
fn a_bad_http_request_gets_a_4xx() {
    let p = pair();
    let proxy = Proxy::start(&config(&p));
    let mut c = Conn::connect(proxy.addr).unwrap();
    c.send_raw(b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n")
        .unwrap();
    let r = c.read_response(false).unwrap();
    assert!((400..500).contains(&r.status), "{r:?}");
    assert_eq!(get(proxy.addr, "/").unwrap().status, 200);
}

#[test]
fn the_admin_socket_is_private_and_a_live_one_is_not_stolen() {
    use std::os::unix::fs::PermissionsExt;
    let p = pair();
    let proxy = Proxy::start(&config(&p));
    let mode = std::fs::metadata(&proxy.socket)
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);

    // A second proxy on the same socket (another port) exits with an error, and the first
    // keeps serving.
    let second = proxy.dir.path().join("second.toml");
    let text = std::fs::read_to_string(&proxy.config).unwrap();
    let other = bascule_tests::free_addr().to_string();
    std::fs::write(&second, text.replace(&proxy.addr.to_string(), &other)).unwrap();
    let out = std::process::Command::new(bascule_tests::bascule_bin())
        .args(["serve", "-c"])
        .arg(&second)
        .output()
        .unwrap();
    assert_ne!(out.status.code(), Some(0));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("already listens"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(proxy.status().active, SlotName::Blue);

    // A stale socket file (no one listening) is replaced.
    let mut proxy = proxy;
    proxy.stop();
    let _ = std::fs::remove_file(&proxy.socket);
    drop(std::os::unix::net::UnixListener::bind(&proxy.socket).unwrap());
    assert!(proxy.socket.exists());
    let proxy = proxy.restart();
    assert_eq!(proxy.status().active, SlotName::Blue);
}

/// One client sending requests one after another needs one upstream connection, on both paths:
/// the full proxy's pool used to throw away an idle connection now and then (the pool's idle
/// watcher still held it for an instant on another thread) and dial a new one.
#[test]
fn sequential_requests_reuse_one_upstream_connection() {
    for mode in MODES {
        let (blue, _green, proxy) = scripted_slots(&mode.server(), "");
        let mut conn = Conn::connect(proxy.addr).unwrap();
        for i in 0..2000 {
            let r = conn.get("/", &[]).unwrap();
            assert_eq!(r.status, 200, "{mode:?}: request {i}");
        }
        assert_eq!(blue.requests().len(), 2000, "{mode:?}");
        let used = blue.traffic_connections().len();
        assert_eq!(
            used, 1,
            "{mode:?}: 2000 requests used {used} upstream connections"
        );
    }
}
