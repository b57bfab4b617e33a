//! `[[rate_limits]]`: requests per second per client address, by path prefix.

use toml::Spanned;

use crate::validate::Violation;

/// One `[[rate_limits]]` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimit {
    /// Requests whose normalised path starts with this are counted; the longest matching
    /// prefix among the entries applies.
    pub prefix: String,
    /// Requests per second one client address may make, on average.
    pub per_ip: u32,
    /// Requests one client address may make at once, above which it gets 429.
    pub burst: u32,
}

pub(crate) mod file {
    use serde::Deserialize;
    use toml::Spanned;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub(crate) struct RateLimit {
        pub(crate) prefix: Spanned<String>,
        pub(crate) per_ip: Spanned<u32>,
        pub(crate) burst: Option<Spanned<u32>>,
    }
}

/// Checked entries, longest prefix first. `burst` defaults to `per_ip`.
pub(crate) fn rate_limits(f: Vec<file::RateLimit>) -> Result<Vec<RateLimit>, Violation> {
    let mut out: Vec<RateLimit> = Vec::new();
    for (i, r) in f.into_iter().enumerate() {
        let prefix = r.prefix.get_ref();
        if !prefix.starts_with('/') {
            return Err(Violation {
                span: r.prefix.span(),
                message: format!("rate_limits[{i}].prefix: must start with `/`"),
            });
        }
        if out.iter().any(|o| &o.prefix == prefix) {
            return Err(Violation {
                span: r.prefix.span(),
                message: format!("rate_limits[{i}].prefix: `{prefix}` has a limit already"),
            });
        }
        let at_least_one = |v: &Spanned<u32>, key: &str| match *v.get_ref() {
            0 => Err(Violation {
                span: v.span(),
                message: format!("rate_limits[{i}].{key}: at least 1"),
            }),
            n => Ok(n),
        };
        let per_ip = at_least_one(&r.per_ip, "per_ip")?;
        let burst = match &r.burst {
            Some(b) => at_least_one(b, "burst")?,
            None => per_ip,
        };
        out.push(RateLimit {
            prefix: prefix.clone(),
            per_ip,
            burst,
        });
    }
    out.sort_by_key(|r| std::cmp::Reverse(r.prefix.len()));
    Ok(out)
}
