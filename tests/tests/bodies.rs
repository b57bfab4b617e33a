//! Request bodies, end to end through the real binary on both request paths (the first two
//! tests over TLS too): bodies of every size arrive intact (checksummed at the upstream),
//! chunked bodies with extensions and trailers, `Expect: 100-continue` with an upstream that
//! answers early or says continue, a client that stops mid-body, the body limit and timeout,
//! pipelined POSTs, HTTP/1.0, and a flip during an upload.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bascule_tests::raw::{End, RawClient};
use bascule_tests::tls::{https_for, TlsConn};
use bascule_tests::{wait_until, Mode, Proxy, ProxyConfig, MODES, PATHS};

const T: Duration = Duration::from_secs(10);

/// FNV-1a over a body: what the upstream reports and the test expects.
fn fnv(data: &[u8], mut h: u64) -> u64 {
    for b in data {
        h ^= *b as u64;
        h = h.wrapping_mul(0x100_0000_01b3);
    }
    h
}
const FNV0: u64 = 0xcbf2_9ce4_8422_2325;

fn body_of(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 % 251) as u8).collect()
}

fn summary(body: &[u8]) -> String {
    format!("len={} sum={:016x}", body.len(), fnv(body, FNV0))
}

/// What the body upstream saw of one request.
#[derive(Debug, Clone)]
struct Seen {
    conn: usize,
    path: String,
    /// Body bytes received (decoded).
    len: usize,
    complete: bool,
    trailers: Vec<String>,
}

/// An upstream that streams each body through a checksum (never holding it) and answers
/// `len=N sum=X`. By path: `/early` answers 413 at once without reading the body, `/continue`
/// sends `100 Continue` first, `/chunked` answers with a chunked body.
struct BodyUpstream {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl BodyUpstream {
    fn start(name: &'static str) -> BodyUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        std::thread::spawn(move || {
            for (conn, stream) in listener.incoming().flatten().enumerate() {
                let s = s.clone();
                std::thread::spawn(move || {
                    let _ = serve(stream, conn, name, &s);
                });
            }
        });
        BodyUpstream { addr, seen }
    }

    fn seen(&self) -> Vec<Seen> {
        let all = self.seen.lock().unwrap().clone();
        all.into_iter().filter(|s| s.path != "/health").collect()
    }
}

fn serve(
    stream: TcpStream,
    conn: usize,
    name: &str,
    seen: &Mutex<Vec<Seen>>,
) -> std::io::Result<()> {
    let mut r = BufReader::with_capacity(64 * 1024, stream.try_clone()?);
    let mut w = stream;
    loop {
        let mut line = String::new();
        if r.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
        let (mut len, mut chunked, mut expect) = (None, false, false);
        loop {
            let mut h = String::new();
            r.read_line(&mut h)?;
            if h == "\r\n" || h.is_empty() {
                break;
            }
            let h = h.to_ascii_lowercase();
            if let Some(v) = h.strip_prefix("content-length:") {
                len = v.trim().parse::<u64>().ok();
            }
            chunked |= h.starts_with("transfer-encoding:") && h.contains("chunked");
            expect |= h.starts_with("expect:") && h.contains("100-continue");
        }
        let mut record = Seen {
            conn,
            path: path.clone(),
            len: 0,
            complete: false,
            trailers: Vec::new(),
        };
        if path == "/early" {
            seen.lock().unwrap().push(record);
            let resp = "HTTP/1.1 413 Payload Too Large\r\ncontent-length: 4\r\nconnection: close\r\n\r\nnope";
            w.write_all(resp.as_bytes())?;
            return Ok(());
        }
        if path == "/continue" && expect {
            w.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
        }
        let mut sum = FNV0;
        let mut buf = vec![0u8; 64 * 1024];
        let ok = if chunked {
            read_chunked(&mut r, &mut sum, &mut record)
        } else {
            let mut left = len.unwrap_or(0);
            while left > 0 {
                let n = r.read(&mut buf[..left.min(64 * 1024) as usize])?;
                if n == 0 {
                    break;
                }
                sum = fnv(&buf[..n], sum);
                record.len += n;
                left -= n as u64;
            }
            left == 0
        };
        record.complete = ok;
        seen.lock().unwrap().push(record.clone());
        if !ok {
            return Ok(());
        }
        let body = format!("len={} sum={sum:016x} slot={name}", record.len);
        if path == "/chunked" {
            let half = body.len() / 2;
            let (a, b) = body.split_at(half);
            let resp = format!(
                "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n{:x}\r\n{a}\r\n{:x}\r\n{b}\r\n0\r\n\r\n",
                a.len(),
                b.len()
            );
            w.write_all(resp.as_bytes())?;
        } else {
            let resp = format!(
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            );
            w.write_all(resp.as_bytes())?;
        }
    }
}

