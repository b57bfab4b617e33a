//! Request path → file path under a root, and the hashed-name rule.

use std::path::{Path, PathBuf};

/// Why a request path does not name a file under the root.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathError {
    /// Malformed: bad percent-encoding, NUL, encoded slash or backslash.
    BadRequest,
    /// Well-formed but leaves the root (`..`) or names nothing servable.
    NotFound,
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Turns the path of a request URI into a relative file path with no `.`, `..` or empty parts.
///
/// Segments are split on `/` *before* percent-decoding, and a decoded segment that holds `/`,
/// `\` or NUL is refused: `%2f`, `%5c` and `%00` cannot smuggle a separator. A `..` segment,
/// plain or encoded, is refused too rather than resolved: nothing legitimate needs it.
/// A trailing `/` maps to `index.html`.
pub fn resolve(uri_path: &str) -> Result<PathBuf, PathError> {
    let path = uri_path.split(['?', '#']).next().unwrap_or("");
    if !path.starts_with('/') {
        return Err(PathError::BadRequest);
    }
    let mut out = PathBuf::new();
    for raw in path.split('/') {
        if raw.is_empty() {
            continue;
        }
        let mut seg = Vec::with_capacity(raw.len());
        let bytes = raw.as_bytes();
        let mut i = 0;
        while i < bytes.len() {
            if bytes[i] == b'%' {
                let (Some(h), Some(l)) = (
                    bytes.get(i + 1).copied().and_then(hex),
                    bytes.get(i + 2).copied().and_then(hex),
                ) else {
                    return Err(PathError::BadRequest);
                };
                seg.push(h << 4 | l);
                i += 3;
            } else {
                seg.push(bytes[i]);
                i += 1;
            }
        }
        if seg.iter().any(|&b| b == 0 || b == b'/' || b == b'\\') {
            return Err(PathError::BadRequest);
        }
        let seg = String::from_utf8(seg).map_err(|_| PathError::BadRequest)?;
        match seg.as_str() {
            "." => continue,
            ".." => return Err(PathError::NotFound),
            _ => out.push(seg),
        }
    }
    if path.ends_with('/') || out.as_os_str().is_empty() {
        out.push("index.html");
    }
    Ok(out)
}

/// Whether the file name of `rel` carries a content hash: `name-HASH.ext` or `name.HASH.ext`.
///
/// HASH is at least `min_len` characters of hex, or of base64url that mixes in a digit or both
/// letter cases: `app-3f9a1c2b.js` and `index-BxSD5hF2.js` are hashed, `app-controller.js` is not.
pub fn is_hashed(rel: &Path, min_len: usize) -> bool {
    let Some(name) = rel.file_name().and_then(|n| n.to_str()) else {
        return false;
    };
    let Some((stem, _ext)) = name.rsplit_once('.') else {
        return false;
    };
    // The last `-`/`.`-separated part, or (as bundlers' base64url hashes may hold `-`) the
    // last 8 characters when a separator stands right before them.
    let last = stem
        .rsplit(['-', '.'])
        .next()
        .filter(|h| h.len() < stem.len());
    let tail = stem
        .len()
        .checked_sub(8)
        .filter(|&i| {
            i > 0 && stem.is_char_boundary(i) && matches!(stem.as_bytes()[i - 1], b'-' | b'.')
        })
        .map(|i| &stem[i..]);
    [last, tail]
        .into_iter()
        .flatten()
        .any(|h| looks_like_hash(h, min_len))
}

fn looks_like_hash(hash: &str, min_len: usize) -> bool {
    if hash.len() < min_len {
        return false;
    }
    let b64 = hash
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !b64 {
        return false;
    }
    let all_hex = hash.bytes().all(|b| b.is_ascii_hexdigit());
    let digit = hash.bytes().any(|b| b.is_ascii_digit());
    let upper = hash.bytes().any(|b| b.is_ascii_uppercase());
    let lower = hash.bytes().any(|b| b.is_ascii_lowercase());
    all_hex || digit || (upper && lower)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_plain_paths() {
        assert_eq!(
            resolve("/assets/app.js"),
            Ok(PathBuf::from("assets/app.js"))
        );
        assert_eq!(resolve("/"), Ok(PathBuf::from("index.html")));
        assert_eq!(resolve("/docs/"), Ok(PathBuf::from("docs/index.html")));
        assert_eq!(resolve("//a/./b"), Ok(PathBuf::from("a/b")));
        assert_eq!(resolve("/a%20b.txt"), Ok(PathBuf::from("a b.txt")));
    }

    #[test]
    fn refuses_every_escape() {
        for p in [
            "/../etc/passwd",
            "/a/../../x",
            "/%2e%2e/x",
            "/%2E%2e/x",
            "/.%2e/x",
        ] {
            assert_eq!(resolve(p), Err(PathError::NotFound), "{p}");
        }
        for p in [
            "/a%2f..%2fb",
            "/a%2F..",
            "/a%00.js",
            "/a%5c..%5cb",
            "/a\\b",
            "/bad%zz",
            "/trunc%2",
            "relative",
            "/%ff%fe",
        ] {
            assert_eq!(resolve(p), Err(PathError::BadRequest), "{p}");
        }
    }

    /// Property test over random paths built from the characters that matter: whatever
    /// `resolve` accepts is relative, made of normal components only, with no NUL or backslash.
    #[test]
    fn resolve_never_escapes_on_random_input() {
        use std::path::Component;
        const ALPHABET: &[&str] = &[
            "/", ".", "..", "%", "2", "e", "E", "f", "F", "0", "5", "c", "C", "a", "\\", "%2e",
            "%2f", "%5c", "%00", "%2E", "%2F", "x", "?", "#", "%ff", "~",
        ];
        let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..100_000 {
            let len = (next() % 12) as usize;
            let mut p = String::from("/");
            for _ in 0..len {
                p.push_str(ALPHABET[(next() % ALPHABET.len() as u64) as usize]);
            }
            if let Ok(rel) = resolve(&p) {
                assert!(rel.is_relative(), "{p} -> {rel:?}");
                assert!(
                    rel.components().all(|c| matches!(c, Component::Normal(_))),
                    "{p} -> {rel:?}"
                );
                let s = rel.to_string_lossy();
                assert!(!s.contains('\0') && !s.contains('\\'), "{p} -> {rel:?}");
            }
        }
    }

    #[test]
    fn hashed_names() {
        let h = |n: &str| is_hashed(Path::new(n), 8);
        assert!(h("assets/app-3f9a1c2b.js"));
        assert!(h("assets/app.3f9a1c2b.css"));
        assert!(h("index-BxSD5hF2.js"));
        assert!(h("chunk-Dk3_Zq-L.js"));
        assert!(!h("assets/app-controller.js"));
        assert!(!h("index.html"));
        assert!(!h("app-3f9a1c.js"), "7 chars is too short");
        assert!(!h("3f9a1c2b3f.js"), "a hash needs a name before it");
        assert!(!h("noext-3f9a1c2b"));
        assert!(!h("user-profile-2.js"));
        assert!(h("vendor-react-4kD9s_2x.js"));
    }
}
