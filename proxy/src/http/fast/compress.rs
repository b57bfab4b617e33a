//! The fast path's side of `[compression]`: the shared policy (`wire::compress`) applied to
//! the rewritten response head, and a relay that decodes the upstream body from its framing,
//! compresses it piece by piece and sends it to the client as chunks, each flushed as soon as
//! the upstream's bytes are read.

use bytes::BytesMut;
use pingora_core::protocols::Stream;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::wire::chunked::Chunked;
use crate::wire::compress::{self, Compression, Encoder, Facts, Negotiated, Plan};
use crate::wire::response::{Framing, ResponseHead};
use crate::wire::retry::Failure;

use super::READ_CHUNK;
use crate::http::upstream::{Exchange, Relayed};

/// Applies the policy to the canonical head in `out` (rewritten in place when it changes);
/// the encoder when the body is to be compressed.
pub(super) fn plan(
    c: &Compression,
    n: Negotiated,
    head: &ResponseHead,
    out: &mut Vec<u8>,
) -> Option<Encoder> {
    if n == Negotiated::Off {
        return None;
    }
    let plan = c.plan(n, &Facts::of_h1(head.status, out));
    let encoder = match plan {
        Plan::Leave => return None,
        Plan::Vary => None,
        // A codec that cannot start leaves the response as it is.
        Plan::Encode(a) => Some(Encoder::new(a).ok()?),
    };
    let canonical = std::mem::take(out);
    compress::apply_h1(plan, &canonical, out);
    encoder
}

/// Follows the upstream body's framing and hands on its payload.
struct Payload {
    framing: Framing,
    /// Bytes left of a `Content-Length` body.
    left: u64,
    chunked: Chunked,
}

impl Payload {
    /// Consumes `bytes`, appending their payload to `plain`; how many belong to the body once
    /// it is complete.
    fn feed(&mut self, bytes: &[u8], plain: &mut Vec<u8>) -> Result<Option<usize>, Failure> {
        match self.framing {
            Framing::Length(_) => {
                let take = (bytes.len() as u64).min(self.left) as usize;
                plain.extend_from_slice(&bytes[..take]);
                self.left -= take as u64;
                Ok((self.left == 0).then_some(take))
            }
            Framing::Chunked => self
                .chunked
                .feed_with(bytes, |d| plain.extend_from_slice(d))
                .map_err(|_| Failure::Exchange),
            Framing::UntilClose => {
                plain.extend_from_slice(bytes);
                Ok(None)
            }
            Framing::Empty => Ok(Some(0)),
        }
    }
}

/// Compresses `plain` (the last piece when `last`) and frames what came out as chunks in
/// `out`; the payload bytes written, as Pingora's body writer counts them.
fn frame(
    encoder: &mut Option<Encoder>,
    plain: &[u8],
    last: bool,
    z: &mut Vec<u8>,
    out: &mut Vec<u8>,
) -> std::io::Result<u64> {
    z.clear();
    if last {
        if let Some(e) = encoder.take() {
            e.finish(plain, z)?;
        }
    } else if let Some(e) = encoder.as_mut().filter(|_| !plain.is_empty()) {
        e.chunk(plain, z)?;
    }
    if !z.is_empty() {
        out.extend_from_slice(format!("{:x}\r\n", z.len()).as_bytes());
        out.extend_from_slice(z);
        out.extend_from_slice(b"\r\n");
    }
    if last {
        out.extend_from_slice(b"0\r\n\r\n");
    }
    Ok(z.len() as u64)
}

/// Sends `out` (the rewritten head) with the compressed body read with it, then relays the
/// rest of the body compressed. Errors only while nothing has reached the client (a malformed
/// chunked start: 502).
pub(super) async fn relay(
    ex: &mut Exchange<'_>,
    client: &mut Stream,
    head: &ResponseHead,
    encoder: Encoder,
    out: &mut Vec<u8>,
    ubuf: &mut BytesMut,
) -> Result<Relayed, Failure> {
    let broken = Relayed::broken;
    let mut body = Payload {
        framing: head.framing,
        left: match head.framing {
            Framing::Length(n) => n,
            _ => 0,
        },
        chunked: Chunked::default(),
    };
    let mut encoder = Some(encoder);
    let (mut plain, mut z) = (Vec::with_capacity(READ_CHUNK), Vec::new());
    let first = &ubuf[head.len..];
    let end = body.feed(first, &mut plain)?;
    // Bytes past the response mean the upstream is out of step: never reuse it.
    let mut upstream_ok = !head.close && end.is_none_or(|e| e == first.len());
    let mut done = end.is_some();
    let Ok(mut sent) = frame(&mut encoder, &plain, done, &mut z, out) else {
        return Err(Failure::Exchange);
    };
    while !done {
        if client.write_all(out).await.is_err() || client.flush().await.is_err() {
            return Ok(broken(sent));
        }
        out.clear();
        plain.clear();
        ubuf.clear();
        ubuf.reserve(READ_CHUNK);
        let read = ex.conn.stream().read_buf(ubuf);
        let n = match tokio::time::timeout(ex.read_timeout, read).await {
            Ok(Ok(n)) if n > 0 => n,
            // The end of a close-delimited body; the compressed stream still ends properly.
            Ok(Ok(_)) if head.framing == Framing::UntilClose => {
                upstream_ok = false;
                0
            }
            _ => return Ok(broken(sent)),
        };
        let end = match body.feed(&ubuf[..n], &mut plain) {
            Ok(end) => end,
            Err(_) => return Ok(broken(sent)),
        };
        upstream_ok &= end.is_none_or(|e| e == n);
        done = end.is_some() || n == 0;
        match frame(&mut encoder, &plain, done, &mut z, out) {
            Ok(s) => sent += s,
            Err(_) => return Ok(broken(sent)),
        }
    }
    let client_ok = client.write_all(out).await.is_ok() && client.flush().await.is_ok();
    Ok(Relayed {
        upstream_ok,
        client_ok,
        sent,
        whole: true,
    })
}
