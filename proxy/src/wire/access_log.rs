//! The access log: one line per answered request, whichever path answered it.
//!
//! The request path only fills an [`Entry`] (a few copied strings and numbers) and offers it to
//! a bounded channel; formatting and writing happen on a dedicated thread. When the channel is
//! full the entry is dropped and counted (`bascule_access_log_dropped_total`): writing the log
//! never makes a request wait. SIGUSR1 makes the writer reopen its file (after logrotate has
//! renamed it).

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TryRecvError, TrySendError};
use std::time::{Duration, SystemTime};

use bascule_config::{AccessLogConfig, AccessLogFormat, AccessLogPath};
use prometheus::IntCounter;
use serde::Serialize;

use super::request_id::RequestId;
use crate::SlotName;

/// How long the writer sleeps between two drains of the queue. Requests never wake it: a
/// wake-up per line cost the request path a context switch (measured: the proxy's CPU per
/// request up by two thirds); lines reach the file within this instead.
const TICK: Duration = Duration::from_millis(20);
/// Longest kept of a copied request field (target, user agent, referer), in bytes.
const MAX_FIELD: usize = 1024;

/// Why the access log could not start.
#[derive(Debug, thiserror::Error)]
pub enum AccessLogError {
    /// The log file cannot be opened for appending.
    #[error("access_log.path: cannot open {path} for appending: {source} (does its directory exist, and may this user write there?)")]
    Open {
        /// The file.
        path: PathBuf,
        /// What the system said.
        source: std::io::Error,
    },
    /// The SIGUSR1 handler or the writer thread could not start.
    #[error("access log: cannot start its writer: {0}")]
    Start(std::io::Error),
}

/// What the log shows of a request head: copied out of it, never more than [`MAX_FIELD`]
/// bytes a field.
#[derive(Debug, Default, Clone)]
pub(crate) struct LogRequest {
    method: String,
    target: String,
    /// `HTTP/1.0`, `HTTP/1.1` or `HTTP/2.0`; empty when the head could not be read.
    version: &'static str,
    user_agent: Option<String>,
    referer: Option<String>,
}

fn field(bytes: &[u8]) -> String {
    String::from_utf8_lossy(&bytes[..bytes.len().min(MAX_FIELD)]).into_owned()
}

impl LogRequest {
    /// From parsed parts: `h10` for HTTP/1.0, `headers` as name/value pairs.
    pub(crate) fn new<'h>(
        method: &str,
        target: &str,
        h10: bool,
        headers: impl Iterator<Item = (&'h str, &'h [u8])>,
    ) -> LogRequest {
        let mut r = LogRequest {
            method: field(method.as_bytes()),
            target: field(target.as_bytes()),
            version: if h10 { "HTTP/1.0" } else { "HTTP/1.1" },
            user_agent: None,
            referer: None,
        };
        for (name, value) in headers {
            if name.eq_ignore_ascii_case("user-agent") {
                r.user_agent = Some(field(value));
            } else if name.eq_ignore_ascii_case("referer") {
                r.referer = Some(field(value));
            }
        }
        r
    }

    /// Whatever can be read of a raw head that may be malformed or incomplete (a refused one).
    pub(crate) fn from_raw(buf: &[u8]) -> LogRequest {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(buf) {
            Ok(httparse::Status::Complete(_)) => LogRequest::new(
                req.method.unwrap_or(""),
                req.path.unwrap_or(""),
                req.version == Some(0),
                req.headers.iter().map(|h| (h.name, h.value)),
            ),
            // No headers to show: at most the request line's first words.
            _ => {
                let line = buf.split(|&b| b == b'\n').next().unwrap_or(b"");
                let mut words = line.split(|&b| b == b' ');
                let method = words.next().map(field).unwrap_or_default();
                let target = words.next().map(field).unwrap_or_default();
                LogRequest {
                    method,
                    target,
                    ..LogRequest::default()
                }
            }
        }
    }

    /// From a head Pingora parsed.
    pub(crate) fn from_pingora(h: &pingora_http::RequestHeader) -> LogRequest {
        let target = h
            .uri
            .path_and_query()
            .map_or_else(|| h.uri.path(), |p| p.as_str());
        let mut r = LogRequest::new(
            h.method.as_str(),
            target,
            h.version == http::Version::HTTP_10,
            h.headers.iter().map(|(n, v)| (n.as_str(), v.as_bytes())),
        );
        if h.version == http::Version::HTTP_2 {
            // As nginx logs `$request` of an HTTP/2 stream.
            r.version = "HTTP/2.0";
        }
        r
    }
}

