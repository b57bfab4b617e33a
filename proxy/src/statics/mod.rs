//! Static files, the nginx `location /assets/` block done right.
//!
//! - Content-hashed names (`app-3f9a1c2b.js`, `app.3f9a1c2b.js`) are immutable: served with
//!   `Cache-Control: public, max-age=31536000, immutable`, kept in memory (when small, least
//!   recently used out first) with their headers and precompressed siblings prepared once, and
//!   looked up in the other slot's root when missing from the serving one, so pages loaded
//!   before a flip keep working.
//! - Everything else is `no-cache` and re-checked on every request, so a deploy that replaces
//!   `index.html` is seen at once.
//! - Paths are resolved by [`resolve`], which never yields a path outside the root.
//!
//! A hashed asset in memory is answered on the request's own thread. Anything that touches the
//! disk (metadata, symlink checks, opening, filling the cache) runs on Tokio's blocking pool,
//! and bodies are read from disk in chunks there too: a slow disk stalls a blocking thread,
//! never a runtime thread with thousands of connections on it.

use std::fs::{File, Metadata};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use bascule_config::{Route, StaticConfig};
use http::{header, HeaderValue};
use pingora::proxy::Session;
use pingora_error::Result;
use pingora_http::{RequestHeader, ResponseHeader};

use crate::slots::routing::Routing;
use crate::SlotName;

/// `Cache-Control` of content-hashed files.
pub const IMMUTABLE: &str = "public, max-age=31536000, immutable";
/// `Cache-Control` of every other file.
pub const NO_CACHE: &str = "no-cache";
/// Total bytes of hashed assets kept in memory.
const CACHE_BUDGET: usize = 64 * 1024 * 1024;
/// Chunk size when streaming a large file.
const CHUNK: usize = 64 * 1024;

mod cache;
mod path;
mod response;
mod sealed;
mod variant;

use cache::{AssetCache, Cached};
pub use path::{is_hashed, resolve, PathError};
pub(crate) use response::send_now;
use response::Body;
pub use response::StaticResponse;
use variant::{accepted_encodings, Encoding};

/// One representation of a file on disk: identity or a precompressed sibling.
struct Rep {
    path: PathBuf,
    meta: Metadata,
    encoding: Encoding,
}

/// The static file server of one proxy.
pub struct StaticFiles {
    max_file: u64,
    hash_min_len: usize,
    cache: Arc<Mutex<AssetCache>>,
}

/// What of a request decides its static response, owned so that it can go to the blocking
/// pool with the lookup.
#[derive(Debug, Clone, Default)]
struct Conditions {
    if_none_match: Option<HeaderValue>,
    if_modified_since: Option<HeaderValue>,
    range: Option<HeaderValue>,
    accept_encoding: Option<HeaderValue>,
}

impl Conditions {
    fn of(req: &RequestHeader) -> Conditions {
        let get = |name| req.headers.get(name).cloned();
        Conditions {
            if_none_match: get(header::IF_NONE_MATCH),
            if_modified_since: get(header::IF_MODIFIED_SINCE),
            range: get(header::RANGE),
            accept_encoding: get(header::ACCEPT_ENCODING),
        }
    }

    /// Which of `reps` (identity first) to send: identity for a range request or when it is
    /// the only one, else the first precompressed sibling the client accepts.
    fn choose<'a, T>(&self, reps: &'a [T], encoding: impl Fn(&T) -> Encoding) -> &'a T {
        if self.range.is_some() || reps.len() == 1 {
            return &reps[0];
        }
        let accepted = accepted_encodings(self.accept_encoding.as_ref().map(|v| v.as_bytes()));
        reps.iter()
            .skip(1)
            .find(|r| accepted.contains(encoding(r)))
            .unwrap_or(&reps[0])
    }

    /// Whether the client's copy (by `If-None-Match`, else `If-Modified-Since`) is current.
    fn not_modified(&self, etag: &str, last_modified: &str) -> bool {
        if let Some(inm) = &self.if_none_match {
            return none_match(inm.as_bytes(), etag);
        }
        let Some(ims) = self
            .if_modified_since
            .as_ref()
            .and_then(|v| v.to_str().ok())
            .and_then(|v| httpdate::parse_http_date(v).ok())
        else {
            return false;
        };
        httpdate::parse_http_date(last_modified).is_ok_and(|lm: SystemTime| lm <= ims)
    }
}

/// A static answer found without the disk, or what the disk lookup starts from.
enum Found {
    Ready(StaticResponse),
    Disk(Pending),
}

/// What a static request's disk lookup starts from.
struct Pending {
    rel: PathBuf,
    hashed: bool,
    cond: Conditions,
}

