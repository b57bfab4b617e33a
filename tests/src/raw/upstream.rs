//! A scripted upstream that logs every byte it receives and answers with exact bytes.

use std::collections::BTreeSet;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::{MAX_BUFFER, MAX_HEADERS, POLL};

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
