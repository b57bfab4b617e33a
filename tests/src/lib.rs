//! Harness for end-to-end tests: the real `bascule` binary, real upstreams, real sockets,
//! loopback only, ephemeral ports, deadlines instead of sleeps.

pub mod etcd;
pub mod h2;
pub mod h2load;
pub mod http;
mod mode;
mod proxy;
pub mod raw;
pub mod tls;
pub mod ws;

pub use bascule_proxy::demo::Upstream;
pub use bascule_proxy::SlotName;
pub use mode::{Mode, MODES, PATHS};
pub use proxy::{
    bascule_bin, free_addr, scripted_slots, two_slots, wait_until, Proxy, ProxyConfig,
};

/// The sum of `NAME{LABELS} VALUE` lines of a metrics text whose LABELS contain every one of
/// `labels` (`"\"tls\""`, `slot="blue"`…).
pub fn counter(text: &str, name: &str, labels: &[&str]) -> u64 {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .filter(|l| labels.iter().all(|x| l.contains(x)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}
