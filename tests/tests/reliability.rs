//! Reliability and abuse: no admin argument can take traffic down, a start that cannot serve
//! fails, a state file that cannot be used falls back to the last good one, and what a client
//! can hold (partial heads, metrics and admin connections) is bounded.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bascule_admin::SlotState;
use bascule_tests::http::get;
use bascule_tests::{
    bascule_bin, free_addr, two_slots, wait_until, Proxy, ProxyConfig, SlotName, Upstream,
};

const WAIT: Duration = Duration::from_secs(10);

#[test]
fn out_of_range_admin_arguments_are_refused_and_traffic_keeps_flowing() {
    let (_b, _g, proxy) = two_slots("");
    for line in [
        "weights blue=4294967295 green=1",
        "weights blue=101 green=0",
        "weights blue=1 green=18446744073709551616",
        "flip green --drain-timeout 18446744073709551615s",
        "flip green --drain-timeout 25h",
        "drain blue --wait --timeout 99999999999999s",
        "deploy green --upstreams 127.0.0.1:1 --timeout 400d",
    ] {
        let e = proxy.admin_err(line);
        assert!(
            e.contains("at most") || e.contains("longer than") || e.contains("whole number"),
            "`{line}`: {e}"
        );
        let r = get(proxy.addr, "/").unwrap();
        assert_eq!((r.status, r.slot()), (200, Some("blue")), "after `{line}`");
    }
    assert_eq!(proxy.status().active, SlotName::Blue);
    assert!(proxy.status().weights.is_none());
    let mut proxy = proxy;

    // Weights beyond the bound already in a state file (an older version wrote them) are
    // dropped at start, not served.
    proxy.admin_ok("set green version 1.1.1");
    proxy.stop();
    let mut state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&proxy.state).unwrap()).unwrap();
    state["weights"] = serde_json::json!([4_294_967_295u64, 1]);
    std::fs::write(&proxy.state, state.to_string()).unwrap();
    let proxy = proxy.restart();
    for _ in 0..5 {
        let r = get(proxy.addr, "/").unwrap();
        assert_eq!((r.status, r.slot()), (200, Some("blue")));
    }
    assert!(proxy.status().weights.is_none());
    assert!(proxy.stderr().contains("weights"), "{}", proxy.stderr());
}

#[test]
fn the_canary_split_interleaves() {
    let (_b, _g, proxy) = two_slots("");
    for (line, period) in [
        ("weights blue=50 green=50", 2),
        ("weights blue=90 green=10", 10),
    ] {
        proxy.admin_ok(line);
        let seq: String = (0..40)
            .map(|_| match get(proxy.addr, "/").unwrap().slot() {
                Some("green") => 'g',
                _ => 'b',
            })
            .collect();
        // One green in every `period` requests, never two in a row, never a block of blues
        // longer than the period.
        assert_eq!(seq.matches('g').count(), 40 / period, "{line}: {seq}");
        assert!(!seq.contains("gg"), "{line}: {seq}");
        assert!(!seq.contains(&"b".repeat(period)), "{line}: {seq}");
    }
}