/// One answered request, as the writer formats it.
#[derive(Debug)]
pub(crate) struct Entry {
    /// When the request started.
    pub(crate) time: SystemTime,
    pub(crate) client: Option<IpAddr>,
    pub(crate) request: Box<LogRequest>,
    /// 0 when the client left before a response head could be sent.
    pub(crate) status: u16,
    /// Body bytes sent to the client.
    pub(crate) bytes: u64,
    pub(crate) duration: Duration,
    /// `None` for a request refused before it was given to a slot.
    pub(crate) slot: Option<SlotName>,
    /// The upstream member that answered, as configured.
    pub(crate) upstream: Option<String>,
    /// The request's id, under `[request_id]`.
    pub(crate) request_id: Option<RequestId>,
}

/// The request side of the access log: cheap to call, never waits.
pub struct AccessLog {
    tx: SyncSender<Entry>,
    dropped: IntCounter,
}

impl AccessLog {
    /// Opens the log (a file is opened now, so that a bad path stops the start), registers
    /// SIGUSR1 and starts the writer thread. `dropped` counts lines the full buffer refused.
    pub fn start(
        config: &AccessLogConfig,
        dropped: IntCounter,
    ) -> Result<AccessLog, AccessLogError> {
        let sink = match &config.path {
            AccessLogPath::Stdout => Sink::Stdout(std::io::stdout()),
            AccessLogPath::File(path) => Sink::File {
                w: BufWriter::new(open(path)?),
                path: path.clone(),
            },
        };
        let reopen = watch_sigusr1()?;
        let (tx, rx) = sync_channel(config.buffer);
        let format = config.format;
        std::thread::Builder::new()
            .name("bascule-access-log".into())
            .spawn(move || write_lines(rx, sink, format, reopen))
            .map_err(AccessLogError::Start)?;
        Ok(AccessLog { tx, dropped })
    }

    /// Offers `entry` to the writer; drops and counts it when the buffer is full.
    #[inline]
    pub(crate) fn log(&self, entry: Entry) {
        if let Err(TrySendError::Full(_)) = self.tx.try_send(entry) {
            self.dropped.inc();
        }
    }
}

fn open(path: &Path) -> Result<File, AccessLogError> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|source| AccessLogError::Open {
            path: path.to_path_buf(),
            source,
        })
}

/// SIGUSR1s received so far, counted by one watcher for the whole process: a writer reopens
/// its file when the count moved since it last looked (a log started by `reload` shares it).
static SIGUSR1S: AtomicU64 = AtomicU64::new(0);

/// Installs the process's SIGUSR1 watcher, once. The handler is installed before this returns,
/// so a signal sent once the proxy runs never takes the default action (ending the process).
/// It runs on a thread of its own (with its own small runtime), so this may be called from
/// anywhere, a reload on the proxy's runtime included.
fn watch_sigusr1() -> Result<&'static AtomicU64, AccessLogError> {
    static INSTALLED: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    let installed = INSTALLED.get_or_init(|| {
        let (ready, wait) = std::sync::mpsc::channel();
        let spawned = std::thread::Builder::new()
            .name("bascule-sigusr1".into())
            .spawn(move || {
                use tokio::signal::unix::{signal, SignalKind};
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => return drop(ready.send(Err(e.to_string()))),
                };
                rt.block_on(async {
                    let mut usr1 = match signal(SignalKind::user_defined1()) {
                        Ok(s) => s,
                        Err(e) => return drop(ready.send(Err(e.to_string()))),
                    };
                    let _ = ready.send(Ok(()));
                    while usr1.recv().await.is_some() {
                        SIGUSR1S.fetch_add(1, Ordering::Release);
                    }
                })
            });
        match spawned {
            Ok(_) => wait
                .recv()
                .unwrap_or_else(|_| Err("the watcher ended".into())),
            Err(e) => Err(e.to_string()),
        }
    });
    match installed {
        Ok(()) => Ok(&SIGUSR1S),
        Err(e) => Err(AccessLogError::Start(std::io::Error::other(e.clone()))),
    }
}

