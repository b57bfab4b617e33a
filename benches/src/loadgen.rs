//! An open-loop load generator: requests leave on a fixed schedule whatever the responses do,
//! and each latency is measured from the request's scheduled time, so a stall shows in the
//! percentiles instead of slowing the load (no coordinated omission).
//!
//! It runs as its own process (`bascule-benches --loadgen …`) so that it can be pinned to the
//! load core with `taskset`, like wrk. It is one thread with one epoll loop over all its
//! connections: the load core also runs the upstream, and a thread per connection (two context
//! switches per request) saturated that core at the rates measured, so the percentiles showed
//! the load core's queue rather than the proxy. The next send is timed by a `timerfd` in the
//! same epoll set: epoll's own timeout counts whole milliseconds, and spinning instead kept the
//! upstream on the same core waiting for the scheduler (a flat 1.5 ms p99 straight to it).

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use mio::net::TcpStream as MioStream;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use nix::sys::time::TimeSpec;
use nix::sys::timerfd::{ClockId, Expiration, TimerFd, TimerFlags, TimerSetTimeFlags};
use std::os::fd::{AsFd, AsRawFd};

/// Connections the schedule is spread over.
const CONNS: usize = 50;
/// Time the last responses get after the schedule ends before they count as errors.
const DRAIN: Duration = Duration::from_secs(2);
/// The send timer's token (connections use their index).
const TIMER: Token = Token(usize::MAX);

/// One connection and its place in the schedule.
struct Conn {
    stream: Option<MioStream>,
    /// When its next request is (or its outstanding one was) due.
    due: Instant,
    /// A response is outstanding.
    waiting: bool,
    buf: Vec<u8>,
}

/// Runs `rate` requests/s of `GET path` against `addr` for `secs`; prints one `RESULT` line.
pub(crate) fn run(addr: SocketAddr, path: &str, rate: f64, secs: u64) -> anyhow::Result<()> {
    let interval = Duration::from_secs_f64(CONNS as f64 / rate);
    let start = Instant::now() + Duration::from_millis(100);
    let end = start + Duration::from_secs(secs);
    let request = format!("GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n").into_bytes();
    let mut poll = Poll::new()?;
    let timer = TimerFd::new(ClockId::CLOCK_MONOTONIC, TimerFlags::TFD_NONBLOCK)?;
    poll.registry().register(
        &mut SourceFd(&timer.as_fd().as_raw_fd()),
        TIMER,
        Interest::READABLE,
    )?;
    let mut conns: Vec<Conn> = (0..CONNS)
        .map(|i| Conn {
            stream: None,
            // Spread the connections' schedules evenly over one interval.
            due: start + interval.mul_f64(i as f64 / CONNS as f64),
            waiting: false,
            buf: Vec::with_capacity(64 * 1024),
        })
        .collect();
    let mut latencies = Vec::with_capacity((rate * secs as f64) as usize + CONNS);
    let mut errors = 0u64;
    let mut events = Events::with_capacity(CONNS);
    loop {
        let now = Instant::now();
        for (i, c) in conns.iter_mut().enumerate() {
            let due = !c.waiting && c.due <= now && c.due < end;
            if due && send(&mut poll, addr, i, c, &request).is_err() {
                errors += 1;
                c.stream = None;
                c.due += interval;
            }
        }
        let waiting = conns.iter().filter(|c| c.waiting).count();
        let next_send = conns
            .iter()
            .filter(|c| !c.waiting && c.due < end)
            .map(|c| c.due)
            .min();
        if waiting == 0 && next_send.is_none() {
            break;
        }
        if now > end + DRAIN {
            errors += waiting as u64;
            break;
        }
        // Wake for the next send (to the nanosecond) or a response, whichever comes first.
        let timeout = match next_send {
            Some(due) => {
                let wait = due
                    .saturating_duration_since(now)
                    .max(Duration::from_nanos(1));
                let at = Expiration::OneShot(TimeSpec::from_duration(wait));
                timer.set(at, TimerSetTimeFlags::empty())?;
                None
            }
            None => Some(Duration::from_millis(10)),
        };
        poll.poll(&mut events, timeout)?;
        let now = Instant::now();
        for event in events.iter() {
            if event.token() == TIMER {
                // Consumes the expiry; the next `set` arms it again.
                let _ = timer.wait();
                continue;
            }
            let c = &mut conns[event.token().0];
            match receive(c) {
                Ok(false) => {}
                Ok(true) => {
                    latencies.push(now.duration_since(c.due).as_micros() as u64);
                    c.waiting = false;
                    c.due += interval;
                }
                Err(_) => {
                    errors += 1;
                    c.stream = None;
                    c.waiting = false;
                    c.due += interval;
                }
            }
        }
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

/// Sends `request` on connection `i`, connecting first if needed.
fn send(
    poll: &mut Poll,
    addr: SocketAddr,
    i: usize,
    c: &mut Conn,
    request: &[u8],
) -> std::io::Result<()> {
    if c.stream.is_none() {
        let s = TcpStream::connect(addr)?;
        s.set_nodelay(true)?;
        s.set_nonblocking(true)?;
        let mut s = MioStream::from_std(s);
        poll.registry()
            .register(&mut s, Token(i), Interest::READABLE)?;
        c.stream = Some(s);
    }
    let s = c.stream.as_mut().expect("connected above");
    // A few dozen bytes into an empty socket buffer: all or an error.
    if s.write(request)? != request.len() {
        return Err(ErrorKind::WriteZero.into());
    }
    c.buf.clear();
    c.waiting = true;
    Ok(())
}

/// Reads what is there; `true` once a whole response (2xx, Content-Length body) has arrived.
fn receive(c: &mut Conn) -> std::io::Result<bool> {
    let bad = |m: &str| std::io::Error::new(ErrorKind::InvalidData, m.to_string());
    let Some(s) = c.stream.as_mut() else {
        return Ok(false);
    };
    let mut chunk = [0u8; 16 * 1024];
    loop {
        match s.read(&mut chunk) {
            Ok(0) => return Err(bad("closed")),
            Ok(n) => c.buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    if !c.waiting {
        return Err(bad("response nobody asked for"));
    }
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut resp = httparse::Response::new(&mut headers);
    match resp.parse(&c.buf) {
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
            Ok(c.buf.len() >= head + body)
        }
        Ok(httparse::Status::Partial) => Ok(false),
        Err(_) => Err(bad("bad response")),
    }
}
