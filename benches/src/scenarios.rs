//! The scenarios: each runs nginx and Bascule alternately under the same load.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::procs::{cpu_ticks, hwm_kb, rss_kb, ticks_per_second};
use crate::report::{Row, Scenario};
use crate::setup::{Lab, ASSET_100K, ASSET_1K, LOAD_CORE};
use crate::Opts;

const WRK_LUA: &str = r#"
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("RESULT %d %d %d %d %d %d\n", summary.requests, summary.duration,
    latency:percentile(50), latency:percentile(99), latency:percentile(99.9),
    e.connect + e.read + e.write + e.timeout + e.status))
end
"#;

/// One load run's numbers (wrk, or the generators of the TLS scenarios).
pub(crate) struct Wrk {
    /// Requests (or handshakes) completed.
    pub(crate) requests: u64,
    /// Length of the run.
    pub(crate) seconds: f64,
    /// Median latency, µs (0 when the generator gives none).
    pub(crate) p50: f64,
    /// 99th percentile latency, µs (0 when the generator gives none).
    pub(crate) p99: f64,
    /// 99.9th percentile latency, µs (0 when the generator gives none).
    pub(crate) p999: f64,
    /// Failed requests or connections.
    pub(crate) errors: u64,
}

/// What wrk sends: `GET path`, or what a Lua prelude sets up (method, body, a `request`
/// function), named for its script file; with `headers` on every request.
#[derive(Clone, Copy)]
pub(crate) struct Load<'a> {
    pub(crate) path: &'a str,
    pub(crate) lua: Option<(&'a str, &'a str)>,
    /// Sent on every request (`Name: value`).
    pub(crate) headers: &'a [&'a str],
}

impl<'a> Load<'a> {
    /// `GET path`.
    pub(crate) fn get(path: &'a str) -> Load<'a> {
        Load {
            path,
            lua: None,
            headers: &[],
        }
    }
}

/// One wrk run of `load` against `addr`.
pub(crate) fn wrk(lab: &Lab, addr: SocketAddr, load: Load<'_>, secs: u64) -> anyhow::Result<Wrk> {
    let headers: Vec<&str> = load.headers.iter().flat_map(|h| ["-H", *h]).collect();
    let url = format!("http://{addr}{}", load.path);
    wrk_script(lab, &url, secs, &headers, load.lua)
}

/// wrk -t1 -c50 on the load core against `url`, with `extra` arguments (headers).
pub(crate) fn wrk_url(lab: &Lab, url: &str, secs: u64, extra: &[&str]) -> anyhow::Result<Wrk> {
    wrk_script(lab, url, secs, extra, None)
}

/// As [`wrk_url`], the script beginning with a named Lua prelude when one is given.
fn wrk_script(
    lab: &Lab,
    url: &str,
    secs: u64,
    extra: &[&str],
    lua: Option<(&str, &str)>,
) -> anyhow::Result<Wrk> {
    let (name, prelude) = lua.unwrap_or(("report", ""));
    let script = lab.dir.path().join(format!("{name}.lua"));
    if !script.exists() {
        std::fs::write(&script, format!("{prelude}\n{WRK_LUA}"))?;
    }
    let out = Command::new("taskset")
        .args(["-c", &LOAD_CORE.to_string()])
        .arg(&lab.wrk)
        .args(["-t1", "-c50"])
        .arg(format!("-d{secs}s"))
        .arg("-s")
        .arg(&script)
        .args(extra)
        .arg(url)
        .output()?;
    let n = result_line(&out.stdout)?;
    Ok(Wrk {
        requests: n[0] as u64,
        seconds: n[1] / 1e6,
        p50: n[2],
        p99: n[3],
        p999: n[4],
        errors: n[5] as u64,
    })
}

/// The six numbers of the `RESULT` line that wrk's script and the open-loop generator print:
/// requests, duration µs, p50, p99, p99.9 µs, errors.
fn result_line(stdout: &[u8]) -> anyhow::Result<Vec<f64>> {
    let text = String::from_utf8_lossy(stdout);
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("RESULT "))
        .ok_or_else(|| anyhow::anyhow!("the load generator printed no result:\n{text}"))?;
    let n: Vec<f64> = line
        .split_whitespace()
        .map(|v| v.parse().unwrap_or(0.0))
        .collect();
    anyhow::ensure!(n.len() == 6, "unexpected result `{line}`");
    Ok(n)
}