/// Where the writer writes.
enum Sink {
    Stdout(std::io::Stdout),
    File { path: PathBuf, w: BufWriter<File> },
}

impl Sink {
    fn write(&mut self, line: &[u8]) -> std::io::Result<()> {
        match self {
            Sink::Stdout(s) => s.lock().write_all(line),
            Sink::File { w, .. } => w.write_all(line),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Sink::Stdout(s) => s.flush(),
            Sink::File { w, .. } => w.flush(),
        }
    }

    /// Opens the file's path again; the old file is kept if that fails.
    fn reopen(&mut self) {
        let _ = self.flush();
        if let Sink::File { path, w } = self {
            match open(path) {
                Ok(f) => *w = BufWriter::new(f),
                Err(e) => {
                    tracing::warn!(error = %e, "access log: reopen failed; still writing to the old file")
                }
            }
        }
    }
}

/// The writer thread: every [`TICK`], formats and writes what the requests queued, then
/// flushes; until every sender is gone.
fn write_lines(rx: Receiver<Entry>, mut sink: Sink, format: AccessLogFormat, reopen: &AtomicU64) {
    let mut seen = reopen.load(Ordering::Acquire);
    let mut line = Vec::with_capacity(512);
    let mut failed = false;
    loop {
        std::thread::sleep(TICK);
        // Looked at before writing: an entry written after the signal goes to the new file.
        let now = reopen.load(Ordering::Acquire);
        if now != seen {
            seen = now;
            sink.reopen();
        }
        let mut result = Ok(());
        let mut wrote = false;
        let gone = loop {
            match rx.try_recv() {
                Ok(e) => {
                    line.clear();
                    format_entry(&e, format, &mut line);
                    result = result.and(sink.write(&line));
                    wrote = true;
                }
                Err(TryRecvError::Empty) => break false,
                Err(TryRecvError::Disconnected) => break true,
            }
        };
        if wrote {
            result = result.and(sink.flush());
        }
        match (result, failed) {
            (Err(e), false) => {
                tracing::warn!(error = %e, "access log: write failed");
                failed = true;
            }
            (Ok(()), true) => failed = false,
            _ => {}
        }
        if gone {
            break;
        }
    }
    let _ = sink.flush();
}

/// One line, newline included.
pub(crate) fn format_entry(e: &Entry, format: AccessLogFormat, out: &mut Vec<u8>) {
    match format {
        AccessLogFormat::Combined => combined(e, out),
        AccessLogFormat::Json => json(e, out),
    }
    out.push(b'\n');
}

/// nginx's `combined`, then `$request_time`, the slot and the upstream (`-` for none), then
/// the request id when ids are on:
/// `client - - [time] "request" status bytes "referer" "user agent" seconds slot upstream rid=ID`.
fn combined(e: &Entry, out: &mut Vec<u8>) {
    let client = e.client.map_or_else(|| "-".to_string(), |c| c.to_string());
    let _ = write!(out, "{client} - - [");
    clf_time(e.time, out);
    out.extend_from_slice(b"] \"");
    let r = &e.request;
    escaped(&r.method, out);
    if !r.target.is_empty() {
        out.push(b' ');
        escaped(&r.target, out);
    }
    if !r.version.is_empty() {
        out.push(b' ');
        out.extend_from_slice(r.version.as_bytes());
    }
    let _ = write!(out, "\" {} {} \"", e.status, e.bytes);
    escaped(r.referer.as_deref().unwrap_or("-"), out);
    out.extend_from_slice(b"\" \"");
    escaped(r.user_agent.as_deref().unwrap_or("-"), out);
    let _ = write!(
        out,
        "\" {:.3} {} {}",
        e.duration.as_secs_f64(),
        e.slot.map_or("-", |s| s.as_str()),
        e.upstream.as_deref().unwrap_or("-")
    );
    if let Some(id) = &e.request_id {
        // Visible ASCII already; escaped all the same, as every other field.
        out.extend_from_slice(b" rid=");
        escaped(id.as_str(), out);
    }
}

