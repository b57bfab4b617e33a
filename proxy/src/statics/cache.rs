//! Hashed assets kept in memory, least recently used first out, bounded by their bytes.
//!
//! Hashed names never change content, so an entry never goes stale; what ends its life is
//! room. Old deploys' assets stop being asked for and fall out, instead of filling the budget
//! for good and keeping every later asset on disk.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use lru::LruCache;
use pingora_http::ResponseHeader;

use super::sealed::Shared;
use super::variant::Encoding;

/// A hashed asset kept in memory: every representation with its header prepared.
pub(super) struct Cached {
    /// Headers and bodies, identity first, then by preference.
    pub(super) reps: Vec<(Encoding, ResponseHeader, Shared)>,
    pub(super) etag_identity: String,
    pub(super) last_modified: String,
}

impl Cached {
    /// Bytes of body it holds, all representations together.
    fn size(&self) -> usize {
        self.reps.iter().map(|(_, _, b)| b.bytes.len()).sum()
    }
}

/// Entries by full path, with their total size kept under a budget.
pub(super) struct AssetCache {
    entries: LruCache<PathBuf, Arc<Cached>>,
    bytes: usize,
    budget: usize,
}

impl AssetCache {
    /// An empty cache holding at most `budget` bytes of bodies.
    pub(super) fn new(budget: usize) -> AssetCache {
        AssetCache {
            entries: LruCache::unbounded(),
            bytes: 0,
            budget,
        }
    }

    /// The entry for `path`, now the most recently used.
    pub(super) fn get(&mut self, path: &Path) -> Option<Arc<Cached>> {
        self.entries.get(path).cloned()
    }

    /// Whether an entry of `size` bytes can be kept at all.
    pub(super) fn fits(&self, size: u64) -> bool {
        size <= self.budget as u64
    }

    /// Keeps `cached` for `path`, dropping the least recently used entries to make room.
    pub(super) fn insert(&mut self, path: PathBuf, cached: Arc<Cached>) {
        let size = cached.size();
        if size > self.budget {
            return;
        }
        if let Some(old) = self.entries.put(path, cached) {
            self.bytes -= old.size();
        }
        self.bytes += size;
        while self.bytes > self.budget {
            match self.entries.pop_lru() {
                Some((_, out)) => self.bytes -= out.size(),
                None => break,
            }
        }
    }

    /// Bytes held now.
    #[cfg(test)]
    pub(super) fn bytes(&self) -> usize {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(len: usize) -> Arc<Cached> {
        let h = ResponseHeader::build(200, None).unwrap();
        Arc::new(Cached {
            reps: vec![(Encoding::Identity, h, Shared::new(vec![0u8; len]))],
            etag_identity: String::new(),
            last_modified: String::new(),
        })
    }

    #[test]
    fn evicts_least_recently_used_to_stay_within_its_bytes() {
        let mut c = AssetCache::new(100);
        c.insert("/a".into(), entry(40));
        c.insert("/b".into(), entry(40));
        assert!(c.get(Path::new("/a")).is_some());
        // Room for c: b, the least recently used, goes.
        c.insert("/c".into(), entry(40));
        assert_eq!(c.bytes(), 80);
        assert!(c.get(Path::new("/b")).is_none());
        assert!(c.get(Path::new("/a")).is_some() && c.get(Path::new("/c")).is_some());
        // Larger than the whole budget: never kept, nothing evicted for it.
        c.insert("/big".into(), entry(101));
        assert!(c.get(Path::new("/big")).is_none());
        assert_eq!(c.bytes(), 80);
        // Replacing an entry counts its new size only.
        c.insert("/a".into(), entry(10));
        assert_eq!(c.bytes(), 50);
    }

    #[test]
    fn a_full_cache_keeps_taking_new_assets() {
        let mut c = AssetCache::new(1000);
        for i in 0..100 {
            c.insert(format!("/old-{i}").into(), entry(100));
        }
        c.insert("/new".into(), entry(100));
        assert!(c.get(Path::new("/new")).is_some());
        assert!(c.bytes() <= 1000);
    }
}
