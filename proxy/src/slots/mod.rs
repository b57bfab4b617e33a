//! What a request reads: the routing snapshot, slots, pools and members, member health
//! records, idle upstream connections, in-flight counters and the metrics registry.
//!
//! The lowest layer: it imports nothing else of the crate (but `fd`). Everything here is data
//! plus the cheap operations the request path performs on it; the services that change it live
//! in [`crate::control`].

pub mod certs;
pub mod choice;
pub mod counters;
pub mod health;
pub(crate) mod idle;
pub mod metrics;
pub mod routing;
pub mod stats;
pub mod upgraded;
