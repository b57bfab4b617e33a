//! Binary upgrade: a new process takes the listening sockets over (`serve --upgrade`, then
//! SIGQUIT to the old one) with no refused connection, and takes the admin socket over.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bascule_admin::Status;
use bascule_tests::http::get;
use bascule_tests::{bascule_bin, wait_until, Proxy, ProxyConfig, SlotName, Upstream};

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
    let mut new = Kill(
        Command::new(bascule_bin())
            .args(["serve", "--upgrade", "-c"])
            .arg(&old.config)
            .env("BASCULE_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    let new_log = || std::fs::read_to_string(&log).unwrap_or_default();
    // The new process waits for the listeners on the upgrade socket; the old one hands them
    // over on SIGQUIT, so the socket must be there first.
    let mut upgrade_sock = old.socket.clone().into_os_string();
    upgrade_sock.push(".upgrade");
    assert!(
        wait_until(Duration::from_secs(15), || Path::new(&upgrade_sock)
            .exists()),
        "the new process never opened its upgrade socket: {}",
        new_log()
    );
    old.signal("QUIT");

    // The old process leaves, cleanly.
    assert_eq!(
        old.wait_exit(Duration::from_secs(20)),
        Some(0),
        "old process did not exit"
    );
    // Once it is gone, the new process answers on both sockets, with the state the old one
    // left, and is still running.
    let served = ok.load(Ordering::Relaxed);
    assert!(
        wait_until(Duration::from_secs(15), || {
            old.call::<Status>("status")
                .is_ok_and(|s| s.active == SlotName::Green)
        }),
        "new process never served the admin socket: {}",
        new_log()
    );
    assert!(
        wait_until(Duration::from_secs(5), || ok.load(Ordering::Relaxed)
            > served + 50),
        "no request answered after the old process exited"
    );
    assert!(
        matches!(new.0.try_wait(), Ok(None)),
        "the new process died: {}",
        new_log()
    );
    stop.store(true, Ordering::Relaxed);
    load.join().unwrap();

    // Not one request lost across the handover.
    assert_eq!(failed.load(Ordering::Relaxed), 0);
    assert!(
        old.socket.exists(),
        "the old process removed the new one's socket"
    );
    let r = get(old.addr, "/").unwrap();
    assert_eq!(r.text(), "green 1.1.0\n");
}
