//! Response framing for the fast path: where a response from the upstream ends, so that the
//! bytes can be relayed as they are and both connections kept alive.

/// How the body of a response is delimited (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framing {
    /// No body (HEAD, 1xx, 204, 304).
    Empty,
    /// `Content-Length` bytes.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// Until the upstream closes.
    UntilClose,
}

/// What the fast path needs from an upstream response head.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ResponseHead {
    /// Bytes of the head, final CRLF included.
    pub(crate) len: usize,
    /// Status code.
    pub(crate) status: u16,
    /// Body framing.
    pub(crate) framing: Framing,
    /// The upstream asked to close (or spoke HTTP/1.0).
    pub(crate) close: bool,
    /// The upstream sent a `Date` header.
    pub(crate) has_date: bool,
}

/// Outcome of parsing the start of `buf` as a response head.
pub(crate) enum Parsed {
    /// A complete head.
    Head(ResponseHead),
    /// More bytes needed.
    Partial,
    /// Not a valid response.
    Invalid,
}

/// Parses a response head from `buf`; `head_request` says the request was HEAD.
pub(crate) fn parse_response(buf: &[u8], head_request: bool) -> Parsed {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut resp = httparse::Response::new(&mut headers);
    let len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(_) => return Parsed::Invalid,
    };
    let status = resp.code.unwrap_or(0);
    let mut close = resp.version == Some(0);
    let mut length = None;
    let mut chunked = false;
    let mut has_date = false;
    for h in resp.headers.iter() {
        let name = h.name.as_bytes();
        if name.eq_ignore_ascii_case(b"date") {
            has_date = true;
        } else if name.eq_ignore_ascii_case(b"content-length") {
            let Some(n) = std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
            else {
                return Parsed::Invalid;
            };
            if length.is_some_and(|l| l != n) {
                return Parsed::Invalid;
            }
            length = Some(n);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            // Only a final `chunked` delimits the body; anything else is relayed until close.
            let v = String::from_utf8_lossy(h.value).to_ascii_lowercase();
            chunked = v
                .rsplit(',')
                .next()
                .is_some_and(|last| last.trim() == "chunked");
            if !chunked {
                close = true;
            }
        } else if name.eq_ignore_ascii_case(b"connection") {
            let v = String::from_utf8_lossy(h.value).to_ascii_lowercase();
            if v.split(',').any(|t| t.trim() == "close") {
                close = true;
            } else if v.split(',').any(|t| t.trim() == "keep-alive") && resp.version == Some(0) {
                close = false;
            }
        }
    }
    let framing = if head_request || (100..200).contains(&status) || status == 204 || status == 304
    {
        Framing::Empty
    } else if chunked {
        Framing::Chunked
    } else if let Some(n) = length {
        Framing::Length(n)
    } else {
        close = true;
        Framing::UntilClose
    };
    Parsed::Head(ResponseHead {
        len,
        status,
        framing,
        close,
        has_date,
    })
}

/// Follows a chunked body byte by byte to find where it ends, without copying it.
#[derive(Debug, Default)]
pub(crate) struct Chunked {
    state: ChunkState,
    size: u64,
    line_len: usize,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    #[default]
    Size,
    SizeExt,
    SizeLf,
    Data,
    DataCr,
    DataLf,
    TrailerStart,
    Trailer,
    TrailerLf,
    EndLf,
    Done,
}

/// The chunked body is malformed.
#[derive(Debug)]
pub(crate) struct BadChunk;

