//! The fast path's own answers: errors, refusals and redirects, written with the configured
//! headers and logged like any response.

use std::net::IpAddr;
use std::time::Instant;

use pingora_core::protocols::Stream;
use tokio::io::AsyncWriteExt;

use crate::http::edge::{Done, Dress, EdgePolicy};
use crate::wire::access_log::LogRequest;
use crate::wire::request_id::RequestId;
use crate::wire::{error_body, own_response_h1, Reject};

use super::FastApp;

/// A request answered before it reached a slot: its head as read (at the start of `buf`), its
/// client, when its head began, its id.
pub(super) struct Unrouted<'a> {
    pub(super) buf: &'a [u8],
    pub(super) client_ip: IpAddr,
    pub(super) started: Instant,
    pub(super) id: Option<RequestId>,
}

impl<'a> Unrouted<'a> {
    /// A request whose head is at the start of `buf` and began at `started` (now if unknown).
    pub(super) fn new(
        buf: &'a [u8],
        client_ip: IpAddr,
        started: Option<Instant>,
        id: Option<RequestId>,
    ) -> Unrouted<'a> {
        Unrouted {
            buf,
            client_ip,
            started: started.unwrap_or_else(Instant::now),
            id,
        }
    }
}

impl FastApp {
    /// The proxy's own error response, dressed as `d` says (no sticky cookie: the slot failed
    /// it); the connection closes after it.
    pub(super) async fn respond_error(
        &self,
        p: &EdgePolicy,
        client: &mut Stream,
        code: u16,
        d: Dress<'_>,
    ) -> u16 {
        let mut extra = Vec::with_capacity(64);
        let d = Dress {
            set_cookie: false,
            ..d
        };
        p.dress_h1(d, &mut extra);
        let mut out = Vec::with_capacity(256);
        own_response_h1(code, error_body(code), &extra, &mut out);
        let _ = client.write_all(&out).await;
        let _ = client.flush().await;
        code
    }

    /// Sends a plain request to https (`[listen] redirect_http`); the connection closes after.
    pub(super) async fn redirect(
        &self,
        p: &EdgePolicy,
        client: &mut Stream,
        location: &str,
        r: Unrouted<'_>,
    ) {
        let extra = format!("location: {location}\r\n").into_bytes();
        let body = "moved to https\n";
        self.close_with(p, client, 308, body, extra, r).await;
    }

    /// Answers a request the policy refused; the connection closes after it.
    pub(super) async fn refuse(
        &self,
        p: &EdgePolicy,
        client: &mut Stream,
        why: Reject,
        r: Unrouted<'_>,
    ) {
        let mut extra = Vec::new();
        if let Some(s) = why.retry_after() {
            extra.extend_from_slice(format!("retry-after: {s}\r\n").as_bytes());
        }
        let body = format!("{why}\n");
        self.close_with(p, client, why.status(), &body, extra, r)
            .await;
    }

    /// The proxy's own answer to a request that goes nowhere (refused, redirected): written
    /// with the configured headers, the request id and `extra`, logged, then the connection
    /// closes.
    async fn close_with(
        &self,
        p: &EdgePolicy,
        client: &mut Stream,
        status: u16,
        body: &str,
        mut extra: Vec<u8>,
        r: Unrouted<'_>,
    ) {
        let mut out = Vec::with_capacity(256);
        p.dress_h1(Dress::bare(r.id.as_ref()), &mut extra);
        own_response_h1(status, body, &extra, &mut out);
        let _ = client.write_all(&out).await;
        let _ = client.flush().await;
        p.record(Done {
            start: r.started,
            client: Some(r.client_ip),
            request: p.logs().then(|| Box::new(LogRequest::from_raw(r.buf))),
            status,
            bytes: body.len() as u64,
            slot: None,
            upstream: None,
            request_id: r.id,
        });
    }
}
