//! Flips during HTTP/2 load: `h2load` (Debian's `nghttp2-client`) over TLS against the real
//! binary while the admin socket flips blue and green 20 times; no stream may fail.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bascule_tests::tls::{TestCert, TlsConn};
use bascule_tests::{free_addr, wait_until, Proxy, ProxyConfig, Upstream};

/// Flips made while the load runs.
const FLIPS: usize = 20;
/// Time between flips.
const FLIP_EVERY: Duration = Duration::from_millis(100);
/// Requests h2load makes: enough to outlast the flips several times over on a debug build.
const REQUESTS: u64 = 30_000;
/// How long h2load may run before the test gives up on it.
const LOAD_LIMIT: Duration = Duration::from_secs(120);

/// h2load's `requests:` and `status codes:` counts.
#[derive(Debug, Default)]
struct H2loadSummary {
    succeeded: u64,
    failed: u64,
    errored: u64,
    timeout: u64,
    status_2xx: u64,
}

/// Reads `N word` pairs of the line starting with `prefix` (`requests: 10 total, 10 started…`).
fn counts(out: &str, prefix: &str) -> Vec<(String, u64)> {
    let Some(line) = out.lines().find_map(|l| l.trim().strip_prefix(prefix)) else {
        return Vec::new();
    };
    line.split(',')
        .filter_map(|part| {
            let mut it = part.split_whitespace();
            let n = it.next()?.parse().ok()?;
            Some((it.next()?.to_string(), n))
        })
        .collect()
}

fn summary(out: &str) -> H2loadSummary {
    let mut s = H2loadSummary::default();
    for (word, n) in counts(out, "requests:") {
        match word.as_str() {
            "succeeded" => s.succeeded = n,
            "failed" => s.failed = n,
            "errored" => s.errored = n,
            "timeout" => s.timeout = n,
            _ => {}
        }
    }
    for (word, n) in counts(out, "status codes:") {
        if word == "2xx" {
            s.status_2xx = n;
        }
    }
    s
}

#[test]
fn twenty_flips_during_h2load_fail_no_stream() {
    if Command::new("h2load").arg("--version").output().is_err() {
        eprintln!("skipped: h2load not found (Debian package nghttp2-client; scripts/setup.sh)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let cert = TestCert::make(dir.path(), &["a.test"]);
    let blue = Upstream::start("127.0.0.1:0", "blue", "1.0.0").unwrap();
    let green = Upstream::start("127.0.0.1:0", "green", "1.1.0").unwrap();
    let https = free_addr();
    let proxy = Proxy::start(&ProxyConfig {
        blue: vec![blue.addr()],
        green: vec![green.addr()],
        listen: format!("https = [\"{https}\"]"),
        extra: format!("[tls]\n{}", cert.toml()),
        ..ProxyConfig::default()
    });
    assert!(
        wait_until(Duration::from_secs(10), || TlsConn::connect(
            https,
            "a.test",
            &[b"h2"],
            false
        )
        .is_ok_and(|c| c.alpn().as_deref() == Some(&b"h2"[..]))),
        "the https listener never negotiated h2"
    );

    let out_path = dir.path().join("h2load.txt");
    let mut load = Command::new("h2load")
        .args(["-c", "50", "-m", "10", "-n", &REQUESTS.to_string()])
        .arg(format!("https://127.0.0.1:{}/", https.port()))
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(Stdio::null())
        .spawn()
        .expect("run h2load");
    // Flip only once the load reaches blue, and count every flip made while h2load runs.
    assert!(
        wait_until(Duration::from_secs(20), || blue.served() > 0),
        "h2load's requests never reached blue"
    );
    let mut during = 0;
    for i in 0..FLIPS {
        let slot = if i % 2 == 0 { "green" } else { "blue" };
        proxy.admin_ok(&format!("flip {slot}"));
        if load.try_wait().ok().flatten().is_none() {
            during += 1;
        }
        std::thread::sleep(FLIP_EVERY);
    }
    let started = Instant::now();
    let finished = wait_until(LOAD_LIMIT, || load.try_wait().ok().flatten().is_some());
    if !finished {
        let _ = load.kill();
        let _ = load.wait();
        panic!("h2load ran longer than {LOAD_LIMIT:?}");
    }
    let out = std::fs::read_to_string(&out_path).unwrap();
    eprintln!(
        "h2load finished {:?} after the last flip:\n{out}",
        started.elapsed()
    );
    assert_eq!(
        during, FLIPS,
        "h2load ended before the flips did: raise REQUESTS"
    );
    let s = summary(&out);
    assert_eq!(
        (s.succeeded, s.status_2xx),
        (REQUESTS, REQUESTS),
        "every stream succeeds with a 2xx: {s:?}\n{out}"
    );
    assert_eq!((s.failed, s.errored, s.timeout), (0, 0, 0), "{s:?}\n{out}");
    assert!(
        blue.served() > 0 && green.served() > 0,
        "both slots served (blue {}, green {})",
        blue.served(),
        green.served()
    );
    assert!(
        out.contains("Application protocol: h2"),
        "h2load spoke HTTP/2:\n{out}"
    );
}
