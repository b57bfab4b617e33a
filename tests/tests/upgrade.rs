//! Binary upgrade: a new process takes the listening sockets over (`serve --upgrade`, then
//! SIGQUIT to the old one) with no refused connection, and takes the admin socket over.

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bascule_tests::http::get;
use bascule_tests::{bascule_bin, wait_until, Proxy, ProxyConfig, Upstream};

struct Kill(Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn upgrade_hands_over_sockets_without_refusing_a_connection() {
    let blue = Upstream::start("127.0.0.1:0", "blue", "1.0.0").unwrap();
    let green = Upstream::start("127.0.0.1:0", "green", "1.1.0").unwrap();
    let mut old = Proxy::start(&ProxyConfig {
        blue: vec![blue.addr()],
        green: vec![green.addr()],
        ..Default::default()
    });
    old.admin_ok("flip green");
    let old_pid = old.pid();

    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let load = {
        let (stop, ok, failed, addr) = (stop.clone(), ok.clone(), failed.clone(), old.addr);
        std::thread::spawn(move || {
            let mut n = 0;
            // A new connection per request: a refused connect would show here.
            while !stop.load(Ordering::Relaxed) && n < 200_000 {
                n += 1;
                match get(addr, "/") {
                    Ok(r) if r.status == 200 => ok.fetch_add(1, Ordering::Relaxed),
                    other => {
                        eprintln!("failed: {other:?}");
                        failed.fetch_add(1, Ordering::Relaxed)
                    }
                };
            }
        })
    };

    let log = old.dir.path().join("new.log");
    let new = Kill(
        Command::new(bascule_bin())
            .args(["serve", "--upgrade", "-c"])
            .arg(&old.config)
            .env("BASCULE_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    std::thread::sleep(Duration::from_millis(300));
    old.signal("QUIT");

    // The new process answers on the admin socket with the state the old one left.
    assert!(
        wait_until(Duration::from_secs(15), || {
            std::os::unix::net::UnixStream::connect(&old.socket).is_ok()
                && old.admin("status")["ok"] == true
                && old.admin("status")["active"] == "green"
        }),
        "new process never served the admin socket: {}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    assert_eq!(
        old.wait_exit(Duration::from_secs(20)),
        Some(0),
        "old process did not exit"
    );
    let before = ok.load(Ordering::Relaxed);
    assert!(wait_until(Duration::from_secs(5), || ok
        .load(Ordering::Relaxed)
        > before + 50));
    stop.store(true, Ordering::Relaxed);
    load.join().unwrap();

    assert_eq!(failed.load(Ordering::Relaxed), 0);
    assert!(
        old.socket.exists(),
        "the old process removed the new one's socket"
    );
    let r = get(old.addr, "/").unwrap();
    assert_eq!(r.text(), "green 1.1.0\n");
    assert_ne!(new.0.id(), old_pid);
}
