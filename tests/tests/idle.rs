//! Idle keep-alive connections leave their tasks after `[server] park_idle_after` and wait in
//! the shared idle set: they must come back intact (same connection, current routing, bodies
//! and hand-overs included), close at `keepalive_timeout`, on the client's FIN and on shutdown,
//! and leak no descriptor.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bascule_tests::http::{get, Conn};
use bascule_tests::{free_addr, wait_until, Proxy, ProxyConfig, Upstream};

/// Longest time between two refreshes of `bascule_connections_parked`: the idle set sweeps
/// every second, and a sweep due while it waits for events can come up to a second late.
const SWEEP_GAP: Duration = Duration::from_millis(2100);

struct Fixture {
    _blue: Upstream,
    _green: Upstream,
    proxy: Proxy,
    metrics: SocketAddr,
}

/// Two slots, metrics on, connections parked after 100 ms and closed after `keepalive`.
fn start(keepalive: &str) -> Fixture {
    let blue = Upstream::start("127.0.0.1:0", "blue", "1.0.0").unwrap();
    let green = Upstream::start("127.0.0.1:0", "green", "1.1.0").unwrap();
    let metrics = free_addr();
    let proxy = Proxy::start(&ProxyConfig {
        blue: vec![blue.addr()],
        green: vec![green.addr()],
        server: format!("park_idle_after = \"100ms\"\nkeepalive_timeout = \"{keepalive}\"\n"),
        extra: format!("[metrics]\nlisten = \"{metrics}\"\n"),
        ..Default::default()
    });
    Fixture {
        _blue: blue,
        _green: green,
        proxy,
        metrics,
    }
}

impl Fixture {
    /// `bascule_connections_parked` as scraped now.
    fn parked(&self) -> i64 {
        let text = get(self.metrics, "/metrics").unwrap().text();
        text.lines()
            .find_map(|l| l.strip_prefix("bascule_connections_parked "))
            .and_then(|v| v.trim().parse().ok())
            .expect("bascule_connections_parked is exported")
    }

    /// Waits until the gauge says `n` in a fresh reading.
    ///
    /// The gauge is refreshed by the idle set's sweep, not when it is read, so a reading can be
    /// as old as one sweep gap and say `n` by chance (the count before the change being
    /// awaited). A reading is trusted once the gauge has said `n` for longer than the longest
    /// gap between two sweeps: at least one refresh happened within that streak.
    fn wait_parked(&self, n: i64) {
        let mut seen = -1;
        let mut streak: Option<Instant> = None;
        let ok = wait_until(Duration::from_secs(15), || {
            seen = self.parked();
            if seen != n {
                streak = None;
                return false;
            }
            streak.get_or_insert_with(Instant::now).elapsed() > SWEEP_GAP
        });
        assert!(ok, "expected {n} parked connections, the gauge says {seen}");
    }

    /// `n` keep-alive connections, each after one answered request.
    fn open(&self, n: usize) -> Vec<Conn> {
        (0..n)
            .map(|_| {
                let mut c = Conn::connect(self.proxy.addr).unwrap();
                assert_eq!(c.get("/", &[]).unwrap().status, 200);
                c
            })
            .collect()
    }

    /// Client sockets the proxy holds ([`bascule_tests::client_sockets`]).
    fn client_sockets(&self) -> usize {
        bascule_tests::client_sockets(self.proxy.pid(), self.proxy.addr.port())
    }
}

#[test]
fn parked_connection_serves_its_next_request_with_current_routing() {
    let f = start("60s");
    let mut conn = Conn::connect(f.proxy.addr).unwrap();
    let r = conn.get("/", &[]).unwrap();
    assert_eq!((r.status, r.text().as_str()), (200, "blue 1.0.0\n"));
    f.wait_parked(1);

    // A flip while the connection is parked: its next request goes to the new slot.
    f.proxy.admin_ok("flip green --force");
    let r = conn.get("/", &[]).unwrap();
    assert_eq!((r.status, r.text().as_str()), (200, "green 1.1.0\n"));
    assert_eq!(r.slot(), Some("green"));
    // Back in a task while it is busy; parked again once idle.
    f.wait_parked(1);
    let r = conn.get("/", &[]).unwrap();
    assert_eq!(r.status, 200);
}

#[test]
fn many_parked_connections_resume_with_bodies_and_hand_overs() {
    let f = start("60s");
    let mut conns = f.open(200);
    f.wait_parked(200);

    for (i, c) in conns.iter_mut().enumerate() {
        let r = if i % 2 == 0 {
            c.get(&format!("/get/{i}"), &[]).unwrap()
        } else {
            // A body: handed over to Pingora's full proxy from a resumed connection.
            let body = format!("payload {i}");
            let head = format!(
                "POST /post/{i} HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
            c.send_raw(head.as_bytes()).unwrap();
            c.read_response(false).unwrap()
        };
        assert_eq!((r.status, r.text().as_str()), (200, "blue 1.0.0\n"), "#{i}");
    }
    // Each still works once more after that.
    for c in conns.iter_mut() {
        assert_eq!(c.get("/", &[]).unwrap().status, 200);
    }
}

#[test]
fn parked_connections_close_on_client_fin_without_leaking() {
    let f = start("60s");
    // Let the proxy settle its own descriptors (upstream pool, health checks) first.
    let _ = get(f.proxy.addr, "/").unwrap();
    f.wait_parked(0);
    let base = f.client_sockets();
    let conns = f.open(100);
    f.wait_parked(100);
    let held = f.client_sockets();
    assert!(held >= base + 100, "parked sockets are held open: {held}");

    drop(conns);
    f.wait_parked(0);
    let mut fds = 0;
    let back = wait_until(Duration::from_secs(5), || {
        fds = f.client_sockets();
        fds <= base
    });
    assert!(
        back,
        "client sockets after the clients left: {fds}, before: {base}"
    );
}

#[test]
fn parked_connection_is_closed_at_keepalive_timeout() {
    // Long enough for `wait_parked` to trust a reading before the connection expires.
    let f = start("5s");
    let mut conn = Conn::connect(f.proxy.addr).unwrap();
    let started = Instant::now();
    assert_eq!(conn.get("/", &[]).unwrap().status, 200);
    f.wait_parked(1);
    conn.set_timeout(Duration::from_secs(10)).unwrap();
    // The server closes: a clean EOF, not our read timeout.
    let err = conn.read_response(false).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::UnexpectedEof, "{err}");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(4900),
        "closed after {waited:?}, before keepalive_timeout"
    );
    f.wait_parked(0);
}

#[test]
fn shutdown_closes_parked_connections_and_exits() {
    let mut f = start("60s");
    let mut conns = f.open(10);
    f.wait_parked(10);
    f.proxy.signal("TERM");
    assert_eq!(f.proxy.wait_exit(Duration::from_secs(15)), Some(0));
    for c in conns.iter_mut() {
        c.set_timeout(Duration::from_secs(5)).unwrap();
        let err = c.read_response(false).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::UnexpectedEof, "{err}");
    }
}