/// One measured run of `system` at `addr`, CPU accounted to `pids`.
pub(crate) fn measure(
    lab: &Lab,
    system: &str,
    addr: SocketAddr,
    pids: &[u32],
    load: Load<'_>,
    secs: u64,
) -> anyhow::Result<Row> {
    measured(system, pids, || wrk(lab, addr, load, secs))
}

/// One run of `load` against `system`, CPU accounted to `pids`.
pub(crate) fn measured(
    system: &str,
    pids: &[u32],
    load: impl FnOnce() -> anyhow::Result<Wrk>,
) -> anyhow::Result<Row> {
    let before: u64 = pids.iter().map(|&p| cpu_ticks(p)).sum();
    let w = load()?;
    let after: u64 = pids.iter().map(|&p| cpu_ticks(p)).sum();
    // A reload replaces nginx workers mid-run; their ticks are lost, hence saturating.
    let cpu_s = after.saturating_sub(before) as f64 / ticks_per_second();
    Ok(Row {
        system: system.into(),
        rps: w.requests as f64 / w.seconds.max(1e-9),
        p50_us: w.p50,
        p99_us: w.p99,
        p999_us: w.p999,
        cpu_s_per_100k: cpu_s * 100_000.0 / (w.requests.max(1) as f64),
        peak_rss_kb: hwm_kb(pids),
        errors: w.errors,
        note: String::new(),
    })
}

/// The median run by `key`, carrying the errors of all runs.
pub(crate) fn median_by(mut rows: Vec<Row>, key: impl Fn(&Row) -> f64) -> Row {
    rows.sort_by(|a, b| key(a).total_cmp(&key(b)));
    let errors = rows.iter().map(|r| r.errors).sum();
    let mut m = rows.swap_remove(rows.len() / 2);
    m.errors = errors;
    m
}

fn throughput(name: &str, lab: &Lab, opts: &Opts, path: &str) -> anyhow::Result<Scenario> {
    let bascule = (lab.bascule_addr, lab.bascule_pid);
    throughput_of(name, lab, opts, Load::get(path), bascule)
}

/// nginx under `load` against the Bascule at `bascule` (address, pid).
pub(crate) fn throughput_of(
    name: &str,
    lab: &Lab,
    opts: &Opts,
    load: Load<'_>,
    bascule: (SocketAddr, u32),
) -> anyhow::Result<Scenario> {
    let nginx_pids = lab.nginx_pids();
    let (bascule_addr, bascule_pid) = bascule;
    let n = |secs| wrk(lab, lab.nginx_addr, load, secs);
    let b = |secs| wrk(lab, bascule_addr, load, secs);
    alternating(name, opts, (&nginx_pids, &n), (&[bascule_pid], &b))
}

/// A load run of so many seconds against one system.
pub(crate) type LoadRun<'a> = &'a dyn Fn(u64) -> anyhow::Result<Wrk>;

