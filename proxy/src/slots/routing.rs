//! The routing snapshot: which slot is active and what each slot is made of.
//!
//! One [`Routing`] value answers every question a request asks; it is immutable, shared by
//! `Arc`, and replaced whole by the control layer. Health results and in-flight
//! counts change without a new snapshot, so they live behind `Arc`s that snapshots share.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bascule_config::{OutlierConfig, Route, RouteTarget, UpstreamConfig};
use pingora_core::upstreams::peer::HttpPeer;

use crate::slots::counters::SlotCounters;
use crate::slots::health::MemberHealth;
use crate::slots::idle::IdleConns;
use crate::SlotName;

/// Everything a request needs to be routed, frozen at one generation.
#[derive(Debug)]
pub struct Routing {
    /// Bumped by every change.
    pub generation: u64,
    /// The slot new requests go to (by weight when `weights` is set).
    pub active: SlotName,
    /// The slot that was active before the last flip.
    pub previous: Option<SlotName>,
    /// When the last flip happened.
    pub last_switch: Option<SystemTime>,
    /// Canary split `[blue, green]`; `None` sends everything to `active`.
    pub weights: Option<[u32; 2]>,
    /// Both slots, indexed by [`SlotName::index`].
    pub slots: [Arc<Slot>; 2],
    /// Routes, longest prefix first.
    pub routes: Arc<[Route]>,
    /// In-flight counters, shared by all snapshots.
    pub counters: Arc<SlotCounters>,
    /// Round-robin position of the weighted split, shared by all snapshots.
    pub split: Arc<AtomicUsize>,
    /// The last automatic rollback, if there has been one.
    pub last_rollback: Option<Arc<RollbackRecord>>,
}

/// An automatic rollback: when, between which slots, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct RollbackRecord {
    /// When it flipped back.
    pub at: SystemTime,
    /// The slot left (the one that answered too many 5xx).
    pub from: SlotName,
    /// The slot flipped back to.
    pub to: SlotName,
    /// Why, as `5xx 47/50 = 94% > 5%`.
    pub reason: String,
}

impl Routing {
    /// One slot of this snapshot.
    pub fn slot(&self, name: SlotName) -> &Arc<Slot> {
        &self.slots[name.index()]
    }

    /// The slot a new request goes to.
    ///
    /// With weights, a shared counter walks a cycle of `blue + green` positions and green takes
    /// the positions where its running share crosses a whole request (smooth weighted
    /// round-robin, as nginx interleaves): 50/50 alternates, 90/10 sends every tenth request to
    /// green. Exact over each cycle, with no random numbers and no lock.
    #[inline]
    pub fn pick_slot(&self) -> SlotName {
        match self.weights {
            None => self.active,
            Some(w) => {
                split_at(w, self.split.fetch_add(1, Ordering::Relaxed)).unwrap_or(self.active)
            }
        }
    }

    /// Whether new requests may go to `slot` (active, or weighted above zero).
    #[inline]
    pub fn takes_traffic(&self, slot: SlotName) -> bool {
        match self.weights {
            Some(w) => w[slot.index()] > 0,
            None => self.active == slot,
        }
    }

    /// The route for `path`: the longest matching prefix, if any.
    #[inline]
    pub fn route(&self, path: &str) -> Option<&Route> {
        self.route_index(path).map(|i| &self.routes[i])
    }

    /// The index in [`Self::routes`] of the route for `path`, if any.
    #[inline]
    pub fn route_index(&self, path: &str) -> Option<usize> {
        self.routes.iter().position(|r| path.starts_with(&r.prefix))
    }

    /// Where `path` goes: upstream unless a static route matches.
    #[inline]
    pub fn target(&self, path: &str) -> (RouteTarget, Option<&Route>) {
        match self.route(path) {
            Some(r) => (r.to, Some(r)),
            None => (RouteTarget::Upstream, None),
        }
    }
}

