//! Flips during HTTP/2 load: `h2load` (Debian's `nghttp2-client`) over TLS against the real
//! binary while the admin socket flips blue and green 20 times; no stream may fail.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bascule_tests::h2load::Summary;
use bascule_tests::tls::{https_two_slots, TestCert};
use bascule_tests::wait_until;

/// Flips made while the load runs.
const FLIPS: usize = 20;
/// Time between flips.
const FLIP_EVERY: Duration = Duration::from_millis(100);
/// How long h2load runs (`-D`): the flips take about 2 s of it, whatever the machine's speed.
const LOAD_SECS: u64 = 5;
/// How long h2load may run before the test gives up on it.
const LOAD_LIMIT: Duration = Duration::from_secs(120);

#[test]
fn twenty_flips_during_h2load_fail_no_stream() {
    if Command::new("h2load").arg("--version").output().is_err() {
        eprintln!("skipped: h2load not found (Debian package nghttp2-client; scripts/setup.sh)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let cert = TestCert::make(dir.path(), &["a.test"]);
    // Half the streams proxied, half a static asset answered from memory in the connection's
    // loop: both paths of an HTTP/2 stream see the flips.
    let site = dir.path().join("site");
    std::fs::create_dir_all(site.join("assets")).unwrap();
    std::fs::write(site.join("assets/app-0a1b2c3d.js"), vec![b'x'; 1024]).unwrap();
    let (blue, green, proxy, https) = https_two_slots(&cert, "a.test", &[b"h2"], Some(&site));

    let out_path = dir.path().join("h2load.txt");
    let mut load = Command::new("h2load")
        .args(["-c", "50", "-m", "10", "-D", &LOAD_SECS.to_string()])
        .arg(format!("https://127.0.0.1:{}/", https.port()))
        .arg(format!(
            "https://127.0.0.1:{}/assets/app-0a1b2c3d.js",
            https.port()
        ))
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
    assert_eq!(during, FLIPS, "h2load ended before the flips did");
    let s = Summary::parse(&out).expect("h2load's summary");
    assert!(s.succeeded > 0, "no stream succeeded: {s:?}\n{out}");
    assert_eq!(
        (s.status_2xx, s.done),
        (s.succeeded, s.succeeded),
        "every stream done succeeds with a 2xx: {s:?}\n{out}"
    );
    assert_eq!(
        (s.failed, s.errored, s.timeout, s.status_other),
        (0, 0, 0, 0),
        "{s:?}\n{out}"
    );
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
