//! The routing snapshot: which slot is active and what each slot is made of.
//!
//! One [`Routing`] value answers every question a request asks; it is immutable, shared by
//! `Arc`, and replaced whole by the control layer. Health results and in-flight
//! counts change without a new snapshot, so they live behind `Arc`s that snapshots share.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use bascule_config::{Route, RouteTarget, UpstreamConfig};
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
    /// With weights, a shared counter walks a cycle of `blue + green` positions: an exact split
    /// with no random numbers and no lock.
    #[inline]
    pub fn pick_slot(&self) -> SlotName {
        match self.weights {
            None => self.active,
            Some([blue, green]) => {
                let total = (blue + green) as usize;
                let n = self.split.fetch_add(1, Ordering::Relaxed) % total;
                if n < blue as usize {
                    SlotName::Blue
                } else {
                    SlotName::Green
                }
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

    /// Whether any member is known healthy.
    pub fn any_healthy(&self) -> bool {
        self.members.iter().any(|m| m.health.is_healthy())
    }
}
