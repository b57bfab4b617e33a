//! Bascule: a blue/green edge reverse proxy on Pingora.
//!
//! The whole routing state lives in one [`slots::routing::Routing`] snapshot behind an `ArcSwap`,
//! owned by [`control::Control`]. A request loads the snapshot once, keeps that `Arc` for its
//! whole life and is counted against the slot that serves it; a flip stores a new snapshot and
//! so never moves a request that has started. See `docs/LIFECYCLE.md`.
//!
//! Modules, by layer (each imports only the ones above it in this list; `tests/layers.rs`
//! checks it):
//! - [`wire`]: HTTP on the wire, knowing nothing of slots (date line, the proxy's own errors);
//! - [`slots`]: what a request reads — the snapshot, slots, pools, members, health records,
//!   in-flight counters, metrics;
//! - [`control`]: every change to the snapshot (flip, set, weights, reload), its persistence,
//!   the health checker, drain deadlines;
//! - [`statics`]: static files;
//! - [`http`]: the request paths — the fast path and the Pingora `ProxyHttp` service;
//! - [`admin`]: the admin socket's command handler and the metrics endpoint;
//! - [`app`]: wiring of the Pingora server and its services;
//! - [`demo`]: the embedded demo (upstreams and static sites) and a small upstream for tests.

pub mod admin;
pub mod app;
pub mod control;
pub mod demo;
mod fd;
pub mod http;
pub mod slots;
pub mod statics;
pub mod wire;

pub use bascule_config::SlotName;
