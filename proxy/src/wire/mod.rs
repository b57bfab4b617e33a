//! HTTP on the wire, below every request path: what the proxy writes itself (the `Date`
//! line, its own error responses). Knows nothing of slots or snapshots.

thread_local! {
    /// `date: …\r\n` for the current second, formatted once per second per thread.
    static DATE: std::cell::RefCell<(u64, Vec<u8>)> = const { std::cell::RefCell::new((0, Vec::new())) };
}

/// Appends the `date` header line (RFC 9110 §6.6.1) for responses the proxy makes itself.
pub(crate) fn date_line(out: &mut Vec<u8>) {
    let now = std::time::SystemTime::now();
    let secs = now
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    DATE.with(|cell| {
        let mut cached = cell.borrow_mut();
        if cached.0 != secs || cached.1.is_empty() {
            cached.0 = secs;
            cached.1 = format!("date: {}\r\n", httpdate::fmt_http_date(now)).into_bytes();
        }
        out.extend_from_slice(&cached.1);
    });
}

/// The short text body of the proxy's own error responses.
pub(crate) fn error_body(code: u16) -> &'static str {
    match code {
        400 => "bad request\n",
        502 => "bad gateway: the upstream could not be reached\n",
        503 => "service unavailable: no healthy upstream in the serving slot\n",
        504 => "gateway timeout: the upstream did not answer in time\n",
        _ => "proxy error\n",
    }
}
