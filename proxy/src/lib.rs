//! Bascule: a blue/green edge reverse proxy on Pingora.
//!
//! The whole routing state lives in one [`routing::Routing`] snapshot behind an `ArcSwap`,
//! owned by [`control::Control`]. A request loads the snapshot once, keeps that `Arc` for its
//! whole life and is counted against the slot that serves it; a flip stores a new snapshot and
//! so never moves a request that has started. See `docs/LIFECYCLE.md`.
//!
//! Modules, by what they own:
//! - [`routing`]: the snapshot, slots, pools and members;
//! - [`control`]: every change to the snapshot (flip, set, weights, reload) and its persistence;
//! - [`state`]: the state file;
//! - [`drain`]: per-slot in-flight counts and their guards;
//! - [`health`]: active health checks;
//! - [`service`]: the Pingora `ProxyHttp` implementation (the request path);
//! - [`admin_service`]: the admin socket's command handler;
//! - [`app`]: wiring of the Pingora server and its services;
//! - [`demo`]: the embedded demo (upstreams and static sites) and a small upstream for tests.

pub mod admin_service;
pub mod app;
pub mod control;
pub mod demo;
pub mod drain;
pub mod fast;
mod fd;
pub mod health;
pub mod metrics;
pub mod routing;
pub mod service;
pub mod state;
pub mod static_files;
pub mod upgraded;

pub use bascule_config::SlotName;
