//! `[compression]`: which proxied responses the edge compresses, and with what.

use toml::Spanned;

use crate::validate::Violation;

/// Default smallest body, in bytes, worth compressing (a known `Content-Length` below it is
/// sent as it is).
pub const DEFAULT_COMPRESSION_MIN_BYTES: u64 = 1024;
/// Default content-type prefixes that are compressed.
pub const DEFAULT_COMPRESSION_TYPES: [&str; 4] = [
    "text/",
    "application/json",
    "application/javascript",
    "image/svg+xml",
];
/// Algorithms of a `[compression]` table that names none, by preference.
pub const DEFAULT_COMPRESSION_ALGORITHMS: [Algorithm; 2] = [Algorithm::Brotli, Algorithm::Gzip];

/// A content coding the edge can produce.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Algorithm {
    /// `br` (RFC 7932).
    Brotli,
    /// `gzip` (RFC 1952).
    Gzip,
    /// `zstd` (RFC 8878).
    Zstd,
}

impl Algorithm {
    /// Every algorithm, in the order messages list them.
    pub const ALL: [Algorithm; 3] = [Algorithm::Brotli, Algorithm::Gzip, Algorithm::Zstd];

    /// The content-coding token, as in `Accept-Encoding`, `Content-Encoding` and the config.
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::Brotli => "br",
            Algorithm::Gzip => "gzip",
            Algorithm::Zstd => "zstd",
        }
    }
}

/// `[compression]`: off (no algorithm) unless the table is there.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CompressionConfig {
    /// Algorithms by the edge's preference; empty: compression is off.
    pub algorithms: Vec<Algorithm>,
    /// Smallest known body length, in bytes, that is compressed.
    pub min_bytes: u64,
    /// Content-type prefixes that are compressed, lower-case.
    pub types: Vec<String>,
}

impl CompressionConfig {
    /// Whether any response may be compressed.
    pub fn is_on(&self) -> bool {
        !self.algorithms.is_empty()
    }
}

pub(crate) mod file {
    use serde::Deserialize;
    use toml::Spanned;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub(crate) struct Compression {
        pub(crate) algorithms: Option<Vec<Spanned<String>>>,
        pub(crate) min_bytes: Option<u64>,
        pub(crate) types: Option<Vec<Spanned<String>>>,
    }
}

fn violation<T>(s: &Spanned<String>, message: String) -> Result<T, Violation> {
    Err(Violation {
        span: s.span(),
        message,
    })
}

/// No table: off, as nginx's `gzip`. A table without `algorithms`: `["br", "gzip"]`.
pub(crate) fn compression(f: Option<file::Compression>) -> Result<CompressionConfig, Violation> {
    let Some(f) = f else {
        return Ok(CompressionConfig::default());
    };
    let algorithms = match f.algorithms {
        None => DEFAULT_COMPRESSION_ALGORITHMS.to_vec(),
        Some(names) => {
            let mut out: Vec<Algorithm> = Vec::with_capacity(names.len());
            for name in &names {
                let n = name.get_ref();
                let Some(a) = Algorithm::ALL.into_iter().find(|a| a.as_str() == n) else {
                    return violation(
                        name,
                        format!("compression.algorithms: `{n}` is not one of \"br\", \"gzip\", \"zstd\""),
                    );
                };
                if out.contains(&a) {
                    return violation(
                        name,
                        format!("compression.algorithms: `{n}` is listed twice"),
                    );
                }
                out.push(a);
            }
            out
        }
    };
    let types = match f.types {
        None => DEFAULT_COMPRESSION_TYPES.map(String::from).to_vec(),
        Some(types) => {
            let mut out = Vec::with_capacity(types.len());
            for t in &types {
                let v = t.get_ref();
                // A media type's characters (RFC 6838); a prefix may stop anywhere.
                let ok = !v.is_empty()
                    && v.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+/".contains(&b));
                if !ok {
                    return violation(
                        t,
                        format!("compression.types: `{v}` is not a content-type prefix (such as \"text/\" or \"application/json\")"),
                    );
                }
                out.push(v.to_ascii_lowercase());
            }
            out
        }
    };
    Ok(CompressionConfig {
        algorithms,
        min_bytes: f.min_bytes.unwrap_or(DEFAULT_COMPRESSION_MIN_BYTES),
        types,
    })
}
