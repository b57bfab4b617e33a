//! `proxy-gzip`: the cost of compressing a ~10 KiB JSON answer, nginx (`gzip on`) beside
//! Bascule (`[compression] algorithms = ["gzip"]`) at the same gzip level, and each front with
//! compression off, every client sending `Accept-Encoding: gzip`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use crate::report::{Row, Scenario};
use crate::scenarios::{measure, median_by, wrk, Load};
use crate::setup::{Lab, JSON_10K, JSON_10K_PLAIN};
use crate::Opts;

const ACCEPT: &str = "Accept-Encoding: gzip";

/// `GET path` with `ACCEPT`.
fn load(path: &str) -> Load<'_> {
    Load {
        path,
        lua: None,
        headers: &[ACCEPT],
    }
}

/// The response head of one `GET path` with `Accept-Encoding: gzip`, lower-cased.
fn head_of(addr: SocketAddr, path: &str) -> anyhow::Result<String> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: b\r\n{ACCEPT}\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    )?;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = s.read(&mut buf)?;
        anyhow::ensure!(n > 0, "{addr}{path}: closed before a response head");
        got.extend_from_slice(&buf[..n]);
    }
    Ok(String::from_utf8_lossy(&got).to_ascii_lowercase())
}

/// The four fronts, after checking that each compresses (or not) as it should: a front that
/// silently sent plain bytes would make the comparison meaningless.
pub(crate) fn gzip(lab: &Lab, opts: &Opts) -> anyhow::Result<Scenario> {
    let nginx = lab.nginx_pids();
    let systems: [(&str, SocketAddr, Vec<u32>, &str, bool); 4] = [
        ("nginx", lab.nginx_addr, nginx.clone(), JSON_10K, true),
        (
            "bascule",
            lab.bascule_gzip_addr,
            vec![lab.bascule_gzip_pid],
            JSON_10K,
            true,
        ),
        ("nginx off", lab.nginx_addr, nginx, JSON_10K_PLAIN, false),
        (
            "bascule off",
            lab.bascule_addr,
            vec![lab.bascule_pid],
            JSON_10K,
            false,
        ),
    ];
    for (name, addr, _, path, gzip) in &systems {
        let head = head_of(*addr, path)?;
        anyhow::ensure!(
            head.starts_with("http/1.1 200") && head.contains("content-encoding: gzip") == *gzip,
            "{name} at {addr}{path}: expected gzip = {gzip}, got:\n{head}"
        );
        wrk(lab, *addr, load(path), 1)?;
    }
    let mut runs: Vec<Vec<Row>> = vec![Vec::new(); systems.len()];
    for _ in 0..opts.rounds {
        for (i, (name, addr, pids, path, _)) in systems.iter().enumerate() {
            runs[i].push(measure(lab, name, *addr, pids, load(path), opts.duration)?);
        }
    }
    let rows = runs.into_iter().map(|r| median_by(r, |r| r.rps)).collect();
    Ok(Scenario::new("proxy-gzip", rows))
}
