//! `[rollback] auto = true`: the slot that just took traffic is flipped back when it answers
//! too many 5xx, once, and never to an unhealthy slot.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bascule_tests::http::get;
use bascule_tests::raw::{response, Action, ScriptedUpstream};
use bascule_tests::{free_addr, wait_until, Proxy, ProxyConfig, SlotName, Upstream};

/// A proxy watching for `window` with a 20-request minimum and a 5% limit; metrics on.
fn proxy(blue: SocketAddr, green: SocketAddr) -> (Proxy, SocketAddr) {
    let metrics = free_addr();
    let proxy = Proxy::start(&ProxyConfig {
        blue: vec![blue],
        green: vec![green],
        extra: format!(
            "[metrics]\nlisten = \"{metrics}\"\n\n[health]\ninterval = \"100ms\"\ntimeout = \"100ms\"\n\n\
             [rollback]\nauto = true\nwindow = \"30s\"\nmin_requests = 20\nmax_error_ratio = 0.05\n"
        ),
        ..Default::default()
    });
    (proxy, metrics)
}

/// The value of a metric without labels.
fn metric(addr: SocketAddr, name: &str) -> Option<u64> {
    let text = get(addr, "/metrics").ok()?.text();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// An upstream healthy on `/health` and answering 500 to everything else.
fn broken() -> ScriptedUpstream {
    ScriptedUpstream::start(|req| {
        let status = if req.is_health_check() { 200 } else { 500 };
        vec![Action::Write(response(status, &[], b"x"))]
    })
}

#[test]
fn a_slot_answering_500_is_rolled_back_once() {
    let blue = Upstream::start("127.0.0.1:0", "blue", "1.0.0").unwrap();
    let green = broken();
    let (proxy, metrics) = proxy(blue.addr(), green.addr());
    proxy.admin_ok("flip green");
    let generation = proxy.status().generation;
    for i in 0..20 {
        let r = get(proxy.addr, "/").unwrap();
        assert_eq!((i, r.status), (i, 500));
    }
    let crossed = Instant::now();
    assert!(
        wait_until(Duration::from_secs(1), || proxy.status().active
            == SlotName::Blue),
        "no rollback within 1 s of the 20th answer"
    );
    assert!(crossed.elapsed() < Duration::from_secs(1));
    let status = proxy.status();
    let last = status.last_rollback.expect("last_rollback in status");
    assert_eq!((last.from, last.to), (SlotName::Green, SlotName::Blue));
    assert_eq!(last.reason, "5xx 20/20 = 100% > 5%");
    assert_eq!(status.generation, generation + 1);
    assert_eq!(get(proxy.addr, "/").unwrap().text(), "blue 1.0.0\n");
    assert_eq!(metric(metrics, "bascule_auto_rollbacks_total"), Some(1));
    assert_eq!(metric(metrics, "bascule_flips_total"), Some(2));

    // Blue, back on duty, is not watched: traffic on it flips nothing.
    for _ in 0..30 {
        get(proxy.addr, "/").unwrap();
    }
    assert!(!wait_until(Duration::from_millis(500), || {
        proxy.status().generation != generation + 1
    }));
    // The record survives a restart.
    let proxy = proxy.restart();
    let again = proxy.status().last_rollback.expect("persisted");
    assert_eq!(again.reason, "5xx 20/20 = 100% > 5%");
}

#[test]
fn a_healthy_slot_is_kept() {
    let blue = Upstream::start("127.0.0.1:0", "blue", "1.0.0").unwrap();
    let green = Upstream::start("127.0.0.1:0", "green", "1.1.0").unwrap();
    let (proxy, metrics) = proxy(blue.addr(), green.addr());
    proxy.admin_ok("flip green");
    for _ in 0..500 {
        assert_eq!(get(proxy.addr, "/").unwrap().status, 200);
    }
    assert!(!wait_until(Duration::from_millis(300), || {
        proxy.status().active != SlotName::Green
    }));
    assert_eq!(proxy.status().last_rollback, None);
    assert_eq!(metric(metrics, "bascule_auto_rollbacks_total"), Some(0));
}

#[test]
fn an_upstream_that_refuses_connections_after_the_flip_is_rolled_back() {
    let blue = Upstream::start("127.0.0.1:0", "blue", "1.0.0").unwrap();
    let mut green = Upstream::start("127.0.0.1:0", "green", "1.1.0").unwrap();
    let (proxy, metrics) = proxy(blue.addr(), green.addr());
    proxy.admin_ok("flip green");
    green.stop();
    // 502s, then 503s once green is marked down: all 5xx, until the rollback.
    let mut n = 0;
    assert!(wait_until(Duration::from_secs(10), || {
        n += 1;
        let r = get(proxy.addr, "/").unwrap();
        assert!(r.status >= 500 || r.slot() == Some("blue"), "{}", r.status);
        proxy.status().active == SlotName::Blue
    }));
    assert!(n >= 20, "rolled back after {n} requests");
    let last = proxy.status().last_rollback.unwrap();
    assert_eq!((last.from, last.to), (SlotName::Green, SlotName::Blue));
    assert_eq!(metric(metrics, "bascule_auto_rollbacks_total"), Some(1));
}

#[test]
fn no_rollback_to_an_unhealthy_slot() {
    let blue = Upstream::start("127.0.0.1:0", "blue", "1.0.0").unwrap();
    let green = broken();
    let (proxy, metrics) = proxy(blue.addr(), green.addr());
    proxy.admin_ok("flip green");
    blue.set_healthy(false);
    assert!(wait_until(Duration::from_secs(5), || {
        proxy.status().slots.blue.upstreams[0].healthy == Some(false)
    }));
    for _ in 0..25 {
        get(proxy.addr, "/").unwrap();
    }
    assert!(!wait_until(Duration::from_millis(500), || {
        proxy.status().active == SlotName::Blue
    }));
    // Healthy again within the window: the rollback goes ahead.
    blue.set_healthy(true);
    assert!(wait_until(Duration::from_secs(5), || {
        proxy.status().active == SlotName::Blue
    }));
    assert_eq!(metric(metrics, "bascule_auto_rollbacks_total"), Some(1));
}

#[test]
fn a_canary_answering_500_ends_the_split() {
    let blue = Upstream::start("127.0.0.1:0", "blue", "1.0.0").unwrap();
    let green = broken();
    let (proxy, metrics) = proxy(blue.addr(), green.addr());
    proxy.admin_ok("weights blue=1 green=1");
    let mut n = 0;
    assert!(wait_until(Duration::from_secs(5), || {
        n += 1;
        get(proxy.addr, "/").unwrap();
        proxy.status().weights.is_none()
    }));
    assert!(n >= 40, "rolled back after {n} requests");
    let status = proxy.status();
    assert_eq!(status.active, SlotName::Blue);
    let last = status.last_rollback.unwrap();
    assert_eq!((last.from, last.to), (SlotName::Green, SlotName::Blue));
    assert!((0..10).all(|_| get(proxy.addr, "/").unwrap().status == 200));
    assert_eq!(metric(metrics, "bascule_auto_rollbacks_total"), Some(1));
}

#[test]
fn under_load_the_rollback_comes_at_the_request_that_crosses_the_threshold() {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    let blue = Upstream::start("127.0.0.1:0", "blue", "1.0.0").unwrap();
    let green = broken();
    let (proxy, _metrics) = proxy(blue.addr(), green.addr());
    proxy.admin_ok("flip green");
    let (failed, served) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    const CLIENTS: usize = 4;
    let workers: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (failed, served, addr) = (failed.clone(), served.clone(), proxy.addr);
            std::thread::spawn(move || {
                let mut conn = bascule_tests::http::Conn::connect(addr).unwrap();
                let deadline = Instant::now() + Duration::from_secs(10);
                let mut blue_in_a_row = 0;
                while blue_in_a_row < 20 && Instant::now() < deadline {
                    let Ok(r) = conn.get("/", &[]) else {
                        conn = bascule_tests::http::Conn::connect(addr).unwrap();
                        continue;
                    };
                    served.fetch_add(1, Ordering::Relaxed);
                    if r.status >= 500 {
                        failed.fetch_add(1, Ordering::Relaxed);
                        blue_in_a_row = 0;
                    } else if r.slot() == Some("blue") {
                        blue_in_a_row += 1;
                    }
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    assert_eq!(proxy.status().active, SlotName::Blue);
    let failed = failed.load(Ordering::Relaxed);
    eprintln!(
        "automatic rollback: {failed} failed of {} requests",
        served.load(Ordering::Relaxed)
    );
    // The 20 the threshold needs, the requests in flight when it was crossed, and those that
    // start while the flip is made: a few, not a polling interval's worth.
    assert!(
        failed <= 20 + 3 * CLIENTS as u64,
        "{failed} requests failed"
    );
}