/// Warms both systems (pools, caches), then alternates `opts.rounds` runs of each (nginx
/// first); the median run of each by req/s. Each side: the pids its CPU is counted on, its run.
pub(crate) fn alternating(
    name: &str,
    opts: &Opts,
    nginx: (&[u32], LoadRun<'_>),
    bascule: (&[u32], LoadRun<'_>),
) -> anyhow::Result<Scenario> {
    nginx.1(1)?;
    bascule.1(1)?;
    let (mut n, mut b) = (Vec::new(), Vec::new());
    for _ in 0..opts.rounds {
        n.push(measured("nginx", nginx.0, || nginx.1(opts.duration))?);
        b.push(measured("bascule", bascule.0, || bascule.1(opts.duration))?);
    }
    // Every run beside the median, and each Bascule run over the nginx run just before it: the
    // machine's speed drifts by ±10% over minutes, and a pair shares the drift.
    let list = |xs: &mut dyn Iterator<Item = f64>, digits: usize| {
        let v: Vec<String> = xs.map(|x| format!("{x:.digits$}")).collect();
        v.join(", ")
    };
    let runs = |rows: &[Row]| list(&mut rows.iter().map(|r| r.rps), 0);
    // Bascule's figure over nginx's, pair by pair, where both have one.
    let paired = |f: fn(&Row) -> Option<f64>| -> Vec<f64> {
        n.iter()
            .zip(&b)
            .filter_map(|(n, b)| Some(f(b)? / f(n)?))
            .collect()
    };
    let pairs = paired(|r| (r.rps > 0.0).then_some(r.rps));
    let per_core = paired(Row::rps_per_core);
    let (n_runs, b_runs) = (runs(&n), runs(&b));
    let by_rps = |r: &Row| r.rps;
    let mut rows = vec![median_by(n, by_rps), median_by(b, by_rps)];
    rows[0].note = format!("runs: {n_runs}");
    rows[1].note = format!(
        "runs: {b_runs}; each over nginx's run before it: {} (median {:.2}×), per core: {} (median {:.2}×)",
        list(&mut pairs.iter().copied(), 2),
        median(&pairs),
        list(&mut per_core.iter().copied(), 2),
        median(&per_core)
    );
    Ok(Scenario::new(name, rows))
}

/// The median of `xs` (0 when empty).
fn median(xs: &[f64]) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

fn admin(lab: &Lab, line: &str) -> anyhow::Result<()> {
    let mut s = std::os::unix::net::UnixStream::connect(&lab.admin)?;
    s.write_all(format!("{line}\n").as_bytes())?;
    let mut reply = String::new();
    BufReader::new(s).read_line(&mut reply)?;
    anyhow::ensure!(reply.contains("\"ok\":true"), "`{line}` refused: {reply}");
    Ok(())
}

/// Runs `switch` every `every` while `measure` runs; returns the row and the switch count.
fn while_switching(
    every: Duration,
    switch: impl Fn(usize) -> anyhow::Result<()> + Send + Sync + 'static,
    measure: impl FnOnce() -> anyhow::Result<Row>,
) -> anyhow::Result<(Row, usize)> {
    let stop = Arc::new(AtomicBool::new(false));
    let worker = {
        let stop = stop.clone();
        std::thread::spawn(move || -> anyhow::Result<usize> {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(every);
                switch(n)?;
                n += 1;
            }
            Ok(n)
        })
    };
    let row = measure();
    stop.store(true, Ordering::Relaxed);
    let n = worker
        .join()
        .map_err(|_| anyhow::anyhow!("switcher panicked"))??;
    Ok((row?, n))
}

fn flips(lab: &Lab, opts: &Opts) -> anyhow::Result<Scenario> {
    let secs = opts.duration;
    let nginx_pids = lab.nginx_pids();
    let steady_n = measure(
        lab,
        "nginx",
        lab.nginx_addr,
        &nginx_pids,
        Load::get("/"),
        secs,
    )?;
    let (include, nginx, conf, ups) = (
        lab.upstream_include.clone(),
        lab.nginx.clone(),
        lab.nginx_conf.clone(),
        lab.upstreams,
    );
    let prefix = lab.dir.path().display().to_string();
    let (mut reload_n, reloads) = while_switching(
        Duration::from_millis(500),
        move |i| {
            std::fs::write(&include, format!("server {};\n", ups[(i + 1) % 2]))?;
            let st = Command::new(&nginx)
                .args(["-p", &prefix, "-c"])
                .arg(&conf)
                .args(["-s", "reload"])
                .output()?;
            anyhow::ensure!(st.status.success(), "nginx -s reload failed");
            Ok(())
        },
        || {
            measure(
                lab,
                "nginx",
                lab.nginx_addr,
                &lab.nginx_pids(),
                Load::get("/"),
                secs,
            )
        },
    )?;
    reload_n.note = format!(
        "{reloads} reloads (every 500 ms); {:.0}% of steady {:.0} req/s",
        100.0 * reload_n.rps / steady_n.rps,
        steady_n.rps
    );
    let steady_b = measure(
        lab,
        "bascule",
        lab.bascule_addr,
        &[lab.bascule_pid],
        Load::get("/"),
        secs,
    )?;
    let admin_sock = lab.admin.clone();
    let lab_admin = move |i: usize| {
        let slot = if i.is_multiple_of(2) { "green" } else { "blue" };
        let mut s = std::os::unix::net::UnixStream::connect(&admin_sock)?;
        s.write_all(format!("flip {slot} --force\n").as_bytes())?;
        let mut reply = String::new();
        BufReader::new(s).read_line(&mut reply)?;
        anyhow::ensure!(reply.contains("\"ok\":true"), "flip refused: {reply}");
        Ok(())
    };
    let (mut flips_b, flips) = while_switching(Duration::from_millis(100), lab_admin, || {
        measure(
            lab,
            "bascule",
            lab.bascule_addr,
            &[lab.bascule_pid],
            Load::get("/"),
            secs,
        )
    })?;
    admin(lab, "flip blue --force")?;
    flips_b.note = format!(
        "{flips} flips (every 100 ms); {:.0}% of steady {:.0} req/s",
        100.0 * flips_b.rps / steady_b.rps,
        steady_b.rps
    );
    Ok(Scenario::new("flips", vec![reload_n, flips_b]))
}

/// How long the idle-conns scenario leaves its connections idle before it reads RSS.
const IDLE_SETTLE: Duration = Duration::from_secs(5);

/// Holds `n` keep-alive connections, each after one request, and reports RSS per connection.
fn idle(lab: &Lab, opts: &Opts) -> anyhow::Result<Scenario> {
    let mut rows = Vec::new();
    for (system, addr, pids) in [
        ("nginx", lab.nginx_addr, lab.nginx_pids()),
        ("bascule", lab.bascule_addr, vec![lab.bascule_pid]),
    ] {
        // One idle connection first, held as long as the others will be: Bascule parks it and
        // has its allocator give back what earlier scenarios freed, so both samples below see
        // a settled allocator and the difference is the connections' own.
        let settle = one_request(addr);
        std::thread::sleep(IDLE_SETTLE);
        let before = rss_kb(&pids);
        drop(settle);
        let mut conns = Vec::with_capacity(opts.conns);
        let mut errors = 0;
        for _ in 0..opts.conns {
            match one_request(addr) {
                Ok(c) => conns.push(c),
                Err(_) => errors += 1,
            }
        }
        // Idle long enough for Bascule to park them (`[server] park_idle_after`, 100 ms); nginx's
        // figure does not move with time.
        std::thread::sleep(IDLE_SETTLE);
        let after = rss_kb(&pids);
        let held = conns.len().max(1) as f64;
        rows.push(Row {
            system: system.into(),
            rps: 0.0,
            p50_us: 0.0,
            p99_us: 0.0,
            p999_us: 0.0,
            cpu_s_per_100k: 0.0,
            peak_rss_kb: hwm_kb(&pids),
            errors,
            note: format!(
                "{} connections idle {} s: RSS {before} -> {after} KiB, {:.0} bytes each",
                conns.len(),
                IDLE_SETTLE.as_secs(),
                (after.saturating_sub(before)) as f64 * 1024.0 / held
            ),
        });
        drop(conns);
        std::thread::sleep(Duration::from_millis(300));
    }
    Ok(Scenario::new("idle-conns", rows))
}

fn one_request(addr: SocketAddr) -> std::io::Result<TcpStream> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n")?;
    let mut reader = BufReader::new(s.try_clone()?);
    let mut len = 0usize;
    loop {
        let mut line = String::new();
        reader.read_line(&mut line)?;
        if line == "\r\n" || line.is_empty() {
            break;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            len = v.trim().parse().unwrap_or(0);
        }
    }
    let mut body = vec![0u8; len];
    std::io::Read::read_exact(&mut reader, &mut body)?;
    Ok(s)
}

