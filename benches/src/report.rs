//! Tables and files.

use std::path::Path;

use serde_json::json;

use crate::Opts;

/// One system's numbers in one scenario.
#[derive(Debug, Clone)]
pub(crate) struct Row {
    /// `nginx` or `bascule`.
    pub(crate) system: String,
    /// Requests per second (median run).
    pub(crate) rps: f64,
    /// Median latency, µs.
    pub(crate) p50_us: f64,
    /// 99th percentile latency, µs.
    pub(crate) p99_us: f64,
    /// 99.9th percentile latency, µs.
    pub(crate) p999_us: f64,
    /// CPU seconds (user + system) per 100k requests.
    pub(crate) cpu_s_per_100k: f64,
    /// Peak RSS, KiB.
    pub(crate) peak_rss_kb: u64,
    /// Socket errors and non-2xx/3xx responses, all runs.
    pub(crate) errors: u64,
    /// Anything else worth saying.
    pub(crate) note: String,
}

impl Row {
    /// Requests served per CPU-second of the proxy's core: the rate one fully busy core would
    /// sustain. The load core (wrk and the upstream share it) can bound the measured rate before
    /// the proxy's core is full; this figure is not bound by it.
    pub(crate) fn rps_per_core(&self) -> Option<f64> {
        (self.cpu_s_per_100k > 0.0).then(|| 100_000.0 / self.cpu_s_per_100k)
    }
}

/// A scenario's rows, nginx first.
#[derive(Debug, Clone)]
pub(crate) struct Scenario {
    /// Name.
    pub(crate) name: String,
    /// Rows.
    pub(crate) rows: Vec<Row>,
}

impl Scenario {
    /// A scenario with its rows.
    pub(crate) fn new(name: &str, rows: Vec<Row>) -> Scenario {
        Scenario {
            name: name.into(),
            rows,
        }
    }

    /// Bascule's requests/s over nginx's.
    pub(crate) fn ratio(&self) -> Option<f64> {
        let n = self.rows.iter().find(|r| r.system == "nginx")?;
        let b = self.rows.iter().find(|r| r.system == "bascule")?;
        (n.rps > 0.0).then(|| b.rps / n.rps)
    }

    /// nginx's CPU per request over Bascule's (above 1: Bascule spends less), which is also
    /// Bascule's requests per second per core over nginx's.
    pub(crate) fn cpu_ratio(&self) -> Option<f64> {
        let n = self.rows.iter().find(|r| r.system == "nginx")?;
        let b = self.rows.iter().find(|r| r.system == "bascule")?;
        (b.cpu_s_per_100k > 0.0).then(|| n.cpu_s_per_100k / b.cpu_s_per_100k)
    }
}

/// The Markdown table.
pub(crate) fn markdown(opts: &Opts, results: &[Scenario]) -> String {
    let mut out = format!(
        "{} run(s) of {} s per system, alternating; one nginx worker and one Bascule thread on core 0; wrk -t1 -c50 and the upstream (one nginx worker, `return 200 \"ok\\n\"`) on core 1{}. \
         req/s per core: requests per CPU-second of the proxy's core; per-core ratio: Bascule's over nginx's.\n\n",
        opts.rounds,
        opts.duration,
        if opts.smoke { " (smoke: numbers mean nothing)" } else { "" }
    );
    out.push_str("| scenario | system | req/s | ratio | p50 µs | p99 µs | p99.9 µs | CPU s/100k req | req/s per core | per-core ratio | peak RSS KiB | errors | note |\n");
    out.push_str("|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
    for s in results {
        for r in &s.rows {
            let bascule = r.system == "bascule";
            let ratio = match (bascule, s.ratio()) {
                (true, Some(x)) if r.rps > 0.0 => format!("{x:.2}×"),
                _ => String::new(),
            };
            let cpu_ratio = match (bascule, s.cpu_ratio()) {
                (true, Some(x)) => format!("{x:.2}×"),
                _ => String::new(),
            };
            let per_core = r
                .rps_per_core()
                .map_or(String::new(), |x| format!("{x:.0}"));
            out.push_str(&format!(
                "| {} | {} | {:.0} | {} | {:.0} | {:.0} | {:.0} | {:.2} | {} | {} | {} | {} | {} |\n",
                s.name,
                r.system,
                r.rps,
                ratio,
                r.p50_us,
                r.p99_us,
                r.p999_us,
                r.cpu_s_per_100k,
                per_core,
                cpu_ratio,
                r.peak_rss_kb,
                r.errors,
                r.note
            ));
        }
    }
    out
}

/// Writes `report.json` and `report.md` into `dir`.
pub(crate) fn write(dir: &Path, opts: &Opts, results: &[Scenario]) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let scenarios: Vec<_> = results
        .iter()
        .map(|s| {
            json!({
                "scenario": s.name,
                "ratio_rps": s.ratio(),
                "ratio_cpu": s.cpu_ratio(),
                "rows": s.rows.iter().map(|r| json!({
                    "system": r.system, "rps": r.rps, "p50_us": r.p50_us, "p99_us": r.p99_us,
                    "p999_us": r.p999_us, "cpu_s_per_100k": r.cpu_s_per_100k,
                    "rps_per_core": r.rps_per_core(),
                    "peak_rss_kb": r.peak_rss_kb, "errors": r.errors, "note": r.note,
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    let doc = json!({
        "duration_s": opts.duration, "rounds": opts.rounds, "smoke": opts.smoke,
        "scenarios": scenarios,
    });
    std::fs::write(dir.join("report.json"), serde_json::to_string_pretty(&doc)?)?;
    std::fs::write(dir.join("report.md"), markdown(opts, results))?;
    Ok(())
}
