//! `cargo fuzz run response`: upstream response heads are written back in a form that parses,
//! with one framing header and no hop-by-hop one; chunked framing does not depend on splits.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| bascule_proxy::wire::invariants::response(data));
