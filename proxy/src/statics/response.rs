//! A static response and its two writers: through Pingora's session (the full proxy) and
//! straight onto the connection as HTTP/1.1 (the fast path). Both read file bodies through
//! one [`FileChunks`] reader, off the runtime threads.

use std::fs::File;
use std::io::SeekFrom;
use std::os::fd::RawFd;

use bytes::Bytes;
use http::header;
use pingora::proxy::Session;
use pingora_core::protocols::http::v2::server::HttpSession as H2Session;
use pingora_error::{ErrorType, OrErr, Result};
use pingora_http::ResponseHeader;

use super::sealed::{self, Shared};
use super::{CHUNK, NO_CACHE};

/// A response ready to be written.
pub struct StaticResponse {
    /// The header; the caller may add to it before [`StaticResponse::send`].
    pub header: ResponseHeader,
    pub(super) body: Body,
}

/// What follows the head.
pub(super) enum Body {
    Empty,
    Bytes(Bytes),
    /// A cached body, held in a sealed file too when large (see [`super::sealed`]).
    Cached(Shared),
    File {
        file: File,
        offset: u64,
        len: u64,
    },
}

impl StaticResponse {
    pub(super) fn empty(header: ResponseHeader) -> StaticResponse {
        StaticResponse {
            header,
            body: Body::Empty,
        }
    }

    pub(super) fn error(code: u16, text: &'static str) -> StaticResponse {
        let mut h = ResponseHeader::build(code, Some(3)).expect("valid status");
        let _ = h.insert_header(header::CONTENT_TYPE, "text/plain; charset=utf-8");
        let _ = h.insert_header(header::CONTENT_LENGTH, text.len());
        let _ = h.insert_header(header::CACHE_CONTROL, NO_CACHE);
        StaticResponse {
            header: h,
            body: Body::Bytes(Bytes::from_static(text.as_bytes())),
        }
    }

    /// Writes the response to the client.
    pub async fn send(self, session: &mut Session) -> Result<()> {
        let head_only = session.req_header().method == http::Method::HEAD;
        let no_body = head_only || matches!(self.body, Body::Empty);
        session
            .write_response_header(Box::new(self.header), no_body)
            .await?;
        if no_body {
            return Ok(());
        }
        match self.body {
            Body::Empty => Ok(()),
            Body::Bytes(b) | Body::Cached(Shared { bytes: b, .. }) => {
                session.write_response_body(Some(b), true).await
            }
            Body::File { file, offset, len } => {
                let mut chunks = FileChunks::open(file, offset, len)
                    .await
                    .or_err(ErrorType::FileReadError, "seek static file")?;
                while let Some(chunk) = chunks
                    .next()
                    .await
                    .or_err(ErrorType::FileReadError, "read static file")?
                {
                    session
                        .write_response_body(Some(chunk), chunks.done())
                        .await?;
                }
                Ok(())
            }
        }
    }
}

impl StaticResponse {
    /// Body bytes this response sends; none for a `HEAD`.
    pub fn body_len(&self, head_only: bool) -> u64 {
        match &self.body {
            _ if head_only => 0,
            Body::Empty => 0,
            Body::Bytes(b) | Body::Cached(Shared { bytes: b, .. }) => b.len() as u64,
            Body::File { len, .. } => *len,
        }
    }

    /// Writes the response in HTTP/1.1 wire format to `w` (the fast path's client), with
    /// `extra` header lines (each ending in CRLF) added; returns the status written.
    /// `socket`: `w`'s own descriptor when it is a plain TCP connection, for a sealed body to
    /// be sent without a copy.
    pub async fn write_h1<W>(
        self,
        w: &mut W,
        head_only: bool,
        extra: &[u8],
        socket: Option<RawFd>,
    ) -> std::io::Result<u16>
    where
        W: tokio::io::AsyncWrite + Unpin,
    {
        use tokio::io::AsyncWriteExt;
        let status = self.header.status;
        let mut out = Vec::with_capacity(256);
        out.extend_from_slice(b"HTTP/1.1 ");
        out.extend_from_slice(status.as_str().as_bytes());
        out.push(b' ');
        out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
        out.extend_from_slice(b"\r\n");
        self.header.header_to_h1_wire(&mut out);
        crate::wire::date_line(&mut out);
        out.extend_from_slice(extra);
        out.extend_from_slice(b"\r\n");
        match self.body {
            _ if head_only => w.write_all(&out).await?,
            Body::Empty => w.write_all(&out).await?,
            // Small bodies go out with the head in one write; large ones are not copied, but
            // still leave with the head in one `writev`.
            Body::Bytes(b) if b.len() <= 16 * 1024 => {
                out.extend_from_slice(&b);
                w.write_all(&out).await?;
            }
            Body::Bytes(b) => write_all_vectored(w, &out, &b).await?,
            Body::Cached(c) => write_cached(w, &out, &c, socket).await?,
            Body::File { file, offset, len } => {
                w.write_all(&out).await?;
                let mut chunks = FileChunks::open(file, offset, len).await?;
                while let Some(chunk) = chunks.next().await? {
                    w.write_all(&chunk).await?;
                }
            }
        }
        w.flush().await?;
        Ok(status.as_u16())
    }
}

