//! Raw HTTP/1.1 on both sides of the proxy, for conformance tests: a scripted upstream that logs
//! every byte it receives and answers with exact bytes, a raw client that writes exact bytes and
//! parses whatever comes back, and an nginx reference proxy when nginx is installed.
//!
//! Nothing here normalises or repairs the wire: malformed bytes are recorded as they came, so a
//! test can tell "the proxy rejected it" from "the proxy relayed it".

use std::collections::BTreeSet;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::{free_addr, wait_until};

/// Header slots for parsing heads on both sides: more than the 100 response headers the
/// contract lets through.
const MAX_HEADERS: usize = 256;
/// How often blocked reads wake up to look at the stop flag.
const POLL: Duration = Duration::from_millis(50);
/// Longest request head or body the scripted upstream buffers.
const MAX_BUFFER: usize = 4 * 1024 * 1024;

// ---------------------------------------------------------------------------------------------
// Scripted upstream
// ---------------------------------------------------------------------------------------------

/// One step of the scripted upstream's answer to a request.
#[derive(Debug, Clone)]
pub enum Action {
    /// Writes these bytes now.
    Write(Vec<u8>),
    /// Waits this long before the next step.
    Delay(Duration),
    /// Writes these bytes this long from now, on the same connection, while the connection
    /// goes on reading the next request (unsolicited bytes on an idle connection).
    Later(Duration, Vec<u8>),
    /// Closes the connection (after the steps before it).
    Close,
    /// Never answers: the connection stays open, reading and discarding, until the peer closes
    /// it or the upstream stops.
    Hang,
}

/// A request as the scripted upstream received it.
#[derive(Debug, Clone)]
pub struct Received {
    /// Connection id, in accept order from 0.
    pub conn: usize,
    /// The exact bytes of the head, request line to the empty line included. For a head that
    /// did not parse, every byte the connection had buffered.
    pub head: Vec<u8>,
    /// The body, decoded from its framing (Content-Length or chunked).
    pub body: Vec<u8>,
    /// The body's bytes as they came on the wire (chunk framing included).
    pub body_wire: Vec<u8>,
    /// Method (empty when the head did not parse).
    pub method: String,
    /// Request target exactly as sent (empty when the head did not parse).
    pub target: String,
    /// Headers in order, names as sent.
    pub headers: Vec<(String, Vec<u8>)>,
    /// The head did not parse; the connection was closed after it.
    pub malformed: bool,
    /// The body's framing completed (a request cut short or with a bad chunk is not).
    pub complete: bool,
}

impl Received {
    /// Every value of header `name` (case-insensitive), as text.
    pub fn header_all(&self, name: &str) -> Vec<String> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
            .collect()
    }

    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<String> {
        self.header_all(name).into_iter().next()
    }

    /// Whether the head has a line feed not preceded by a carriage return.
    pub fn has_bare_lf(&self) -> bool {
        has_bare_lf(&self.head)
    }

    /// The request's first line and headers, for failure messages.
    pub fn show(&self) -> String {
        show(&self.head)
    }

    /// Whether this is the health checker's probe (never counted as traffic).
    pub fn is_health_check(&self) -> bool {
        self.target == "/health"
    }
}

/// Whether `bytes` hold a `\n` not preceded by `\r`.
pub fn has_bare_lf(bytes: &[u8]) -> bool {
    bytes
        .iter()
        .enumerate()
        .any(|(i, &b)| b == b'\n' && (i == 0 || bytes[i - 1] != b'\r'))
}

/// Bytes as escaped text (`\r\n` shown as such), for failure messages.
pub fn show(bytes: &[u8]) -> String {
    bytes.escape_ascii().to_string()
}

#[derive(Default)]
struct Log {
    requests: Vec<Received>,
    /// Every byte each connection received, by connection id.
    conn_bytes: Vec<Vec<u8>>,
}

type Script = dyn Fn(&Received) -> Vec<Action> + Send + Sync;