fn read_chunked(r: &mut impl BufRead, sum: &mut u64, rec: &mut Seen) -> bool {
    loop {
        let mut size = String::new();
        if r.read_line(&mut size).unwrap_or(0) == 0 {
            return false;
        }
        let digits = size.trim().split(';').next().unwrap_or("");
        let Ok(n) = usize::from_str_radix(digits, 16) else {
            return false;
        };
        if n == 0 {
            loop {
                let mut t = String::new();
                if r.read_line(&mut t).unwrap_or(0) == 0 {
                    return false;
                }
                if t == "\r\n" {
                    return true;
                }
                rec.trailers.push(t.trim().to_string());
            }
        }
        let mut chunk = vec![0; n + 2];
        if r.read_exact(&mut chunk).is_err() {
            return false;
        }
        *sum = fnv(&chunk[..n], *sum);
        rec.len += n;
    }
}

fn proxy(mode: Mode, blue: &BodyUpstream, green: Option<&BodyUpstream>, extra: &str) -> Proxy {
    let root = tempfile::tempdir().unwrap();
    Proxy::start(&ProxyConfig {
        blue: vec![blue.addr],
        green: vec![green.unwrap_or(blue).addr],
        blue_root: Some(root.path().to_path_buf()),
        green_root: Some(root.path().to_path_buf()),
        server: mode.server(),
        extra: format!("[health]\npath = \"/health\"\ninterval = \"1s\"\n{extra}"),
        ..Default::default()
    })
}

/// A proxy in `mode` over `up`, with a client connection to it (over TLS in [`Mode::Tls`]).
fn proxy_and_client(
    mode: Mode,
    up: &BodyUpstream,
) -> (Proxy, RawClient, Option<tempfile::TempDir>) {
    let root = tempfile::tempdir().unwrap();
    let mut cfg = ProxyConfig {
        blue: vec![up.addr],
        green: vec![up.addr],
        blue_root: Some(root.path().to_path_buf()),
        green_root: Some(root.path().to_path_buf()),
        server: mode.server(),
        extra: "[health]\npath = \"/health\"\ninterval = \"1s\"\n".into(),
        ..Default::default()
    };
    let https = https_for(mode, &mut cfg);
    let p = Proxy::start(&cfg);
    let c = match &https {
        Some((addr, _)) => {
            TlsConn::wait_ready(*addr, "localhost");
            RawClient::connect_tls(*addr).unwrap()
        }
        None => RawClient::connect(p.addr).unwrap(),
    };
    (p, c, https.map(|(_, dir)| dir))
}

