//! Request bodies beside nginx: small JSON posts, 64 KiB posts and chunked posts under wrk, and
//! a large upload timed with the proxy's resident memory sampled while it runs.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::procs::{cpu_ticks, rss_kb, ticks_per_second};
use crate::report::{Row, Scenario};
use crate::scenarios::{median_by, throughput_of, Load};
use crate::setup::Lab;
use crate::Opts;

/// A JSON document of exactly `n` bytes (n ≥ 8).
fn json_lua(n: usize) -> String {
    format!(
        "wrk.method = \"POST\"\nwrk.headers[\"Content-Type\"] = \"application/json\"\n\
         wrk.body = '{{\"k\":\"' .. string.rep(\"a\", {}) .. '\"}}'\n",
        n - 8
    )
}

/// A 1 KiB body in two chunks, one with an extension.
const CHUNKED_LUA: &str = r#"
local half = string.rep("a", 512)
local req = "POST / HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n" ..
  "Transfer-Encoding: chunked\r\n\r\n200;part=1\r\n" .. half .. "\r\n200\r\n" .. half .. "\r\n0\r\n\r\n"
request = function() return req end
"#;

/// Runs body scenario `name`.
pub(crate) fn run(name: &str, lab: &Lab, opts: &Opts) -> anyhow::Result<Scenario> {
    let bascule = (lab.bascule_addr, lab.bascule_pid);
    let (small, big) = (json_lua(1024), json_lua(64 * 1024));
    let lua = match name {
        "post-1k" => (name, small.as_str()),
        "post-64k" => (name, big.as_str()),
        "post-chunked" => (name, CHUNKED_LUA),
        "upload" => return upload(lab, opts),
        other => anyhow::bail!("unknown body scenario {other}"),
    };
    let load = Load {
        path: "/",
        lua: Some(lua),
        headers: &[],
    };
    throughput_of(name, lab, opts, load, bascule)
}

/// One upload of `len` bytes to `addr`: seconds, and the peak growth of `pids`' resident
/// memory over its value before, in KiB.
fn upload_once(addr: SocketAddr, pids: &[u32], len: u64) -> anyhow::Result<(f64, u64, f64)> {
    let base = rss_kb(pids);
    let peak = Arc::new(AtomicU64::new(base));
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (peak, stop, pids) = (peak.clone(), stop.clone(), pids.to_vec());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                peak.fetch_max(rss_kb(&pids), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };
    let ticks: u64 = pids.iter().map(|&p| cpu_ticks(p)).sum();
    let start = Instant::now();
    let mut s = TcpStream::connect(addr)?;
    s.write_all(
        format!("POST / HTTP/1.1\r\nHost: bench\r\nContent-Length: {len}\r\n\r\n").as_bytes(),
    )?;
    let piece = vec![b'u'; 256 * 1024];
    let mut left = len;
    while left > 0 {
        let n = left.min(piece.len() as u64) as usize;
        s.write_all(&piece[..n])?;
        left -= n as u64;
    }
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut resp = [0u8; 1024];
    let n = s.read(&mut resp)?;
    let secs = start.elapsed().as_secs_f64();
    let cpu = pids
        .iter()
        .map(|&p| cpu_ticks(p))
        .sum::<u64>()
        .saturating_sub(ticks) as f64
        / ticks_per_second();
    stop.store(true, Ordering::Relaxed);
    let _ = sampler.join();
    anyhow::ensure!(
        resp[..n].starts_with(b"HTTP/1.1 200"),
        "upload answered {}",
        String::from_utf8_lossy(&resp[..n.min(64)])
    );
    Ok((secs, peak.load(Ordering::Relaxed).saturating_sub(base), cpu))
}

/// A 100 MiB upload (8 MiB in a smoke run), alternating: MiB/s in the req/s column, the peak
/// RSS growth in the note.
fn upload(lab: &Lab, opts: &Opts) -> anyhow::Result<Scenario> {
    let len: u64 = if opts.smoke { 8 << 20 } else { 100 << 20 };
    let mib = len as f64 / (1 << 20) as f64;
    let systems = [
        ("nginx", lab.nginx_addr, lab.nginx_pids()),
        ("bascule", lab.bascule_addr, vec![lab.bascule_pid]),
    ];
    let mut rows: Vec<Vec<Row>> = vec![Vec::new(), Vec::new()];
    for _ in 0..opts.rounds {
        for (i, (system, addr, pids)) in systems.iter().enumerate() {
            let (secs, grew, cpu) = upload_once(*addr, pids, len)?;
            rows[i].push(Row {
                system: (*system).into(),
                rps: mib / secs,
                p50_us: 0.0,
                p99_us: 0.0,
                p999_us: 0.0,
                // Per 100k MiB, so the per-core column reads MiB per CPU-second.
                cpu_s_per_100k: cpu * 100_000.0 / mib,
                peak_rss_kb: 0,
                errors: 0,
                note: format!("{mib:.0} MiB; MiB/s in req/s; RSS grew {grew} KiB"),
            });
        }
    }
    let by = |r: &Row| r.rps;
    let [n, b] = <[Vec<Row>; 2]>::try_from(rows).map_err(|_| anyhow::anyhow!("two systems"))?;
    Ok(Scenario::new(
        "upload",
        vec![median_by(n, by), median_by(b, by)],
    ))
}