/// A file body read in chunks on Tokio's blocking pool (`tokio::fs`), never on the runtime
/// thread that writes it; shared by both writers.
struct FileChunks {
    file: tokio::fs::File,
    left: u64,
}

impl FileChunks {
    async fn open(file: File, offset: u64, len: u64) -> std::io::Result<FileChunks> {
        use tokio::io::AsyncSeekExt;
        let mut file = tokio::fs::File::from_std(file);
        file.seek(SeekFrom::Start(offset)).await?;
        Ok(FileChunks { file, left: len })
    }

    /// The next chunk of at most [`CHUNK`] bytes, `None` once `len` bytes were read.
    async fn next(&mut self) -> std::io::Result<Option<Bytes>> {
        use tokio::io::AsyncReadExt;
        if self.left == 0 {
            return Ok(None);
        }
        let want = (self.left as usize).min(CHUNK);
        let mut buf = vec![0u8; want];
        self.file.read_exact(&mut buf).await?;
        self.left -= want as u64;
        Ok(Some(Bytes::from(buf)))
    }

    /// Whether the last chunk has been read.
    fn done(&self) -> bool {
        self.left == 0
    }
}

/// Writes `head` then the cached body `c`: on a plain connection's `socket`, a sealed body
/// goes by `sendfile` after the head, and only what a full socket did not take the usual way.
async fn write_cached<W>(
    w: &mut W,
    head: &[u8],
    c: &Shared,
    socket: Option<RawFd>,
) -> std::io::Result<()>
where
    W: tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::AsyncWriteExt;
    let (Some(fd), Some(file)) = (socket, &c.file) else {
        return write_all_vectored(w, head, &c.bytes).await;
    };
    // Nothing of `w` may be waiting in its buffer when the socket is written directly.
    w.flush().await?;
    let sent_head = sealed::send_head(fd, head)?;
    let sent_body = if sent_head == head.len() {
        sealed::send_file(fd, file, c.bytes.len())?
    } else {
        0
    };
    write_all_vectored(w, &head[sent_head..], &c.bytes[sent_body..]).await
}

/// Writes `head` then `body` with as few vectored writes as the socket takes.
async fn write_all_vectored<W>(w: &mut W, head: &[u8], body: &[u8]) -> std::io::Result<()>
where
    W: tokio::io::AsyncWrite + Unpin,
{
    use std::io::IoSlice;
    use tokio::io::AsyncWriteExt;
    let mut slices = [IoSlice::new(head), IoSlice::new(body)];
    let mut left: &mut [IoSlice<'_>] = &mut slices;
    // Empty parts (all of it already sent) are no write at all.
    IoSlice::advance_slices(&mut left, 0);
    while !left.is_empty() {
        let n = w.write_vectored(left).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        IoSlice::advance_slices(&mut left, n);
    }
    Ok(())
}

impl StaticResponse {
    /// Writes a response held in memory to an HTTP/2 stream without waiting: the stream's
    /// flow control holds what the window does not take yet (a cached body is shared, not
    /// copied). Returns the status written, 0 if the stream was gone; a file body is not
    /// written here (the stream is reset): [`super::StaticFiles::answer_now`] gives none.
    pub fn write_h2_now(self, session: &mut H2Session, head_only: bool) -> u16 {
        let status = self.header.status.as_u16();
        let body = match self.body {
            _ if head_only => None,
            Body::Empty => None,
            Body::Bytes(b) | Body::Cached(Shared { bytes: b, .. }) => Some(b),
            Body::File { .. } => return 0,
        };
        if session
            .write_response_header(Box::new(self.header), body.is_none())
            .is_err()
        {
            return 0;
        }
        match body {
            Some(b) => {
                if send_now(session, b) {
                    status
                } else {
                    0
                }
            }
            None => status,
        }
    }
}

/// Sends `b` as the whole body of `session`'s response, its head written, without waiting:
/// the stream's flow control holds what the window does not take yet. False if the stream is
/// gone.
pub(crate) fn send_now(session: &mut H2Session, mut b: Bytes) -> bool {
    let Some(mut w) = session.take_response_body_writer() else {
        return false;
    };
    // A small body goes in frames the codec copies into its write buffer, so that the
    // responses answered together leave in one write (see `http::coalesce`); a larger one in
    // frames as large as the peer allows.
    let frame = if b.len() <= SMALL_BODY {
        COPIED_FRAME
    } else {
        b.len()
    };
    while b.len() > frame {
        if w.send_data(b.split_to(frame), false).is_err() {
            return false;
        }
    }
    w.send_data(b, true).is_ok()
}

/// Bodies up to this size are sent in [`COPIED_FRAME`]s.
const SMALL_BODY: usize = 8 * 1024;
/// The largest DATA frame the `h2` codec copies into its buffer on a stream that does not
/// write vectored, rather than writing it out on its own.
const COPIED_FRAME: usize = 1023;