/// One static request's disk work, owned, for the blocking pool.
struct Lookup {
    roots: Vec<PathBuf>,
    rel: PathBuf,
    hashed: bool,
    /// The route's `spa_fallback` in the serving slot's root, for a missing non-hashed path.
    fallback: Option<(PathBuf, PathBuf)>,
    cache_control: String,
    cond: Conditions,
    max_file: u64,
    cache: Arc<Mutex<AssetCache>>,
}

fn last_modified(meta: &Metadata) -> String {
    meta.modified()
        .map(httpdate::fmt_http_date)
        .unwrap_or_default()
}

fn etag(meta: &Metadata, encoding: Encoding) -> String {
    let mtime = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    format!("\"{:x}-{:x}{}\"", meta.len(), mtime, encoding.etag_suffix())
}

fn content_type(path: &Path) -> String {
    let mime = mime_guess::from_path(path).first_or_octet_stream();
    if mime.type_() == "text" || mime.subtype() == "javascript" || mime.subtype() == "json" {
        format!("{mime}; charset=utf-8")
    } else {
        mime.to_string()
    }
}

/// Whether `If-None-Match` matches `etag` (weak comparison, as RFC 9110 asks for this header).
fn none_match(value: &[u8], etag: &str) -> bool {
    let value = String::from_utf8_lossy(value);
    let bare = etag.trim_start_matches("W/");
    value
        .split(',')
        .map(str::trim)
        .any(|t| t == "*" || t.trim_start_matches("W/") == bare)
}

impl StaticFiles {
    /// A file server with the `[static]` settings.
    pub fn new(cfg: &StaticConfig) -> StaticFiles {
        StaticFiles {
            max_file: cfg.cache_max_file,
            hash_min_len: cfg.hash_min_len,
            cache: Arc::new(Mutex::new(AssetCache::new(CACHE_BUDGET))),
        }
    }

    /// Answers a request on a static route from `slot`'s root (or the other slot's, for a
    /// hashed file missing from it).
    pub async fn respond(
        &self,
        session: &Session,
        routing: &Routing,
        slot: SlotName,
        route: &Route,
    ) -> Result<StaticResponse> {
        Ok(self
            .answer(session.req_header(), routing, slot, route)
            .await)
    }

    /// The response to `req`, computed without writing anything.
    pub async fn answer(
        &self,
        req: &RequestHeader,
        routing: &Routing,
        slot: SlotName,
        route: &Route,
    ) -> StaticResponse {
        let Pending { rel, hashed, cond } = match self.immediate(req, routing, slot) {
            Found::Ready(resp) => return resp,
            Found::Disk(pending) => pending,
        };
        let own_root = routing.slot(slot).static_root.as_ref();
        let other_root = routing.slot(slot.other()).static_root.as_ref();
        let own = own_root.cloned();
        let roots: Vec<PathBuf> = if hashed {
            own.iter().chain(other_root).cloned().collect()
        } else {
            own.iter().cloned().collect()
        };
        let fallback = match (&route.spa_fallback, &own) {
            (Some(page), Some(root)) if !hashed => {
                resolve(page).ok().map(|rel| (root.clone(), rel))
            }
            _ => None,
        };
        let lookup = Lookup {
            roots,
            rel,
            hashed,
            fallback,
            cache_control: route.cache_control.as_deref().unwrap_or(NO_CACHE).into(),
            cond,
            max_file: self.max_file,
            cache: self.cache.clone(),
        };
        tokio::task::spawn_blocking(move || lookup.run())
            .await
            .unwrap_or_else(|_| StaticResponse::error(500, "internal error\n"))
    }

    /// The response to `req` when it needs no disk access (a refused method or path, a hashed
    /// asset kept in memory); `None` when only [`StaticFiles::answer`] can tell.
    pub fn answer_now(
        &self,
        req: &RequestHeader,
        routing: &Routing,
        slot: SlotName,
    ) -> Option<StaticResponse> {
        match self.immediate(req, routing, slot) {
            Found::Ready(resp) => Some(resp),
            Found::Disk(_) => None,
        }
    }

