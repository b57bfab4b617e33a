//! An HTTP/2 connection's writes, gathered: [`Coalesced`].
//!
//! The `h2` codec copies a DATA frame's payload into its 16 KiB write buffer only when the
//! stream says it cannot write vectored (up to 1 KiB then; up to 256 bytes otherwise); a
//! larger payload stays a separate buffer, and the codec writes out everything it holds before
//! it takes another frame. Over a vectored TLS stream every response of 256 bytes or more
//! therefore left in its own write: one system call, and one TLS record, per response, however
//! many were ready. Saying "not vectored" lets small responses gather in the codec's buffer and
//! leave together. A payload too large to copy is still written as the codec writes it —
//! the buffered frames, then the payload — but the first write is held here and sent with
//! the second, in one vectored write to the TLS stream (one record, one system call), as
//! before; what is held always leaves at the codec's flush.

use std::future::Future;
use std::io::IoSlice;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use pingora_core::protocols::{Peek, Stream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Bytes held back to go out with the next write: the codec's buffered frames ahead of a
/// payload it did not copy.
const HOLD: usize = 4 * 1024;

/// A client stream whose small writes wait for the next write or the flush.
#[derive(Debug)]
pub(crate) struct Coalesced {
    inner: Stream,
    held: Vec<u8>,
    send_timeout: Duration,
    /// Armed while a write waits.
    stalled: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Coalesced {
    /// `inner`, whose writes fail once one has waited `send_timeout`.
    pub(crate) fn new(inner: Stream, send_timeout: Duration) -> Coalesced {
        Coalesced {
            inner,
            held: Vec::new(),
            send_timeout,
            stalled: None,
        }
    }

    /// `p`, the outcome of a write, flush or shutdown: progress disarms the timer, waiting
    /// arms it, and waiting past it is a `TimedOut` error.
    fn watch<T>(
        &mut self,
        cx: &mut Context<'_>,
        p: Poll<std::io::Result<T>>,
    ) -> Poll<std::io::Result<T>> {
        if p.is_ready() {
            self.stalled = None;
            return p;
        }
        let timeout = self.send_timeout;
        let sleep = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        match sleep.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the client took nothing for [limits] send_timeout",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }

    /// Writes what is held.
    fn poll_release(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        while !self.held.is_empty() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.held))?;
            if n == 0 {
                return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
            }
            self.held.drain(..n);
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncRead for Coalesced {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Coalesced {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let p = self.write_now(cx, buf);
        self.watch(cx, p)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let p = self.flush_now(cx);
        self.watch(cx, p)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let p = self.shutdown_now(cx);
        self.watch(cx, p)
    }

    fn is_write_vectored(&self) -> bool {
        false
    }
}

impl Coalesced {
    fn write_now(&mut self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        let this = self;
        if this.held.len() + buf.len() <= HOLD {
            this.held.extend_from_slice(buf);
            return Poll::Ready(Ok(buf.len()));
        }
        loop {
            if this.held.is_empty() {
                return Pin::new(&mut this.inner).poll_write(cx, buf);
            }
            let both = [IoSlice::new(&this.held), IoSlice::new(buf)];
            let n = ready!(Pin::new(&mut this.inner).poll_write_vectored(cx, &both))?;
            if n == 0 {
                return Poll::Ready(Ok(0));
            }
            let of_held = n.min(this.held.len());
            this.held.drain(..of_held);
            if n > of_held {
                return Poll::Ready(Ok(n - of_held));
            }
        }
    }

    fn flush_now(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        ready!(self.poll_release(cx))?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn shutdown_now(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        ready!(self.poll_release(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

crate::http::wrap::delegate_stream!(Coalesced);

#[async_trait]
impl Peek for Coalesced {
    async fn try_peek(&mut self, buf: &mut [u8]) -> std::io::Result<bool> {
        self.inner.try_peek(buf).await
    }
}