/// An upstream on `127.0.0.1:0` answering each request with the actions its script picks,
/// logging everything it receives.
pub struct ScriptedUpstream {
    addr: SocketAddr,
    log: Arc<Mutex<Log>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ScriptedUpstream {
    /// Starts the upstream; `script` picks the answer to each request (see [`echo`]).
    pub fn start(script: impl Fn(&Received) -> Vec<Action> + Send + Sync + 'static) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind scripted upstream");
        let addr = listener.local_addr().expect("local addr");
        let log = Arc::new(Mutex::new(Log::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let script: Arc<Script> = Arc::new(script);
        let (l, s) = (log.clone(), stop.clone());
        let thread = std::thread::Builder::new()
            .name("scripted-upstream".into())
            .spawn(move || {
                for stream in listener.incoming() {
                    if s.load(Ordering::Relaxed) {
                        return;
                    }
                    let Ok(stream) = stream else { continue };
                    let conn = {
                        let mut log = l.lock().expect("log lock");
                        log.conn_bytes.push(Vec::new());
                        log.conn_bytes.len() - 1
                    };
                    let (l, s, script) = (l.clone(), s.clone(), script.clone());
                    std::thread::spawn(move || serve(stream, conn, &l, &s, &*script));
                }
            })
            .expect("spawn scripted upstream");
        ScriptedUpstream {
            addr,
            log,
            stop,
            thread: Some(thread),
        }
    }

    /// Starts an upstream that answers every request with [`echo`].
    pub fn echo() -> Self {
        ScriptedUpstream::start(echo)
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Every request received so far, health checks left out.
    pub fn requests(&self) -> Vec<Received> {
        self.requests_since(0)
    }

    /// A position in the log, for [`Self::requests_since`].
    pub fn mark(&self) -> usize {
        self.log.lock().expect("log lock").requests.len()
    }

    /// Requests received after `mark`, health checks left out.
    pub fn requests_since(&self, mark: usize) -> Vec<Received> {
        let log = self.log.lock().expect("log lock");
        log.requests
            .iter()
            .skip(mark)
            .filter(|r| !r.is_health_check())
            .cloned()
            .collect()
    }

    /// Connections accepted so far, health checks' included.
    pub fn accepted(&self) -> usize {
        self.log.lock().expect("log lock").conn_bytes.len()
    }

    /// Connections that carried at least one request other than a health check.
    pub fn traffic_connections(&self) -> BTreeSet<usize> {
        self.requests().iter().map(|r| r.conn).collect()
    }

    /// Every byte connection `conn` received so far.
    pub fn conn_bytes(&self, conn: usize) -> Vec<u8> {
        let log = self.log.lock().expect("log lock");
        log.conn_bytes.get(conn).cloned().unwrap_or_default()
    }
}

impl Drop for ScriptedUpstream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wakes the accept loop so it sees the flag.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The default answer: `200`, `Content-Length`, body `METHOD TARGET` (head only for `HEAD`),
/// and `x-upstream-conn: ID`. Like a real server, it closes the connection after answering a
/// request that carries `Connection: close`.
pub fn echo(req: &Received) -> Vec<Action> {
    let body = format!("{} {}", req.method, req.target);
    let conn = req.conn.to_string();
    let mut resp = response(200, &[("x-upstream-conn", &conn)], body.as_bytes());
    if req.method == "HEAD" {
        resp.truncate(resp.len() - body.len());
    }
    let close = req
        .header_all("connection")
        .iter()
        .any(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("close")));
    let mut actions = vec![Action::Write(resp)];
    if close {
        actions.push(Action::Close);
    }
    actions
}

/// `HTTP/1.1 STATUS` with `headers`, a `Content-Length` for `body`, and `body`.
pub fn response(status: u16, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut out = format!("HTTP/1.1 {status} {}\r\n", reason(status)).into_bytes();
    for (k, v) in headers {
        out.extend_from_slice(format!("{k}: {v}\r\n").as_bytes());
    }
    out.extend_from_slice(format!("Content-Length: {}\r\n\r\n", body.len()).as_bytes());
    out.extend_from_slice(body);
    out
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        204 => "No Content",
        400 => "Bad Request",
        404 => "Not Found",
        500 => "Internal Server Error",
        _ => "Status",
    }
}

/// A blocking reader over one socket that wakes up to look at a stop flag.
struct Reader {
    stream: TcpStream,
    buf: Vec<u8>,
    conn: usize,
}

impl Reader {
    /// Reads more bytes; `Ok(false)` on EOF or stop.
    fn fill(&mut self, log: &Mutex<Log>, stop: &AtomicBool) -> io::Result<bool> {
        let mut chunk = [0u8; 16 * 1024];
        loop {
            if stop.load(Ordering::Relaxed) {
                return Ok(false);
            }
            match self.stream.read(&mut chunk) {
                Ok(0) => return Ok(false),
                Ok(n) => {
                    self.buf.extend_from_slice(&chunk[..n]);
                    let mut log = log.lock().expect("log lock");
                    log.conn_bytes[self.conn].extend_from_slice(&chunk[..n]);
                    return Ok(true);
                }
                Err(e)
                    if e.kind() == io::ErrorKind::WouldBlock
                        || e.kind() == io::ErrorKind::TimedOut =>
                {
                    continue
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Index just past the next line feed at or after `from`, reading more as needed.
    fn line_end(&mut self, from: usize, log: &Mutex<Log>, stop: &AtomicBool) -> Option<usize> {
        loop {
            if let Some(i) = self.buf[from..].iter().position(|&b| b == b'\n') {
                return Some(from + i + 1);
            }
            if self.buf.len() > MAX_BUFFER || !self.fill(log, stop).ok()? {
                return None;
            }
        }
    }

    /// Makes sure `n` bytes are buffered.
    fn want(&mut self, n: usize, log: &Mutex<Log>, stop: &AtomicBool) -> bool {
        while self.buf.len() < n {
            if n > MAX_BUFFER || !matches!(self.fill(log, stop), Ok(true)) {
                return false;
            }
        }
        true
    }
}

/// Parsed request head: (head length, method, target, headers).
type Head = (usize, String, String, Vec<(String, Vec<u8>)>);

fn parse_head(buf: &[u8]) -> Result<Option<Head>, ()> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => Ok(Some((
            n,
            req.method.unwrap_or("").to_string(),
            req.path.unwrap_or("").to_string(),
            req.headers
                .iter()
                .map(|h| (h.name.to_string(), h.value.to_vec()))
                .collect(),
        ))),
        Ok(httparse::Status::Partial) => Ok(None),
        Err(_) => Err(()),
    }
}

/// Reads a chunked body starting at `start` of the buffer; returns (decoded, end).
fn read_chunked(
    r: &mut Reader,
    start: usize,
    log: &Mutex<Log>,
    stop: &AtomicBool,
) -> Option<(Vec<u8>, usize)> {
    let mut pos = start;
    let mut body = Vec::new();
    loop {
        let end = r.line_end(pos, log, stop)?;
        let line = String::from_utf8_lossy(&r.buf[pos..end]).into_owned();
        let size = usize::from_str_radix(line.split(';').next()?.trim(), 16).ok()?;
        pos = end;
        if size == 0 {
            // Trailers, then the empty line.
            loop {
                let end = r.line_end(pos, log, stop)?;
                let blank = r.buf[pos..end].iter().all(|&b| b == b'\r' || b == b'\n');
                pos = end;
                if blank {
                    return Some((body, pos));
                }
            }
        }
        if !r.want(pos + size, log, stop) {
            return None;
        }
        body.extend_from_slice(&r.buf[pos..pos + size]);
        pos = r.line_end(pos + size, log, stop)?;
    }
}

fn serve(stream: TcpStream, conn: usize, log: &Mutex<Log>, stop: &AtomicBool, script: &Script) {
    let _ = stream.set_read_timeout(Some(POLL));
    let _ = stream.set_nodelay(true);
    let Ok(mut out) = stream.try_clone() else {
        return;
    };
    let mut r = Reader {
        stream,
        buf: Vec::new(),
        conn,
    };
    loop {
        // One head.
        let head = loop {
            if !r.buf.is_empty() {
                match parse_head(&r.buf) {
                    Ok(Some(h)) => break Some(h),
                    Ok(None) => {}
                    Err(()) => break None,
                }
            }
            if r.buf.len() > MAX_BUFFER || !matches!(r.fill(log, stop), Ok(true)) {
                return;
            }
        };
        let Some((head_len, method, target, headers)) = head else {
            // Unparsable: logged as it came, then the connection ends.
            let mut log = log.lock().expect("log lock");
            log.requests.push(Received {
                conn,
                head: std::mem::take(&mut r.buf),
                body: Vec::new(),
                body_wire: Vec::new(),
                method: String::new(),
                target: String::new(),
                headers: Vec::new(),
                malformed: true,
                complete: false,
            });
            return;
        };
        let value = |name: &str| {
            headers
                .iter()
                .filter(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| String::from_utf8_lossy(v).to_ascii_lowercase())
                .collect::<Vec<_>>()
        };
        let chunked = value("transfer-encoding")
            .iter()
            .any(|v| v.contains("chunked"));
        let length = value("content-length")
            .first()
            .and_then(|v| v.trim().parse::<usize>().ok())
            .unwrap_or(0);
        let (body, end, complete) = if chunked {
            match read_chunked(&mut r, head_len, log, stop) {
                Some((body, end)) => (body, end, true),
                None => (Vec::new(), r.buf.len(), false),
            }
        } else {
            let complete = r.want(head_len + length, log, stop);
            let end = (head_len + length).min(r.buf.len());
            (r.buf[head_len..end].to_vec(), end, complete)
        };
        let req = Received {
            conn,
            head: r.buf[..head_len].to_vec(),
            body,
            body_wire: r.buf[head_len..end].to_vec(),
            method,
            target,
            headers,
            malformed: false,
            complete,
        };
        r.buf.drain(..end);
        if !complete {
            // Cut short or unreadable: logged, never answered.
            log.lock().expect("log lock").requests.push(req);
            return;
        }
        let actions = if req.is_health_check() {
            vec![Action::Write(response(200, &[], b"ok"))]
        } else {
            script(&req)
        };
        log.lock().expect("log lock").requests.push(req);
        for action in actions {
            match action {
                Action::Write(bytes) => {
                    if out.write_all(&bytes).is_err() {
                        return;
                    }
                }
                Action::Delay(d) => std::thread::sleep(d),
                Action::Later(d, bytes) => {
                    if let Ok(mut late) = out.try_clone() {
                        std::thread::spawn(move || {
                            std::thread::sleep(d);
                            let _ = late.write_all(&bytes);
                        });
                    }
                }
                Action::Close => {
                    let _ = out.shutdown(Shutdown::Both);
                    return;
                }
                Action::Hang => {
                    while let Ok(true) = r.fill(log, stop) {}
                    return;
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Raw client
// ---------------------------------------------------------------------------------------------

/// A response as the raw client read it.
#[derive(Debug, Clone)]
pub struct RawResponse {
    /// Status code.
    pub status: u16,
    /// Headers in order, names lower-cased.
    pub headers: Vec<(String, String)>,
    /// The body, decoded from its framing.
    pub body: Vec<u8>,
    /// The head's exact bytes.
    pub head: Vec<u8>,
    /// The body's exact bytes (chunk framing included).
    pub body_wire: Vec<u8>,
}

impl RawResponse {
    /// Every value of header `name` (case-insensitive).
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .filter(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.header_all(name).into_iter().next()
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// How a read ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    /// The responses asked for were read; the connection is still open.
    Open,
    /// The peer closed (EOF) or reset the connection.
    Closed,
    /// The deadline passed with the connection open.
    Timeout,
    /// Bytes that are not a valid response.
    Garbage(String),
}

/// What a raw client read.
#[derive(Debug, Clone)]
pub struct Exchange {
    /// Final (non-1xx) responses, in order.
    pub responses: Vec<RawResponse>,
    /// Interim 1xx responses (101 excepted: that one is final).
    pub interim: Vec<RawResponse>,
    /// How the read ended.
    pub end: End,
    /// Bytes received that did not make a complete response.
    pub leftover: Vec<u8>,
    /// Time from the start of the read to its end.
    pub elapsed: Duration,
}

impl Exchange {
    /// The status codes of the final responses.
    pub fn statuses(&self) -> Vec<u16> {
        self.responses.iter().map(|r| r.status).collect()
    }
}

/// One raw client connection.
pub struct RawClient {
    stream: Conn,
    buf: Vec<u8>,
}

/// The client's side of a connection: plain TCP, or TLS over it.
enum Conn {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
}

impl Conn {
    fn tcp(&self) -> &TcpStream {
        match self {
            Conn::Plain(s) => s,
            Conn::Tls(s) => &s.sock,
        }
    }
}

impl Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Conn::Plain(s) => s.read(buf),
            Conn::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Conn {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Conn::Plain(s) => s.write(buf),
            // Each write goes out as it is made, as on a plain socket.
            Conn::Tls(s) => s.write(buf).and_then(|n| s.flush().map(|()| n)),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Conn::Plain(s) => s.flush(),
            Conn::Tls(s) => s.flush(),
        }
    }
}

enum ReadErr {
    Closed,
    Timeout,
}

impl RawClient {
    /// Connects to `addr`.
    pub fn connect(addr: SocketAddr) -> io::Result<RawClient> {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        stream.set_nodelay(true)?;
        Ok(RawClient {
            stream: Conn::Plain(stream),
            buf: Vec::new(),
        })
    }

    /// Connects to the https listener at `addr` (SNI `localhost`, HTTP/1.1 by ALPN).
    pub fn connect_tls(addr: SocketAddr) -> io::Result<RawClient> {
        let conn = crate::tls::TlsConn::connect(addr, "localhost", &[b"http/1.1"], false)?;
        let stream = conn.into_stream();
        stream.sock.set_nodelay(true)?;
        Ok(RawClient {
            stream: Conn::Tls(Box::new(stream)),
            buf: Vec::new(),
        })
    }

    /// Connects to `addr` over TLS when `tls`, else in the clear.
    pub fn connect_to(addr: SocketAddr, tls: bool) -> io::Result<RawClient> {
        if tls {
            RawClient::connect_tls(addr)
        } else {
            RawClient::connect(addr)
        }
    }

    /// Writes `bytes` (an error means the peer closed: a later read reports it).
    pub fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes)
    }

    /// Writes `bytes` in pieces of `piece` bytes with `gap` between them, stopping at the
    /// first write error (the peer closed); returns how many bytes were written.
    pub fn send_slowly(&mut self, bytes: &[u8], piece: usize, gap: Duration) -> usize {
        let mut sent = 0;
        for (i, p) in bytes.chunks(piece.max(1)).enumerate() {
            if i > 0 {
                std::thread::sleep(gap);
            }
            if self.stream.write_all(p).is_err() {
                break;
            }
            sent += p.len();
        }
        sent
    }

    /// Reads until `n` final responses are parsed, the peer closes, or `timeout` passes.
    /// `head[i]` tells whether the i-th response answers a `HEAD` (no body); missing entries
    /// mean no.
    pub fn read_for(&mut self, n: usize, head: &[bool], timeout: Duration) -> Exchange {
        let start = Instant::now();
        let deadline = start + timeout;
        let mut ex = Exchange {
            responses: Vec::new(),
            interim: Vec::new(),
            end: End::Open,
            leftover: Vec::new(),
            elapsed: Duration::ZERO,
        };
        while ex.responses.len() < n {
            let is_head = head.get(ex.responses.len()).copied().unwrap_or(false);
            match self.read_one(is_head, deadline) {
                Ok(Ok(r)) if (100..200).contains(&r.status) && r.status != 101 => {
                    ex.interim.push(r)
                }
                Ok(Ok(r)) => ex.responses.push(r),
                Ok(Err(garbage)) => {
                    ex.end = End::Garbage(garbage);
                    break;
                }
                Err(ReadErr::Closed) => {
                    ex.end = End::Closed;
                    break;
                }
                Err(ReadErr::Timeout) => {
                    ex.end = End::Timeout;
                    break;
                }
            }
        }
        // Kept in the buffer too: a later read goes on from there.
        ex.leftover = self.buf.clone();
        ex.elapsed = start.elapsed();
        ex
    }

    /// Reads up to `n` responses to requests other than `HEAD`.
    pub fn read(&mut self, n: usize, timeout: Duration) -> Exchange {
        self.read_for(n, &[], timeout)
    }

    /// Reads until the peer closes or `timeout` passes; every response is parsed.
    pub fn read_to_end(&mut self, timeout: Duration) -> Exchange {
        self.read_for(usize::MAX, &[], timeout)
    }

    /// Whether the peer closed the connection within `timeout` (bytes read meanwhile are
    /// dropped).
    pub fn closed_within(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            match self.fill(deadline) {
                Ok(()) => self.buf.clear(),
                Err(ReadErr::Closed) => return true,
                Err(ReadErr::Timeout) => return false,
            }
        }
    }

    fn fill(&mut self, deadline: Instant) -> Result<(), ReadErr> {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(ReadErr::Timeout);
        }
        let _ = self.stream.tcp().set_read_timeout(Some(left));
        let mut chunk = [0u8; 16 * 1024];
        match self.stream.read(&mut chunk) {
            Ok(0) => Err(ReadErr::Closed),
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                Ok(())
            }
            Err(e)
                if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::TimedOut =>
            {
                Err(ReadErr::Timeout)
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(()),
            Err(_) => Err(ReadErr::Closed),
        }
    }

    fn line_end(&mut self, from: usize, deadline: Instant) -> Result<usize, ReadErr> {
        loop {
            if let Some(i) = self.buf[from..].iter().position(|&b| b == b'\n') {
                return Ok(from + i + 1);
            }
            self.fill(deadline)?;
        }
    }

    /// One response: `Ok(Ok)` parsed, `Ok(Err)` not a response, `Err` closed or timed out
    /// before it was complete (the partial bytes stay in the buffer).
    fn read_one(
        &mut self,
        head: bool,
        deadline: Instant,
    ) -> Result<Result<RawResponse, String>, ReadErr> {
        let (status, headers, head_len) = loop {
            if !self.buf.is_empty() {
                match crate::http::parse_head(&self.buf) {
                    Ok(Some(head)) => break head,
                    Ok(None) => {}
                    Err(e) => return Ok(Err(format!("{e}: {}", show(&self.buf)))),
                }
            }
            self.fill(deadline)?;
        };
        let all = |name: &str| -> Vec<String> {
            headers
                .iter()
                .filter(|(k, _)| k == name)
                .map(|(_, v)| v.trim().to_ascii_lowercase())
                .collect()
        };
        let no_body = head || status == 204 || status == 304 || (100..200).contains(&status);
        let chunked = all("transfer-encoding")
            .last()
            .is_some_and(|v| v.rsplit(',').next().map(str::trim) == Some("chunked"));
        let lengths: BTreeSet<String> = all("content-length")
            .iter()
            .flat_map(|v| {
                v.split(',')
                    .map(|p| p.trim().to_string())
                    .collect::<Vec<_>>()
            })
            .collect();
        let (body, end) = if no_body {
            (Vec::new(), head_len)
        } else if chunked {
            let mut pos = head_len;
            let mut body = Vec::new();
            loop {
                let end = self.line_end(pos, deadline)?;
                let line = String::from_utf8_lossy(&self.buf[pos..end]).into_owned();
                let Ok(size) = usize::from_str_radix(
                    line.split(';')
                        .next()
                        .unwrap_or("")
                        .trim_end_matches(['\r', '\n']),
                    16,
                ) else {
                    return Ok(Err(format!(
                        "bad chunk size line {}",
                        show(line.as_bytes())
                    )));
                };
                pos = end;
                if size == 0 {
                    loop {
                        let end = self.line_end(pos, deadline)?;
                        let blank = &self.buf[pos..end] == b"\r\n" || &self.buf[pos..end] == b"\n";
                        pos = end;
                        if blank {
                            break;
                        }
                    }
                    break (body, pos);
                }
                while self.buf.len() < pos + size {
                    self.fill(deadline)?;
                }
                body.extend_from_slice(&self.buf[pos..pos + size]);
                pos = self.line_end(pos + size, deadline)?;
            }
        } else if !lengths.is_empty() {
            let [len] = lengths.iter().collect::<Vec<_>>()[..] else {
                return Ok(Err(format!("conflicting content-length {lengths:?}")));
            };
            let Ok(len) = len.parse::<usize>() else {
                return Ok(Err(format!("bad content-length {len:?}")));
            };
            while self.buf.len() < head_len + len {
                self.fill(deadline)?;
            }
            (self.buf[head_len..head_len + len].to_vec(), head_len + len)
        } else {
            // Delimited by close.
            loop {
                match self.fill(deadline) {
                    Ok(()) => {}
                    Err(ReadErr::Closed) => break,
                    Err(e) => return Err(e),
                }
            }
            (self.buf[head_len..].to_vec(), self.buf.len())
        };
        let resp = RawResponse {
            status,
            headers,
            head: self.buf[..head_len].to_vec(),
            body_wire: self.buf[head_len..end].to_vec(),
            body,
        };
        self.buf.drain(..end);
        Ok(Ok(resp))
    }
}

/// Connects, writes `bytes` and reads up to `n` responses within `timeout`.
pub fn exchange(addr: SocketAddr, bytes: &[u8], n: usize, timeout: Duration) -> Exchange {
    let mut c = RawClient::connect(addr).expect("connect to the proxy");
    let _ = c.send(bytes);
    c.read(n, timeout)
}

// ---------------------------------------------------------------------------------------------
// nginx
// ---------------------------------------------------------------------------------------------

/// The nginx binary: `NGINX_BIN`, else `/usr/sbin/nginx`, else `nginx` on the `PATH`.
pub fn nginx_bin() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("NGINX_BIN") {
        return Some(PathBuf::from(p)).filter(|p| p.exists());
    }
    let fixed = PathBuf::from("/usr/sbin/nginx");
    if fixed.exists() {
        return Some(fixed);
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("nginx"))
            .find(|p| p.exists())
    })
}

/// A foreground, single-process nginx reverse proxy in its own temp prefix, configured as
/// edges usually are: HTTP/1.1 keep-alive to the upstream, forwarded headers set, and
/// `location /private` served from a directory.
pub struct Nginx {
    child: Child,
    /// Where it listens.
    pub addr: SocketAddr,
    dir: tempfile::TempDir,
}

impl Nginx {
    /// Starts nginx in front of `upstream`, serving `/private…` from `static_root` (a file
    /// `static_root/private` answers `/private`). `None`, with a notice printed, when nginx is
    /// not installed.
    pub fn start(upstream: SocketAddr, static_root: &Path) -> Option<Nginx> {
        let Some(bin) = nginx_bin() else {
            println!("nginx not found (set NGINX_BIN or install nginx): reference run skipped");
            return None;
        };
        let dir = tempfile::Builder::new()
            .prefix("bascule-nginx-")
            .tempdir()
            .expect("temp dir");
        let d = dir.path().display();
        let addr = free_addr();
        let conf = format!(
            "daemon off;\nmaster_process off;\nworker_processes 1;\npid {d}/nginx.pid;\n\
             error_log {d}/error.log info;\n\
             events {{ worker_connections 512; }}\n\
             http {{\n\
               access_log off;\n\
               client_body_temp_path {d}/body;\n proxy_temp_path {d}/proxy;\n\
               fastcgi_temp_path {d}/fastcgi;\n uwsgi_temp_path {d}/uwsgi;\n scgi_temp_path {d}/scgi;\n\
               upstream backend {{ server {upstream}; keepalive 16; }}\n\
               server {{\n\
                 listen {addr};\n\
                 location /private {{ root {root}; }}\n\
                 location / {{\n\
                   proxy_pass http://backend;\n\
                   proxy_http_version 1.1;\n\
                   proxy_set_header Connection \"\";\n\
                   proxy_set_header Host $host;\n\
                   proxy_set_header X-Real-IP $remote_addr;\n\
                   proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;\n\
                   proxy_set_header X-Forwarded-Proto $scheme;\n\
                   proxy_set_header X-Forwarded-Host $host;\n\
                 }}\n\
               }}\n\
             }}\n",
            root = static_root.display(),
        );
        let conf_path = dir.path().join("nginx.conf");
        std::fs::write(&conf_path, conf).expect("write nginx.conf");
        let mut child = Command::new(&bin)
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(&conf_path)
            .arg("-e")
            .arg(dir.path().join("error.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn nginx");
        let ready = wait_until(Duration::from_secs(10), || {
            matches!(child.try_wait(), Ok(Some(_))) || TcpStream::connect(addr).is_ok()
        });
        if !ready || !matches!(child.try_wait(), Ok(None)) {
            let log = std::fs::read_to_string(dir.path().join("error.log")).unwrap_or_default();
            let _ = child.kill();
            let _ = child.wait();
            panic!("nginx did not start:\n{log}");
        }
        Some(Nginx { child, addr, dir })
    }

    /// nginx's error log so far.
    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // One process (no master, no workers): killing it stops everything it started.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