    /// The response found without the disk, or what the disk lookup starts from.
    fn immediate(&self, req: &RequestHeader, routing: &Routing, slot: SlotName) -> Found {
        if req.method != http::Method::GET && req.method != http::Method::HEAD {
            let mut r = StaticResponse::error(405, "method not allowed\n");
            let _ = r.header.insert_header(header::ALLOW, "GET, HEAD");
            return Found::Ready(r);
        }
        let rel = match resolve(req.uri.path()) {
            Ok(rel) => rel,
            Err(PathError::BadRequest) => {
                return Found::Ready(StaticResponse::error(400, "bad request\n"))
            }
            Err(PathError::NotFound) => {
                return Found::Ready(StaticResponse::error(404, "not found\n"))
            }
        };
        let hashed = is_hashed(&rel, self.hash_min_len);
        let cond = Conditions::of(req);
        if hashed {
            // A hashed asset kept in memory is answered here, before anything is copied.
            let own_root = routing.slot(slot).static_root.as_ref();
            let other_root = routing.slot(slot.other()).static_root.as_ref();
            for root in own_root.into_iter().chain(other_root) {
                if let Some(cached) = self.cached(&root.join(&rel)) {
                    return Found::Ready(cached_response(&cond, &cached));
                }
            }
        }
        Found::Disk(Pending { rel, hashed, cond })
    }

    fn cached(&self, full: &Path) -> Option<Arc<Cached>> {
        self.cache.lock().ok()?.get(full)
    }
}

impl Lookup {
    /// Blocking: finds the file, under each root in turn, then the fallback page.
    fn run(self) -> StaticResponse {
        for root in &self.roots {
            if let Some(resp) = self.serve_from(root, &self.rel, self.hashed) {
                return resp;
            }
        }
        if let Some((root, page)) = &self.fallback {
            if let Some(resp) = self.serve_from(root, page, false) {
                return resp;
            }
        }
        StaticResponse::error(404, "not found\n")
    }

    fn serve_from(&self, root: &Path, rel: &Path, hashed: bool) -> Option<StaticResponse> {
        let full = root.join(rel);
        let meta = std::fs::metadata(&full).ok()?;
        let full = if meta.is_dir() {
            let index = full.join("index.html");
            if !std::fs::metadata(&index)
                .map(|m| m.is_file())
                .unwrap_or(false)
            {
                return None;
            }
            index
        } else if meta.is_file() {
            full
        } else {
            return None;
        };
        if !inside(root, &full) {
            // A symlink out of the root: refused outright, never a fallback page.
            return Some(StaticResponse::error(404, "not found\n"));
        }
        let cache_control = if hashed {
            IMMUTABLE
        } else {
            &self.cache_control
        };
        let reps = representations(&full);
        if hashed && reps[0].meta.len() <= self.max_file {
            if let Some(cached) = self.fill_cache(&full, &reps, cache_control) {
                return Some(cached_response(&self.cond, &cached));
            }
        }
        Some(from_disk(&self.cond, &full, reps, cache_control))
    }

    fn fill_cache(&self, full: &Path, reps: &[Rep], cache_control: &str) -> Option<Arc<Cached>> {
        let total: u64 = reps.iter().map(|r| r.meta.len()).sum();
        if !self.cache.lock().ok()?.fits(total) {
            return None;
        }
        let vary = reps.len() > 1;
        let last_modified = last_modified(&reps[0].meta);
        let ctype = content_type(full);
        let mut out = Vec::with_capacity(reps.len());
        for rep in reps {
            let body = sealed::Shared::new(std::fs::read(&rep.path).ok()?);
            let h = header_for(
                200,
                &ctype,
                body.bytes.len() as u64,
                &etag(&rep.meta, rep.encoding),
                &last_modified,
                cache_control,
                rep.encoding,
                vary,
            );
            out.push((rep.encoding, h, body));
        }
        let cached = Arc::new(Cached {
            etag_identity: etag(&reps[0].meta, Encoding::Identity),
            reps: out,
            last_modified,
        });
        if let Ok(mut cache) = self.cache.lock() {
            cache.insert(full.to_path_buf(), cached.clone());
        }
        Some(cached)
    }
}

fn cached_response(cond: &Conditions, c: &Cached) -> StaticResponse {
    let (enc, h, body) = cond.choose(&c.reps, |r| r.0);
    let etag = h
        .headers
        .get(header::ETAG)
        .and_then(|v| v.to_str().ok())
        .unwrap_or(&c.etag_identity);
    if cond.not_modified(etag, &c.last_modified) {
        return StaticResponse::empty(not_modified_header(h));
    }
    if let (Some(range), Encoding::Identity) = (&cond.range, enc) {
        return ranged(range.as_bytes(), h, body.bytes.len() as u64, |off, len| {
            Body::Bytes(body.bytes.slice(off as usize..(off + len) as usize))
        });
    }
    StaticResponse {
        header: h.clone(),
        body: Body::Cached(body.clone()),
    }
}

