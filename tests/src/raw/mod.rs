//! Raw HTTP/1.1 on both sides of the proxy, for conformance tests: a scripted upstream that logs
//! every byte it receives and answers with exact bytes, a raw client that writes exact bytes and
//! parses whatever comes back, and an nginx reference proxy when nginx is installed.
//!
//! Nothing here normalises or repairs the wire: malformed bytes are recorded as they came, so a
//! test can tell "the proxy rejected it" from "the proxy relayed it".

use std::time::Duration;

mod client;
mod nginx;
mod upstream;

pub use client::{exchange, End, Exchange, RawClient, RawResponse};
pub use nginx::{nginx_bin, Nginx};
pub use upstream::{echo, has_bare_lf, response, show, Action, Received, ScriptedUpstream};

/// Header slots for parsing heads on both sides: more than the 100 response headers the
/// contract lets through.
const MAX_HEADERS: usize = 256;
/// How often blocked reads wake up to look at the stop flag.
const POLL: Duration = Duration::from_millis(50);
/// Longest request head or body the scripted upstream buffers.
const MAX_BUFFER: usize = 4 * 1024 * 1024;