fn post(path: &str, body: &[u8], extra: &str) -> Vec<u8> {
    let mut req = format!(
        "POST {path} HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n{extra}\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(body);
    req
}

#[test]
fn bodies_of_every_size_arrive_intact() {
    let up = BodyUpstream::start("blue");
    for mode in PATHS {
        let (_p, mut c, _certs) = proxy_and_client(mode, &up);
        for len in [0, 1, 1024, 1024 * 1024] {
            let body = body_of(len);
            c.send(&post("/upload", &body, "")).unwrap();
            let ex = c.read(1, T);
            assert_eq!(
                ex.statuses(),
                vec![200],
                "{} {len}: {:?}",
                mode.name(),
                ex.end
            );
            let text = ex.responses[0].text();
            assert!(text.starts_with(&summary(&body)), "{}: {text}", mode.name());
        }
        // Every method with a body; keep-alive held throughout.
        for method in ["PUT", "PATCH", "DELETE"] {
            let req = format!("{method} /x HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nabc");
            c.send(req.as_bytes()).unwrap();
            let ex = c.read(1, T);
            assert_eq!(ex.statuses(), vec![200], "{} {method}", mode.name());
            assert!(ex.responses[0].text().starts_with(&summary(b"abc")));
        }
        assert_eq!(c.read(1, Duration::from_millis(50)).end, End::Timeout);
    }
}

#[test]
fn chunked_bodies_with_extensions_and_trailers() {
    let up = BodyUpstream::start("blue");
    for mode in PATHS {
        let (_p, mut c, _certs) = proxy_and_client(mode, &up);
        let big = body_of(300_000);
        let mut req = b"POST /c HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        req.extend_from_slice(b"5;name=value\r\nhello\r\n");
        req.extend_from_slice(format!("{:x}\r\n", big.len()).as_bytes());
        req.extend_from_slice(&big);
        req.extend_from_slice(b"\r\n0\r\nx-check: 1\r\n\r\n");
        // Sent in pieces, so the framing is followed across reads.
        let sent = c.send_slowly(&req, 70_000, Duration::from_millis(5));
        assert_eq!(sent, req.len());
        let ex = c.read(1, T);
        assert_eq!(ex.statuses(), vec![200], "{}: {:?}", mode.name(), ex.end);
        let mut whole = b"hello".to_vec();
        whole.extend_from_slice(&big);
        assert!(ex.responses[0].text().starts_with(&summary(&whole)));
        // A malformed chunk is refused and the connection closed.
        c.send(b"POST /c HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n")
            .unwrap();
        let ex = c.read(1, T);
        assert_eq!(ex.statuses(), vec![400], "{}", mode.name());
        assert!(c.closed_within(T), "{}", mode.name());
    }
}

#[test]
fn expect_continue_with_an_early_answer_or_a_continue() {
    let up = BodyUpstream::start("blue");
    for mode in MODES {
        let p = proxy(mode, &up, None, "");
        // The upstream refuses at once: the waiting client gets the 413, not a hang.
        let mut c = RawClient::connect(p.addr).unwrap();
        let head = "POST /early HTTP/1.1\r\nHost: t\r\nContent-Length: 100000\r\nExpect: 100-continue\r\n\r\n";
        c.send(head.as_bytes()).unwrap();
        let ex = c.read(1, T);
        assert_eq!(ex.statuses(), vec![413], "{}: {:?}", mode.name(), ex.end);
        assert!(ex.elapsed < Duration::from_secs(5));
        // The upstream says continue: the client sees the 100, sends, and gets the checksum.
        let mut c = RawClient::connect(p.addr).unwrap();
        let body = body_of(50_000);
        let head = format!(
            "POST /continue HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\nExpect: 100-continue\r\n\r\n",
            body.len()
        );
        c.send(head.as_bytes()).unwrap();
        let start = Instant::now();
        let got_continue = wait_until(T, || {
            let ex = c.read_for(1, &[], Duration::from_millis(50));
            !ex.interim.is_empty() || ex.leftover.starts_with(b"HTTP/1.1 100")
        });
        assert!(got_continue, "{}: no 100 Continue", mode.name());
        assert!(start.elapsed() < Duration::from_secs(5));
        c.send(&body).unwrap();
        let ex = c.read(1, T);
        assert_eq!(ex.statuses(), vec![200], "{}", mode.name());
        assert!(ex.responses[0].text().starts_with(&summary(&body)));
    }
}

#[test]
fn a_client_that_stops_mid_body_does_not_poison_the_pool() {
    let up = BodyUpstream::start("blue");
    for mode in MODES {
        let p = proxy(mode, &up, None, "");
        let before = up.seen().len();
        {
            let mut c = RawClient::connect(p.addr).unwrap();
            let mut req = post("/cut", &body_of(10_000), "");
            req.truncate(req.len() - 9_000);
            c.send(&req).unwrap();
        }
        let cut = wait_until(T, || {
            up.seen()
                .iter()
                .skip(before)
                .any(|s| s.path == "/cut" && !s.complete)
        });
        assert!(
            cut,
            "{}: the upstream never saw the cut request end",
            mode.name()
        );
        let cut_conn = up
            .seen()
            .iter()
            .skip(before)
            .find(|s| s.path == "/cut")
            .unwrap()
            .conn;
        let mut c = RawClient::connect(p.addr).unwrap();
        c.send(&post("/after", b"ok", "")).unwrap();
        let ex = c.read(1, T);
        assert_eq!(ex.statuses(), vec![200], "{}", mode.name());
        let after = up
            .seen()
            .into_iter()
            .rev()
            .find(|s| s.path == "/after")
            .unwrap();
        assert_ne!(
            after.conn,
            cut_conn,
            "{}: reused a cut connection",
            mode.name()
        );
    }
}

#[test]
fn bodies_over_the_limit_get_413_and_stop_there() {
    let up = BodyUpstream::start("blue");
    for mode in MODES {
        let p = proxy(mode, &up, None, "[limits]\nmax_body_bytes = 1000\n");
        let before = up.seen().len();
        let mut c = RawClient::connect(p.addr).unwrap();
        c.send(&post("/big", &body_of(2000), "")).unwrap();
        assert_eq!(c.read(1, T).statuses(), vec![413], "{}", mode.name());
        let mut c = RawClient::connect(p.addr).unwrap();
        let mut req =
            b"POST /big-chunked HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        for _ in 0..3 {
            req.extend_from_slice(b"258\r\n");
            req.extend_from_slice(&body_of(600));
            req.extend_from_slice(b"\r\n");
        }
        req.extend_from_slice(b"0\r\n\r\n");
        let _ = c.send_slowly(&req, 700, Duration::from_millis(20));
        let ex = c.read(1, T);
        assert_eq!(ex.statuses(), vec![413], "{}: {:?}", mode.name(), ex.end);
        // Whatever reached the upstream stopped at the limit and never completed.
        std::thread::sleep(Duration::from_millis(200));
        for s in up.seen().iter().skip(before) {
            assert!(s.len <= 1000 && !s.complete, "{}: {s:?}", mode.name());
        }
    }
}

