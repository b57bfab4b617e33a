//! `[headers]` and a route's `headers`: what the edge sets on and hides from responses; and
//! `[request_id]`: the header that carries each request's id.

use std::collections::BTreeMap;
use std::sync::Arc;

use toml::Spanned;

use crate::validate::Violation;

/// Header lines a config may set: name and value, checked.
pub type HeaderLines = Arc<[(String, String)]>;

/// `[headers]`: response headers the edge sets and hides.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct HeadersConfig {
    /// Set on every response, replacing an upstream's value of the same name.
    pub response: HeaderLines,
    /// Removed from upstream responses.
    pub hide: Vec<String>,
}

/// Headers only the proxy writes: framing and hop-by-hop, which a config may not set.
const RESERVED: [&str; 9] = [
    "connection",
    "content-length",
    "transfer-encoding",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
    "date",
];

pub(crate) mod file {
    use std::collections::BTreeMap;

    use serde::Deserialize;
    use toml::Spanned;

    #[derive(Debug, Deserialize, Default)]
    #[serde(deny_unknown_fields)]
    pub(crate) struct RequestId {
        pub(crate) enabled: Option<bool>,
        pub(crate) header: Option<Spanned<String>>,
    }

    #[derive(Debug, Deserialize, Default)]
    #[serde(deny_unknown_fields)]
    pub(crate) struct Headers {
        pub(crate) response: Option<BTreeMap<Spanned<String>, Spanned<String>>>,
        pub(crate) hide: Option<Vec<Spanned<String>>>,
    }
}

/// The request id header when `[request_id]` says nothing.
pub const DEFAULT_REQUEST_ID_HEADER: &str = "x-request-id";

/// Request headers whose meaning the proxy keeps: a request id of that name would be read
/// from, and written over, something else.
const REQUEST_ID_RESERVED: [&str; 8] = [
    "host",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-real-ip",
    "cookie",
    "set-cookie",
    "expect",
];

/// Whether `name` is a header field name (an RFC 9110 token).
pub(crate) fn is_token(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// A name that is a token and not one the proxy writes itself; `key` prefixes the message.
fn header_name(name: &Spanned<String>, key: &str) -> Result<String, Violation> {
    let n = name.get_ref();
    let why = if !is_token(n) {
        Some(format!(
            "{key}: `{n}` is not a header name (letters, digits and !#$%&'*+-.^_`|~)"
        ))
    } else if RESERVED.iter().any(|r| n.eq_ignore_ascii_case(r)) {
        Some(format!(
            "{key}: `{n}` is written by the proxy itself and cannot be set or hidden"
        ))
    } else {
        None
    };
    match why {
        Some(message) => Err(Violation {
            span: name.span(),
            message,
        }),
        None => Ok(n.clone()),
    }
}

/// Checked `name = "value"` pairs (`key` names the table in messages).
pub(crate) fn lines(
    map: Option<BTreeMap<Spanned<String>, Spanned<String>>>,
    key: &str,
) -> Result<HeaderLines, Violation> {
    let mut out = Vec::new();
    for (name, value) in map.unwrap_or_default() {
        let name = header_name(&name, key)?;
        let v = value.get_ref();
        // Visible characters, spaces and tabs inside; no line breaks, no padding.
        let ok = v
            .bytes()
            .all(|b| b == b'\t' || (b' '..=b'~').contains(&b) || b >= 0x80)
            && v.trim() == v;
        if !ok {
            return Err(Violation {
                span: value.span(),
                message: format!(
                    "{key}: the value of `{name}` is not a header value (no line breaks, no leading or trailing spaces)"
                ),
            });
        }
        if out
            .iter()
            .any(|(n, _): &(String, String)| n.eq_ignore_ascii_case(&name))
        {
            return Err(Violation {
                span: value.span(),
                message: format!("{key}: `{name}` is set twice (names are case-insensitive)"),
            });
        }
        out.push((name, v.clone()));
    }
    Ok(out.into())
}

pub(crate) fn headers(f: file::Headers) -> Result<HeadersConfig, Violation> {
    let response = lines(f.response, "headers.response")?;
    let hide = f
        .hide
        .unwrap_or_default()
        .iter()
        .map(|n| header_name(n, "headers.hide"))
        .collect::<Result<_, _>>()?;
    Ok(HeadersConfig { response, hide })
}

/// `[request_id]`: the header, lowercased, or `None` when `enabled = false`. `slot_header`
/// (the proxy's own) may not be it either.
pub(crate) fn request_id(
    f: file::RequestId,
    slot_header: Option<&str>,
) -> Result<Option<String>, Violation> {
    if f.enabled == Some(false) {
        return Ok(None);
    }
    let Some(name) = f.header else {
        return Ok(Some(DEFAULT_REQUEST_ID_HEADER.into()));
    };
    let n = header_name(&name, "request_id.header")?.to_ascii_lowercase();
    if REQUEST_ID_RESERVED.contains(&n.as_str()) || slot_header == Some(n.as_str()) {
        return Err(Violation {
            span: name.span(),
            message: format!(
                "request_id.header: `{n}` already means something to the proxy; pick another name (default {DEFAULT_REQUEST_ID_HEADER})"
            ),
        });
    }
    Ok(Some(n))
}
