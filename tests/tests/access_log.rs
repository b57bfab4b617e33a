//! `[access_log]`: one line per request, whichever path answered it and however it ended
//! (proxied, static, the proxy's own 502, a refusal); both formats; SIGUSR1 reopens the file;
//! a log nobody reads drops lines and counts them instead of stalling requests. Every case runs
//! on the fast path and on Pingora's full proxy, which must log the same.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bascule_tests::http::{get, Conn};
use bascule_tests::raw::{echo, exchange, Action, ScriptedUpstream};
use bascule_tests::{free_addr, is_made_id, wait_until, Mode, Proxy, ProxyConfig, MODES};

const PRIVATE: &str = "PRIVATE STATIC FILE\n";
const WAIT: Duration = Duration::from_secs(10);

/// A proxy logging to a file, its upstream (`/broken` closes without answering, the rest is
/// echoed) and a static root holding `/private`.
struct Edge {
    proxy: Proxy,
    upstream: ScriptedUpstream,
    metrics: SocketAddr,
    log: PathBuf,
    _dirs: (tempfile::TempDir, tempfile::TempDir),
}

fn edge(mode: Mode, log_table: impl FnOnce(&Path) -> (PathBuf, String)) -> Edge {
    let upstream = ScriptedUpstream::start(|req| {
        if req.target == "/broken" {
            vec![Action::Close]
        } else {
            echo(req)
        }
    });
    let root = tempfile::tempdir().unwrap();
    std::fs::write(root.path().join("private"), PRIVATE).unwrap();
    let logs = tempfile::tempdir().unwrap();
    let (log, table) = log_table(logs.path());
    let metrics = free_addr();
    let proxy = Proxy::start(&ProxyConfig::on_one_upstream(
        upstream.addr(),
        root.path(),
        mode,
        format!(
            "[metrics]\nlisten = \"{metrics}\"\n\n{table}\n\
             [[routes]]\nprefix = \"/private\"\nto = \"static\"\n\n\
             [[routes]]\nprefix = \"/\"\nto = \"upstream\"\n"
        ),
    ));
    Edge {
        proxy,
        upstream,
        metrics,
        log,
        _dirs: (root, logs),
    }
}

