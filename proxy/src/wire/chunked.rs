//! Chunked bodies (RFC 9112 §7.1): where one ends, checked strictly, without copying it.
//!
//! The proxy relays chunked bodies as they are once their framing has been followed here; so
//! nothing is accepted that another parser could read differently: no bare LF, no control
//! bytes in extensions or trailers, no size beyond 16 hex digits.

/// Follows a chunked body byte by byte to find where it ends, without copying it.
#[derive(Debug, Default)]
pub(crate) struct Chunked {
    state: ChunkState,
    size: u64,
    line_len: usize,
    /// The size line has at least one digit.
    digits: bool,
    /// Data bytes declared so far (the sum of the chunk sizes read), for body limits.
    total: u64,
}

/// Longest chunk extension or trailer line accepted.
const MAX_LINE: usize = 4096;

/// A byte allowed in a chunk extension or trailer line: visible ASCII, space, tab, obs-text.
fn field_byte(b: u8) -> bool {
    b == b'\t' || (b' '..=b'~').contains(&b) || b >= 0x80
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
        self.feed_with(buf, |_| {})
    }

    /// Data bytes the body has declared so far: every chunk whose size line has been read
    /// counts whole, so a limit is known to be crossed before that chunk's data is relayed.
    pub(crate) fn declared(&self) -> u64 {
        self.total
    }

    /// As [`Self::feed`], handing each run of data bytes (the body without its framing) to
    /// `data`: how a chunked body is decoded for a client that cannot read chunked framing.
    pub(crate) fn feed_with(
        &mut self,
        buf: &[u8],
        mut data: impl FnMut(&[u8]),
    ) -> Result<Option<usize>, BadChunk> {
        let mut i = 0;
        while i < buf.len() {
            let b = buf[i];
            match self.state {
                ChunkState::Size => match b {
                    b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' => {
                        let d = (b as char).to_digit(16).ok_or(BadChunk)? as u64;
                        self.size = self.size.checked_mul(16).ok_or(BadChunk)? + d;
                        self.line_len += 1;
                        self.digits = true;
                        if self.line_len > 16 {
                            return Err(BadChunk);
                        }
                    }
                    b';' | b' ' | b'\t' if self.digits => self.state = ChunkState::SizeExt,
                    b'\r' => self.state = ChunkState::SizeLf,
                    _ => return Err(BadChunk),
                },
                ChunkState::SizeExt => match b {
                    b'\r' => self.state = ChunkState::SizeLf,
                    _ if field_byte(b) => {
                        self.line_len += 1;
                        if self.line_len > MAX_LINE {
                            return Err(BadChunk);
                        }
                    }
                    _ => return Err(BadChunk),
                },
                ChunkState::SizeLf => {
                    if b != b'\n' || !self.digits {
                        return Err(BadChunk);
                    }
                    self.digits = false;
                    self.line_len = 0;
                    self.total = self.total.saturating_add(self.size);
                    self.state = if self.size == 0 {
                        ChunkState::TrailerStart
                    } else {
                        ChunkState::Data
                    };
                }
                ChunkState::Data => {
                    let take = (buf.len() - i).min(self.size as usize);
                    data(&buf[i..i + take]);
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
                ChunkState::TrailerStart => match b {
                    b'\r' => self.state = ChunkState::EndLf,
                    // A trailer line starts with a field name: no whitespace (obs-fold).
                    b' ' | b'\t' => return Err(BadChunk),
                    _ if field_byte(b) => {
                        self.line_len = 1;
                        self.state = ChunkState::Trailer;
                    }
                    _ => return Err(BadChunk),
                },
                ChunkState::Trailer => match b {
                    b'\r' => self.state = ChunkState::TrailerLf,
                    _ if field_byte(b) => {
                        self.line_len += 1;
                        if self.line_len > MAX_LINE {
                            return Err(BadChunk);
                        }
                    }
                    _ => return Err(BadChunk),
                },
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
    fn data_is_decoded_and_declared_sizes_counted() {
        let body = b"4\r\nWiki\r\n5;ext=1\r\npedia\r\n0\r\nX-T: 1\r\n\r\n";
        for split in 0..body.len() {
            let mut c = Chunked::default();
            let mut out = Vec::new();
            let first = c.feed_with(&body[..split], |d| out.extend_from_slice(d));
            if first.unwrap().is_none() {
                let end = c.feed_with(&body[split..], |d| out.extend_from_slice(d));
                assert_eq!(end.unwrap(), Some(body.len() - split));
            }
            assert_eq!(out, b"Wikipedia", "split at {split}");
            assert_eq!(c.declared(), 9);
        }
        let mut c = Chunked::default();
        assert_eq!(c.feed(b"100000\r\nab").unwrap(), None);
        assert_eq!(c.declared(), 0x100000);
    }

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
        for bad in [
            &b"4;a\nb\r\nWiki\r\n0\r\n\r\n"[..],
            b"4\r\nWiki\r\n0\r\nX: 1\nY: 2\r\n\r\n",
            b"4\r\nWiki\r\n0\r\n X: 1\r\n\r\n",
            b"4\nWiki\r\n0\r\n\r\n",
            b";x\r\n",
            b"4\r\nWiki\r\n0\r\nX: \x00\r\n\r\n",
            b"11111111111111111\r\n",
        ] {
            assert!(
                Chunked::default().feed(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
