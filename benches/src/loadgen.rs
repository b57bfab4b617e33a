//! An open-loop load generator: requests leave on a fixed schedule whatever the responses do,
//! and each latency is measured from the request's scheduled time, so a stall shows in the
//! percentiles instead of slowing the load (no coordinated omission).
//!
//! It runs as its own process (`bascule-benches --loadgen …`) so that it can be pinned to the
//! load core with `taskset`, like wrk.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// Connections the schedule is spread over.
const CONNS: usize = 50;

/// Runs `rate` requests/s of `GET path` against `addr` for `secs`; prints one `RESULT` line.
pub(crate) fn run(addr: SocketAddr, path: &str, rate: f64, secs: u64) -> anyhow::Result<()> {
    let interval = Duration::from_secs_f64(CONNS as f64 / rate);
    let start = Instant::now() + Duration::from_millis(100);
    let end = start + Duration::from_secs(secs);
    let request = format!("GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n").into_bytes();
    let threads: Vec<_> = (0..CONNS)
        .map(|i| {
            let request = request.clone();
            // Spread the connections' schedules evenly over one interval.
            let offset = interval.mul_f64(i as f64 / CONNS as f64);
            std::thread::spawn(move || conn_loop(addr, &request, start + offset, interval, end))
        })
        .collect();
    let mut latencies = Vec::new();
    let mut errors = 0u64;
    for t in threads {
        let (l, e) = t
            .join()
            .map_err(|_| anyhow::anyhow!("load thread panicked"))?;
        latencies.extend(l);
        errors += e;
    }
    latencies.sort_unstable();
    let pct = |p: f64| -> u64 {
        if latencies.is_empty() {
            return 0;
        }
        let i = ((p / 100.0) * (latencies.len() - 1) as f64).round() as usize;
        latencies[i]
    };
    println!(
        "RESULT {} {} {} {} {} {}",
        latencies.len(),
        secs * 1_000_000,
        pct(50.0),
        pct(99.0),
        pct(99.9),
        errors
    );
    Ok(())
}

fn conn_loop(
    addr: SocketAddr,
    request: &[u8],
    mut next: Instant,
    interval: Duration,
    end: Instant,
) -> (Vec<u64>, u64) {
    let mut latencies = Vec::new();
    let mut errors = 0;
    let mut conn: Option<TcpStream> = None;
    let mut buf = vec![0u8; 64 * 1024];
    while next < end {
        let now = Instant::now();
        if next > now {
            std::thread::sleep(next - now);
        }
        let ok = (|| -> std::io::Result<()> {
            if conn.is_none() {
                let s = TcpStream::connect(addr)?;
                s.set_nodelay(true)?;
                s.set_read_timeout(Some(Duration::from_secs(5)))?;
                conn = Some(s);
            }
            let s = conn.as_mut().expect("connected above");
            s.write_all(request)?;
            read_response(s, &mut buf)
        })();
        match ok {
            Ok(()) => latencies.push(next.elapsed().as_micros() as u64),
            Err(_) => {
                errors += 1;
                conn = None;
            }
        }
        next += interval;
    }
    (latencies, errors)
}

/// Reads one response with a Content-Length body; a non-2xx status is an error.
fn read_response(s: &mut TcpStream, buf: &mut [u8]) -> std::io::Result<()> {
    let bad = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, m.to_string());
    let mut len = 0;
    loop {
        let n = s.read(&mut buf[len..])?;
        if n == 0 {
            return Err(bad("closed"));
        }
        len += n;
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut resp = httparse::Response::new(&mut headers);
        match resp.parse(&buf[..len]) {
            Ok(httparse::Status::Complete(head)) => {
                if !(200..300).contains(&resp.code.unwrap_or(0)) {
                    return Err(bad("status"));
                }
                let body = resp
                    .headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                    .and_then(|h| {
                        std::str::from_utf8(h.value)
                            .ok()?
                            .trim()
                            .parse::<usize>()
                            .ok()
                    })
                    .ok_or_else(|| bad("no content-length"))?;
                let mut have = len - head;
                while have < body {
                    let n = s.read(&mut buf[..])?;
                    if n == 0 {
                        return Err(bad("closed"));
                    }
                    have += n;
                }
                return Ok(());
            }
            Ok(httparse::Status::Partial) if len < buf.len() => continue,
            _ => return Err(bad("bad response")),
        }
    }
}