/// `bascule serve -c CONFIG`, waited for up to `timeout`: its exit code and stderr, or `None`
/// if it still runs (it is then killed).
fn serve_exit(config: &std::path::Path, timeout: Duration) -> Option<(i32, String)> {
    let mut child = Command::new(bascule_bin())
        .args(["serve", "-c"])
        .arg(config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut code = None;
    wait_until(timeout, || {
        code = child.try_wait().unwrap().map(|s| s.code().unwrap_or(-1));
        code.is_some()
    });
    let Some(code) = code else {
        let _ = child.kill();
        let _ = child.wait();
        return None;
    };
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    Some((code, err))
}

fn minimal_config(dir: &std::path::Path, listen: SocketAddr, extra: &str) -> std::path::PathBuf {
    let path = dir.join("bascule.toml");
    std::fs::write(
        &path,
        format!(
            "[listen]\nhttp = [\"{listen}\"]\n\n[admin]\nsocket = \"{d}/admin.sock\"\n\n\
             [state]\npath = \"{d}/state.json\"\n\n\
             [slots.blue]\nupstreams = [\"127.0.0.1:9\"]\n\n[slots.green]\nupstreams = [\"127.0.0.1:9\"]\n\n{extra}",
            d = dir.display()
        ),
    )
    .unwrap();
    path
}

#[test]
fn a_taken_port_fails_the_start_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let holder = TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = holder.local_addr().unwrap();
    let config = minimal_config(dir.path(), taken, "");
    let _ = bascule_bin();
    let started = Instant::now();
    let (code, err) = serve_exit(&config, WAIT).expect("a start on a taken port must exit");
    assert_ne!(code, 0, "{err}");
    assert!(
        err.contains(&taken.to_string()) && err.contains("in use"),
        "{err}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}: {err}",
        started.elapsed()
    );
    assert!(
        !dir.path().join("admin.sock").exists(),
        "admin socket left behind"
    );

    // The metrics port too.
    let config = minimal_config(
        dir.path(),
        free_addr(),
        &format!("[metrics]\nlisten = \"{taken}\"\n"),
    );
    let (code, err) = serve_exit(&config, WAIT).expect("a taken metrics port must stop the start");
    assert_ne!(code, 0);
    assert!(
        err.contains("metrics.listen") && err.contains(&taken.to_string()),
        "{err}"
    );
}

#[test]
fn a_state_upstream_that_does_not_resolve_names_the_state_file() {
    let dir = tempfile::tempdir().unwrap();
    let config = minimal_config(dir.path(), free_addr(), "");
    let state = dir.path().join("state.json");
    std::fs::write(
        &state,
        r#"{"active":"green","previous":"blue","last_switch":null,"generation":3,"weights":null,
            "slots":{"green":{"upstreams":["nosuchhost.invalid:80"],"version":null,"static_root":null}}}"#,
    )
    .unwrap();
    let (code, err) = serve_exit(&config, WAIT).expect("exits");
    assert_ne!(code, 0);
    assert!(
        err.contains(&state.display().to_string()) && err.contains("nosuchhost.invalid"),
        "{err}"
    );
}

#[test]
fn a_corrupt_state_file_falls_back_to_the_previous_state() {
    let (_b, _g, proxy) = two_slots("");
    proxy.admin_ok("flip green");
    proxy.admin_ok("set blue version 1.0.1");
    let mut proxy = proxy;
    proxy.stop();
    let prev = proxy.state.with_extension("json.prev");
    assert!(prev.exists(), "no previous state kept");
    std::fs::write(&proxy.state, "{\"active\": \"gre").unwrap();
    let mut proxy = proxy.restart();
    let status = proxy.status();
    assert_eq!(
        status.active,
        SlotName::Green,
        "the previous state is restored"
    );
    assert_eq!(status.slots.green.state, SlotState::Active);
    assert!(
        status
            .warnings
            .iter()
            .any(|w| w.contains("corrupt") && w.contains(".prev")),
        "{:?}",
        status.warnings
    );
    assert!(proxy.stderr().contains("corrupt"), "{}", proxy.stderr());
    assert_eq!(get(proxy.addr, "/").unwrap().slot(), Some("green"));
    let human = proxy.ctl(&["status"]);
    assert!(String::from_utf8_lossy(&human.stdout).contains("WARNING"));

    // Both unusable: the config's default, and said so.
    proxy.stop();
    std::fs::write(&proxy.state, "{").unwrap();
    std::fs::write(&prev, "[").unwrap();
    let proxy = proxy.restart();
    let status = proxy.status();
    assert_eq!(status.active, SlotName::Blue);
    assert!(
        status.warnings.iter().any(|w| w.contains("default slot")),
        "{:?}",
        status.warnings
    );
}

/// Resident memory of process `pid`, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap()
}

