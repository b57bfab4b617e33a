//! Handing a connection to Pingora's full proxy with the bytes the fast path already read put
//! back in front of it: a plain TCP stream takes them back itself ([`L4Stream::rewind`]); a TLS
//! stream, whose bytes were decrypted already, is wrapped in [`Rewound`], which serves them
//! first and passes everything else (writes, TLS and socket digests) through.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use pingora_core::apps::HttpServerApp;
use pingora_core::protocols::http::ServerSession;
use pingora_core::protocols::l4::stream::Stream as L4Stream;
use pingora_core::protocols::raw_connect::ProxyDigest;
use pingora_core::protocols::tls::{SslDigest, TlsRef, ALPN};
use pingora_core::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl, Stream,
    TimingDigest, UniqueID, UniqueIDType,
};
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
        session.set_read_timeout(Some(self.limits.header_timeout));
        let keepalive = self.keepalive.as_secs().max(1);
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
            session.set_read_timeout(Some(self.limits.header_timeout));
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

#[async_trait]
impl Shutdown for Rewound {
    async fn shutdown(&mut self) {
        self.inner.shutdown().await
    }
}

impl UniqueID for Rewound {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for Rewound {
    fn get_ssl(&self) -> Option<&TlsRef> {
        self.inner.get_ssl()
    }

    fn get_ssl_digest(&self) -> Option<Arc<SslDigest>> {
        self.inner.get_ssl_digest()
    }

    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for Rewound {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_timing_digest()
    }

    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }

    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for Rewound {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner.get_proxy_digest()
    }

    fn set_proxy_digest(&mut self, digest: ProxyDigest) {
        self.inner.set_proxy_digest(digest)
    }
}

impl GetSocketDigest for Rewound {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }

    fn set_socket_digest(&mut self, digest: SocketDigest) {
        self.inner.set_socket_digest(digest)
    }
}

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