/// Open-loop latency at half of nginx's measured maximum, same rate for both.
fn latency(lab: &Lab, opts: &Opts) -> anyhow::Result<Scenario> {
    let max = wrk(lab, lab.nginx_addr, Load::get("/"), opts.duration.min(3))?;
    let rate = 0.5 * max.requests as f64 / max.seconds.max(1e-9);
    let exe = std::env::current_exe()?;
    let run = |system: &str, addr: SocketAddr, pids: &[u32]| -> anyhow::Result<Row> {
        let before: u64 = pids.iter().map(|&p| cpu_ticks(p)).sum();
        let out = Command::new("taskset")
            .args(["-c", &LOAD_CORE.to_string()])
            .arg(&exe)
            .arg("--loadgen")
            .args([
                addr.to_string(),
                "/".into(),
                format!("{rate:.0}"),
                opts.duration.to_string(),
            ])
            .output()?;
        let after: u64 = pids.iter().map(|&p| cpu_ticks(p)).sum();
        let n = result_line(&out.stdout)?;
        let cpu_s = after.saturating_sub(before) as f64 / ticks_per_second();
        Ok(Row {
            system: system.into(),
            rps: n[0] / (n[1] / 1e6),
            p50_us: n[2],
            p99_us: n[3],
            p999_us: n[4],
            cpu_s_per_100k: cpu_s * 100_000.0 / n[0].max(1.0),
            peak_rss_kb: hwm_kb(pids),
            errors: n[5] as u64,
            note: format!("open loop at {rate:.0} req/s (50% of nginx's max)"),
        })
    };
    let (mut n, mut b) = (Vec::new(), Vec::new());
    for _ in 0..opts.rounds {
        n.push(run("nginx", lab.nginx_addr, &lab.nginx_pids())?);
        b.push(run("bascule", lab.bascule_addr, &[lab.bascule_pid])?);
    }
    // The median run by p99, the figure this scenario is about, with every run's p50 and p99
    // beside it in the order they ran: the generator shares its core with the upstream, the
    // machine stalls a core for milliseconds now and then, and p99s move between runs. Pairs
    // (each Bascule run with the nginx run just before it) share the machine's state.
    let wins = n
        .iter()
        .zip(&b)
        .filter(|(n, b)| b.p99_us <= n.p99_us)
        .count();
    let pairs = n.len().min(b.len());
    let median_p99 = |rows: Vec<Row>| {
        let list: Vec<String> = rows
            .iter()
            .map(|r| format!("{:.0}/{:.0}", r.p50_us, r.p99_us))
            .collect();
        let mut m = median_by(rows, |r| r.p99_us);
        m.note = format!("{}; p50/p99 by run (µs): {}", m.note, list.join(", "));
        m
    };
    let mut rows = vec![median_p99(n), median_p99(b)];
    rows[1].note = format!(
        "{}; p99 at or below nginx's run before it in {wins} of {pairs}",
        rows[1].note
    );
    Ok(Scenario::new("latency", rows))
}

