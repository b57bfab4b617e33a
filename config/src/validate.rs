//! From the file model to a [`Config`]: defaults filled in, cross-field rules checked.

use std::ops::Range;
use std::path::PathBuf;

use toml::Spanned;

use crate::file::{self, FileConfig};
use crate::*;

/// A rule broken at `span` of the text.
pub(crate) struct Violation {
    pub(crate) span: Range<usize>,
    pub(crate) message: String,
}

fn err<T>(span: Range<usize>, message: impl Into<String>) -> Result<T, Violation> {
    Err(Violation {
        span,
        message: message.into(),
    })
}

pub(crate) fn validate(f: FileConfig) -> Result<Config, Violation> {
    let listen = match f.listen.http {
        Some(addrs) if addrs.get_ref().is_empty() => {
            return err(addrs.span(), "listen.http: give at least one address")
        }
        Some(addrs) => addrs.into_inner(),
        None => vec!["127.0.0.1:8080".parse().expect("literal address")],
    };

    let threads = match f.server.threads {
        Some(t) if *t.get_ref() == 0 => return err(t.span(), "server.threads: must be at least 1"),
        Some(t) => t.into_inner(),
        None => std::thread::available_parallelism().map_or(1, |n| n.get()),
    };
    let slot_header = match f.server.slot_header {
        Some(h) if h.get_ref().is_empty() => None,
        Some(h) => {
            let valid = h
                .get_ref()
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b));
            if !valid {
                return err(
                    h.span(),
                    "server.slot_header: a header name has letters, digits, `-` and `_` only (\"\" turns it off)",
                );
            }
            Some(h.into_inner().to_ascii_lowercase())
        }
        None => Some(DEFAULT_SLOT_HEADER.to_string()),
    };
    let server = ServerConfig {
        threads,
        work_stealing: f.server.work_stealing.unwrap_or(false),
        slot_header,
        shutdown_grace: f.server.shutdown_grace.unwrap_or(DEFAULT_SHUTDOWN_GRACE),
        keepalive_timeout: f
            .server
            .keepalive_timeout
            .unwrap_or(DEFAULT_KEEPALIVE_TIMEOUT),
        park_idle_after: f.server.park_idle_after.unwrap_or(DEFAULT_PARK_IDLE_AFTER),
        fast_path: f.server.fast_path.unwrap_or(true),
    };

    let mode = match f.admin.mode {
        Some(m) if *m.get_ref() > 0o777 => {
            return err(m.span(), "admin.mode: a file mode is at most 0o777")
        }
        Some(m) => m.into_inner(),
        None => DEFAULT_ADMIN_SOCKET_MODE,
    };
    let admin = AdminConfig {
        socket: f
            .admin
            .socket
            .unwrap_or_else(|| PathBuf::from(DEFAULT_ADMIN_SOCKET)),
        mode,
    };

    let blue = slot(f.slots.blue.unwrap_or_default(), "blue")?;
    let green = slot(f.slots.green.unwrap_or_default(), "green")?;

    let upstream = UpstreamConfig {
        connect_timeout: f
            .upstream
            .connect_timeout
            .unwrap_or(DEFAULT_CONNECT_TIMEOUT),
        read_timeout: f.upstream.read_timeout.unwrap_or(DEFAULT_READ_TIMEOUT),
        keepalive_pool: f.upstream.keepalive_pool.unwrap_or(DEFAULT_KEEPALIVE_POOL),
        idle_timeout: f.upstream.idle_timeout.unwrap_or(DEFAULT_IDLE_TIMEOUT),
    };

    let health = health(f.health)?;
    let drain = DrainConfig {
        timeout: f.drain.timeout.unwrap_or(DEFAULT_DRAIN_TIMEOUT),
    };
    let statics = StaticConfig {
        cache_max_file: f
            .statics
            .cache_max_file
            .unwrap_or(DEFAULT_STATIC_CACHE_MAX_FILE),
        hash_min_len: match f.statics.hash_min_len {
            Some(n) if *n.get_ref() < 6 => {
                return err(
                    n.span(),
                    "static.hash_min_len: below 6, ordinary words pass for hashes",
                )
            }
            Some(n) => n.into_inner(),
            None => 8,
        },
    };

    let routes = routes(f.routes, &blue, &green)?;
    let forwarding = crate::edge::forwarding(f.forwarding)?;
    let limits = crate::edge::limits(f.limits)?;

    Ok(Config {
        source: None,
        listen,
        server,
        admin,
        metrics: f.metrics.map(|m| m.listen),
        state_path: f.state.map(|s| s.path),
        default_slot: f.slots.default.unwrap_or(SlotName::Blue),
        blue,
        green,
        upstream,
        health,
        drain,
        statics,
        routes,
        forwarding,
        limits,
    })
}