fn file_log(format: &'static str) -> impl FnOnce(&Path) -> (PathBuf, String) {
    move |dir| {
        let path = dir.join("access.log");
        let table = format!(
            "[access_log]\npath = \"{}\"\nformat = \"{format}\"\n",
            path.display()
        );
        (path, table)
    }
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

/// Waits for `n` lines, then makes sure no more come.
fn wait_lines(path: &Path, n: usize) -> Vec<String> {
    let reached = wait_until(WAIT, || lines(path).len() >= n);
    assert!(
        reached,
        "{n} lines expected in {}: {:?}",
        path.display(),
        lines(path)
    );
    std::thread::sleep(Duration::from_millis(300));
    let got = lines(path);
    assert_eq!(got.len(), n, "one line per request: {got:#?}");
    got
}

/// A metric's value as scraped now (0 when not exported yet).
fn metric(addr: SocketAddr, name: &str) -> f64 {
    let text = get(addr, "/metrics").unwrap().text();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// The requests of [`every_kind_of_response_is_logged_once`]: raw bytes, expected status.
const REQUESTS: [(&[u8], u16); 6] = [
    (
        b"GET /api/x HTTP/1.1\r\nHost: e\r\nUser-Agent: probe/1\r\nConnection: close\r\n\r\n",
        200,
    ),
    (
        b"GET /private HTTP/1.1\r\nHost: e\r\nConnection: close\r\n\r\n",
        200,
    ),
    (
        b"GET /private-none HTTP/1.1\r\nHost: e\r\nConnection: close\r\n\r\n",
        404,
    ),
    (
        b"POST /api/post HTTP/1.1\r\nHost: e\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc",
        200,
    ),
    (
        b"GET /broken HTTP/1.1\r\nHost: e\r\nConnection: close\r\n\r\n",
        502,
    ),
    (
        b"GET /two-hosts HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        400,
    ),
];

/// What must be the same on both paths, per line.
type Seen = (
    String,
    String,
    u64,
    u64,
    Option<String>,
    bool,
    Option<String>,
);

#[test]
fn every_kind_of_response_is_logged_once() {
    let mut per_mode: Vec<Vec<Seen>> = Vec::new();
    for mode in MODES {
        let e = edge(mode, file_log("json"));
        for (bytes, status) in REQUESTS {
            let ex = exchange(e.proxy.addr, bytes, 1, Duration::from_secs(5));
            assert_eq!(ex.statuses(), vec![status], "{mode:?}: {ex:?}");
        }
        let got = wait_lines(&e.log, REQUESTS.len());
        let upstream = e.upstream.addr().to_string();
        let mut seen: Vec<Seen> = got
            .iter()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).expect("a JSON object a line");
                assert_eq!(v["client"], "127.0.0.1", "{mode:?}: {l}");
                assert!(v["time"].as_str().is_some_and(|t| t.ends_with('Z')), "{l}");
                assert!(v["duration_ms"].as_f64().is_some_and(|d| d >= 0.0), "{l}");
                // Every line, refusals included, carries the request's id.
                let id = v["request_id"].as_str().unwrap_or_default();
                assert!(is_made_id(id), "{mode:?}: {l}");
                let upstream_ok = match v["upstream"].as_str() {
                    Some(u) => u == upstream,
                    None => true,
                };
                assert!(upstream_ok, "{mode:?}: {l}");
                (
                    v["method"].as_str().unwrap_or("").to_string(),
                    v["path"].as_str().unwrap_or("").to_string(),
                    v["status"].as_u64().unwrap(),
                    v["bytes"].as_u64().unwrap(),
                    v["slot"].as_str().map(str::to_string),
                    v["upstream"].is_string(),
                    v["user_agent"].as_str().map(str::to_string),
                )
            })
            .collect();
        seen.sort();
        let find = |path: &str| seen.iter().find(|s| s.1 == path).cloned().unwrap();
        let blue = Some("blue".to_string());
        assert_eq!(
            find("/api/x"),
            (
                "GET".into(),
                "/api/x".into(),
                200,
                10,
                blue.clone(),
                true,
                Some("probe/1".into())
            ),
            "{mode:?}"
        );
        let private = find("/private");
        assert_eq!(
            (private.2, private.3),
            (200, PRIVATE.len() as u64),
            "{mode:?}"
        );
        assert_eq!((private.4.clone(), private.5), (blue.clone(), false));
        assert_eq!(find("/private-none").2, 404, "{mode:?}");
        assert_eq!(find("/api/post").2, 200, "{mode:?}");
        // A 502 names the member that failed, as nginx's `$upstream_addr` does.
        let broken = find("/broken");
        assert_eq!((broken.2, broken.4.clone(), broken.5), (502, blue, true));
        let refused = find("/two-hosts");
        assert_eq!(
            (refused.2, refused.4.clone(), refused.5),
            (400, None, false)
        );
        per_mode.push(seen);
    }
    assert_eq!(per_mode[0], per_mode[1], "both paths log the same");
}

#[test]
fn combined_lines_read_as_nginx_writes_them() {
    for mode in MODES {
        let e = edge(mode, file_log("combined"));
        let req = b"GET /api/q?a=1 HTTP/1.1\r\nHost: e\r\nUser-Agent: a \"quoted\" agent\r\n\
                    Referer: http://r/\r\nConnection: close\r\n\r\n";
        let ex = exchange(e.proxy.addr, req, 1, Duration::from_secs(5));
        assert_eq!(ex.statuses(), vec![200]);
        let got = wait_lines(&e.log, 1);
        // The request id comes last.
        let (line, id) = got[0].rsplit_once(" rid=").expect("rid=ID at the end");
        assert!(is_made_id(id), "{mode:?}: {}", got[0]);
        assert!(line.starts_with("127.0.0.1 - - ["), "{mode:?}: {line}");
        let rest = line.split_once("] ").expect("time in brackets").1;
        let tail = format!(" blue {}", e.upstream.addr());
        assert!(
            rest.starts_with(
                "\"GET /api/q?a=1 HTTP/1.1\" 200 14 \"http://r/\" \"a \\x22quoted\\x22 agent\" "
            ) && rest.ends_with(&tail),
            "{mode:?}: {line}"
        );
        let seconds = rest
            .strip_suffix(&tail)
            .unwrap()
            .rsplit(' ')
            .next()
            .unwrap();
        assert!(
            seconds.parse::<f64>().is_ok(),
            "{mode:?}: request time in {line}"
        );
    }
}