/// Runs scenario `name`.
pub(crate) fn run(name: &str, lab: &Lab, opts: &Opts) -> anyhow::Result<Vec<Scenario>> {
    let one = |s: anyhow::Result<Scenario>| s.map(|s| vec![s]);
    match name {
        "proxy" => one(throughput("proxy", lab, opts, "/")),
        "proxy-edge" => one(throughput_of(
            "proxy-edge",
            lab,
            opts,
            Load::get("/edge/"),
            (lab.bascule_fwd_addr, lab.bascule_fwd_pid),
        )),
        "proxy-gzip" => one(crate::compression::gzip(lab, opts)),
        "post-1k" | "post-64k" | "post-chunked" | "upload" => {
            one(crate::bodies::run(name, lab, opts))
        }
        "static-1k" => one(throughput("static-1k", lab, opts, ASSET_1K)),
        "static-100k" => one(throughput("static-100k", lab, opts, ASSET_100K)),
        "latency" => one(latency(lab, opts)),
        "flips" => one(flips(lab, opts)),
        "idle-conns" => one(idle(lab, opts)),
        "tls-keepalive" => crate::tls::keepalive(lab, opts),
        "tls-handshake" => crate::tls::handshake(lab, opts),
        "h2" => crate::tls::h2(lab, opts),
        other => anyhow::bail!("unknown scenario {other}"),
    }
}
