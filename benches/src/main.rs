//! Load harness: Bascule beside nginx on the same machine, the same core and the same load.
//!
//! Method: one Bascule thread and one nginx worker pinned to core 0; the load generator (wrk)
//! and the upstream (an nginx worker answering `ok`) on core 1; runs alternate (nginx, Bascule,
//! nginx, …) and medians are compared as a ratio. Results go to `target/bench-report/`.

mod bodies;
mod compression;
mod loadgen;
mod procs;
mod report;
mod scenarios;
mod setup;
mod tls;

use std::path::PathBuf;

use clap::Parser;

/// Command-line options.
#[derive(Parser, Debug, Clone)]
#[command(
    name = "bascule-benches",
    about = "Bascule beside nginx, same core, same load"
)]
pub(crate) struct Opts {
    /// Scenarios to run (proxy, proxy-edge, proxy-gzip, post-1k, post-64k, post-chunked, upload,
    /// static-1k, static-100k, latency, flips, idle-conns, tls-keepalive, tls-handshake, h2);
    /// default: all.
    #[arg(long = "scenario")]
    pub(crate) scenarios: Vec<String>,
    /// Seconds per run.
    #[arg(long, default_value_t = 5)]
    pub(crate) duration: u64,
    /// Runs per system (alternating).
    #[arg(long, default_value_t = 3)]
    pub(crate) rounds: usize,
    /// Idle keep-alive connections held in the idle-conns scenario.
    #[arg(long, default_value_t = 10_000)]
    pub(crate) conns: usize,
    /// Seconds-long run of every scenario that only checks the harness works.
    #[arg(long)]
    pub(crate) smoke: bool,
    /// Internal: run the open-loop generator (`ADDR PATH RATE SECS`) and exit.
    #[arg(long, num_args = 4, hide = true)]
    pub(crate) loadgen: Vec<String>,
}

const ALL: [&str; 15] = [
    "proxy",
    "proxy-edge",
    "proxy-gzip",
    "post-1k",
    "post-64k",
    "post-chunked",
    "upload",
    "static-1k",
    "static-100k",
    "latency",
    "flips",
    "idle-conns",
    "tls-keepalive",
    "tls-handshake",
    "h2",
];

fn main() -> anyhow::Result<()> {
    let mut opts = Opts::parse();
    if let [addr, path, rate, secs] = opts.loadgen.as_slice() {
        return loadgen::run(addr.parse()?, path, rate.parse()?, secs.parse()?);
    }
    if opts.smoke {
        opts.duration = 1;
        opts.rounds = 1;
        opts.conns = opts.conns.min(300);
    }
    if opts.scenarios.is_empty() {
        opts.scenarios = ALL.iter().map(|s| s.to_string()).collect();
    }
    for s in &opts.scenarios {
        anyhow::ensure!(
            ALL.contains(&s.as_str()),
            "unknown scenario `{s}`; one of {ALL:?}"
        );
    }
    let Some(tools) = setup::Tools::find() else {
        println!("skipped: nginx or wrk not found (scripts/setup.sh --bench installs them)");
        return Ok(());
    };
    let bascule = setup::bascule_binary(opts.smoke)?;
    println!("bascule: {}", bascule.display());
    let lab = setup::Lab::start(&tools, &bascule)?;
    let mut results = Vec::new();
    for s in &opts.scenarios {
        println!("== {s}");
        results.extend(scenarios::run(s, &lab, &opts)?);
    }
    let dir = report_dir();
    report::write(&dir, &opts, &results)?;
    println!("\n{}", report::markdown(&opts, &results));
    println!("report: {}", dir.display());
    Ok(())
}

fn report_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    target.join("bench-report")
}