#[test]
fn a_stalled_body_gets_408() {
    let up = BodyUpstream::start("blue");
    for mode in MODES {
        let p = proxy(mode, &up, None, "[limits]\nbody_timeout = \"300ms\"\n");
        let mut c = RawClient::connect(p.addr).unwrap();
        c.send(b"POST /slow HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\nab")
            .unwrap();
        let ex = c.read(1, T);
        assert_eq!(ex.statuses(), vec![408], "{}: {:?}", mode.name(), ex.end);
        assert!(ex.elapsed < Duration::from_secs(3), "{:?}", ex.elapsed);
    }
}

#[test]
fn pipelined_posts_are_answered_in_order() {
    let up = BodyUpstream::start("blue");
    for mode in MODES {
        let p = proxy(mode, &up, None, "");
        let mut c = RawClient::connect(p.addr).unwrap();
        let (a, b) = (body_of(10), body_of(70_000));
        let mut all = post("/a", &a, "");
        all.extend(post("/b", &b, ""));
        all.extend_from_slice(b"GET /c HTTP/1.1\r\nHost: t\r\n\r\n");
        c.send(&all).unwrap();
        let ex = c.read(3, T);
        assert_eq!(ex.statuses(), vec![200, 200, 200], "{}", mode.name());
        assert!(ex.responses[0].text().starts_with(&summary(&a)));
        assert!(ex.responses[1].text().starts_with(&summary(&b)));
        assert!(ex.responses[2].text().starts_with(&summary(b"")));
    }
}