/// The slot at position `n` of the weighted cycle, `None` for a split with no weight at all.
///
/// In 64-bit arithmetic: with weights of any `u32` size nothing here can overflow or divide by
/// zero, whatever reached the snapshot.
#[inline]
fn split_at([blue, green]: [u32; 2], n: usize) -> Option<SlotName> {
    let total = u64::from(blue) + u64::from(green);
    if total == 0 {
        return None;
    }
    let pos = n as u64 % total;
    let green = u128::from(green);
    let (pos, total) = (u128::from(pos), u128::from(total));
    let crossed = (pos + 1) * green / total > pos * green / total;
    Some(if crossed {
        SlotName::Green
    } else {
        SlotName::Blue
    })
}

/// One slot: a version label, an upstream pool and a static root.
#[derive(Debug)]
pub struct Slot {
    /// Blue or green.
    pub name: SlotName,
    /// Version label, for status.
    pub version: Option<String>,
    /// Upstream members.
    pub pool: Pool,
    /// Root of the slot's static files.
    pub static_root: Option<PathBuf>,
}

impl Slot {
    /// Builds a slot; members whose address appears in `known` keep their health record.
    pub fn build(
        name: SlotName,
        upstreams: &[String],
        version: Option<String>,
        static_root: Option<PathBuf>,
        opts: &UpstreamConfig,
        known: &[&Pool],
    ) -> Result<Slot, PoolError> {
        Ok(Slot {
            name,
            version,
            pool: Pool::build(upstreams, opts, known)?,
            static_root,
        })
    }

    /// The same slot with one part replaced.
    pub fn with(
        &self,
        upstreams: Option<Pool>,
        version: Option<Option<String>>,
        static_root: Option<Option<PathBuf>>,
    ) -> Slot {
        Slot {
            name: self.name,
            version: version.unwrap_or_else(|| self.version.clone()),
            pool: upstreams.unwrap_or_else(|| self.pool.clone()),
            static_root: static_root.unwrap_or_else(|| self.static_root.clone()),
        }
    }
}

/// Why a pool could not be built from its addresses.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// The name did not resolve.
    #[error("{address}: cannot resolve: {source}")]
    Resolve {
        /// The address as given.
        address: String,
        /// What the resolver said.
        source: std::io::Error,
    },
    /// The name resolved to nothing.
    #[error("{0}: resolves to no address")]
    NoAddress(String),
}

/// The upstream members of one slot, picked round-robin among the healthy ones.
#[derive(Debug)]
pub struct Pool {
    members: Arc<[Member]>,
    next: AtomicUsize,
}

impl Clone for Pool {
    fn clone(&self) -> Self {
        Pool {
            members: self.members.clone(),
            next: AtomicUsize::new(self.next.load(Ordering::Relaxed)),
        }
    }
}

/// One upstream server.
#[derive(Debug)]
pub struct Member {
    /// The address as configured (`host:port`).
    pub address: String,
    /// The resolved address.
    pub socket: SocketAddr,
    /// Prepared once: cloned per request instead of built.
    pub peer: HttpPeer,
    /// Health record, shared with snapshots that hold the same address.
    pub health: Arc<MemberHealth>,
    /// Idle keep-alive connections of the fast path, shared like `health`.
    pub idle: Arc<IdleConns>,
}