/// As nginx escapes log variables: `"`, `\` and bytes outside printable ASCII as `\xHH`.
fn escaped(s: &str, out: &mut Vec<u8>) {
    for &b in s.as_bytes() {
        if b == b'"' || b == b'\\' || !(0x20..0x7f).contains(&b) {
            let _ = write!(out, "\\x{b:02X}");
        } else {
            out.push(b);
        }
    }
}

/// `25/Nov/2026:12:44:53 +0000` (UTC), from the RFC 3339 form.
fn clf_time(t: SystemTime, out: &mut Vec<u8>) {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    // `2026-11-25T12:44:53Z`
    let rfc = humantime::format_rfc3339_seconds(t).to_string();
    let b = rfc.as_bytes();
    if b.len() < 20 {
        out.extend_from_slice(b"-");
        return;
    }
    let month: usize = rfc[5..7].parse().unwrap_or(1);
    out.extend_from_slice(&b[8..10]);
    out.push(b'/');
    out.extend_from_slice(MONTHS[(month.clamp(1, 12)) - 1].as_bytes());
    out.push(b'/');
    out.extend_from_slice(&b[0..4]);
    out.push(b':');
    out.extend_from_slice(&b[11..19]);
    out.extend_from_slice(b" +0000");
}

/// One JSON object: the fields named in the config's contract.
#[derive(Serialize)]
struct JsonLine<'a> {
    time: String,
    client: Option<String>,
    method: &'a str,
    path: &'a str,
    status: u16,
    bytes: u64,
    duration_ms: f64,
    slot: Option<&'static str>,
    upstream: Option<&'a str>,
    user_agent: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    request_id: Option<&'a str>,
}

fn json(e: &Entry, out: &mut Vec<u8>) {
    let line = JsonLine {
        time: humantime::format_rfc3339_millis(e.time).to_string(),
        client: e.client.map(|c| c.to_string()),
        method: &e.request.method,
        path: &e.request.target,
        status: e.status,
        bytes: e.bytes,
        duration_ms: (e.duration.as_secs_f64() * 1e6).round() / 1e3,
        slot: e.slot.map(|s| s.as_str()),
        upstream: e.upstream.as_deref(),
        user_agent: e.request.user_agent.as_deref(),
        request_id: e.request_id.as_ref().map(RequestId::as_str),
    };
    let _ = serde_json::to_writer(&mut *out, &line);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> Entry {
        Entry {
            time: SystemTime::UNIX_EPOCH + Duration::from_secs(1_764_074_693),
            client: Some("127.0.0.1".parse().unwrap()),
            request: Box::new(LogRequest::from_raw(
                b"GET /a?b HTTP/1.1\r\nHost: h\r\nUser-Agent: t \"x\"\r\nReferer: r\r\n\r\n",
            )),
            status: 200,
            bytes: 12,
            duration: Duration::from_micros(2500),
            slot: Some(SlotName::Blue),
            upstream: Some("127.0.0.1:3008".into()),
            request_id: Some(RequestId::resolve(Some(b"r-1"), || true)),
        }
    }

    #[test]
    fn combined_line() {
        let mut out = Vec::new();
        format_entry(&entry(), AccessLogFormat::Combined, &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "127.0.0.1 - - [25/Nov/2025:12:44:53 +0000] \"GET /a?b HTTP/1.1\" 200 12 \"r\" \
             \"t \\x22x\\x22\" 0.003 blue 127.0.0.1:3008 rid=r-1\n"
        );
    }

    #[test]
    fn json_line() {
        let mut out = Vec::new();
        format_entry(&entry(), AccessLogFormat::Json, &mut out);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["path"], "/a?b");
        assert_eq!(v["status"], 200);
        assert_eq!(v["duration_ms"], 2.5);
        assert_eq!(v["user_agent"], "t \"x\"");
        assert_eq!(v["time"], "2025-11-25T12:44:53.000Z");
        assert_eq!(v["request_id"], "r-1");
    }

    #[test]
    fn refused_heads_show_what_they_can() {
        let r = LogRequest::from_raw(b"GET /x HTTP/1.1\r\nBad Header\r\n\r\n");
        assert_eq!((r.method.as_str(), r.target.as_str()), ("GET", "/x"));
        let r = LogRequest::from_raw(b"");
        assert!(r.method.is_empty());
    }
}
