//! Which slot serves a request: the one it asks to preview, the one a sticky canary client
//! keeps, or the weighted split ([`Routing::pick_slot`]).
//!
//! Both request paths run the same two steps: [`SlotPolicy::read_header`] on the few request
//! headers that matter (only when [`SlotPolicy::reads_headers`] says any do: without
//! `[preview]` and without weights, no header is looked at), then [`SlotPolicy::choose`] with
//! the snapshot and the client address.

use std::net::IpAddr;

use bascule_config::{CanaryConfig, PreviewConfig, Sticky};

use crate::slots::routing::Routing;
use crate::SlotName;

/// `[preview]` and `[canary]`, prepared once for the request path.
#[derive(Debug, Clone)]
pub struct SlotPolicy {
    /// Lower-case name of the preview header.
    preview_header: Option<Box<[u8]>>,
    preview_cookie: Option<Box<[u8]>>,
    token: Option<Box<[u8]>>,
    sticky: Sticky,
    sticky_cookie: Box<[u8]>,
    /// The `Set-Cookie` value that keeps a client on blue, then green.
    set_cookie: [Box<str>; 2],
}

/// What a request's headers ask for; the default asks for nothing.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Asked {
    /// The preview header names this slot (with the right token).
    preview_header: Option<SlotName>,
    /// The preview cookie names this slot (with the right token).
    preview_cookie: Option<SlotName>,
    /// The sticky cookie names this slot.
    sticky: Option<SlotName>,
}

/// The slot chosen for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Choice {
    /// The serving slot.
    pub slot: SlotName,
    /// Served by this slot because the request asked for it.
    pub preview: bool,
    /// The response carries the sticky cookie naming `slot`.
    pub set_cookie: bool,
}

impl SlotPolicy {
    /// The policy of `[preview]` (absent: off) and `[canary]`.
    pub fn new(preview: Option<&PreviewConfig>, canary: &CanaryConfig) -> SlotPolicy {
        let bytes = |s: &str| s.as_bytes().into();
        let set_cookie = |slot: SlotName| {
            format!("{}={slot}; Path=/; HttpOnly; SameSite=Lax", canary.cookie).into()
        };
        SlotPolicy {
            preview_header: preview.and_then(|p| p.header.as_deref()).map(bytes),
            preview_cookie: preview.and_then(|p| p.cookie.as_deref()).map(bytes),
            token: preview.and_then(|p| p.token.as_deref()).map(bytes),
            sticky: canary.sticky,
            sticky_cookie: bytes(&canary.cookie),
            set_cookie: [set_cookie(SlotName::Blue), set_cookie(SlotName::Green)],
        }
    }

    /// Whether any request header can change the choice under `routing`: when not, the
    /// headers are not looked at and [`Asked::default`] stands for them.
    #[inline]
    pub fn reads_headers(&self, routing: &Routing) -> bool {
        self.preview_header.is_some()
            || self.preview_cookie.is_some()
            || (self.sticky == Sticky::Cookie && routing.weights.is_some())
    }

    /// Notes what request header `name: value` asks for.
    pub fn read_header(&self, name: &[u8], value: &[u8], asked: &mut Asked) {
        if self
            .preview_header
            .as_deref()
            .is_some_and(|h| name.eq_ignore_ascii_case(h))
        {
            asked.preview_header = asked.preview_header.or(self.preview_slot(value));
        } else if name.eq_ignore_ascii_case(b"cookie") {
            for pair in value.split(|&b| b == b';') {
                let pair = pair.trim_ascii();
                let Some(eq) = pair.iter().position(|&b| b == b'=') else {
                    continue;
                };
                let (name, value) = (&pair[..eq], unquote(pair[eq + 1..].trim_ascii()));
                if self.preview_cookie.as_deref() == Some(name) {
                    asked.preview_cookie = asked.preview_cookie.or(self.preview_slot(value));
                } else if *self.sticky_cookie == *name {
                    asked.sticky = asked.sticky.or(slot_name(value));
                }
            }
        }
    }

