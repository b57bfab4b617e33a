//! Forwarded headers (`[forwarding]`): `X-Forwarded-For`, `X-Forwarded-Proto`,
//! `X-Forwarded-Host` and `X-Real-IP`, as nginx edges set them with `proxy_set_header`.
//!
//! From a trusted peer the incoming values are kept and `X-Forwarded-For` is appended to; from
//! anyone else the incoming ones were dropped by the request policy and these replace them.

use std::net::IpAddr;

use super::request::{Checked, Forwarding, Header};

/// What becomes of the forwarded headers of requests from `peer` under `cfg`.
pub(crate) fn mode(cfg: &bascule_config::ForwardingConfig, peer: IpAddr) -> Forwarding {
    if !cfg.x_forwarded {
        Forwarding::Off
    } else if cfg.trusts(peer) {
        Forwarding::Append
    } else {
        Forwarding::Replace
    }
}

/// A client's address as the forwarded headers write it, formatted once per connection.
#[derive(Debug, Clone)]
pub(crate) struct Peer {
    text: String,
}

impl Peer {
    /// `addr` as text; an IPv4 peer on a dual-stack listener loses its `::ffff:` prefix.
    pub(crate) fn new(addr: IpAddr) -> Peer {
        let addr = match addr {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(addr, IpAddr::V4),
            v4 => v4,
        };
        Peer {
            text: addr.to_string(),
        }
    }

    /// The address as written in the headers.
    pub(crate) fn as_str(&self) -> &str {
        &self.text
    }
}

/// The forwarded headers of one request.
#[derive(Debug)]
pub(crate) struct Forwarded<'a> {
    headers: &'a [Header<'a>],
    checked: &'a Checked<'a>,
    peer: &'a Peer,
    tls: bool,
}

impl<'a> Forwarded<'a> {
    /// The forwarded headers for a request from `peer`; `tls`: it arrived over TLS.
    pub(crate) fn new(
        headers: &'a [Header<'a>],
        checked: &'a Checked<'a>,
        peer: &'a Peer,
        tls: bool,
    ) -> Forwarded<'a> {
        Forwarded {
            headers,
            checked,
            peer,
            tls,
        }
    }

    /// Each header to set, with its value in parts (joined without separators).
    pub(crate) fn each(&self, mut f: impl FnMut(&'static str, &[&[u8]])) {
        let c = self.checked;
        let peer = self.peer.as_str().as_bytes();
        // Earlier hops from a trusted peer come first, in the order they arrived.
        let mut parts: Vec<&[u8]> = Vec::new();
        for (i, h) in self.headers.iter().enumerate() {
            if c.xff.contains(i) {
                parts.push(h.value);
                parts.push(b", ");
            }
        }
        parts.push(peer);
        f("x-forwarded-for", &parts);
        if !c.has_real_ip {
            f("x-real-ip", &[peer]);
        }
        if !c.has_proto {
            f(
                "x-forwarded-proto",
                &[if self.tls { b"https" } else { b"http" }],
            );
        }
        if !c.has_fwd_host {
            if let Some(host) = c.host {
                f("x-forwarded-host", &[host.as_bytes()]);
            }
        }
    }

    /// Appends the header lines to an HTTP/1.1 head.
    pub(crate) fn write_h1(&self, out: &mut Vec<u8>) {
        self.each(|name, parts| {
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b": ");
            for p in parts {
                out.extend_from_slice(p);
            }
            out.extend_from_slice(b"\r\n");
        });
    }
}
