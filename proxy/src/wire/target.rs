//! Request targets: the path a request is routed by and sent upstream with.
//!
//! Routing must see the path the upstream will act on, or a prefix rule can be walked around
//! (`GET /api/../private` matching `/api/`, `GET http://x/private` skipping `/private`). So the
//! target is normalised once, here, and both routing and the upstream request use the result:
//! absolute-form loses its scheme and authority, `.` and `..` segments are resolved (also when
//! written `%2e`), empty segments merge (as nginx's `merge_slashes`), and what cannot be resolved
//! safely is refused.

use std::borrow::Cow;

use super::Reject;

/// A request target, checked and normalised.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Target<'a> {
    /// Origin-form path and query (`/p?q`), or `*` for `OPTIONS *`.
    pub(crate) path_and_query: Cow<'a, str>,
    /// Length of the path part of `path_and_query`.
    pub(crate) path_len: usize,
    /// The authority of an absolute-form target (`GET http://host/p`), which replaces `Host`.
    pub(crate) authority: Option<&'a str>,
}

impl Target<'_> {
    /// The path without its query: what routes match.
    pub(crate) fn path(&self) -> &str {
        &self.path_and_query[..self.path_len]
    }
}

/// Checks and normalises `target` of a `method` request.
pub(crate) fn normalise<'a>(method: &str, target: &'a str) -> Result<Target<'a>, Reject> {
    if target == "*" {
        return if method == "OPTIONS" {
            Ok(Target {
                path_and_query: Cow::Borrowed(target),
                path_len: 1,
                authority: None,
            })
        } else {
            Err(Reject::BadRequest("`*` is a target only for OPTIONS"))
        };
    }
    let (authority, origin) = match split_absolute(target) {
        Some((authority, rest)) => (Some(authority), rest),
        None => (None, target),
    };
    if !origin.starts_with('/') {
        return Err(Reject::BadRequest("the target is not a path"));
    }
    let (path, query) = match origin.find('?') {
        Some(i) => origin.split_at(i),
        None => (origin, ""),
    };
    if path.contains('#') || query.contains('#') {
        return Err(Reject::BadRequest("a fragment in the target"));
    }
    let normalised = normalise_path(path)?;
    let path_len = normalised.as_ref().map_or(path.len(), String::len);
    let path_and_query = match (normalised, authority) {
        (None, None) => Cow::Borrowed(origin),
        (None, Some(_)) if query.is_empty() && path.is_empty() => Cow::Borrowed("/"),
        (None, Some(_)) => Cow::Borrowed(origin),
        (Some(mut p), _) => {
            p.push_str(query);
            Cow::Owned(p)
        }
    };
    Ok(Target {
        path_and_query,
        path_len,
        authority,
    })
}

/// `http://authority/rest` → (`authority`, `/rest`); `None` for any other form.
fn split_absolute(target: &str) -> Option<(&str, &str)> {
    let rest = strip_prefix_ignore_case(target, "http://")
        .or_else(|| strip_prefix_ignore_case(target, "https://"))?;
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(end);
    // `http://h?q` has an empty path: RFC 9112 §3.2.2 makes it `/`.
    if path.starts_with('?') {
        return None;
    }
    Some((authority, if path.is_empty() { "/" } else { path }))
}

fn strip_prefix_ignore_case<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &s[prefix.len()..])
}

/// The path with dot segments resolved and slashes merged, or `None` when it is already so.
fn normalise_path(path: &str) -> Result<Option<String>, Reject> {
    let bytes = path.as_bytes();
    let mut encoded_dot = false;
    let mut encoded_slash = false;
    let mut i = 0;
    while let Some(p) = memchr_pct(&bytes[i..]) {
        let at = i + p;
        let hex = bytes.get(at + 1..at + 3).ok_or(Reject::BadRequest(
            "a `%` in the path is not followed by two hex digits",
        ))?;
        let value = hex_pair(hex).ok_or(Reject::BadRequest(
            "a `%` in the path is not followed by two hex digits",
        ))?;
        match value {
            0 => return Err(Reject::BadRequest("an encoded NUL in the path")),
            b'.' => encoded_dot = true,
            b'/' | b'\\' => encoded_slash = true,
            _ => {}
        }
        i = at + 3;
    }
    let decoded;
    let work: &str = if encoded_dot {
        decoded = decode_dots(path);
        &decoded
    } else {
        path
    };
    if encoded_slash && has_dot_segment(&decode_slashes(work)) {
        // `/a%2f..%2fb`: whether `..` climbs depends on who decodes the slash. Refused, as
        // neither reading can be chosen safely for the upstream.
        return Err(Reject::BadRequest("dot segments around an encoded slash"));
    }
    if !encoded_dot && !has_dot_or_empty_segment(path) {
        return Ok(None);
    }
    let mut out: Vec<&str> = Vec::new();
    let segments: Vec<&str> = work[1..].split('/').collect();
    let last = segments.len() - 1;
    for (n, seg) in segments.iter().enumerate() {
        match *seg {
            "" if n != last => {}
            "." => {}
            ".." => {
                if out.pop().is_none() {
                    return Err(Reject::BadRequest("the path climbs above the root"));
                }
            }
            s => out.push(s),
        }
    }
    let mut result = String::with_capacity(work.len());
    for s in &out {
        result.push('/');
        result.push_str(s);
    }
    // A final `.`, `..` or `/` leaves a directory: keep its trailing slash.
    let ends_dir = matches!(segments[last], "" | "." | "..");
    if ends_dir || result.is_empty() {
        result.push('/');
    }
    Ok(Some(result))
}