#[test]
fn an_http_1_0_request_is_logged_with_its_version_on_both_paths() {
    for mode in MODES {
        let e = edge(mode, file_log("combined"));
        let req = b"GET /api/old HTTP/1.0\r\nHost: e\r\n\r\n";
        let ex = exchange(e.proxy.addr, req, 1, Duration::from_secs(5));
        assert_eq!(ex.statuses(), vec![200], "{mode:?}");
        let got = wait_lines(&e.log, 1);
        assert!(
            got[0].contains("] \"GET /api/old HTTP/1.0\" 200 "),
            "{mode:?}: {}",
            got[0]
        );
    }
}

#[test]
fn sigusr1_reopens_the_file_after_a_rename() {
    for mode in MODES {
        let e = edge(mode, file_log("combined"));
        let mut sent = 0;
        let mut request = |path: &str| {
            let r = Conn::connect(e.proxy.addr).unwrap().get(path, &[]).unwrap();
            assert_eq!(r.status, 200);
            sent += 1;
        };
        request("/api/before");
        wait_lines(&e.log, 1);
        let rotated = e.log.with_extension("log.1");
        std::fs::rename(&e.log, &rotated).unwrap();
        e.proxy.signal("USR1");
        let deadline = Instant::now() + WAIT;
        while lines(&e.log).is_empty() {
            assert!(
                Instant::now() < deadline,
                "{mode:?}: no new file after SIGUSR1"
            );
            request("/api/after");
            std::thread::sleep(Duration::from_millis(50));
        }
        let reached = wait_until(WAIT, || lines(&rotated).len() + lines(&e.log).len() == sent);
        assert!(
            reached,
            "{mode:?}: {sent} requests, every line in one file or the other"
        );
        assert!(lines(&rotated)[0].contains("/api/before"));
        assert!(lines(&e.log).iter().all(|l| l.contains("/api/after")));
        let r = Conn::connect(e.proxy.addr)
            .unwrap()
            .get("/api/alive", &[])
            .unwrap();
        assert_eq!(r.status, 200, "{mode:?}: the proxy outlived the signal");
    }
}

#[test]
fn a_log_nobody_reads_drops_lines_instead_of_stalling() {
    const REQUESTS: usize = 800;
    for mode in MODES {
        // A FIFO held open for reading and never read: once its pipe buffer is full, the
        // writer blocks for good and the one-line buffer fills.
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("access.fifo");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(made.success());
        let reader = {
            let fifo = fifo.clone();
            // Opening blocks until the proxy opens the other end.
            std::thread::spawn(move || std::fs::File::open(fifo).unwrap())
        };
        let e = edge(mode, |_| {
            let table = format!(
                "[access_log]\npath = \"{}\"\nformat = \"json\"\nbuffer = 1\n",
                fifo.display()
            );
            (fifo.clone(), table)
        });
        let _held = reader.join().unwrap();
        let started = Instant::now();
        let mut c = Conn::connect(e.proxy.addr).unwrap();
        c.set_timeout(Duration::from_secs(5)).unwrap();
        for i in 0..REQUESTS {
            let r = c.get(&format!("/api/{i}"), &[]).unwrap();
            assert_eq!(r.status, 200, "{mode:?}: request {i}");
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{mode:?}: requests stalled behind the log"
        );
        let dropped = metric(e.metrics, "bascule_access_log_dropped_total");
        // The pipe holds at most 64 KiB of ~200-byte lines: most of 800 cannot fit.
        assert!(dropped >= 100.0, "{mode:?}: {dropped} dropped");
        assert!(
            dropped < REQUESTS as f64,
            "{mode:?}: some lines were written"
        );
        drop(dir);
    }
}