fn representations(full: &Path) -> Vec<Rep> {
    let mut reps = Vec::with_capacity(3);
    if let Ok(meta) = std::fs::metadata(full) {
        reps.push(Rep {
            path: full.to_path_buf(),
            meta,
            encoding: Encoding::Identity,
        });
    }
    for enc in Encoding::PRECOMPRESSED {
        let mut p = full.as_os_str().to_owned();
        p.push(enc.file_suffix());
        let p = PathBuf::from(p);
        if let Ok(meta) = std::fs::metadata(&p) {
            if meta.is_file() {
                reps.push(Rep {
                    path: p,
                    meta,
                    encoding: enc,
                });
            }
        }
    }
    reps
}

#[allow(clippy::too_many_arguments)]
fn header_for(
    code: u16,
    ctype: &str,
    len: u64,
    etag: &str,
    last_modified: &str,
    cache_control: &str,
    enc: Encoding,
    vary: bool,
) -> ResponseHeader {
    let mut h = ResponseHeader::build(code, Some(10)).expect("valid status");
    let _ = h.insert_header(header::CONTENT_TYPE, ctype);
    let _ = h.insert_header(header::CONTENT_LENGTH, len);
    let _ = h.insert_header(header::ETAG, etag);
    if !last_modified.is_empty() {
        let _ = h.insert_header(header::LAST_MODIFIED, last_modified);
    }
    let _ = h.insert_header(header::CACHE_CONTROL, cache_control);
    let _ = h.insert_header(header::ACCEPT_RANGES, "bytes");
    if let Some(name) = enc.content_encoding() {
        let _ = h.insert_header(header::CONTENT_ENCODING, name);
    }
    if vary {
        let _ = h.insert_header(header::VARY, "Accept-Encoding");
    }
    h
}

fn not_modified_header(full: &ResponseHeader) -> ResponseHeader {
    let mut h = ResponseHeader::build(304, Some(6)).expect("valid status");
    for name in [
        header::ETAG,
        header::LAST_MODIFIED,
        header::CACHE_CONTROL,
        header::VARY,
        header::CONTENT_ENCODING,
    ] {
        if let Some(v) = full.headers.get(&name) {
            let _ = h.insert_header(name, v.clone());
        }
    }
    h
}

/// Applies a `Range` header to a full response of `len` bytes.
fn ranged(
    range: &[u8],
    full: &ResponseHeader,
    len: u64,
    body: impl FnOnce(u64, u64) -> Body,
) -> StaticResponse {
    match variant::parse_range(range, len) {
        variant::Range::Ignore => StaticResponse {
            header: full.clone(),
            body: body(0, len),
        },
        variant::Range::Unsatisfiable => {
            let mut r = StaticResponse::error(416, "range not satisfiable\n");
            let _ = r
                .header
                .insert_header(header::CONTENT_RANGE, format!("bytes */{len}"));
            r
        }
        variant::Range::Bytes(start, end) => {
            let mut h = full.clone();
            h.set_status(206).expect("valid status");
            let _ = h.insert_header(header::CONTENT_LENGTH, end - start + 1);
            let _ = h.insert_header(header::CONTENT_RANGE, format!("bytes {start}-{end}/{len}"));
            StaticResponse {
                header: h,
                body: body(start, end - start + 1),
            }
        }
    }
}

fn from_disk(
    cond: &Conditions,
    full: &Path,
    reps: Vec<Rep>,
    cache_control: &str,
) -> StaticResponse {
    let vary = reps.len() > 1;
    let rep = cond.choose(&reps, |r| r.encoding);
    let last_modified = last_modified(&reps[0].meta);
    let tag = etag(&rep.meta, rep.encoding);
    let h = header_for(
        200,
        &content_type(full),
        rep.meta.len(),
        &tag,
        &last_modified,
        cache_control,
        rep.encoding,
        vary,
    );
    if cond.not_modified(&tag, &last_modified) {
        return StaticResponse::empty(not_modified_header(&h));
    }
    let Ok(file) = File::open(&rep.path) else {
        return StaticResponse::error(404, "not found\n");
    };
    let len = rep.meta.len();
    if let Some(range) = &cond.range {
        return ranged(range.as_bytes(), &h, len, |offset, len| Body::File {
            file,
            offset,
            len,
        });
    }
    StaticResponse {
        header: h,
        body: Body::File {
            file,
            offset: 0,
            len,
        },
    }
}

/// Whether `full`, with symlinks resolved, is still under `root`.
fn inside(root: &Path, full: &Path) -> bool {
    match (root.canonicalize(), full.canonicalize()) {
        (Ok(root), Ok(full)) => full.starts_with(root),
        _ => false,
    }
}
