//! The rest of the admin contract: canary weights, deploy, reload, and the metrics endpoint.

use std::time::Duration;

use bascule_admin::{DeployReply, ReloadReply, SlotState, WeightsReply};
use bascule_tests::http::get;
use bascule_tests::{free_addr, two_slots, wait_until, SlotName, Upstream};

#[test]
fn weights_split_new_requests_exactly() {
    let (_b, _g, proxy) = two_slots("");
    let v: WeightsReply = proxy.call("weights blue=3 green=1").unwrap();
    assert_eq!((v.weights.blue, v.weights.green), (3, 1));
    let mut green = 0;
    for _ in 0..40 {
        if get(proxy.addr, "/").unwrap().slot() == Some("green") {
            green += 1;
        }
    }
    assert_eq!(green, 10);
    assert_eq!(proxy.status().slots.green.state, SlotState::Active);
    // A flip ends the split.
    proxy.admin_ok("flip blue");
    assert!((0..10).all(|_| get(proxy.addr, "/").unwrap().slot() == Some("blue")));
    proxy.admin_err("weights blue=0 green=0");
}

#[test]
fn deploy_sets_waits_for_health_flips_and_drains() {
    let (_b, _g, proxy) = two_slots("[health]\ninterval = \"200ms\"\ntimeout = \"100ms\"\n");
    let next = Upstream::start("127.0.0.1:0", "green-next", "2.0.0").unwrap();
    let v: DeployReply = proxy
        .call(&format!(
            "deploy green --upstreams {} --version 2.0.0 --timeout 10s",
            next.addr()
        ))
        .unwrap();
    assert_eq!(v.active, SlotName::Green);
    assert!(v.drained);
    let steps: Vec<&str> = v.steps.iter().map(|s| s.step.as_str()).collect();
    assert_eq!(
        steps,
        ["set upstreams", "set version", "healthy", "flip", "drain"]
    );
    assert_eq!(get(proxy.addr, "/").unwrap().text(), "green-next 2.0.0\n");

    // A deploy to a dead address stops before the flip and says why.
    let dead = free_addr();
    let err = proxy.admin_err(&format!("deploy blue --upstreams {dead} --timeout 1s"));
    assert!(err.contains("did not become healthy"), "{err}");
    assert_eq!(proxy.status().active, SlotName::Green);
}

#[test]
fn reload_applies_a_good_file_and_keeps_the_old_config_on_a_bad_one() {
    let (blue, _g, proxy) = two_slots("");
    let other = Upstream::start("127.0.0.1:0", "blue-two", "3.0.0").unwrap();
    let original = std::fs::read_to_string(&proxy.config).unwrap();

    std::fs::write(&proxy.config, format!("{original}\n[bogus]\n")).unwrap();
    let err = proxy.admin_err("reload");
    assert!(err.contains("bogus"), "{err}");
    assert_eq!(get(proxy.addr, "/").unwrap().text(), "blue 1.0.0\n");

    let changed = original.replacen(
        &format!("upstreams = [\"{}\"]\nversion = \"1.0.0\"", blue.addr()),
        &format!("upstreams = [\"{}\"]\nversion = \"3.0.0\"", other.addr()),
        1,
    );
    assert_ne!(changed, original);
    std::fs::write(&proxy.config, changed).unwrap();
    let v: ReloadReply = proxy.call("reload").unwrap();
    let changes: Vec<&str> = v.changed.iter().map(String::as_str).collect();
    assert!(changes.contains(&"slots.blue.upstreams"), "{changes:?}");
    assert!(changes.contains(&"slots.blue.version"), "{changes:?}");
    assert_eq!(get(proxy.addr, "/").unwrap().text(), "blue-two 3.0.0\n");
}

#[test]
fn metrics_are_served_in_prometheus_text() {
    let metrics = free_addr();
    let (_b, _g, proxy) = two_slots(&format!("[metrics]\nlisten = \"{metrics}\"\n"));
    for _ in 0..3 {
        get(proxy.addr, "/").unwrap();
    }
    proxy.admin_ok("flip green");
    get(proxy.addr, "/").unwrap();
    // A request is counted just after its response is written: wait for the last one.
    let mut text = String::new();
    assert!(wait_until(Duration::from_secs(5), || {
        text = get(metrics, "/metrics")
            .map(|r| r.text())
            .unwrap_or_default();
        text.contains("bascule_requests_total{code=\"200\",slot=\"green\"} 1")
            && text.contains("bascule_inflight{slot=\"green\"} 0")
    }));
    for needle in [
        "bascule_requests_total{code=\"200\",slot=\"blue\"} 3",
        "bascule_requests_total{code=\"200\",slot=\"green\"} 1",
        "bascule_request_duration_seconds_bucket",
        "bascule_inflight{slot=\"blue\"} 0",
        "bascule_active_slot{slot=\"green\"} 1",
        "bascule_active_slot{slot=\"blue\"} 0",
        "bascule_flips_total 1",
        "bascule_upstream_healthy{slot=\"blue\"",
        "bascule_drain_duration_seconds",
    ] {
        assert!(text.contains(needle), "missing {needle} in:\n{text}");
    }
    assert_eq!(get(metrics, "/other").unwrap().status, 404);
}
