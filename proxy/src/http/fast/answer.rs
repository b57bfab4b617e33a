//! The fast path's own answers: errors, refusals and redirects, written with the configured
//! headers and logged like any response.

use std::net::IpAddr;
use std::time::Instant;

use pingora_core::protocols::Stream;
use tokio::io::AsyncWriteExt;

use crate::http::edge::{Done, EdgePolicy};
use crate::wire::access_log::LogRequest;
use crate::wire::headers::RouteHeaders;
use crate::wire::{error_body, own_response_h1, Reject};
use crate::SlotName;

use super::FastApp;

impl FastApp {
    /// The proxy's own error response, tagged with the slot; the connection closes after it.
    pub(super) async fn respond_error(
        &self,
        p: &EdgePolicy,
        client: &mut Stream,
        slot: SlotName,
        code: u16,
        headers: &RouteHeaders,
    ) -> u16 {
        let mut extra = Vec::with_capacity(32);
        p.slot_line(slot, &mut extra);
        p.edge.write_h1(headers, &mut extra);
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
        buf: &[u8],
        client_ip: IpAddr,
        started: Instant,
    ) {
        let extra = format!("location: {location}\r\n").into_bytes();
        let body = "moved to https\n";
        self.close_with(p, client, 308, body, extra, buf, client_ip, started)
            .await;
    }

    /// Answers a request the policy refused (its head, as read, at the start of `buf`); the
    /// connection closes after it.
    pub(super) async fn refuse(
        &self,
        p: &EdgePolicy,
        client: &mut Stream,
        why: Reject,
        buf: &[u8],
        client_ip: IpAddr,
        started: Instant,
    ) {
        let mut extra = Vec::new();
        if let Some(s) = why.retry_after() {
            extra.extend_from_slice(format!("retry-after: {s}\r\n").as_bytes());
        }
        let body = format!("{why}\n");
        self.close_with(
            p,
            client,
            why.status(),
            &body,
            extra,
            buf,
            client_ip,
            started,
        )
        .await;
    }

    /// The proxy's own answer to a request that goes nowhere (refused, redirected): written
    /// with the configured headers and `extra`, logged, then the connection closes.
    #[allow(clippy::too_many_arguments)]
    async fn close_with(
        &self,
        p: &EdgePolicy,
        client: &mut Stream,
        status: u16,
        body: &str,
        mut extra: Vec<u8>,
        buf: &[u8],
        client_ip: IpAddr,
        started: Instant,
    ) {
        let mut out = Vec::with_capacity(256);
        p.edge.write_h1(&[], &mut extra);
        own_response_h1(status, body, &extra, &mut out);
        let _ = client.write_all(&out).await;
        let _ = client.flush().await;
        p.record(Done {
            start: started,
            client: Some(client_ip),
            request: p.logs().then(|| Box::new(LogRequest::from_raw(buf))),
            status,
            bytes: body.len() as u64,
            slot: None,
            upstream: None,
        });
    }
}