    /// The slot a preview value names: `SLOT`, or `SLOT:TOKEN` when a token is set; `None`
    /// for anything else (a wrong token is ignored, never refused).
    fn preview_slot(&self, value: &[u8]) -> Option<SlotName> {
        let value = value.trim_ascii();
        match &self.token {
            None => slot_name(value),
            Some(token) => {
                let colon = value.iter().position(|&b| b == b':')?;
                let given = &value[colon + 1..];
                same_secret(given, token).then(|| slot_name(&value[..colon]))?
            }
        }
    }

    /// The slot for a request that asked for `asked`, from a client at `client`.
    ///
    /// A preview wins over everything. Otherwise, without weights, the active slot; with
    /// weights, by `[canary] sticky`: the slot the cookie names while it takes traffic (else
    /// the split, and the cookie is set), a hash of the address mapped onto the weights, or
    /// the split.
    #[inline]
    pub fn choose(&self, routing: &Routing, asked: Asked, client: IpAddr) -> Choice {
        let choice = |slot, set_cookie| Choice {
            slot,
            preview: false,
            set_cookie,
        };
        if let Some(slot) = asked.preview_header.or(asked.preview_cookie) {
            return Choice {
                slot,
                preview: true,
                set_cookie: false,
            };
        }
        let Some([blue, green]) = routing.weights else {
            return choice(routing.active, false);
        };
        match self.sticky {
            Sticky::None => choice(routing.pick_slot(), false),
            Sticky::Ip => {
                let total = u64::from(blue) + u64::from(green);
                if total == 0 {
                    return choice(routing.active, false);
                }
                let slot = if address_hash(client) % total < u64::from(blue) {
                    SlotName::Blue
                } else {
                    SlotName::Green
                };
                choice(slot, false)
            }
            Sticky::Cookie => match asked.sticky {
                Some(slot) if routing.takes_traffic(slot) => choice(slot, false),
                _ => choice(routing.pick_slot(), true),
            },
        }
    }

    /// The `Set-Cookie` value that keeps a client on `slot`.
    #[inline]
    pub fn set_cookie(&self, slot: SlotName) -> &str {
        &self.set_cookie[slot.index()]
    }
}

/// `blue` or `green`, in any case.
fn slot_name(value: &[u8]) -> Option<SlotName> {
    SlotName::ALL
        .into_iter()
        .find(|s| value.eq_ignore_ascii_case(s.as_str().as_bytes()))
}

fn unquote(v: &[u8]) -> &[u8] {
    match v {
        [b'"', inner @ .., b'"'] => inner,
        _ => v,
    }
}

