//! Response headers the edge sets and hides (`[headers]`, a route's `headers`), the same on
//! every path: the fast path writes them as lines after a rewritten head, the full proxy and
//! static responses edit a Pingora [`ResponseHeader`].
//!
//! Rules: a header set by the config (globally or for the route; the route's value wins) is
//! removed from the upstream's response and written once; a hidden header is removed from
//! upstream responses; the slot header is the proxy's own and never taken from an upstream.

use bascule_config::HeadersConfig;
use http::{HeaderName, HeaderValue};
use pingora_http::ResponseHeader;

/// Header lines of one route (`name`, `value`), as the config checked them.
pub(crate) type RouteHeaders = [(String, String)];

/// `[headers]`, ready for the request paths.
#[derive(Debug, Clone, Default)]
pub(crate) struct EdgeHeaders {
    /// Set on every response.
    set: Vec<(HeaderName, HeaderValue)>,
    /// Removed from upstream responses.
    hide: Vec<HeaderName>,
    /// The slot header, which the proxy writes itself.
    slot: Option<HeaderName>,
    /// The request id header (`[request_id]`), which the proxy writes itself.
    id: Option<HeaderName>,
}

impl EdgeHeaders {
    /// From the validated config; `slot_header` (`[server] slot_header`) and `id_header`
    /// (`[request_id] header`) are the proxy's own.
    pub(crate) fn new(
        config: &HeadersConfig,
        slot_header: Option<&str>,
        id_header: Option<&str>,
    ) -> EdgeHeaders {
        let name = |n: &str| HeaderName::from_bytes(n.as_bytes()).ok();
        EdgeHeaders {
            set: config
                .response
                .iter()
                .filter_map(|(n, v)| Some((name(n)?, HeaderValue::from_str(v).ok()?)))
                .collect(),
            hide: config.hide.iter().filter_map(|n| name(n)).collect(),
            slot: slot_header.and_then(name),
            id: id_header.and_then(name),
        }
    }

    /// Whether an upstream's header `name` is left out of the response: the slot or request
    /// id header, a hidden one, or one the config sets (for every response or for `route`).
    pub(crate) fn drops(&self, route: &RouteHeaders, name: &[u8]) -> bool {
        let is = |n: &[u8]| n.eq_ignore_ascii_case(name);
        let own = |h: &Option<HeaderName>| h.as_ref().is_some_and(|h| is(h.as_str().as_bytes()));
        own(&self.slot)
            || own(&self.id)
            || self.hide.iter().any(|h| is(h.as_str().as_bytes()))
            || self.set.iter().any(|(n, _)| is(n.as_str().as_bytes()))
            || route.iter().any(|(n, _)| is(n.as_bytes()))
    }

    /// The configured lines for a response of `route`, each `name: value\r\n`.
    pub(crate) fn write_h1(&self, route: &RouteHeaders, out: &mut Vec<u8>) {
        let mut line = |n: &[u8], v: &[u8]| {
            out.extend_from_slice(n);
            out.extend_from_slice(b": ");
            out.extend_from_slice(v);
            out.extend_from_slice(b"\r\n");
        };
        for (n, v) in self.set.iter().filter(|(n, _)| !overridden(route, n)) {
            line(n.as_str().as_bytes(), v.as_bytes());
        }
        for (n, v) in route {
            line(n.as_bytes(), v.as_bytes());
        }
    }

    /// The same on a Pingora header: for an `upstream` response, the headers [`Self::drops`]
    /// names are removed first; then the configured ones are set (replacing any value).
    pub(crate) fn apply(&self, route: &RouteHeaders, resp: &mut ResponseHeader, upstream: bool) {
        if upstream {
            let names: Vec<HeaderName> = resp
                .headers
                .keys()
                .filter(|n| self.drops(route, n.as_str().as_bytes()))
                .cloned()
                .collect();
            for n in names {
                resp.remove_header(&n);
            }
        }
        for (n, v) in self.set.iter().filter(|(n, _)| !overridden(route, n)) {
            let _ = resp.insert_header(n.clone(), v.clone());
        }
        for (n, v) in route {
            if let (Ok(n), Ok(v)) = (
                HeaderName::from_bytes(n.as_bytes()),
                HeaderValue::from_str(v),
            ) {
                let _ = resp.insert_header(n, v);
            }
        }
    }
}

/// Whether `route` sets `name` itself.
fn overridden(route: &RouteHeaders, name: &HeaderName) -> bool {
    route
        .iter()
        .any(|(n, _)| n.eq_ignore_ascii_case(name.as_str()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn edge() -> EdgeHeaders {
        let config = HeadersConfig {
            response: vec![
                ("X-Content-Type-Options".into(), "nosniff".into()),
                ("X-Frame".into(), "DENY".into()),
            ]
            .into(),
            hide: vec!["Server".into()],
        };
        EdgeHeaders::new(&config, Some("x-bascule-slot"), Some("x-request-id"))
    }

    #[test]
    fn lines_put_the_route_over_the_global_value() {
        let route = [("x-frame".to_string(), "SAMEORIGIN".to_string())];
        let mut out = Vec::new();
        edge().write_h1(&route, &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "x-content-type-options: nosniff\r\nx-frame: SAMEORIGIN\r\n"
        );
        assert!(edge().drops(&route, b"X-Frame"));
        assert!(edge().drops(&[], b"server"));
        assert!(edge().drops(&[], b"X-Bascule-Slot"));
        assert!(edge().drops(&[], b"X-Request-ID"));
        assert!(!edge().drops(&[], b"etag"));
    }

    #[test]
    fn pingora_heads_get_the_same() {
        let mut resp = ResponseHeader::build(200, None).unwrap();
        resp.append_header("Server", "up").unwrap();
        resp.append_header("X-Content-Type-Options", "a").unwrap();
        resp.append_header("X-Content-Type-Options", "b").unwrap();
        resp.append_header("ETag", "\"1\"").unwrap();
        edge().apply(&[], &mut resp, true);
        let all = |n: &str| {
            resp.headers
                .get_all(n)
                .iter()
                .map(|v| v.to_str().unwrap().to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(all("x-content-type-options"), ["nosniff"]);
        assert!(all("server").is_empty());
        assert_eq!(all("etag"), ["\"1\""]);
        assert_eq!(all("x-frame"), ["DENY"]);
    }
}
