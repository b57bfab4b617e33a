//! `[preview]` and `[canary]`: which slot a request asks for, and how a client keeps the slot
//! a weighted split gave it.

use toml::Spanned;

use crate::headers::is_token;
use crate::validate::Violation;

/// Default request header that names the slot to preview.
pub const DEFAULT_PREVIEW_HEADER: &str = "x-bascule-preview";
/// Default cookie that names the slot to preview.
pub const DEFAULT_PREVIEW_COOKIE: &str = "bascule_preview";
/// Default cookie that keeps a client on its canary slot.
pub const DEFAULT_CANARY_COOKIE: &str = "bascule_slot";

/// `[preview]`: a request that names a slot (`x-bascule-preview: green`, or the cookie
/// `bascule_preview=green`) is served by that slot, whatever is active or weighted.
#[derive(Debug, Clone, PartialEq)]
pub struct PreviewConfig {
    /// Request header naming the slot, lower-case; `None` when turned off (`header = ""`).
    pub header: Option<String>,
    /// Cookie naming the slot; `None` when turned off (`cookie = ""`).
    pub cookie: Option<String>,
    /// When set, the value must be `SLOT:TOKEN`; a wrong or missing token is ignored.
    pub token: Option<String>,
}

/// How a client stays on its slot while weights split traffic (`[canary] sticky`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sticky {
    /// A cookie set on the first response names the slot.
    Cookie,
    /// A stable hash of the client address, mapped onto the weights.
    Ip,
    /// Every request is split on its own.
    None,
}

/// `[canary]`: stickiness of the weighted split.
#[derive(Debug, Clone, PartialEq)]
pub struct CanaryConfig {
    /// How a client keeps its slot.
    pub sticky: Sticky,
    /// The cookie naming the slot, under `Sticky::Cookie`.
    pub cookie: String,
}

impl Default for CanaryConfig {
    fn default() -> Self {
        CanaryConfig {
            sticky: Sticky::Cookie,
            cookie: DEFAULT_CANARY_COOKIE.to_string(),
        }
    }
}

pub(crate) mod file {
    use serde::Deserialize;
    use toml::Spanned;

    #[derive(Debug, Deserialize, Default)]
    #[serde(deny_unknown_fields)]
    pub(crate) struct Preview {
        pub(crate) header: Option<Spanned<String>>,
        pub(crate) cookie: Option<Spanned<String>>,
        pub(crate) token: Option<Spanned<String>>,
    }

    #[derive(Debug, Deserialize, Default)]
    #[serde(deny_unknown_fields)]
    pub(crate) struct Canary {
        pub(crate) sticky: Option<Spanned<String>>,
        pub(crate) cookie: Option<Spanned<String>>,
    }
}

fn bad<T>(span: std::ops::Range<usize>, message: String) -> Result<T, Violation> {
    Err(Violation { span, message })
}

/// A header or cookie name from the file (a token; `""` turns it off), or `default`.
fn name(
    v: Option<Spanned<String>>,
    key: &str,
    default: &str,
    lower: bool,
) -> Result<Option<String>, Violation> {
    match v {
        None => Ok(Some(default.to_string())),
        Some(n) if n.get_ref().is_empty() => Ok(None),
        Some(n) if !is_token(n.get_ref()) => bad(
            n.span(),
            format!(
                "{key}: `{}` is not a name (letters, digits and `!#$%&'*+-.^_`|~`; \"\" turns it off)",
                n.get_ref()
            ),
        ),
        Some(n) if lower => Ok(Some(n.into_inner().to_ascii_lowercase())),
        Some(n) => Ok(Some(n.into_inner())),
    }
}

pub(crate) fn preview(f: file::Preview) -> Result<PreviewConfig, Violation> {
    let span = f.header.as_ref().map(Spanned::span);
    let header = name(f.header, "preview.header", DEFAULT_PREVIEW_HEADER, true)?;
    if header.as_deref() == Some("cookie") {
        // The cookie header carries the preview cookie; read as the preview header, its
        // cookies would go unread.
        return bad(
            span.unwrap_or(0..0),
            "preview.header: `cookie` is read for preview.cookie; give the header its own name"
                .into(),
        );
    }
    let cookie = name(f.cookie, "preview.cookie", DEFAULT_PREVIEW_COOKIE, false)?;
    let token = match f.token {
        // The token travels in a header and in a cookie value: visible ASCII, none of the
        // characters that end a cookie value.
        Some(t)
            if t.get_ref().is_empty()
                || !t
                    .get_ref()
                    .bytes()
                    .all(|b| b.is_ascii_graphic() && !b"\";,\\".contains(&b)) =>
        {
            return bad(
                t.span(),
                "preview.token: give visible ASCII without `\"`, `;`, `,` or `\\` (it is sent in a cookie), or leave the key out".into(),
            )
        }
        Some(t) => Some(t.into_inner()),
        None => None,
    };
    Ok(PreviewConfig {
        header,
        cookie,
        token,
    })
}

