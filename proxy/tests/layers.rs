//! The crate's layers import only downward: wire < slots < control < statics < http < admin <
//! app, demo. `fd` is a leaf anyone may use; `lib.rs` and `main.rs` wire everything and are
//! exempt. Read from the sources, so that a new upward `use crate::…` fails here before it
//! turns into an import cycle.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Top-level modules, lowest first; modules on one rank may use each other.
const LAYERS: &[&[&str]] = &[
    &["wire"],
    &["slots"],
    &["control"],
    &["statics"],
    &["http"],
    &["admin"],
    &["app", "demo"],
];
/// Modules outside the order: usable from anywhere, using nothing of the crate.
const LEAVES: &[&str] = &["fd"];
/// Files that wire the layers together.
const EXEMPT: &[&str] = &["lib.rs", "main.rs"];

fn rank(module: &str) -> Option<usize> {
    LAYERS.iter().position(|layer| layer.contains(&module))
}

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read proxy/src") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module a file belongs to: `admin/handler.rs` → `admin`, `app.rs` → `app`.
fn module_of(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).expect("file under src");
    let first = rel.components().next().expect("a component");
    let name = first.as_os_str().to_string_lossy();
    name.trim_end_matches(".rs").to_string()
}

/// Top-level modules named by `crate::x` paths in `code`, `use crate::{x, y::z}` included.
/// Items of the crate root (`crate::SlotName`) are not modules and are left out.
fn references(code: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for line in code.lines() {
        let line = line.trim_start();
        if line.starts_with("//") {
            continue;
        }
        let mut rest = line;
        while let Some(at) = rest.find("crate::") {
            let after = &rest[at + "crate::".len()..];
            let names: Vec<&str> = match after.strip_prefix('{') {
                Some(group) => group
                    .split('}')
                    .next()
                    .unwrap_or("")
                    .split(',')
                    .map(str::trim)
                    .collect(),
                None => vec![after],
            };
            for name in names {
                let ident: String = name
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if ident.starts_with(|c: char| c.is_ascii_lowercase()) {
                    found.insert(ident);
                }
            }
            rest = after;
        }
    }
    found
}

/// `(file, module it imports)` for every import that breaks the order.
fn violations(src: &Path) -> Vec<(String, String)> {
    let mut files = Vec::new();
    sources(src, &mut files);
    files.sort();
    let mut bad = Vec::new();
    for file in files {
        let rel = file.strip_prefix(src).expect("under src").to_path_buf();
        if EXEMPT.iter().any(|e| rel == Path::new(e)) {
            continue;
        }
        let module = module_of(src, &file);
        let code = std::fs::read_to_string(&file).expect("read source");
        for used in references(&code) {
            if used == module || LEAVES.contains(&used.as_str()) {
                continue;
            }
            let allowed = match (rank(&module), rank(&used)) {
                // A leaf uses nothing; a module outside the order is a new layer to place.
                (None, _) | (_, None) => false,
                (Some(own), Some(other)) => other <= own,
            };
            if !allowed {
                bad.push((rel.display().to_string(), used));
            }
        }
    }
    bad
}

#[test]
fn every_module_imports_only_its_own_layer_or_lower_ones() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let bad = violations(&src);
    assert!(
        bad.is_empty(),
        "imports against the layer order {LAYERS:?}:\n{}",
        bad.iter()
            .map(|(file, used)| format!("  {file} uses crate::{used}"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[test]
fn references_are_read_from_paths_and_groups() {
    let code = "use crate::slots::routing::Routing;\n\
                use crate::{control::Control, wire};\n\
                // crate::admin in a comment does not count\n\
                let x = crate::fd::duplicate(1);\n\
                use crate::SlotName;\n";
    let found: Vec<String> = references(code).into_iter().collect();
    assert_eq!(found, ["control", "fd", "slots", "wire"]);
}