/// CPU time (user + system) of process `pid`, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = stat.rsplit_once(')').unwrap().1;
    let f: Vec<&str> = after.split_whitespace().collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

#[test]
fn a_partial_head_costs_little_memory() {
    let (_b, _g, proxy) = two_slots("");
    const N: usize = 1000;
    // Warm up: the first connections grow the allocator's and the runtime's own structures.
    let warm: Vec<TcpStream> = (0..50)
        .map(|_| {
            let mut s = TcpStream::connect(proxy.addr).unwrap();
            s.write_all(b"G").unwrap();
            s
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let before = rss_kib(proxy.pid());
    let held: Vec<TcpStream> = (0..N)
        .map(|_| {
            let mut s = TcpStream::connect(proxy.addr).unwrap();
            s.write_all(b"G").unwrap();
            s
        })
        .collect();
    // Every connection has been read: a request on a new one is answered after them.
    assert_eq!(get(proxy.addr, "/").unwrap().status, 200);
    std::thread::sleep(Duration::from_millis(300));
    let per_conn = (rss_kib(proxy.pid()).saturating_sub(before)) * 1024 / N as u64;
    eprintln!("a partial head costs {per_conn} bytes of RSS");
    // nginx: ~5 KB with its 1 KiB header buffer. This is a debug build, whose futures are
    // several times larger than a release build's.
    assert!(per_conn < 24 * 1024, "{per_conn} bytes per partial head");
    drop((warm, held));
}

#[test]
fn metrics_connections_are_bounded_and_time_out() {
    let metrics = free_addr();
    let (_b, _g, proxy) = two_slots(&format!("[metrics]\nlisten = \"{metrics}\"\n"));
    let scrape = || get(metrics, "/metrics").map(|r| r.status).unwrap_or(0);
    assert!(wait_until(WAIT, || scrape() == 200));
    // More one-byte connections than the bound: those past it are closed at once.
    let mut held: Vec<TcpStream> = (0..48)
        .map(|_| {
            let mut s = TcpStream::connect(metrics).unwrap();
            s.write_all(b"G").unwrap();
            s
        })
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let closed_now = held
        .iter()
        .filter(|s| {
            s.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
            let mut r: &TcpStream = s;
            match r.read(&mut [0u8; 64]) {
                Ok(0) => true,
                Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
                Ok(_) => false,
            }
        })
        .count();
    assert!(closed_now >= 48 - 32, "{closed_now} closed at once");
    // And the others once the header timeout (5 s) runs out.
    let deadline = Instant::now() + Duration::from_secs(10);
    for s in &mut held {
        s.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
        loop {
            match s.read(&mut [0u8; 256]) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
                Err(_) => {}
            }
            assert!(
                Instant::now() < deadline,
                "a silent metrics connection stayed open"
            );
        }
    }
    assert_eq!(scrape(), 200);
    drop(proxy);
}

#[test]
fn running_out_of_descriptors_neither_spins_nor_stops_metrics() {
    let metrics = free_addr();
    let (_b, _g, proxy) = two_slots(&format!("[metrics]\nlisten = \"{metrics}\"\n"));
    assert!(wait_until(WAIT, || get(metrics, "/metrics")
        .is_ok_and(|r| r.status == 200)));
    let pid = proxy.pid().to_string();
    let limit = Command::new("prlimit")
        .args(["--nofile=200:200", "--pid", &pid])
        .status()
        .expect("prlimit (util-linux)");
    assert!(limit.success());
    // Keep-alive client connections until the proxy has no descriptor left.
    let mut clients = Vec::new();
    for _ in 0..260 {
        match TcpStream::connect(proxy.addr) {
            Ok(s) => clients.push(s),
            Err(_) => break,
        }
    }
    // Pending metrics connections the listener cannot accept.
    let pending: Vec<TcpStream> = (0..4)
        .filter_map(|_| TcpStream::connect(metrics).ok())
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let before = cpu_ticks(proxy.pid());
    std::thread::sleep(Duration::from_secs(2));
    let used = cpu_ticks(proxy.pid()) - before;
    let hz = 100; // USER_HZ on Linux
    assert!(
        used * 100 / (2 * hz) < 25,
        "{used} ticks of CPU in 2 s at the descriptor limit"
    );
    drop(pending);
    drop(clients);
    assert!(
        wait_until(WAIT, || get(metrics, "/metrics")
            .is_ok_and(|r| r.status == 200)),
        "metrics did not answer once descriptors were free again"
    );
    assert_eq!(get(proxy.addr, "/").unwrap().status, 200);
}

#[test]
fn admin_connections_are_bounded_and_time_out() {
    let blue = Upstream::start("127.0.0.1:0", "blue", "1.0.0").unwrap();
    let proxy = Proxy::start(&ProxyConfig {
        blue: vec![blue.addr()],
        green: vec![blue.addr()],
        admin: "idle_timeout = \"1s\"\n".into(),
        ..Default::default()
    });
    // A silent connection is closed after the idle timeout.
    let silent = UnixStream::connect(&proxy.socket).unwrap();
    silent
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let started = Instant::now();
    let n = (&silent).read(&mut [0u8; 16]).unwrap_or(usize::MAX);
    assert_eq!(n, 0, "the silent connection got bytes");
    assert!(started.elapsed() < Duration::from_secs(4));
    // A connection that asks every half second is served for longer than that.
    let mut talk = UnixStream::connect(&proxy.socket).unwrap();
    talk.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut lines = BufReader::new(talk.try_clone().unwrap());
    for _ in 0..4 {
        talk.write_all(b"status\n").unwrap();
        let mut line = String::new();
        lines.read_line(&mut line).unwrap();
        assert!(line.starts_with("{\"ok\":true"), "{line}");
        std::thread::sleep(Duration::from_millis(500));
    }
    drop((lines, talk));
    // Past the bound, a connection gets an error line and is closed.
    let held: Vec<UnixStream> = (0..64)
        .map(|_| UnixStream::connect(&proxy.socket).unwrap())
        .collect();
    let extra = UnixStream::connect(&proxy.socket).unwrap();
    extra
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut line = String::new();
    BufReader::new(extra).read_line(&mut line).unwrap();
    assert!(line.contains("too many admin connections"), "{line}");
    drop(held);
    assert!(wait_until(WAIT, || UnixStream::connect(&proxy.socket)
        .ok()
        .and_then(|mut s| {
            s.write_all(b"status\n").ok()?;
            let mut line = String::new();
            BufReader::new(s).read_line(&mut line).ok()?;
            Some(line.starts_with("{\"ok\":true"))
        })
        .unwrap_or(false)));
}

/// Open descriptors of process `pid`.
fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// One HTTP/2 frame.
fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = len.to_be_bytes()[1..].to_vec();
    f.extend_from_slice(&[kind, flags]);
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

#[test]
fn an_http2_client_that_takes_nothing_is_closed_after_the_send_timeout() {
    use bascule_tests::tls::{TestCert, TlsConn};
    let site = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(site.path().join("assets")).unwrap();
    std::fs::write(site.path().join("assets/big.bin"), vec![b'x'; 2 << 20]).unwrap();
    let certs = tempfile::tempdir().unwrap();
    let cert = TestCert::make(certs.path(), &["localhost"]);
    let blue = Upstream::start("127.0.0.1:0", "blue", "1.0.0").unwrap();
    let https = free_addr();
    let proxy = Proxy::start(&ProxyConfig {
        blue: vec![blue.addr()],
        green: vec![blue.addr()],
        blue_root: Some(site.path().to_path_buf()),
        green_root: Some(site.path().to_path_buf()),
        listen: format!("https = [\"{https}\"]"),
        extra: format!(
            "[limits]\nsend_timeout = \"1s\"\n\n[[routes]]\nprefix = \"/assets/\"\nto = \"static\"\n\n[tls]\n{}",
            cert.toml()
        ),
        ..Default::default()
    });
    TlsConn::wait_ready(https, "localhost");
    let pid = proxy.pid();
    let baseline = fds(pid);

    let conn = TlsConn::connect(https, "localhost", &[b"h2"], false).unwrap();
    assert_eq!(conn.alpn().as_deref(), Some(&b"h2"[..]));
    let mut tls = conn.into_stream();
    // Windows opened wide, ten streams asking for 2 MiB each, and then never a read.
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend(frame(4, 0, 0, &[0, 4, 0x7f, 0xff, 0xff, 0xff]));
    out.extend(frame(8, 0, 0, &(0x7fff_ffffu32 - 65_535).to_be_bytes()));
    for i in 0..10u32 {
        let path = b"/assets/big.bin";
        let mut block = vec![0x82, 0x87, 0x04, path.len() as u8];
        block.extend_from_slice(path);
        block.extend_from_slice(&[0x01, 9]);
        block.extend_from_slice(b"localhost");
        out.extend(frame(1, 0x5, 2 * i + 1, &block));
    }
    tls.write_all(&out).unwrap();
    tls.flush().unwrap();
    assert!(
        wait_until(WAIT, || fds(pid) > baseline),
        "the connection is not open on the proxy"
    );
    let started = Instant::now();
    assert!(
        wait_until(Duration::from_secs(15), || fds(pid) <= baseline),
        "a connection that took nothing is still open after 15 s ({} descriptors, {baseline} before)",
        fds(pid)
    );
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "{:?}",
        started.elapsed()
    );
    drop(tls);
    // The proxy serves on.
    assert!(TlsConn::connect(https, "localhost", &[b"h2"], false).is_ok());
}

