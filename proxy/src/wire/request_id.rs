//! Request ids (`[request_id]`): one id per request, kept from a trusted peer that sent a
//! valid one, else made here (128 random bits, 32 lowercase hex characters). Every path sends
//! it upstream in the configured header, answers with it (the proxy's own answers too) and
//! logs it, so one id follows a request through the edge, the app and their logs.

use std::net::IpAddr;

use bascule_config::ForwardingConfig;
use rand::Rng;

/// Longest incoming id kept; a longer one is replaced.
pub(crate) const MAX_LEN: usize = 200;

/// The id of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RequestId {
    /// Made here: 32 lowercase hex characters.
    Made([u8; 32]),
    /// Sent by a trusted peer: 1 to [`MAX_LEN`] visible ASCII characters.
    Kept(Box<str>),
}

impl RequestId {
    /// A new id: 128 bits from the thread's cryptographic generator (ChaCha, reseeded from
    /// the OS), so ids of different edges do not collide either.
    pub(crate) fn new() -> RequestId {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let bits: u128 = rand::thread_rng().gen();
        let mut out = [0u8; 32];
        for (i, b) in out.iter_mut().enumerate() {
            *b = HEX[((bits >> (124 - 4 * i)) & 0xf) as usize];
        }
        RequestId::Made(out)
    }

    /// The id of a request that came with `incoming` (its first id header, if any): kept when
    /// `trusted()` says its peer may set it and it is 1 to 200 visible ASCII characters.
    pub(crate) fn resolve(incoming: Option<&[u8]>, trusted: impl FnOnce() -> bool) -> RequestId {
        match incoming {
            Some(v) if valid(v) && trusted() => {
                // Visible ASCII is UTF-8.
                RequestId::Kept(String::from_utf8_lossy(v).into())
            }
            _ => RequestId::new(),
        }
    }

    /// The id as written in headers and logs.
    pub(crate) fn as_str(&self) -> &str {
        match self {
            // Hex digits only.
            RequestId::Made(b) => std::str::from_utf8(b).unwrap_or_default(),
            RequestId::Kept(s) => s,
        }
    }
}

/// Whether an incoming value may be kept: 1 to [`MAX_LEN`] visible ASCII characters.
fn valid(v: &[u8]) -> bool {
    (1..=MAX_LEN).contains(&v.len()) && v.iter().all(|b| (0x21..=0x7e).contains(b))
}

/// How the request policy treats the id header of one request: its name (lowercase) and what
/// decides whether the peer may set the id.
#[derive(Debug, Clone, Copy)]
pub(crate) struct IdRule<'a> {
    /// The header, lowercase.
    pub(crate) header: &'a str,
    /// `[forwarding] trusted`.
    pub(crate) forwarding: &'a ForwardingConfig,
    /// The client; unknown is untrusted.
    pub(crate) peer: Option<IpAddr>,
}

impl IdRule<'_> {
    /// Whether `name` is the id header.
    #[inline]
    pub(crate) fn is(&self, name: &[u8]) -> bool {
        name.len() == self.header.len() && name.eq_ignore_ascii_case(self.header.as_bytes())
    }

    /// The request's id, from the first id header it came with (`incoming`).
    pub(crate) fn id(&self, incoming: Option<&[u8]>) -> RequestId {
        RequestId::resolve(incoming, || {
            self.peer.is_some_and(|p| self.forwarding.trusts(p))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn made_ids_are_32_hex_characters_and_differ() {
        let a = RequestId::new();
        let b = RequestId::new();
        assert_eq!(a.as_str().len(), 32);
        assert!(a
            .as_str()
            .bytes()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c)));
        assert_ne!(a, b);
    }

    #[test]
    fn incoming_ids_are_kept_only_when_trusted_and_valid() {
        let kept = RequestId::resolve(Some(b"abc-123"), || true);
        assert_eq!(kept.as_str(), "abc-123");
        let untrusted = RequestId::resolve(Some(b"abc-123"), || false);
        assert!(matches!(untrusted, RequestId::Made(_)));
        for bad in [&b""[..], b"a b", b"caf\xc3\xa9", &[b'a'; 201]] {
            let id = RequestId::resolve(Some(bad), || true);
            assert!(matches!(id, RequestId::Made(_)), "{bad:?}");
        }
        let longest = [b'x'; 200];
        assert_eq!(
            RequestId::resolve(Some(&longest), || true).as_str().len(),
            200
        );
    }

    #[test]
    fn trust_is_only_asked_for_a_valid_incoming_id() {
        let asked = std::cell::Cell::new(false);
        let _ = RequestId::resolve(None, || {
            asked.set(true);
            true
        });
        assert!(!asked.get());
    }
}
