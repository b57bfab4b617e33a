//! `bascule check`: exit codes and `FILE:LINE:COL: message`.

use std::process::Command;

use bascule_tests::bascule_bin;

fn check(text: &str) -> (Option<i32>, String, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("b.toml");
    std::fs::write(&path, text).unwrap();
    let out = Command::new(bascule_bin())
        .args(["check", "-c"])
        .arg(&path)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        path.display().to_string(),
    )
}

#[test]
fn a_valid_file_prints_ok_and_exits_0() {
    let (code, out, _, _) = check(
        "[listen]\nhttp = [\"127.0.0.1:8080\"]\n\n[slots.blue]\nupstreams = [\"127.0.0.1:3000\"]\nstatic_root = \"/srv\"\n\n[[routes]]\nprefix = \"/\"\nto = \"static\"\nspa_fallback = \"/index.html\"\n",
    );
    assert_eq!(code, Some(0));
    assert_eq!(out, "ok\n");
}

#[test]
fn an_invalid_file_prints_file_line_col_and_exits_2() {
    let (code, out, err, path) = check("[health]\npath = \"/health\"\ninterval = \"soon\"\n");
    assert_eq!(code, Some(2));
    assert!(out.is_empty());
    assert!(
        err.starts_with(&format!("{path}:3:12: health.interval:")),
        "{err}"
    );
}

#[test]
fn an_unknown_key_is_an_error_not_ignored() {
    let (code, _, err, path) = check("[slots.blue]\nupstream = [\"127.0.0.1:1\"]\n");
    assert_eq!(code, Some(2));
    assert!(
        err.starts_with(&format!("{path}:2:1: slots.blue.upstream:")),
        "{err}"
    );
    assert!(err.contains("unknown field"), "{err}");
}

#[test]
fn a_missing_file_exits_2() {
    let out = Command::new(bascule_bin())
        .args(["check", "-c", "/nonexistent/bascule.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read config"));
}

#[test]
fn zero_durations_parking_after_keepalive_and_bad_cache_control_are_located() {
    for (text, at) in [
        ("[health]\ninterval = \"0s\"\n", "2:12: health.interval: must be above 0"),
        (
            "[server]\nkeepalive_timeout = \"10s\"\npark_idle_after = \"10s\"\n",
            "3:19: server.park_idle_after: must be below server.keepalive_timeout (10s)",
        ),
        (
            "[slots.blue]\nstatic_root = \"/srv\"\n\n[[routes]]\nprefix = \"/\"\nto = \"static\"\ncache_control = \"max age\"\n",
            "7:17: routes[0].cache_control: `max age` is not a directive",
        ),
    ] {
        let (code, _, err, path) = check(text);
        assert_eq!(code, Some(2), "{text}");
        assert!(err.starts_with(&format!("{path}:{at}")), "{err}");
    }
}
