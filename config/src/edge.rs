//! `[forwarding]` and `[limits]`: what the edge adds to requests and what it refuses.

use std::net::IpAddr;
use std::time::Duration;

use ipnet::IpNet;

use crate::validate::Violation;

/// Default largest request head, in bytes (request line and headers): larger is a 431.
pub const DEFAULT_MAX_HEADER_BYTES: usize = 16 * 1024;
/// Default largest request body, in bytes, declared or counted: larger is a 413.
pub const DEFAULT_MAX_BODY_BYTES: u64 = 10 * 1024 * 1024;
/// Default time the whole request head has to arrive in, once its first byte has: else 408.
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Default longest wait between two reads of a request body.
pub const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_secs(60);
/// Default longest time a client connection may take no byte of what it is sent (nginx's
/// `send_timeout`): then it is closed, with all it had queued.
pub const DEFAULT_SEND_TIMEOUT: Duration = Duration::from_secs(60);

/// `[forwarding]`: the `X-Forwarded-*` and `X-Real-IP` headers of proxied requests.
#[derive(Debug, Clone, PartialEq)]
pub struct ForwardingConfig {
    /// Add `X-Forwarded-For`, `X-Forwarded-Proto`, `X-Forwarded-Host` and `X-Real-IP`.
    pub x_forwarded: bool,
    /// Peers whose incoming forwarded headers are kept and appended to; from any other peer
    /// they are replaced.
    pub trusted: Vec<IpNet>,
}

impl Default for ForwardingConfig {
    fn default() -> Self {
        ForwardingConfig {
            x_forwarded: true,
            trusted: Vec::new(),
        }
    }
}

impl ForwardingConfig {
    /// Whether `peer` is a trusted proxy.
    pub fn trusts(&self, peer: IpAddr) -> bool {
        // An IPv4 peer on a dual-stack listener shows up as `::ffff:a.b.c.d`.
        let peer = match peer {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(peer, IpAddr::V4),
            v4 => v4,
        };
        self.trusted.iter().any(|net| net.contains(&peer))
    }
}

/// `[limits]`: what a client may send.
#[derive(Debug, Clone, PartialEq)]
pub struct LimitsConfig {
    /// Largest request head, in bytes.
    pub max_header_bytes: usize,
    /// Largest request body, in bytes.
    pub max_body_bytes: u64,
    /// Time the whole request head has to arrive in, from its first byte.
    pub header_timeout: Duration,
    /// Longest wait between two reads of a request body.
    pub body_timeout: Duration,
    /// Longest time a client connection's writes may wait on a client that takes nothing.
    pub send_timeout: Duration,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_header_bytes: DEFAULT_MAX_HEADER_BYTES,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            header_timeout: DEFAULT_HEADER_TIMEOUT,
            body_timeout: DEFAULT_BODY_TIMEOUT,
            send_timeout: DEFAULT_SEND_TIMEOUT,
        }
    }
}

pub(crate) mod file {
    use serde::Deserialize;
    use toml::Spanned;

    use crate::file::HumanDuration;

    #[derive(Debug, Deserialize, Default)]
    #[serde(deny_unknown_fields)]
    pub(crate) struct Forwarding {
        pub(crate) x_forwarded: Option<bool>,
        pub(crate) trusted: Option<Vec<Spanned<String>>>,
    }

    #[derive(Debug, Deserialize, Default)]
    #[serde(deny_unknown_fields)]
    pub(crate) struct Limits {
        pub(crate) max_header_bytes: Option<Spanned<usize>>,
        pub(crate) max_body_bytes: Option<Spanned<u64>>,
        pub(crate) header_timeout: Option<Spanned<HumanDuration>>,
        pub(crate) body_timeout: Option<Spanned<HumanDuration>>,
        pub(crate) send_timeout: Option<Spanned<HumanDuration>>,
    }
}

pub(crate) fn forwarding(f: file::Forwarding) -> Result<ForwardingConfig, Violation> {
    let mut trusted = Vec::new();
    for t in f.trusted.unwrap_or_default() {
        let s = t.get_ref().trim();
        let net = s
            .parse::<IpNet>()
            .or_else(|_| s.parse::<IpAddr>().map(IpNet::from));
        match net {
            Ok(n) => trusted.push(n.trunc()),
            Err(_) => {
                return Err(Violation {
                    span: t.span(),
                    message: format!(
                        "forwarding.trusted: `{s}` is not an address or a network (`10.0.0.0/8`, `::1`)"
                    ),
                })
            }
        }
    }
    Ok(ForwardingConfig {
        x_forwarded: f.x_forwarded.unwrap_or(true),
        trusted,
    })
}

pub(crate) fn limits(f: file::Limits) -> Result<LimitsConfig, Violation> {
    let d = LimitsConfig::default();
    let max_header_bytes = match f.max_header_bytes {
        // Below this, ordinary browser requests would be refused.
        Some(n) if *n.get_ref() < 1024 => {
            return Err(Violation {
                span: n.span(),
                message: "limits.max_header_bytes: at least 1024".into(),
            })
        }
        Some(n) => n.into_inner(),
        None => d.max_header_bytes,
    };
    let duration =
        |v: Option<toml::Spanned<crate::file::HumanDuration>>, key: &str, default| match v {
            Some(t) if t.get_ref().0.is_zero() => Err(Violation {
                span: t.span(),
                message: format!("limits.{key}: must be longer than 0"),
            }),
            Some(t) => Ok(t.into_inner().0),
            None => Ok(default),
        };
    Ok(LimitsConfig {
        max_header_bytes,
        max_body_bytes: f
            .max_body_bytes
            .map_or(d.max_body_bytes, |n| n.into_inner()),
        header_timeout: duration(f.header_timeout, "header_timeout", d.header_timeout)?,
        body_timeout: duration(f.body_timeout, "body_timeout", d.body_timeout)?,
        send_timeout: duration(f.send_timeout, "send_timeout", d.send_timeout)?,
    })
}
