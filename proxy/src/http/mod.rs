//! The request paths: the fast path ([`fast`]) in front of Pingora's full proxy
//! ([`service`]). Both call the same policy for what a request may be and what it becomes.

pub mod fast;
pub mod service;
