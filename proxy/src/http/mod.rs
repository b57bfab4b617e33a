//! The request paths: the fast path ([`fast`]) in front of Pingora's full proxy
//! ([`service`]), and the HTTP/2 loop ([`h2`]) in front of the same. All call the same policy
//! for what a request may be and what it becomes.

mod attempts;
mod coalesce;
pub mod edge;
pub mod fast;
pub(crate) mod h2;
pub mod service;
mod upstream;
mod wrap;