impl Pool {
    /// Resolves `upstreams` and prepares a peer for each.
    pub fn build(
        upstreams: &[String],
        opts: &UpstreamConfig,
        known: &[&Pool],
    ) -> Result<Pool, PoolError> {
        let mut members = Vec::with_capacity(upstreams.len());
        for address in upstreams {
            let socket = address
                .to_socket_addrs()
                .map_err(|source| PoolError::Resolve {
                    address: address.clone(),
                    source,
                })?
                .next()
                .ok_or_else(|| PoolError::NoAddress(address.clone()))?;
            let mut peer = HttpPeer::new(socket, false, String::new());
            peer.options.connection_timeout = Some(opts.connect_timeout);
            peer.options.read_timeout = Some(opts.read_timeout);
            peer.options.write_timeout = Some(opts.read_timeout);
            peer.options.idle_timeout = Some(opts.idle_timeout);
            let same = known
                .iter()
                .flat_map(|p| p.members.iter())
                .find(|m| m.address == *address);
            members.push(Member {
                address: address.clone(),
                socket,
                peer,
                health: same.map(|m| m.health.clone()).unwrap_or_default(),
                idle: same.map(|m| m.idle.clone()).unwrap_or_default(),
            });
        }
        Ok(Pool {
            members: members.into(),
            next: AtomicUsize::new(0),
        })
    }

    /// The members, in configured order.
    pub fn members(&self) -> &[Member] {
        &self.members
    }

    /// The addresses, in configured order.
    pub fn addresses(&self) -> Vec<String> {
        self.members.iter().map(|m| m.address.clone()).collect()
    }

    /// Next member round-robin, skipping unhealthy ones and those in `skip` (bit `i` for
    /// member `i`: members that failed this request).
    ///
    /// Returns `None` only when no member may take traffic.
    #[inline]
    pub fn pick(&self, skip: u64) -> Option<usize> {
        let n = self.members.len();
        let usable =
            |i: usize| (i >= 64 || skip & (1 << i) == 0) && self.members[i].health.usable();
        if n == 1 {
            return usable(0).then_some(0);
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        (0..n).map(|i| (start + i) % n).find(|&i| usable(i))
    }

    /// Judges member `i` by one request's outcome under `[outlier]`: the failure that makes
    /// `consecutive_failures` in a row ejects it, unless `max_ejected_percent` of the pool
    /// would then be out. Returns how long it is out for, when it was ejected now.
    pub(crate) fn observe(&self, i: usize, failed: bool, cfg: &OutlierConfig) -> Option<Duration> {
        let m = self.members.get(i)?;
        if !failed {
            m.health.request_passed(cfg);
            return None;
        }
        if m.health.request_failed() < cfg.consecutive_failures || m.health.ejected() {
            return None;
        }
        let out = self.members.iter().filter(|m| m.health.ejected()).count();
        let cap = cfg.max_ejected_percent as usize * self.members.len();
        if (out + 1) * 100 > cap {
            return None;
        }
        Some(m.health.eject(cfg))
    }

    /// Whether any member is known healthy.
    pub fn any_healthy(&self) -> bool {
        self.members.iter().any(|m| m.health.is_healthy())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(w: [u32; 2], n: usize) -> String {
        (0..n)
            .map(|i| match split_at(w, i) {
                Some(SlotName::Blue) => 'b',
                Some(SlotName::Green) => 'g',
                None => '-',
            })
            .collect()
    }

    #[test]
    fn split_interleaves_by_weight() {
        assert_eq!(run([50, 50], 8), "bgbgbgbg");
        assert_eq!(run([1, 1], 4), "bgbg");
        assert_eq!(run([90, 10], 20), "bbbbbbbbbgbbbbbbbbbg");
        assert_eq!(run([100, 0], 5), "bbbbb");
        assert_eq!(run([0, 100], 5), "ggggg");
        assert_eq!(run([0, 0], 2), "--");
        // Never in blocks: 75/25 has no two greens in a row and no four blues.
        let s = run([75, 25], 400);
        assert!(!s.contains("gg") && !s.contains("bbbb"), "{s}");
        assert_eq!(s.matches('g').count(), 100);
    }

    #[test]
    fn split_cannot_panic_on_any_weights() {
        for w in [[u32::MAX, 1], [u32::MAX, u32::MAX], [1, u32::MAX], [0, 0]] {
            for n in [0, 1, usize::MAX - 1, usize::MAX] {
                let _ = split_at(w, n);
            }
        }
        assert_eq!(split_at([u32::MAX, 1], 0), Some(SlotName::Blue));
    }
}
