//! Handing a connection to Pingora's full proxy with the bytes the fast path already read put
//! back in front of it: a plain TCP stream takes them back itself ([`L4Stream::rewind`]); a TLS
//! stream, whose bytes were decrypted already, is wrapped in [`Rewound`], which serves them
//! first and passes everything else (writes, TLS and socket digests) through.

use std::pin::Pin;
use std::task::{Context, Poll};

use async_trait::async_trait;
use pingora_core::apps::HttpServerApp;
use pingora_core::protocols::http::ServerSession;
use pingora_core::protocols::l4::stream::Stream as L4Stream;
use pingora_core::protocols::{Peek, Stream};
use pingora_core::server::ShutdownWatch;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::FastApp;

impl FastApp {
    /// Puts the bytes read back in front of the stream (a TLS one when `tls`) and lets
    /// Pingora's full proxy serve the rest of the connection, keep-alive included.
    pub(super) async fn hand_over(
        &self,
        client: Stream,
        tls: bool,
        buf: &[u8],
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        self.control.metrics().connections.handed_over(tls);
        let client = put_back(client, tls, buf);
        let mut session = ServerSession::new_http1(client);
        // Requests sent back to back are answered in order, as on the fast path.
        session.set_pipelining_enabled(true);
        // Later heads on this connection are read by Pingora, which bounds each read, not the
        // whole head: the closest it offers to `header_timeout`.
        let policy = self.policy();
        session.set_read_timeout(Some(policy.limits.header_timeout));
        let keepalive = policy.keepalive.as_secs().max(1);
        session.set_keepalive(if *shutdown.borrow() {
            None
        } else {
            Some(keepalive)
        });
        let mut result = self.full.process_new_http(session, shutdown).await;
        while let Some((stream, settings)) = result.map(|r| r.consume()) {
            let mut session = ServerSession::new_http1(stream);
            if let Some(settings) = settings {
                settings.apply_to_session(&mut session);
            }
            session.set_read_timeout(Some(self.policy().limits.header_timeout));
            result = self.full.process_new_http(session, shutdown).await;
        }
        None
    }
}

/// `client` with `read` to be read again first.
fn put_back(client: Stream, tls: bool, read: &[u8]) -> Stream {
    if read.is_empty() {
        return client;
    }
    if !tls {
        let mut l4 = client
            .into_any()
            .downcast::<L4Stream>()
            .expect("a plain connection is an L4 stream");
        l4.rewind(read);
        return l4;
    }
    Box::new(Rewound {
        read: read.to_vec(),
        at: 0,
        inner: client,
    })
}

/// A stream whose first bytes are `read[at..]`, then the inner stream's.
#[derive(Debug)]
struct Rewound {
    read: Vec<u8>,
    at: usize,
    inner: Stream,
}

impl Rewound {
    /// The bytes put back and not read yet.
    fn pending(&self) -> &[u8] {
        &self.read[self.at..]
    }
}

impl AsyncRead for Rewound {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let pending = self.pending();
        if !pending.is_empty() {
            let n = pending.len().min(buf.remaining());
            buf.put_slice(&pending[..n]);
            self.at += n;
            if self.at == self.read.len() {
                self.read = Vec::new();
                self.at = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Rewound {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

crate::http::wrap::delegate_stream!(Rewound);

#[async_trait]
impl Peek for Rewound {
    async fn try_peek(&mut self, buf: &mut [u8]) -> std::io::Result<bool> {
        let pending = self.pending();
        if pending.is_empty() {
            return self.inner.try_peek(buf).await;
        }
        let n = pending.len().min(buf.len());
        buf[..n].copy_from_slice(&pending[..n]);
        Ok(true)
    }
}
