//! Harness for end-to-end tests: the real `bascule` binary, real upstreams, real sockets,
//! loopback only, ephemeral ports, deadlines instead of sleeps.

pub mod clients;
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

/// Whether `id` is one the proxy made (`[request_id]`): 32 lowercase hex characters.
pub fn is_made_id(id: &str) -> bool {
    id.len() == 32
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// A header value as paths compare it: a request id the proxy made differs per request, so it
/// reads `<made id>`; any other value is itself.
pub fn comparable_value(name: &str, value: &str) -> String {
    if name.eq_ignore_ascii_case("x-request-id") && is_made_id(value.trim()) {
        "<made id>".into()
    } else {
        value.to_string()
    }
}

/// Every value of header `name` (case-insensitive) among `headers` (names lower-cased).
pub fn header_values<'a>(headers: &'a [(String, String)], name: &str) -> Vec<&'a str> {
    let name = name.to_ascii_lowercase();
    headers
        .iter()
        .filter(|(k, _)| *k == name)
        .map(|(_, v)| v.as_str())
        .collect()
}

/// Descriptors process `pid` holds for connected sockets on its local `port` (the clients a
/// proxy accepted there): its own connections to upstreams, health checks and `/metrics` come
/// and go beside them and are not counted.
pub fn client_sockets(pid: u32, port: u16) -> usize {
    let port = format!(":{port:04X}");
    // `sl local rem st tx:rx tr:when retr uid timeout inode …`
    let mut inodes = std::collections::HashSet::new();
    for table in ["tcp", "tcp6"] {
        let text = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")).unwrap_or_default();
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            // Listening sockets (state 0A) are the proxy's own, not a client's.
            if f.len() > 9 && f[1].ends_with(&port) && f[3] != "0A" {
                inodes.insert(format!("socket:[{}]", f[9]));
            }
        }
    }
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
                .filter(|l| inodes.contains(&*l.to_string_lossy()))
                .count()
        })
        .unwrap_or(0)
}