pub(crate) fn canary(
    f: file::Canary,
    preview: Option<&PreviewConfig>,
) -> Result<CanaryConfig, Violation> {
    let sticky = match f.sticky {
        None => Sticky::Cookie,
        Some(s) => match s.get_ref().as_str() {
            "cookie" => Sticky::Cookie,
            "ip" => Sticky::Ip,
            "none" => Sticky::None,
            other => {
                return bad(
                    s.span(),
                    format!("canary.sticky: `{other}` is not one of \"cookie\", \"ip\", \"none\""),
                )
            }
        },
    };
    let span = f.cookie.as_ref().map(Spanned::span);
    let cookie = match name(f.cookie, "canary.cookie", DEFAULT_CANARY_COOKIE, false)? {
        Some(c) => c,
        None => {
            return bad(
                span.unwrap_or(0..0),
                "canary.cookie: give a cookie name (sticky = \"none\" turns stickiness off)".into(),
            )
        }
    };
    if preview.and_then(|p| p.cookie.as_deref()) == Some(cookie.as_str()) {
        return bad(
            span.unwrap_or(0..0),
            format!("canary.cookie: `{cookie}` is already preview.cookie; give each its own name"),
        );
    }
    Ok(CanaryConfig { sticky, cookie })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse;
    use crate::tests::located;

    #[test]
    fn defaults() {
        let c = parse("", "t.toml").unwrap();
        assert_eq!(c.preview, None);
        assert_eq!(c.canary, CanaryConfig::default());
        let c = parse("[preview]\n", "t.toml").unwrap();
        assert_eq!(
            c.preview,
            Some(PreviewConfig {
                header: Some(DEFAULT_PREVIEW_HEADER.into()),
                cookie: Some(DEFAULT_PREVIEW_COOKIE.into()),
                token: None,
            })
        );
    }

    #[test]
    fn values() {
        let c = parse(
            "[preview]\nheader = \"X-Preview\"\ncookie = \"\"\ntoken = \"s3cr:et\"\n\n[canary]\nsticky = \"ip\"\ncookie = \"slot\"\n",
            "t.toml",
        )
        .unwrap();
        let p = c.preview.unwrap();
        assert_eq!(p.header.as_deref(), Some("x-preview"));
        assert_eq!(p.cookie, None);
        assert_eq!(p.token.as_deref(), Some("s3cr:et"));
        assert_eq!(c.canary.sticky, Sticky::Ip);
        assert_eq!(c.canary.cookie, "slot");
    }

    #[test]
    fn bad_values_are_located() {
        let (line, msg) = located("[preview]\nheader = \"x preview\"\n");
        assert_eq!(line, 2);
        assert!(msg.starts_with("preview.header:"), "{msg}");
        let (line, msg) = located("[preview]\n\ntoken = \"a;b\"\n");
        assert_eq!(line, 3);
        assert!(msg.starts_with("preview.token:"), "{msg}");
        let (line, msg) = located("[canary]\nsticky = \"session\"\n");
        assert_eq!(line, 2);
        assert!(msg.contains("\"cookie\", \"ip\", \"none\""), "{msg}");
        let (line, msg) = located("[preview]\ncookie = \"c\"\n[canary]\ncookie = \"c\"\n");
        assert_eq!(line, 4);
        assert!(msg.contains("already preview.cookie"), "{msg}");
        let (line, msg) = located("[canary]\ncookie = \"\"\n");
        assert_eq!(line, 2);
        assert!(msg.starts_with("canary.cookie:"), "{msg}");
        let (line, msg) = located("[preview]\nheader = \"Cookie\"\n");
        assert_eq!(line, 2);
        assert!(msg.starts_with("preview.header:"), "{msg}");
        let (_, msg) = located("[preview]\nsecret = \"x\"\n");
        assert!(msg.contains("secret"), "{msg}");
    }
}
