//! Deploy safety: a failed deploy puts the slot back, `stats` and `ctl monitor`.

use std::time::Duration;

use bascule_admin::{MonitorSample, SlotStatus, StatsReply, Status};
use bascule_tests::http::get;
use bascule_tests::{free_addr, two_slots, SlotName};

/// A slot's status without what moves on its own (health checks, drain clocks, counters).
fn parts(s: &SlotStatus) -> (Option<String>, Option<std::path::PathBuf>, Vec<String>) {
    (
        s.version.clone(),
        s.static_root.clone(),
        s.upstreams.iter().map(|u| u.address.clone()).collect(),
    )
}

fn same_slots(a: &Status, b: &Status) {
    for slot in SlotName::ALL {
        assert_eq!(parts(a.slots.get(slot)), parts(b.slots.get(slot)), "{slot}");
    }
    assert_eq!(a.active, b.active);
}

#[test]
fn a_deploy_that_never_gets_healthy_leaves_the_slot_as_it_was() {
    let (_b, _g, proxy) = two_slots("[health]\ninterval = \"100ms\"\ntimeout = \"100ms\"\n");
    let before = proxy.status();
    let dead = free_addr();
    let err = proxy.admin_err(&format!(
        "deploy green --upstreams {dead} --version 9.9.9 --timeout 500ms"
    ));
    assert!(err.contains("did not become healthy"), "{err}");
    assert!(err.contains("green put back as it was"), "{err}");
    let after = proxy.status();
    same_slots(&before, &after);
    // The rollback target still answers.
    proxy.admin_ok("flip green");
    assert_eq!(get(proxy.addr, "/").unwrap().text(), "green 1.1.0\n");

    // Restarted from the state file, the slot is the one from before the deploy too.
    let proxy = proxy.restart();
    same_slots(&proxy.status(), &{
        let mut s = before.clone();
        s.active = SlotName::Green;
        s
    });
}

#[test]
fn ctl_deploy_prints_each_step_with_its_duration() {
    let (_b, _g, proxy) = two_slots("[health]\ninterval = \"100ms\"\ntimeout = \"100ms\"\n");
    let next = bascule_tests::Upstream::start("127.0.0.1:0", "green-next", "2.0.0").unwrap();
    let addr = next.addr().to_string();
    let out = proxy.ctl(&[
        "deploy",
        "green",
        "--upstreams",
        &addr,
        "--version",
        "2.0.0",
        "--timeout",
        "5s",
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = text.lines().collect();
    for (line, step) in
        lines
            .iter()
            .zip(["set upstreams", "set version", "healthy", "flip", "drain"])
    {
        assert!(line.starts_with(step) && line.contains(" ms"), "{text}");
    }
    assert!(lines[5].starts_with("deployed: green active"), "{text}");

    // A failed one shows the steps done, the put-back, and exits 1.
    let dead = free_addr().to_string();
    let out = proxy.ctl(&["deploy", "blue", "--upstreams", &dead, "--timeout", "300ms"]);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("healthy") && text.contains("FAILED"),
        "{text}"
    );
    assert!(text.contains("restore"), "{text}");
}

#[test]
fn stats_and_monitor_report_both_slots() {
    let (_b, _g, proxy) = two_slots("");
    proxy.admin_ok("weights blue=1 green=1");
    for _ in 0..40 {
        get(proxy.addr, "/").unwrap();
    }
    let stats: StatsReply = proxy.call("stats").unwrap();
    for slot in SlotName::ALL {
        let s = stats.get(slot);
        assert_eq!(s.requests, 20, "{slot}: {s:?}");
        assert_eq!(s.status.c2xx, 20);
        assert!(s.latency_ms.p50 > 0.0 && s.latency_ms.p50 <= s.latency_ms.p99);
    }
    assert_eq!(stats.preview_requests, 0);

    // Traffic during the monitor's interval, on both slots.
    let addr = proxy.addr;
    let load = std::thread::spawn(move || {
        let end = std::time::Instant::now() + Duration::from_millis(1500);
        let mut n = 0;
        while std::time::Instant::now() < end {
            get(addr, "/").unwrap();
            n += 1;
        }
        n
    });
    let out = proxy.ctl(&["monitor", "--interval", "500ms", "--once", "--json"]);
    assert!(load.join().unwrap() > 0);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.lines().count(), 1, "{text}");
    let sample: MonitorSample = serde_json::from_str(text.trim()).unwrap();
    assert!(sample.interval_seconds >= 0.5, "{sample:?}");
    for slot in SlotName::ALL {
        let r = sample.get(slot);
        assert!(
            r.requests > 0 && r.requests_per_s > 0.0,
            "{slot}: {sample:?}"
        );
        assert_eq!(r.error_ratio_5xx, 0.0);
        assert!(r.p50_ms > 0.0 && r.p50_ms <= r.p99_ms, "{slot}: {sample:?}");
    }
    let human = proxy.ctl(&["monitor", "--interval", "100ms", "--once"]);
    let text = String::from_utf8_lossy(&human.stdout);
    assert!(text.contains("REQ/S") && text.contains("green"), "{text}");
}
