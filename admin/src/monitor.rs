//! `bascule ctl monitor`: two `stats` replies an interval apart, shown as rates like `top`.

use std::io::{IsTerminal, Write};
use std::path::Path;
use std::time::Duration;

use bascule_config::SlotName;

use crate::client::{Client, EXIT_OK, EXIT_REFUSED, EXIT_USAGE};
use crate::{MonitorSample, StatsReply};

/// Usage line of `monitor`.
pub const USAGE: &str = "monitor [--interval DUR] [--once] [--json]";

/// What `monitor` was asked to do.
#[derive(Debug, Clone, PartialEq)]
pub struct MonitorArgs {
    /// Time between two samples.
    pub interval: Duration,
    /// Print one sample and exit.
    pub once: bool,
    /// Print samples as JSON lines.
    pub json: bool,
}

impl MonitorArgs {
    /// Parses the words after `monitor`.
    pub fn parse(words: &[String], json: bool) -> Result<MonitorArgs, String> {
        let mut args = MonitorArgs {
            interval: Duration::from_secs(1),
            once: false,
            json,
        };
        let mut it = words.iter();
        while let Some(w) = it.next() {
            match w.as_str() {
                "--once" => args.once = true,
                "--json" => args.json = true,
                "--interval" => {
                    let v = it
                        .next()
                        .ok_or(format!("--interval needs a duration; usage: {USAGE}"))?;
                    args.interval = humantime::parse_duration(v)
                        .map_err(|e| format!("--interval `{v}`: {e}"))?;
                    if args.interval.is_zero() {
                        return Err("--interval must be above 0".into());
                    }
                    // The proxy closes an admin connection that is silent longer (by default).
                    let most = bascule_config::DEFAULT_ADMIN_IDLE_TIMEOUT;
                    if args.interval > most {
                        return Err(format!(
                            "--interval is at most {}",
                            humantime::format_duration(most)
                        ));
                    }
                }
                other => return Err(format!("unexpected `{other}`; usage: {USAGE}")),
            }
        }
        Ok(args)
    }
}

/// One `stats` reply, or the exit code after saying why there is none.
fn stats(client: &mut Client) -> Result<StatsReply, i32> {
    match client.call::<StatsReply>("stats") {
        Ok(Ok(s)) => Ok(s),
        Ok(Err(e)) => {
            eprintln!("refused: {e}");
            Err(EXIT_REFUSED)
        }
        Err(e) => {
            eprintln!("bascule ctl: {e}");
            Err(EXIT_USAGE)
        }
    }
}

/// Runs `monitor` against `socket`; returns the exit code.
pub fn run(socket: &Path, args: &MonitorArgs) -> i32 {
    let mut client = match Client::connect(socket) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("bascule ctl: {e}");
            return EXIT_USAGE;
        }
    };
    let mut earlier = match stats(&mut client) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let refresh = !args.json && !args.once && std::io::stdout().is_terminal();
    loop {
        std::thread::sleep(args.interval);
        let now = match stats(&mut client) {
            Ok(s) => s,
            Err(code) => return code,
        };
        let sample = MonitorSample::between(&earlier, &now);
        let mut out = String::new();
        if args.json {
            out.push_str(&serde_json::to_string(&sample).expect("samples serialise"));
            out.push('\n');
        } else {
            if refresh {
                // Clear the screen and go home, as `top` does.
                out.push_str("\x1b[2J\x1b[H");
            }
            out.push_str(&table(&sample));
        }
        let mut stdout = std::io::stdout().lock();
        if stdout
            .write_all(out.as_bytes())
            .and_then(|_| stdout.flush())
            .is_err()
        {
            // The reader went away (`monitor | head`): nothing left to do.
            return EXIT_OK;
        }
        if args.once {
            return EXIT_OK;
        }
        earlier = now;
    }
}

/// A sample as a table, one row per slot.
pub fn table(s: &MonitorSample) -> String {
    let mut out = format!(
        "over the last {:.1} s\n{:<6} {:>10} {:>7} {:>10} {:>10} {:>9}\n",
        s.interval_seconds, "SLOT", "REQ/S", "5XX", "P50", "P99", "INFLIGHT"
    );
    for name in SlotName::ALL {
        let r = s.get(name);
        out.push_str(&format!(
            "{:<6} {:>10.1} {:>6.1}% {:>8.1}ms {:>8.1}ms {:>9}\n",
            name,
            r.requests_per_s,
            r.error_ratio_5xx * 100.0,
            r.p50_ms,
            r.p99_ms,
            r.inflight
        ));
    }
    out
}
