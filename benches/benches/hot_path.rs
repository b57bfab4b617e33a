//! Micro-benchmarks of the request path's own pieces: the routing snapshot (load, slot pick,
//! route match, member pick) and static path handling (resolution, hashed-name rule).
// criterion_main! generates an undocumented `main`.
#![allow(missing_docs)]

use std::path::Path;

use bascule_proxy::control::Control;
use bascule_proxy::slots::metrics::Metrics;
use bascule_proxy::statics::{is_hashed, resolve};
use criterion::{black_box, criterion_group, criterion_main, Criterion};

const CONFIG: &str = r#"
[slots.blue]
upstreams = ["127.0.0.1:3001", "127.0.0.1:3002"]
static_root = "/tmp"
[slots.green]
upstreams = ["127.0.0.1:3003"]
[[routes]]
prefix = "/api/"
to = "upstream"
[[routes]]
prefix = "/assets/"
to = "static"
[[routes]]
prefix = "/"
to = "static"
spa_fallback = "/index.html"
"#;

fn routing(c: &mut Criterion) {
    let config = bascule_config::parse(CONFIG, "bench.toml").expect("valid config");
    let (control, _) = Control::new(config, Metrics::new()).expect("control");
    c.bench_function("snapshot load + slot + route + member", |b| {
        b.iter(|| {
            let routing = control.load();
            let slot = routing.pick_slot();
            let target = routing.target(black_box("/api/users/42")).0;
            let member = routing.slot(slot).pool.pick(0);
            black_box((target, member))
        })
    });
    c.bench_function("in-flight guard enter + drop", |b| {
        let routing = control.load();
        b.iter(|| {
            drop(black_box(
                routing.counters.enter(bascule_proxy::SlotName::Blue),
            ))
        })
    });
}

fn statics(c: &mut Criterion) {
    c.bench_function("resolve /assets/app-3f9a1c2b.js", |b| {
        b.iter(|| resolve(black_box("/assets/app-3f9a1c2b.js")))
    });
    c.bench_function("resolve with escapes", |b| {
        b.iter(|| resolve(black_box("/assets/a%20b/..%2f/x.js")))
    });
    c.bench_function("is_hashed", |b| {
        b.iter(|| is_hashed(black_box(Path::new("assets/index-BxSD5hF2.js")), 8))
    });
}

criterion_group!(benches, routing, statics);
criterion_main!(benches);
