//! `cargo fuzz run resolve`: whatever path `resolve` accepts stays under the root.
#![no_main]

use std::path::Component;

use bascule_proxy::statics::{is_hashed, resolve};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(path) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(rel) = resolve(path) {
        assert!(rel.is_relative());
        assert!(rel.components().all(|c| matches!(c, Component::Normal(_))));
        let s = rel.to_string_lossy();
        assert!(!s.contains('\0') && !s.contains('\\'));
        let _ = is_hashed(&rel, 8);
    }
});
