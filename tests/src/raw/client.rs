//! A raw client that writes exact bytes and parses whatever comes back, in the clear or over
//! TLS.

use std::collections::BTreeSet;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use super::show;

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
        crate::header_values(&self.headers, name)
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