#[test]
fn http10_posts_and_chunked_responses() {
    let up = BodyUpstream::start("blue");
    for mode in MODES {
        let p = proxy(mode, &up, None, "");
        let mut c = RawClient::connect(p.addr).unwrap();
        let req = "POST /chunked HTTP/1.0\r\nHost: t\r\nContent-Length: 3\r\n\r\nabc";
        c.send(req.as_bytes()).unwrap();
        let ex = c.read_to_end(T);
        assert_eq!(ex.statuses(), vec![200], "{}: {:?}", mode.name(), ex.end);
        let r = &ex.responses[0];
        assert!(r.text().starts_with(&summary(b"abc")), "{}", r.text());
        assert!(r.header("transfer-encoding").is_none(), "{}", mode.name());
        assert_eq!(ex.end, End::Closed);
    }
}

#[test]
fn a_large_upload_streams_in_bounded_memory_and_finishes_on_its_slot_across_a_flip() {
    let (blue, green) = (BodyUpstream::start("blue"), BodyUpstream::start("green"));
    for mode in MODES {
        let p = proxy(
            mode,
            &blue,
            Some(&green),
            "[limits]\nmax_body_bytes = 209715200\n",
        );
        let rss = || peak_rss_kib(p.pid());
        let base = rss();
        const LEN: usize = 100 * 1024 * 1024;
        let piece = body_of(64 * 1024);
        let mut c = TcpStream::connect(p.addr).unwrap();
        let head = format!("POST /up HTTP/1.1\r\nHost: t\r\nContent-Length: {LEN}\r\n\r\n");
        c.write_all(head.as_bytes()).unwrap();
        let mut sum = FNV0;
        let mut sent = 0;
        let start = Instant::now();
        let mut flipped = false;
        while sent < LEN {
            let n = piece.len().min(LEN - sent);
            if let Err(e) = c.write_all(&piece[..n]) {
                panic!(
                    "{}: {e} after {sent} bytes, {:?}",
                    mode.name(),
                    start.elapsed()
                );
            }
            sum = fnv(&piece[..n], sum);
            sent += n;
            if !flipped && sent >= LEN / 2 {
                p.admin_ok("flip green");
                flipped = true;
            }
        }
        let secs = start.elapsed().as_secs_f64();
        c.set_read_timeout(Some(T)).unwrap();
        let mut resp = Vec::new();
        let mut buf = [0u8; 4096];
        while !String::from_utf8_lossy(&resp).contains("slot=") {
            let n = c.read(&mut buf).unwrap();
            assert!(n > 0, "{}: closed", mode.name());
            resp.extend_from_slice(&buf[..n]);
        }
        let text = String::from_utf8_lossy(&resp);
        let want = format!("len={LEN} sum={sum:016x} slot=blue");
        assert!(text.contains(&want), "{}: {text}", mode.name());
        let grew = rss().saturating_sub(base);
        println!(
            "{}: 100 MiB upload in {secs:.2} s ({:.0} MiB/s), peak RSS grew {grew} KiB",
            mode.name(),
            100.0 / secs
        );
        assert!(
            grew < 24 * 1024,
            "{}: peak RSS grew {grew} KiB",
            mode.name()
        );
        // New requests go to the slot flipped to.
        let mut c = RawClient::connect(p.addr).unwrap();
        c.send(&post("/next", b"x", "")).unwrap();
        let ex = c.read(1, T);
        assert!(
            ex.responses[0].text().ends_with("slot=green"),
            "{}",
            mode.name()
        );
        p.admin_ok("flip blue");
    }
}

/// The process's peak resident set (VmHWM), in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}