fn slot(s: file::Slot, name: &str) -> Result<SlotConfig, Violation> {
    let mut upstreams = Vec::with_capacity(s.upstreams.len());
    for u in s.upstreams {
        if let Err(why) = check_upstream(u.get_ref()) {
            return err(u.span(), format!("slots.{name}.upstreams: {why}"));
        }
        upstreams.push(u.into_inner());
    }
    Ok(SlotConfig {
        upstreams,
        version: s.version,
        static_root: s.static_root,
    })
}

/// Checks that `addr` is `host:port` with a usable port; shared with the admin `set` command.
pub fn check_upstream(addr: &str) -> Result<(), String> {
    let Some((host, port)) = addr.rsplit_once(':') else {
        return Err(format!("`{addr}` is not host:port"));
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() || host.contains(['/', ' ']) {
        return Err(format!("`{addr}` has no usable host"));
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(()),
        _ => Err(format!("`{addr}` has no usable port (1-65535)")),
    }
}

fn health(h: file::Health) -> Result<HealthConfig, Violation> {
    let path = match h.path {
        Some(p) if !p.get_ref().starts_with('/') => {
            return err(p.span(), "health.path: must start with `/`")
        }
        Some(p) => p.into_inner(),
        None => DEFAULT_HEALTH_PATH.to_string(),
    };
    let interval = h.interval.unwrap_or(DEFAULT_HEALTH_INTERVAL);
    let timeout = match h.timeout {
        Some(t) if t.get_ref().0 > interval => {
            return err(
                t.span(),
                format!(
                    "health.timeout: must not exceed health.interval ({})",
                    humantime::format_duration(interval)
                ),
            )
        }
        Some(t) => t.into_inner().0,
        None => DEFAULT_HEALTH_TIMEOUT.min(interval),
    };
    let threshold = |t: Option<Spanned<u32>>, key: &str, default| match t {
        Some(t) if *t.get_ref() == 0 => err(t.span(), format!("health.{key}: must be at least 1")),
        Some(t) => Ok(t.into_inner()),
        None => Ok(default),
    };
    Ok(HealthConfig {
        path,
        interval,
        timeout,
        healthy_threshold: threshold(
            h.healthy_threshold,
            "healthy_threshold",
            DEFAULT_HEALTHY_THRESHOLD,
        )?,
        unhealthy_threshold: threshold(
            h.unhealthy_threshold,
            "unhealthy_threshold",
            DEFAULT_UNHEALTHY_THRESHOLD,
        )?,
    })
}

fn routes(
    file_routes: Vec<Spanned<file::Route>>,
    blue: &SlotConfig,
    green: &SlotConfig,
) -> Result<Vec<Route>, Violation> {
    let mut routes: Vec<Route> = Vec::with_capacity(file_routes.len());
    for (i, r) in file_routes.into_iter().enumerate() {
        let r = r.into_inner();
        let prefix = r.prefix.get_ref();
        if !prefix.starts_with('/') {
            return err(
                r.prefix.span(),
                format!("routes[{i}].prefix: must start with `/`"),
            );
        }
        if routes.iter().any(|seen| &seen.prefix == prefix) {
            return err(
                r.prefix.span(),
                format!("routes[{i}].prefix: `{prefix}` is already routed"),
            );
        }
        let to = match *r.to.get_ref() {
            file::Target::Upstream => RouteTarget::Upstream,
            file::Target::Static => {
                if blue.static_root.is_none() && green.static_root.is_none() {
                    return err(
                        r.to.span(),
                        format!("routes[{i}].to: `static` needs a static_root in [slots.blue] or [slots.green]"),
                    );
                }
                RouteTarget::Static
            }
        };
        let spa_fallback = match r.spa_fallback {
            Some(s) if to != RouteTarget::Static => {
                return err(
                    s.span(),
                    format!("routes[{i}].spa_fallback: only a `static` route has a fallback"),
                )
            }
            Some(s) if !s.get_ref().starts_with('/') => {
                return err(
                    s.span(),
                    format!("routes[{i}].spa_fallback: must start with `/`"),
                )
            }
            Some(s) => Some(s.into_inner()),
            None => None,
        };
        routes.push(Route {
            prefix: r.prefix.into_inner(),
            to,
            spa_fallback,
            cache_control: r.cache_control,
        });
    }
    // Longest prefix first, so the first match is the longest.
    routes.sort_by_key(|r| std::cmp::Reverse(r.prefix.len()));
    Ok(routes)
}
