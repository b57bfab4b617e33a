//! The blocking client behind `bascule ctl`, and its human-readable output.

use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

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

    /// Sends one command line and returns the parsed reply.
    pub fn call(&mut self, line: &str) -> Result<Value, CtlError> {
        let raw = self.call_raw(line)?;
        serde_json::from_str(&raw).map_err(|_| CtlError::BadReply(raw))
    }
}

/// Runs `bascule ctl`: sends `words` as one command, prints the reply, returns the exit code.
pub fn run(socket: &Path, json: bool, words: &[String]) -> i32 {
    let line = words.join(" ");
    if line.trim().is_empty() {
        eprintln!("bascule ctl: give a command; `bascule ctl help` lists them");
        return EXIT_USAGE;
    }
    if let Err(e) = crate::Command::parse(&line) {
        eprintln!("bascule ctl: {e}");
        return EXIT_USAGE;
    }
    let reply = Client::connect(socket).and_then(|mut c| c.call_raw(&line));
    let raw = match reply {
        Ok(raw) => raw,
        Err(e) => {
            eprintln!("bascule ctl: {e}");
            return EXIT_USAGE;
        }
    };
    let value: Value = match serde_json::from_str(&raw) {
        Ok(v) => v,
        Err(_) => {
            eprintln!("bascule ctl: {}", CtlError::BadReply(raw));
            return EXIT_USAGE;
        }
    };
    let ok = value.get("ok").and_then(Value::as_bool) == Some(true);
    if json {
        println!("{raw}");
    } else if ok {
        print!("{}", human(&value));
    } else {
        let error = value
            .get("error")
            .and_then(Value::as_str)
            .unwrap_or("refused");
        eprintln!("refused: {error}");
    }
    if ok {
        EXIT_OK
    } else {
        EXIT_REFUSED
    }
}

/// Renders a successful reply for a person: a table for `status`, `key: value` lines otherwise.
pub fn human(reply: &Value) -> String {
    let mut out = String::new();
    let Some(map) = reply.as_object() else {
        return format!("{reply}\n");
    };
    if let Some(slots) = map.get("slots").and_then(Value::as_object) {
        let field = |k: &str| map.get(k).map(scalar).unwrap_or_else(|| "-".into());
        out.push_str(&format!(
            "active: {}   previous: {}   generation: {}   last switch: {}\n\n",
            field("active"),
            field("previous"),
            field("generation"),
            field("last_switch"),
        ));
        out.push_str(&format!(
            "{:<6} {:<9} {:<10} {:>8}  {}\n",
            "SLOT", "STATE", "VERSION", "INFLIGHT", "UPSTREAMS"
        ));
        for (name, slot) in slots {
            let get = |k: &str| slot.get(k).map(scalar).unwrap_or_else(|| "-".into());
            let upstreams: Vec<String> = slot
                .get("upstreams")
                .and_then(Value::as_array)
                .map(|list| list.iter().map(upstream_cell).collect())
                .unwrap_or_default();
            out.push_str(&format!(
                "{:<6} {:<9} {:<10} {:>8}  {}\n",
                name,
                get("state"),
                get("version"),
                get("inflight"),
                if upstreams.is_empty() {
                    "-".to_string()
                } else {
                    upstreams.join(", ")
                }
            ));
        }
        return out;
    }
    if let Some(list) = map.get("upstreams").and_then(Value::as_array) {
        for u in list {
            out.push_str(&upstream_line(u));
        }
    }
    if let Some(cmds) = map.get("commands").and_then(Value::as_array) {
        for c in cmds {
            out.push_str(&format!("  {}\n", scalar(c)));
        }
    }
    for (k, v) in map {
        if matches!(k.as_str(), "ok" | "upstreams" | "commands") {
            continue;
        }
        out.push_str(&format!("{k}: {}\n", compact(v)));
    }
    out
}

fn upstream_cell(u: &Value) -> String {
    let addr = u.get("address").map(scalar).unwrap_or_default();
    match u.get("healthy").and_then(Value::as_bool) {
        Some(true) => format!("{addr} (healthy)"),
        Some(false) => format!("{addr} (UNHEALTHY)"),
        None => format!("{addr} (unchecked)"),
    }
}

fn upstream_line(u: &Value) -> String {
    let mut line = format!(
        "{:<6} {}",
        u.get("slot").map(scalar).unwrap_or_default(),
        upstream_cell(u)
    );
    if let Some(err) = u.get("last_error").and_then(Value::as_str) {
        line.push_str(&format!("  last error: {err}"));
    }
    line.push('\n');
    line
}

fn scalar(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

fn compact(v: &Value) -> String {
    match v {
        Value::Object(_) | Value::Array(_) => v.to_string(),
        other => scalar(other),
    }
}
