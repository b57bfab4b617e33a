//! The TLS scenarios: nginx's `listen … ssl http2` and Bascule's https listener on the same
//! ECDSA P-256 certificate, same cores, same alternating method as the plain ones.
//!
//! - `tls-keepalive`: wrk over https, keep-alive GETs of the 1 KB asset.
//! - `tls-handshake`: `openssl s_time -new`, a full handshake per connection (no session
//!   reuse), TLS 1.3 and TLS 1.2, several clients at once; handshakes/s.
//! - `h2`: h2load `-c 50 -m 10` (ALPN h2), GETs of the 1 KB asset; `h2-proxy`: the same, proxied
//!   to the upstream.

use std::process::{Command, Output};

use bascule_tests::h2load::Summary;

use crate::report::Scenario;
use crate::scenarios::{alternating, wrk_url, Wrk};
use crate::setup::{Lab, ASSET_1K, LOAD_CORE};
use crate::Opts;

/// `openssl s_time` processes run at once: one alone waits on each round trip.
const HANDSHAKE_CLIENTS: usize = 4;

fn which(tool: &str) -> bool {
    Command::new(tool).arg("--version").output().is_ok()
}

/// A scenario with no rows, saying why.
fn skipped(name: &str, why: &str) -> Vec<Scenario> {
    println!("skipped {name}: {why}");
    Vec::new()
}

/// Both systems' pids: nginx's master and workers, Bascule's process.
fn pids(lab: &Lab) -> (Vec<u32>, [u32; 1]) {
    (lab.nginx_pids(), [lab.bascule_pid])
}

/// `tls-keepalive`.
pub(crate) fn keepalive(lab: &Lab, opts: &Opts) -> anyhow::Result<Vec<Scenario>> {
    let (nginx_pids, bascule_pids) = pids(lab);
    let url = |addr| format!("https://{addr}{ASSET_1K}");
    let (nginx_url, bascule_url) = (url(lab.nginx_tls_addr), url(lab.bascule_tls_addr));
    let n = |secs| wrk_url(lab, &nginx_url, secs, &[]);
    let b = |secs| wrk_url(lab, &bascule_url, secs, &[]);
    Ok(vec![alternating(
        "tls-keepalive",
        opts,
        (&nginx_pids, &n),
        (&bascule_pids, &b),
    )?])
}

/// `tls-handshake`: one scenario per TLS version.
pub(crate) fn handshake(lab: &Lab, opts: &Opts) -> anyhow::Result<Vec<Scenario>> {
    if !which("openssl") {
        return Ok(skipped("tls-handshake", "openssl not found"));
    }
    let (nginx_pids, bascule_pids) = pids(lab);
    let mut out = Vec::new();
    for (name, flag) in [
        ("tls-handshake-1.3", "-tls1_3"),
        ("tls-handshake-1.2", "-tls1_2"),
    ] {
        let n = |secs| s_time(lab.nginx_tls_addr, flag, secs);
        let b = |secs| s_time(lab.bascule_tls_addr, flag, secs);
        let mut s = alternating(name, opts, (&nginx_pids, &n), (&bascule_pids, &b))?;
        for r in &mut s.rows {
            r.note = format!(
                "handshakes/s: openssl s_time -new {flag}, {HANDSHAKE_CLIENTS} clients, ECDSA P-256; {}",
                r.note
            );
        }
        out.push(s);
    }
    Ok(out)
}

/// `HANDSHAKE_CLIENTS` `openssl s_time -new` on the load core for `secs`; handshakes made.
fn s_time(addr: std::net::SocketAddr, version: &str, secs: u64) -> anyhow::Result<Wrk> {
    let clients: Vec<_> = (0..HANDSHAKE_CLIENTS)
        .map(|_| {
            Command::new("taskset")
                .args(["-c", &LOAD_CORE.to_string(), "openssl", "s_time", "-new"])
                .args([version, "-connect", &addr.to_string(), "-time"])
                .arg(secs.to_string())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::null())
                .spawn()
        })
        .collect::<Result<_, _>>()?;
    let (mut made, mut errors) = (0u64, 0u64);
    for c in clients {
        let out: Output = c.wait_with_output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        // "1234 connections in 5 real seconds, 0 bytes read per connection"
        let n = text
            .lines()
            .find(|l| l.contains("real seconds"))
            .and_then(|l| l.split_whitespace().next()?.parse::<u64>().ok());
        match n {
            Some(n) if out.status.success() => made += n,
            _ => errors += 1,
        }
    }
    Ok(Wrk {
        requests: made,
        seconds: secs as f64,
        p50: 0.0,
        p99: 0.0,
        p999: 0.0,
        errors,
    })
}

/// `h2`.
pub(crate) fn h2(lab: &Lab, opts: &Opts) -> anyhow::Result<Vec<Scenario>> {
    if !which("h2load") {
        return Ok(skipped(
            "h2",
            "h2load not found (Debian package nghttp2-client)",
        ));
    }
    let (nginx_pids, bascule_pids) = pids(lab);
    let mut out = Vec::new();
    for (name, path, what) in [
        ("h2", ASSET_1K, "1 KB asset"),
        ("h2-proxy", "/", "proxied to the upstream"),
    ] {
        let url = |addr| format!("https://{addr}{path}");
        let (nginx_url, bascule_url) = (url(lab.nginx_tls_addr), url(lab.bascule_tls_addr));
        let n = |secs| h2load(&nginx_url, secs);
        let b = |secs| h2load(&bascule_url, secs);
        let mut s = alternating(name, opts, (&nginx_pids, &n), (&bascule_pids, &b))?;
        for r in &mut s.rows {
            r.note = format!("h2load -t1 -c50 -m10 (ALPN h2), {what}; {}", r.note);
        }
        out.push(s);
    }
    Ok(out)
}

/// h2load -t1 -c50 -m10 for `secs` on the load core.
fn h2load(url: &str, secs: u64) -> anyhow::Result<Wrk> {
    let out = Command::new("taskset")
        .args([
            "-c",
            &LOAD_CORE.to_string(),
            "h2load",
            "-t1",
            "-c50",
            "-m10",
        ])
        .arg(format!("-D{secs}"))
        .arg(url)
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let s = Summary::parse(&text)
        .ok_or_else(|| anyhow::anyhow!("h2load printed no result:\n{text}"))?;
    Ok(Wrk {
        requests: s.status_2xx,
        seconds: s.seconds,
        p50: 0.0,
        p99: 0.0,
        p999: 0.0,
        errors: s.errors(),
    })
}