fn memchr_pct(b: &[u8]) -> Option<usize> {
    b.iter().position(|&c| c == b'%')
}

fn hex_pair(h: &[u8]) -> Option<u8> {
    let d = |c: u8| (c as char).to_digit(16).map(|v| v as u8);
    Some(d(h[0])? * 16 + d(h[1])?)
}

/// Whether `path` has a `.` or `..` segment or an empty one (`//`) before its end.
fn has_dot_or_empty_segment(path: &str) -> bool {
    let segs = path.get(1..).unwrap_or("").split('/');
    let mut segs = segs.peekable();
    while let Some(s) = segs.next() {
        let more = segs.peek().is_some();
        if s == "." || s == ".." || (s.is_empty() && more) {
            return true;
        }
    }
    false
}

/// Whether `path` has a `.` or `..` segment.
fn has_dot_segment(path: &str) -> bool {
    path.split('/').any(|s| s == "." || s == "..")
}

/// `%2e`/`%2E` → `.`; every other escape stays as it is.
fn decode_dots(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    let mut rest = path;
    while let Some(i) = rest.find('%') {
        out.push_str(&rest[..i]);
        let esc = &rest[i..i + 3];
        if esc.eq_ignore_ascii_case("%2e") {
            out.push('.');
        } else {
            out.push_str(esc);
        }
        rest = &rest[i + 3..];
    }
    out.push_str(rest);
    out
}

/// `%2f`/`%5c` → `/`, for the ambiguity check only.
fn decode_slashes(path: &str) -> String {
    let mut out = path.to_string();
    for esc in ["%2f", "%2F", "%5c", "%5C"] {
        out = out.replace(esc, "/");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(method: &str, t: &str) -> Result<(String, Option<String>), Reject> {
        normalise(method, t).map(|t| {
            (
                t.path_and_query.to_string(),
                t.authority.map(str::to_string),
            )
        })
    }

    #[test]
    fn ordinary_paths_are_borrowed() {
        let t = normalise("GET", "/api/users?id=1").unwrap();
        assert!(matches!(t.path_and_query, Cow::Borrowed(_)));
        assert_eq!(t.path(), "/api/users");
    }

    #[test]
    fn dot_segments_and_slashes() {
        let ok = |t: &str, want: &str| assert_eq!(norm("GET", t).unwrap().0, want, "{t}");
        ok("/api/../private", "/private");
        ok("/a/./b", "/a/b");
        ok("/a//b", "/a/b");
        ok("/a/b/..", "/a/");
        ok("/a/%2e%2E/b?x=/../", "/b?x=/../");
        ok("/a/.", "/a/");
        ok("/", "/");
        ok("/a/", "/a/");
        ok("/.hidden/x", "/.hidden/x");
        ok("/a/..b", "/a/..b");
        assert!(norm("GET", "/..").is_err());
        assert!(norm("GET", "/a/../../b").is_err());
        assert!(norm("GET", "/a/%2e%2e/%2e%2e/b").is_err());
        assert!(norm("GET", "/a%2f..%2fb").is_err());
        assert!(norm("GET", "/a%00b").is_err());
        assert!(norm("GET", "/a%zz").is_err());
        assert!(norm("GET", "/a%2").is_err());
        // An encoded slash alone is data, not a separator.
        ok("/a%2fb", "/a%2fb");
    }

    #[test]
    fn forms_of_target() {
        assert_eq!(
            norm("GET", "http://x/private").unwrap(),
            ("/private".into(), Some("x".into()))
        );
        assert_eq!(
            norm("GET", "HTTPS://x:8443").unwrap(),
            ("/".into(), Some("x:8443".into()))
        );
        assert_eq!(
            norm("GET", "http://x/a/../b?q").unwrap(),
            ("/b?q".into(), Some("x".into()))
        );
        assert!(norm("GET", "*").is_err());
        assert_eq!(norm("OPTIONS", "*").unwrap().0, "*");
        assert!(norm("GET", "private").is_err());
        assert!(norm("CONNECT", "x:443").is_err());
        assert!(norm("GET", "/a#frag").is_err());
    }
}
