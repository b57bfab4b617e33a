//! What `h2load` (Debian's `nghttp2-client`) printed: the tests and the benches read the same
//! summary lines.

/// The counts of h2load's `finished in`, `requests:` and `status codes:` lines.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Summary {
    /// Length of the run, seconds.
    pub seconds: f64,
    /// Streams done.
    pub done: u64,
    /// Streams that succeeded (any status).
    pub succeeded: u64,
    /// Streams that failed.
    pub failed: u64,
    /// Streams that errored.
    pub errored: u64,
    /// Streams that timed out.
    pub timeout: u64,
    /// 2xx responses.
    pub status_2xx: u64,
    /// 3xx, 4xx and 5xx responses.
    pub status_other: u64,
}

impl Summary {
    /// Reads h2load's output; `None` when it has no `finished in` line (it did not run).
    pub fn parse(out: &str) -> Option<Summary> {
        let seconds = out
            .lines()
            .find_map(|l| l.strip_prefix("finished in "))
            .and_then(|l| l.split(['s', ',']).next()?.parse::<f64>().ok())?;
        let mut s = Summary {
            seconds,
            ..Summary::default()
        };
        for (word, n) in counts(out, "requests:") {
            match word.as_str() {
                "done" => s.done = n,
                "succeeded" => s.succeeded = n,
                "failed" => s.failed = n,
                "errored" => s.errored = n,
                "timeout" => s.timeout = n,
                _ => {}
            }
        }
        for (word, n) in counts(out, "status codes:") {
            match word.as_str() {
                "2xx" => s.status_2xx = n,
                "3xx" | "4xx" | "5xx" => s.status_other += n,
                _ => {}
            }
        }
        Some(s)
    }

    /// Streams that did not end in a 2xx: failed, errored, timed out, or another status.
    pub fn errors(&self) -> u64 {
        self.failed + self.errored + self.timeout + self.status_other
    }
}

/// The `N word` pairs of the line starting with `prefix`
/// (`requests: 10 total, 10 started, 10 done, 10 succeeded, 0 failed, …`).
fn counts(out: &str, prefix: &str) -> Vec<(String, u64)> {
    let Some(line) = out.lines().find_map(|l| l.trim().strip_prefix(prefix)) else {
        return Vec::new();
    };
    line.split(',')
        .filter_map(|part| {
            let mut it = part.split_whitespace();
            let n = it.next()?.parse().ok()?;
            Some((it.next()?.to_string(), n))
        })
        .collect()
}
