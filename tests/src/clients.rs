//! The three ways a test client reaches the proxy's listeners — plain HTTP/1.1, HTTP/1.1 over
//! TLS, HTTP/2 over TLS — behind one call, so a case runs the same through each.

use std::net::SocketAddr;
use std::time::Duration;

use crate::http::Response;
use crate::raw::RawClient;

/// How a request reaches the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Client {
    /// HTTP/1.1 on the plain listener.
    Plain,
    /// HTTP/1.1 on the https listener (SNI `localhost`).
    Tls,
    /// HTTP/2 on the https listener (SNI `localhost`).
    H2,
}

/// Every client, in the order tests run them.
pub const CLIENTS: [Client; 3] = [Client::Plain, Client::Tls, Client::H2];

/// The proxy's listeners: plain and https.
#[derive(Debug, Clone, Copy)]
pub struct Listeners {
    /// `listen.http`.
    pub plain: SocketAddr,
    /// `listen.https`, with a certificate for `localhost`.
    pub https: SocketAddr,
}

impl Client {
    /// `GET path` with `headers` on a new connection (closed after the answer), read whole.
    pub fn get(self, to: Listeners, path: &str, headers: &[(&str, &str)]) -> Response {
        if self == Client::H2 {
            let got = crate::h2::exchange(to.https, "localhost", &[("GET", path, headers)])
                .expect("HTTP/2 connection");
            return got
                .into_iter()
                .next()
                .expect("one answer")
                .unwrap_or_else(|why| panic!("GET {path} over HTTP/2: {why}"));
        }
        let mut raw = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n");
        for (k, v) in headers {
            raw.push_str(&format!("{k}: {v}\r\n"));
        }
        raw.push_str("Connection: close\r\n\r\n");
        self.raw(to, &raw)
    }

    /// Sends `raw` exactly (HTTP/1.x clients only) and reads one answer.
    pub fn raw(self, to: Listeners, raw: &str) -> Response {
        let mut c = match self {
            Client::Plain => RawClient::connect(to.plain),
            Client::Tls => RawClient::connect_tls(to.https),
            Client::H2 => panic!("raw bytes are for HTTP/1.x clients"),
        }
        .expect("connect to the proxy");
        let _ = c.send(raw.as_bytes());
        let r = c
            .read(1, Duration::from_secs(10))
            .responses
            .into_iter()
            .next()
            .unwrap_or_else(|| panic!("{self:?}: no answer to {raw:?}"));
        Response {
            status: r.status,
            headers: r.headers,
            body: r.body,
        }
    }
}