#[test]
fn an_http1_client_that_stops_reading_is_cut_after_the_send_timeout() {
    let site = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(site.path().join("assets")).unwrap();
    std::fs::write(site.path().join("assets/big.bin"), vec![b'x'; 32 << 20]).unwrap();
    let blue = Upstream::start("127.0.0.1:0", "blue", "1.0.0").unwrap();
    for mode in bascule_tests::MODES {
        let proxy = Proxy::start(&ProxyConfig {
            blue: vec![blue.addr()],
            green: vec![blue.addr()],
            blue_root: Some(site.path().to_path_buf()),
            green_root: Some(site.path().to_path_buf()),
            server: mode.server(),
            extra: "[limits]\nsend_timeout = \"1s\"\n\n[[routes]]\nprefix = \"/assets/\"\nto = \"static\"\n".into(),
            ..Default::default()
        });
        let mut client = TcpStream::connect(proxy.addr).unwrap();
        socket2::SockRef::from(&client)
            .set_recv_buffer_size(4096)
            .unwrap();
        client
            .write_all(b"GET /assets/big.bin HTTP/1.1\r\nHost: e\r\n\r\n")
            .unwrap();
        // Never read: the proxy's writes stall on a shut window until the kernel gives up on
        // them and drops the connection.
        let (pid, port) = (proxy.pid(), proxy.addr.port());
        assert!(
            wait_until(WAIT, || bascule_tests::client_sockets(pid, port) == 1),
            "{mode:?}: the connection is not open on the proxy"
        );
        let started = Instant::now();
        assert!(
            wait_until(Duration::from_secs(15), || {
                bascule_tests::client_sockets(pid, port) == 0
            }),
            "{mode:?}: a client that reads nothing is still served after 15 s"
        );
        assert!(started.elapsed() >= Duration::from_millis(500), "{mode:?}");
        // What the client reads next ends short of the file, with a reset.
        let mut got = Vec::new();
        let end = client.read_to_end(&mut got);
        assert!(got.len() < 32 << 20, "{mode:?}: {} bytes", got.len());
        assert_eq!(
            end.err().map(|e| e.kind()),
            Some(std::io::ErrorKind::ConnectionReset),
            "{mode:?}"
        );
        // Serving on.
        assert_eq!(get(proxy.addr, "/").unwrap().status, 200, "{mode:?}");
    }
}
