//! `cargo fuzz run request_head`: a head the request policy accepts is written upstream as a
//! head that parses back into the same request (see `bascule_proxy::wire::invariants`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| bascule_proxy::wire::invariants::request_head(data));
