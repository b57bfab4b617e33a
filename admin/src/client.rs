//! The blocking client behind `bascule ctl`, and its human-readable output.

use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bascule_config::SlotName;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::{DeployReply, Reply, SlotState, Status, Step, StepDetail};

/// Exit code: the command was carried out.
pub const EXIT_OK: i32 = 0;
/// Exit code: the proxy refused the command.
pub const EXIT_REFUSED: i32 = 1;
/// Exit code: usage or connection error.
pub const EXIT_USAGE: i32 = 2;

/// Why `ctl` could not get an answer.
#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    /// The socket could not be reached.
    #[error("{path}: cannot connect to the admin socket: {source}. Is the proxy up, and is this its [admin] socket?")]
    Connect {
        /// The socket path.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The exchange failed half-way.
    #[error("admin socket: {0}")]
    Io(#[from] io::Error),
    /// The proxy closed the connection without a reply.
    #[error("admin socket closed without a reply")]
    NoReply,
    /// The reply is not JSON.
    #[error("admin socket sent a reply that is not JSON: {0}")]
    BadReply(String),
}

/// A connection to a proxy's admin socket.
pub struct Client {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Client {
    /// Connects to the admin socket at `path`.
    pub fn connect(path: &Path) -> Result<Client, CtlError> {
        let stream = UnixStream::connect(path).map_err(|source| CtlError::Connect {
            path: path.to_path_buf(),
            source,
        })?;
        let writer = stream.try_clone()?;
        Ok(Client {
            reader: BufReader::new(stream),
            writer,
        })
    }

    /// Bounds how long one reply may take (`None`: wait for ever, as `drain --wait` may).
    pub fn set_timeout(&self, timeout: Option<Duration>) -> Result<(), CtlError> {
        self.writer.set_read_timeout(timeout)?;
        Ok(())
    }

    /// Sends one command line and returns the raw reply line (newline trimmed).
    pub fn call_raw(&mut self, line: &str) -> Result<String, CtlError> {
        let mut out = line.trim_end_matches('\n').to_string();
        out.push('\n');
        self.writer.write_all(out.as_bytes())?;
        let mut reply = String::new();
        if self.reader.read_line(&mut reply)? == 0 {
            return Err(CtlError::NoReply);
        }
        Ok(reply.trim_end().to_string())
    }

    /// Sends a command that reports progress; hands each progress line's step to `on_step` as
    /// it arrives and returns the raw reply line that ends the exchange.
    pub fn call_with_progress(
        &mut self,
        line: &str,
        mut on_step: impl FnMut(&Step),
    ) -> Result<String, CtlError> {
        let mut raw = self.call_raw(line)?;
        while let Some(step) = crate::progress_of(&raw) {
            on_step(&step);
            raw.clear();
            if self.reader.read_line(&mut raw)? == 0 {
                return Err(CtlError::NoReply);
            }
            raw.truncate(raw.trim_end().len());
        }
        Ok(raw)
    }

    /// Sends one command line and reads the reply as `T`: `Ok(Err(error))` when the proxy
    /// refused the command.
    pub fn call<T: DeserializeOwned>(&mut self, line: &str) -> Result<Result<T, String>, CtlError> {
        let raw = self.call_raw(line)?;
        crate::parse_reply(&raw).map_err(|_| CtlError::BadReply(raw))
    }
}

/// Sends `words` as one admin command, prints the reply, returns the exit code (`ctl` for
/// every command but `monitor`, see [`crate::ctl::run`]).
pub fn run(socket: &Path, json: bool, words: &[String]) -> i32 {
    let mut line = words.join(" ");
    if line.trim().is_empty() {
        eprintln!("bascule ctl: give a command; `bascule ctl help` lists them");
        return EXIT_USAGE;
    }
    let cmd = match crate::Command::parse(&line) {
        Ok(cmd) => cmd,
        Err(e) => {
            eprintln!("bascule ctl: {e}");
            return EXIT_USAGE;
        }
    };
    // A person sees each deploy step as it ends; `--json` keeps the single reply line.
    let live = !json && matches!(cmd, crate::Command::Deploy { .. });
    if live && !cmd.reports_progress() {
        line.push_str(" --progress");
    }
    let reply = Client::connect(socket).and_then(|mut c| {
        if live {
            c.call_with_progress(&line, |s| {
                println!("{}", step_line(s));
                let _ = io::stdout().flush();
            })
        } else {
            c.call_raw(&line)
        }
    });
    let raw = match reply {
        Ok(raw) => raw,
        Err(e) => {
            eprintln!("bascule ctl: {e}");
            return EXIT_USAGE;
        }
    };
    let reply = match Reply::parse(&cmd, &raw) {
        Ok(r) => r,
        Err(_) => {
            eprintln!("bascule ctl: {}", CtlError::BadReply(raw));
            return EXIT_USAGE;
        }
    };
    match reply {
        Ok(reply) => {
            if json {
                println!("{raw}");
            } else if let (true, Reply::Deploy(d)) = (live, &reply) {
                println!("{}", deploy_summary(d));
            } else {
                print!("{}", human(&reply));
            }
            if let Some(w) = warning(&reply) {
                eprintln!("warning: {w}");
            }
            EXIT_OK
        }
        Err(error) => {
            if json {
                println!("{raw}");
            } else {
                eprintln!("refused: {error}");
            }
            EXIT_REFUSED
        }
    }
}

/// The warning a reply carries: the change is live, but something beside it failed.
fn warning(reply: &Reply) -> Option<&str> {
    match reply {
        Reply::Flip(r) => r.warning.as_deref(),
        Reply::Set(r) => r.warning.as_deref(),
        Reply::Weights(r) => r.warning.as_deref(),
        Reply::Reload(r) => r.warning.as_deref(),
        Reply::Deploy(r) => r.steps.iter().find_map(|s| match &s.detail {
            StepDetail::Flip(f) => f.warning.as_deref(),
            _ => None,
        }),
        Reply::Status(_)
        | Reply::Drain(_)
        | Reply::Health(_)
        | Reply::Help(_)
        | Reply::Stats(_) => None,
    }
}

/// Renders a successful reply for a person: a table for `status`, one line per member for
/// `health`, `key: value` lines otherwise.
pub fn human(reply: &Reply) -> String {
    let mut out = String::new();
    match reply {
        Reply::Status(status) => status_table(status, &mut out),
        Reply::Health(health) => {
            for m in &health.upstreams {
                out.push_str(&format!("{:<6} {}", m.slot, cell(&m.address, m.healthy)));
                if let Some(until) = &m.ejected_until {
                    out.push_str(&format!("  ejected until {until}"));
                }
                if let Some(err) = &m.last_error {
                    out.push_str(&format!("  last error: {err}"));
                }
                out.push('\n');
            }
        }
        Reply::Deploy(d) => {
            for s in &d.steps {
                out.push_str(&step_line(s));
                out.push('\n');
            }
            out.push_str(&deploy_summary(d));
            out.push('\n');
        }
        Reply::Stats(stats) => {
            out.push_str(&format!(
                "{:<6} {:>10} {:>8} {:>8} {:>8} {:>8} {:>8} {:>9} {:>9} {:>9}\n",
                "SLOT", "REQUESTS", "2XX", "3XX", "4XX", "5XX", "INFLIGHT", "P50", "P90", "P99"
            ));
            for name in SlotName::ALL {
                let s = stats.get(name);
                out.push_str(&format!(
                    "{:<6} {:>10} {:>8} {:>8} {:>8} {:>8} {:>8} {:>7.1}ms {:>7.1}ms {:>7.1}ms\n",
                    name,
                    s.requests,
                    s.status.c2xx,
                    s.status.c3xx,
                    s.status.c4xx,
                    s.status.c5xx,
                    s.inflight,
                    s.latency_ms.p50,
                    s.latency_ms.p90,
                    s.latency_ms.p99,
                ));
            }
            out.push_str(&format!("preview requests: {}\n", stats.preview_requests));
        }
        Reply::Help(help) => {
            for c in &help.commands {
                out.push_str(&format!("  {c}\n"));
            }
        }
        other => {
            // Every other reply is a flat record: its fields, in the order they are sent.
            if let Ok(Value::Object(map)) = serde_json::to_value(other) {
                for (k, v) in map {
                    out.push_str(&format!("{k}: {}\n", compact(&v)));
                }
            }
        }
    }
    out
}

/// One deploy step for a person: name, outcome, duration and what it did.
pub fn step_line(s: &Step) -> String {
    let detail = match &s.detail {
        StepDetail::Upstreams(a) => a.join(","),
        StepDetail::Version(v) => v.clone(),
        StepDetail::Flip(f) => format!(
            "active {} (was {}), generation {}",
            f.active,
            f.previous.map_or("-".to_string(), |p| p.to_string()),
            f.generation
        ),
        StepDetail::Drain { slot, inflight } => format!("{slot}: {inflight} in flight"),
        StepDetail::None => String::new(),
    };
    format!(
        "{:<14} {:<6} {:>7} ms  {}",
        s.step,
        if s.ok { "ok" } else { "FAILED" },
        s.ms,
        detail
    )
    .trim_end()
    .to_string()
}

fn deploy_summary(d: &DeployReply) -> String {
    let total: u64 = d.steps.iter().map(|s| s.ms).sum();
    format!(
        "deployed: {} active, generation {}, {} in {total} ms",
        d.active,
        d.generation,
        if d.drained {
            "old slot drained"
        } else {
            "old slot NOT drained"
        },
    )
}

fn status_table(s: &Status, out: &mut String) {
    let or_dash = |v: Option<String>| v.unwrap_or_else(|| "-".into());
    out.push_str(&format!(
        "active: {}   previous: {}   generation: {}   last switch: {}\n\n",
        s.active,
        or_dash(s.previous.map(|p| p.to_string())),
        s.generation,
        or_dash(s.last_switch.clone()),
    ));
    for w in &s.warnings {
        out.pop();
        out.push_str(&format!("WARNING: {w}\n\n"));
    }
    if let Some(r) = &s.last_rollback {
        out.pop();
        out.push_str(&format!(
            "last automatic rollback: {} {} -> {}: {}\n\n",
            r.at, r.from, r.to, r.reason
        ));
    }
    if let Some(c) = &s.cluster {
        out.pop();
        out.push_str(&format!(
            "cluster: {} {} as {}   revision: {}   {}\n",
            c.endpoints.join(","),
            c.prefix,
            c.name,
            c.revision,
            if c.connected {
                "connected"
            } else {
                "UNREACHABLE"
            },
        ));
        for i in &c.instances {
            out.push_str(&format!(
                "  instance {}: generation {}, in flight blue {} green {}\n",
                i.name, i.generation, i.inflight.blue, i.inflight.green
            ));
        }
        out.push('\n');
    }
    out.push_str(&format!(
        "{:<6} {:<9} {:<10} {:>8}  {}\n",
        "SLOT", "STATE", "VERSION", "INFLIGHT", "UPSTREAMS"
    ));
    for name in SlotName::ALL {
        let slot = s.slots.get(name);
        let upstreams: Vec<String> = slot
            .upstreams
            .iter()
            .map(|u| cell(&u.address, u.healthy))
            .collect();
        let state = match slot.state {
            SlotState::Active => "active",
            SlotState::Draining => "draining",
            SlotState::Idle => "idle",
        };
        out.push_str(&format!(
            "{:<6} {:<9} {:<10} {:>8}  {}\n",
            name,
            state,
            or_dash(slot.version.clone()),
            slot.inflight,
            if upstreams.is_empty() {
                "-".to_string()
            } else {
                upstreams.join(", ")
            }
        ));
    }
}

fn cell(address: &str, healthy: Option<bool>) -> String {
    match healthy {
        Some(true) => format!("{address} (healthy)"),
        Some(false) => format!("{address} (UNHEALTHY)"),
        None => format!("{address} (unchecked)"),
    }
}

fn compact(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}
