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
        self.feed_data(buf, |_| {})
    }

    /// As [`Self::feed`], handing each run of chunk data to `data` (the body decoded).
    pub(crate) fn feed_data(
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
            let mut c = Chunked::default();
            let mut decoded = Vec::new();
            let mut add = |d: &[u8]| decoded.extend_from_slice(d);
            if c.feed_data(&body[..split], &mut add).unwrap().is_none() {
                c.feed_data(&body[split..], &mut add).unwrap();
            }
            assert_eq!(decoded, b"Wikipedia", "split at {split}");
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