/// Compares a given token with the configured one in time that does not depend on where
/// they differ.
fn same_secret(given: &[u8], token: &[u8]) -> bool {
    given.len() == token.len()
        && given
            .iter()
            .zip(token)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

/// A stable hash of an address (the same across restarts and builds): FNV-1a over its
/// octets, then a 64-bit finaliser so that neighbouring addresses spread over the weights.
fn address_hash(ip: IpAddr) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for &b in bytes {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    };
    match ip.to_canonical() {
        IpAddr::V4(v4) => eat(&v4.octets()),
        IpAddr::V6(v6) => eat(&v6.octets()),
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;
    use std::sync::Arc;
    use std::time::Duration;

    use bascule_config::UpstreamConfig;

    use super::*;
    use crate::slots::counters::SlotCounters;
    use crate::slots::routing::Slot;

    fn routing(weights: Option<[u32; 2]>) -> Routing {
        let opts = UpstreamConfig {
            connect_timeout: Duration::from_secs(1),
            read_timeout: Duration::from_secs(1),
            keepalive_pool: 1,
            idle_timeout: Duration::from_secs(1),
        };
        let slot = |name| Arc::new(Slot::build(name, &[], None, None, &opts, &[]).unwrap());
        Routing {
            generation: 1,
            active: SlotName::Blue,
            previous: None,
            last_switch: None,
            weights,
            slots: [slot(SlotName::Blue), slot(SlotName::Green)],
            routes: Arc::new([]),
            counters: SlotCounters::new(),
            split: Arc::new(AtomicUsize::new(0)),
            last_rollback: None,
        }
    }

    fn policy(token: Option<&str>, sticky: Sticky) -> SlotPolicy {
        let preview = PreviewConfig {
            header: Some("x-bascule-preview".into()),
            cookie: Some("bascule_preview".into()),
            token: token.map(Into::into),
        };
        let canary = CanaryConfig {
            sticky,
            ..CanaryConfig::default()
        };
        SlotPolicy::new(Some(&preview), &canary)
    }

    fn asked(p: &SlotPolicy, headers: &[(&str, &str)]) -> Asked {
        let mut a = Asked::default();
        for (n, v) in headers {
            p.read_header(n.as_bytes(), v.as_bytes(), &mut a);
        }
        a
    }

    const HERE: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    #[test]
    fn preview_by_header_or_cookie_with_the_token() {
        let r = routing(None);
        let open = policy(None, Sticky::Cookie);
        for h in [
            ("X-Bascule-Preview", "green"),
            ("cookie", "a=b; bascule_preview=green; c=d"),
            ("cookie", "bascule_preview=\"green\""),
        ] {
            let c = open.choose(&r, asked(&open, &[h]), HERE);
            assert_eq!(
                (c.slot, c.preview, c.set_cookie),
                (SlotName::Green, true, false)
            );
        }
        let locked = policy(Some("s3cret"), Sticky::Cookie);
        let c = locked.choose(
            &r,
            asked(&locked, &[("x-bascule-preview", "green:s3cret")]),
            HERE,
        );
        assert_eq!((c.slot, c.preview), (SlotName::Green, true));
        for wrong in [
            "green",
            "green:s3cre",
            "green:s3crett",
            "purple:s3cret",
            ":s3cret",
        ] {
            let a = asked(
                &locked,
                &[("x-bascule-preview", wrong), ("cookie", "x=green")],
            );
            assert_eq!(a, Asked::default(), "{wrong}");
            let c = locked.choose(&r, a, HERE);
            assert_eq!((c.slot, c.preview), (SlotName::Blue, false), "{wrong}");
        }
    }

    #[test]
    fn without_preview_or_weights_no_header_is_read() {
        let p = SlotPolicy::new(None, &CanaryConfig::default());
        assert!(!p.reads_headers(&routing(None)));
        assert!(p.reads_headers(&routing(Some([1, 1]))));
        let a = asked(&p, &[("x-bascule-preview", "green")]);
        assert_eq!(a, Asked::default());
    }

    #[test]
    fn a_sticky_cookie_holds_while_its_slot_takes_traffic() {
        let p = policy(None, Sticky::Cookie);
        let r = routing(Some([1, 1]));
        let fresh = p.choose(&r, Asked::default(), HERE);
        assert!(fresh.set_cookie);
        assert_eq!(
            p.set_cookie(SlotName::Green),
            "bascule_slot=green; Path=/; HttpOnly; SameSite=Lax"
        );
        let a = asked(&p, &[("cookie", "bascule_slot=green")]);
        for _ in 0..10 {
            let c = p.choose(&r, a, HERE);
            assert_eq!((c.slot, c.set_cookie), (SlotName::Green, false));
        }
        // Green out of the split: the cookie no longer holds.
        let c = p.choose(&routing(Some([1, 0])), a, HERE);
        assert_eq!((c.slot, c.set_cookie), (SlotName::Blue, true));
        // A flip (no weights) ends stickiness.
        let c = p.choose(&routing(None), a, HERE);
        assert_eq!((c.slot, c.set_cookie), (SlotName::Blue, false));
    }

    #[test]
    fn the_address_hash_is_stable_and_follows_the_weights() {
        let p = policy(None, Sticky::Ip);
        let r = routing(Some([1, 1]));
        let mut green = 0;
        for n in 1..=200u8 {
            let ip = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, n));
            let c = p.choose(&r, Asked::default(), ip);
            assert_eq!(c, p.choose(&r, Asked::default(), ip));
            assert!(!c.set_cookie);
            green += usize::from(c.slot == SlotName::Green);
        }
        assert!((60..=140).contains(&green), "{green} of 200 on green");
        let all_blue = routing(Some([1, 0]));
        let c = p.choose(&all_blue, Asked::default(), HERE);
        assert_eq!(c.slot, SlotName::Blue);
    }
}