impl Chunked {
    /// Consumes `buf`; returns how many of its bytes belong to the body once the body is
    /// complete, or `None` when all of `buf` belongs to it and more is to come.
    pub(crate) fn feed(&mut self, buf: &[u8]) -> Result<Option<usize>, BadChunk> {
        let mut i = 0;
        while i < buf.len() {
            let b = buf[i];
            match self.state {
                ChunkState::Size => match b {
                    b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' => {
                        let d = (b as char).to_digit(16).ok_or(BadChunk)? as u64;
                        self.size = self.size.checked_mul(16).ok_or(BadChunk)? + d;
                        self.line_len += 1;
                        if self.line_len > 16 {
                            return Err(BadChunk);
                        }
                    }
                    b';' | b' ' | b'\t' => self.state = ChunkState::SizeExt,
                    b'\r' => self.state = ChunkState::SizeLf,
                    _ => return Err(BadChunk),
                },
                ChunkState::SizeExt => {
                    if b == b'\r' {
                        self.state = ChunkState::SizeLf;
                    }
                }
                ChunkState::SizeLf => {
                    if b != b'\n' || self.line_len == 0 {
                        return Err(BadChunk);
                    }
                    self.line_len = 0;
                    self.state = if self.size == 0 {
                        ChunkState::TrailerStart
                    } else {
                        ChunkState::Data
                    };
                }
                ChunkState::Data => {
                    let take = (buf.len() - i).min(self.size as usize);
                    self.size -= take as u64;
                    i += take;
                    if self.size == 0 {
                        self.state = ChunkState::DataCr;
                    }
                    continue;
                }
                ChunkState::DataCr => {
                    if b != b'\r' {
                        return Err(BadChunk);
                    }
                    self.state = ChunkState::DataLf;
                }
                ChunkState::DataLf => {
                    if b != b'\n' {
                        return Err(BadChunk);
                    }
                    self.state = ChunkState::Size;
                }
                ChunkState::TrailerStart => {
                    self.state = if b == b'\r' {
                        ChunkState::EndLf
                    } else {
                        ChunkState::Trailer
                    };
                }
                ChunkState::Trailer => {
                    if b == b'\r' {
                        self.state = ChunkState::TrailerLf;
                    }
                }
                ChunkState::TrailerLf => {
                    if b != b'\n' {
                        return Err(BadChunk);
                    }
                    self.state = ChunkState::TrailerStart;
                }
                ChunkState::EndLf => {
                    if b != b'\n' {
                        return Err(BadChunk);
                    }
                    self.state = ChunkState::Done;
                    return Ok(Some(i + 1));
                }
                ChunkState::Done => return Ok(Some(i)),
            }
            i += 1;
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunked_end_is_found_across_splits() {
        let body = b"4\r\nWiki\r\n5;ext=1\r\npedia\r\n0\r\nX-T: 1\r\n\r\nNEXT";
        for split in 0..body.len() {
            let mut c = Chunked::default();
            let first = c.feed(&body[..split]).unwrap();
            let end = match first {
                Some(n) => n,
                None => split + c.feed(&body[split..]).unwrap().unwrap(),
            };
            assert_eq!(&body[end..], b"NEXT", "split at {split}");
        }
        assert!(Chunked::default().feed(b"zz\r\n").is_err());
        assert!(Chunked::default().feed(b"4\r\nWikiXX").is_err());
    }

    #[test]
    fn framing_rules() {
        let p = |raw: &[u8], head| match parse_response(raw, head) {
            Parsed::Head(h) => (h.framing, h.close),
            _ => panic!("not parsed"),
        };
        assert_eq!(
            p(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n", false),
            (Framing::Length(5), false)
        );
        assert_eq!(
            p(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n", true),
            (Framing::Empty, false)
        );
        assert_eq!(
            p(b"HTTP/1.1 304 Not Modified\r\n\r\n", false),
            (Framing::Empty, false)
        );
        assert_eq!(
            p(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                false
            ),
            (Framing::Chunked, false)
        );
        assert_eq!(
            p(b"HTTP/1.1 200 OK\r\n\r\n", false),
            (Framing::UntilClose, true)
        );
        assert_eq!(
            p(b"HTTP/1.0 200 OK\r\ncontent-length: 1\r\n\r\n", false),
            (Framing::Length(1), true)
        );
        assert_eq!(
            p(
                b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 1\r\n\r\n",
                false
            ),
            (Framing::Length(1), true)
        );
        assert!(matches!(
            parse_response(
                b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\n",
                false
            ),
            Parsed::Invalid
        ));
        assert!(matches!(
            parse_response(b"HTTP/1.1 200 OK\r\ncont", false),
            Parsed::Partial
        ));
    }
}
