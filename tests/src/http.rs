//! A raw HTTP/1.1 client: exact bytes on the wire (traversal tests need paths no URL library
//! would send), keep-alive, and nothing hidden.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// A parsed response.
#[derive(Debug, Clone)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Headers, names lower-cased, in order.
    pub headers: Vec<(String, String)>,
    /// The body (empty for HEAD, 204 and 304).
    pub body: Vec<u8>,
}

impl Response {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Every value of header `name` (case-insensitive), in order.
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        crate::header_values(&self.headers, name)
    }

    /// How many times header `name` appears.
    pub fn header_count(&self, name: &str) -> usize {
        let name = name.to_ascii_lowercase();
        self.headers.iter().filter(|(k, _)| *k == name).count()
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The `x-bascule-slot` header.
    pub fn slot(&self) -> Option<&str> {
        self.header("x-bascule-slot")
    }

    /// The headers as two paths' answers to one request compare, sorted: those named in
    /// `ignore` left out, a request id the proxy made read as `<made id>`
    /// ([`crate::comparable_value`]).
    pub fn comparable(&self, ignore: &[&str]) -> Vec<(String, String)> {
        let mut h: Vec<_> = self
            .headers
            .iter()
            .filter(|(k, _)| !ignore.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), crate::comparable_value(k, v)))
            .collect();
        h.sort();
        h
    }
}

/// One keep-alive connection.
pub struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    /// Connects to `addr` with a 10 s read timeout.
    pub fn connect(addr: SocketAddr) -> io::Result<Conn> {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        stream.set_nodelay(true)?;
        Ok(Conn {
            stream,
            buf: Vec::new(),
        })
    }

    /// Connects to `addr` from the local address `from` (any loopback address, such as
    /// 127.0.0.7: a client the proxy sees as another host).
    pub fn connect_from(addr: SocketAddr, from: std::net::IpAddr) -> io::Result<Conn> {
        let socket = socket2::Socket::new(
            socket2::Domain::for_address(addr),
            socket2::Type::STREAM,
            None,
        )?;
        socket.bind(&SocketAddr::new(from, 0).into())?;
        socket.connect_timeout(&addr.into(), Duration::from_secs(5))?;
        let stream: TcpStream = socket.into();
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        stream.set_nodelay(true)?;
        Ok(Conn {
            stream,
            buf: Vec::new(),
        })
    }

    /// Sets the read timeout.
    pub fn set_timeout(&self, t: Duration) -> io::Result<()> {
        self.stream.set_read_timeout(Some(t))
    }

    /// Sends `GET path` with extra `headers` and reads the response.
    pub fn get(&mut self, path: &str, headers: &[(&str, &str)]) -> io::Result<Response> {
        self.request("GET", path, headers)
    }

    /// Sends `method path` with extra `headers` and reads the response.
    pub fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> io::Result<Response> {
        let mut req = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\n");
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        self.send_raw(req.as_bytes())?;
        self.read_response(method == "HEAD")
    }

    /// Writes raw bytes.
    pub fn send_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes)
    }

    /// Reads one response (Content-Length or chunked body; none when `head`).
    pub fn read_response(&mut self, head: bool) -> io::Result<Response> {
        let (status, headers, used) = loop {
            match parse_head(&self.buf) {
                Ok(Some(head)) => break head,
                Ok(None) => self.fill()?,
                Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, e)),
            }
        };
        self.buf.drain(..used);
        let find = |name: &str| {
            headers
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        };
        let mut body = Vec::new();
        let no_body = head || status == 204 || status == 304 || (100..200).contains(&status);
        if !no_body {
            if let Some(len) = find("content-length").and_then(|v| v.trim().parse::<usize>().ok()) {
                while self.buf.len() < len {
                    self.fill()?;
                }
                body = self.buf.drain(..len).collect();
            } else if find("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
                loop {
                    let line_end = loop {
                        if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                            break i;
                        }
                        self.fill()?;
                    };
                    let size_line = String::from_utf8_lossy(&self.buf[..line_end]).into_owned();
                    let size =
                        usize::from_str_radix(size_line.split(';').next().unwrap_or("").trim(), 16)
                            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
                    self.buf.drain(..line_end + 2);
                    if size == 0 {
                        // Trailer lines, then the empty line that ends the body.
                        loop {
                            let end = loop {
                                if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                                    break i;
                                }
                                self.fill()?;
                            };
                            self.buf.drain(..end + 2);
                            if end == 0 {
                                break;
                            }
                        }
                        break;
                    }
                    while self.buf.len() < size + 2 {
                        self.fill()?;
                    }
                    body.extend(self.buf.drain(..size));
                    self.buf.drain(..2);
                }
            } else {
                // Body until close.
                loop {
                    match self.fill() {
                        Ok(()) => {}
                        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => break,
                        Err(e) => return Err(e),
                    }
                }
                body = std::mem::take(&mut self.buf);
            }
        }
        Ok(Response {
            status,
            headers,
            body,
        })
    }

    fn fill(&mut self) -> io::Result<()> {
        let mut chunk = [0u8; 16 * 1024];
        let n = self.stream.read(&mut chunk)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed",
            ));
        }
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(())
    }
}

/// One request on a fresh connection.
pub fn get(addr: SocketAddr, path: &str) -> io::Result<Response> {
    Conn::connect(addr)?.get(path, &[])
}

/// One request with headers on a fresh connection.
pub fn get_with(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> io::Result<Response> {
    Conn::connect(addr)?.get(path, headers)
}

/// A parsed response head: status, headers (names lower-cased), length in bytes.
pub type Head = (u16, Vec<(String, String)>, usize);

/// The response head at the start of `buf`; `None` while incomplete.
pub fn parse_head(buf: &[u8]) -> Result<Option<Head>, httparse::Error> {
    let mut hdrs = [httparse::EMPTY_HEADER; 300];
    let mut resp = httparse::Response::new(&mut hdrs);
    Ok(match resp.parse(buf)? {
        httparse::Status::Complete(n) => {
            let headers = resp
                .headers
                .iter()
                .map(|h| {
                    (
                        h.name.to_ascii_lowercase(),
                        String::from_utf8_lossy(h.value).into_owned(),
                    )
                })
                .collect();
            Some((resp.code.unwrap_or(0), headers, n))
        }
        httparse::Status::Partial => None,
    })
}
