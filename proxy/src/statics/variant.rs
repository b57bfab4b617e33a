//! Content negotiation (`Accept-Encoding`) and byte ranges.

use bascule_config::Algorithm;

/// A representation's content coding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Encoding {
    /// The file itself.
    Identity,
    /// A `.br` sibling.
    Brotli,
    /// A `.zst` sibling.
    Zstd,
    /// A `.gz` sibling.
    Gzip,
}

impl Encoding {
    /// Precompressed siblings, best first.
    pub(crate) const PRECOMPRESSED: [Encoding; 3] =
        [Encoding::Brotli, Encoding::Zstd, Encoding::Gzip];

    /// The sibling's file suffix.
    pub(crate) fn file_suffix(self) -> &'static str {
        match self {
            Encoding::Identity => "",
            Encoding::Brotli => ".br",
            Encoding::Zstd => ".zst",
            Encoding::Gzip => ".gz",
        }
    }

    /// The `Content-Encoding` value.
    pub(crate) fn content_encoding(self) -> Option<&'static str> {
        match self {
            Encoding::Identity => None,
            Encoding::Brotli => Some("br"),
            Encoding::Zstd => Some("zstd"),
            Encoding::Gzip => Some("gzip"),
        }
    }

    /// What tells this representation's ETag from the identity one's.
    pub(crate) fn etag_suffix(self) -> &'static str {
        match self {
            Encoding::Identity => "",
            Encoding::Brotli => "-br",
            Encoding::Zstd => "-zst",
            Encoding::Gzip => "-gz",
        }
    }
}

/// The codings a client accepts (q > 0), by the parser compression uses too.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Accepted(crate::wire::compress::Accepted);

impl Accepted {
    /// Whether `e` may be sent.
    pub(crate) fn contains(&self, e: Encoding) -> bool {
        match e {
            Encoding::Identity => true,
            Encoding::Brotli => self.0.accepts(Algorithm::Brotli),
            Encoding::Zstd => self.0.accepts(Algorithm::Zstd),
            Encoding::Gzip => self.0.accepts(Algorithm::Gzip),
        }
    }
}

/// Parses `Accept-Encoding`, honouring `q=0` and `*`.
pub(crate) fn accepted_encodings(header: Option<&[u8]>) -> Accepted {
    Accepted(crate::wire::compress::Accepted::parse(header))
}

/// What a `Range` header asks of a body of known length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Range {
    /// Serve the whole body (no usable single range: multiple ranges, other units, junk).
    Ignore,
    /// 416.
    Unsatisfiable,
    /// Inclusive byte positions.
    Bytes(u64, u64),
}

/// Parses a single `bytes=` range against a body of `len` bytes.
pub(crate) fn parse_range(header: &[u8], len: u64) -> Range {
    let Some(spec) = std::str::from_utf8(header)
        .ok()
        .and_then(|h| h.trim().strip_prefix("bytes="))
    else {
        return Range::Ignore;
    };
    if spec.contains(',') {
        return Range::Ignore;
    }
    let Some((start, end)) = spec.trim().split_once('-') else {
        return Range::Ignore;
    };
    let (start, end) = (start.trim(), end.trim());
    match (start.parse::<u64>(), end.parse::<u64>()) {
        (Ok(s), _) if s >= len => Range::Unsatisfiable,
        (Ok(s), Ok(e)) if e >= s => Range::Bytes(s, e.min(len - 1)),
        (Ok(_), Ok(_)) => Range::Ignore,
        (Ok(s), Err(_)) if end.is_empty() => Range::Bytes(s, len - 1),
        (Err(_), Ok(n)) if start.is_empty() => {
            if n == 0 || len == 0 {
                Range::Unsatisfiable
            } else {
                Range::Bytes(len - n.min(len), len - 1)
            }
        }
        _ => Range::Ignore,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_encoding_with_q_values() {
        let a = accepted_encodings(Some(b"gzip, br;q=0"));
        assert!(a.contains(Encoding::Gzip) && !a.contains(Encoding::Brotli));
        let a = accepted_encodings(Some(b"*;q=0.5, gzip;q=0"));
        assert!(a.contains(Encoding::Brotli) && !a.contains(Encoding::Gzip));
        assert_eq!(accepted_encodings(None), Accepted::default());
        let a = accepted_encodings(Some(b"GZIP;q=0.001"));
        assert!(a.contains(Encoding::Gzip));
    }

    #[test]
    fn ranges() {
        assert_eq!(parse_range(b"bytes=0-9", 100), Range::Bytes(0, 9));
        assert_eq!(parse_range(b"bytes=90-", 100), Range::Bytes(90, 99));
        assert_eq!(parse_range(b"bytes=-10", 100), Range::Bytes(90, 99));
        assert_eq!(parse_range(b"bytes=-1000", 100), Range::Bytes(0, 99));
        assert_eq!(parse_range(b"bytes=50-1000", 100), Range::Bytes(50, 99));
        assert_eq!(parse_range(b"bytes=100-", 100), Range::Unsatisfiable);
        assert_eq!(parse_range(b"bytes=-0", 100), Range::Unsatisfiable);
        assert_eq!(parse_range(b"bytes=0-1,5-6", 100), Range::Ignore);
        assert_eq!(parse_range(b"items=0-1", 100), Range::Ignore);
        assert_eq!(parse_range(b"bytes=5-1", 100), Range::Ignore);
    }
}
