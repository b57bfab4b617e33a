//! From the file model to a [`Config`]: defaults filled in, cross-field rules checked.

use std::ops::Range;
use std::path::PathBuf;
use std::time::Duration;

use toml::Spanned;

use crate::file::{self, FileConfig, HumanDuration};
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

/// `base`: the config file's folder, against which relative certificate paths resolve.
pub(crate) fn validate(f: FileConfig, base: &std::path::Path) -> Result<Config, Violation> {
    let has_https = f
        .listen
        .https
        .as_ref()
        .is_some_and(|h| !h.get_ref().is_empty());
    let listen = match f.listen.http {
        Some(addrs) if addrs.get_ref().is_empty() && !has_https => {
            return err(addrs.span(), "listen.http: give at least one address")
        }
        Some(addrs) => addrs.into_inner(),
        // An https-only edge listens on no plain port unless told to.
        None if has_https => Vec::new(),
        None => vec!["127.0.0.1:8080".parse().expect("literal address")],
    };
    let tls = crate::tls::tls(f.tls, &f.listen.https, base)?;
    let https = f.listen.https.map(Spanned::into_inner).unwrap_or_default();
    let redirect_http = f.listen.redirect_http.unwrap_or(false);

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
    let keepalive_timeout = duration(
        f.server.keepalive_timeout,
        "server.keepalive_timeout",
        DEFAULT_KEEPALIVE_TIMEOUT,
    )?;
    let park_idle_after = match f.server.park_idle_after {
        // Parking waits for a connection idle this long, and the keep-alive timeout closes it
        // first: the parking would silently never happen.
        Some(p) if p.get_ref().0 >= keepalive_timeout => {
            return err(
                p.span(),
                format!(
                    "server.park_idle_after: must be below server.keepalive_timeout ({})",
                    humantime::format_duration(keepalive_timeout)
                ),
            )
        }
        p => duration(p, "server.park_idle_after", DEFAULT_PARK_IDLE_AFTER)?,
    };
    let server = ServerConfig {
        threads,
        work_stealing: f.server.work_stealing.unwrap_or(false),
        slot_header,
        shutdown_grace: duration(
            f.server.shutdown_grace,
            "server.shutdown_grace",
            DEFAULT_SHUTDOWN_GRACE,
        )?,
        keepalive_timeout,
        park_idle_after,
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
        idle_timeout: duration(
            f.admin.idle_timeout,
            "admin.idle_timeout",
            crate::DEFAULT_ADMIN_IDLE_TIMEOUT,
        )?,
    };

    let blue = slot(f.slots.blue.unwrap_or_default(), "blue")?;
    let green = slot(f.slots.green.unwrap_or_default(), "green")?;

    let upstream = UpstreamConfig {
        connect_timeout: duration(
            f.upstream.connect_timeout,
            "upstream.connect_timeout",
            DEFAULT_CONNECT_TIMEOUT,
        )?,
        read_timeout: duration(
            f.upstream.read_timeout,
            "upstream.read_timeout",
            DEFAULT_READ_TIMEOUT,
        )?,
        keepalive_pool: f.upstream.keepalive_pool.unwrap_or(DEFAULT_KEEPALIVE_POOL),
        idle_timeout: duration(
            f.upstream.idle_timeout,
            "upstream.idle_timeout",
            DEFAULT_IDLE_TIMEOUT,
        )?,
    };

    let health = health(f.health)?;
    let drain = DrainConfig {
        timeout: duration(f.drain.timeout, "drain.timeout", DEFAULT_DRAIN_TIMEOUT)?,
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
    let rollback = crate::rollback::rollback(f.rollback)?;
    let access_log = f
        .access_log
        .map(crate::access_log::access_log)
        .transpose()?;
    let headers = crate::headers::headers(f.headers)?;
    let rate_limits = crate::rate_limits::rate_limits(f.rate_limits)?;
    let cluster = f.cluster.map(crate::cluster::cluster).transpose()?;
    let preview = f.preview.map(crate::preview::preview).transpose()?;
    let canary = crate::preview::canary(f.canary, preview.as_ref())?;
    let compression = crate::compression::compression(f.compression)?;
    let request_id = crate::headers::request_id(f.request_id, server.slot_header.as_deref())?;
    let outlier = f.outlier.map(crate::outlier::outlier).transpose()?;

    Ok(Config {
        source: None,
        listen,
        https,
        redirect_http,
        tls,
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
        rollback,
        access_log,
        headers,
        rate_limits,
        cluster,
        preview,
        canary,
        compression,
        request_id,
        outlier,
    })
}

/// A duration from the file, or `default`; zero is refused: every duration here is a timeout
/// or a period, and zero would mean "at once, for ever" (a health checker that spins, requests
/// cut before they start).
pub(crate) fn duration(
    d: Option<Spanned<HumanDuration>>,
    key: &str,
    default: Duration,
) -> Result<Duration, Violation> {
    match d {
        Some(d) if d.get_ref().0.is_zero() => err(
            d.span(),
            format!("{key}: must be above 0 (`500ms`, `2s`, `1m`)"),
        ),
        Some(d) => Ok(d.into_inner().0),
        None => Ok(default),
    }
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
    let interval = duration(h.interval, "health.interval", DEFAULT_HEALTH_INTERVAL)?;
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
        t @ Some(_) => duration(t, "health.timeout", DEFAULT_HEALTH_TIMEOUT)?,
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
        let cache_control = match r.cache_control {
            Some(c) if to != RouteTarget::Static => {
                return err(
                    c.span(),
                    format!("routes[{i}].cache_control: only a `static` route sets it"),
                )
            }
            Some(c) => match check_cache_control(c.get_ref()) {
                Ok(()) => Some(c.into_inner()),
                Err(why) => return err(c.span(), format!("routes[{i}].cache_control: {why}")),
            },
            None => None,
        };
        let headers = crate::headers::lines(r.headers, &format!("routes[{i}].headers"))?;
        routes.push(Route {
            prefix: r.prefix.into_inner(),
            to,
            spa_fallback,
            cache_control,
            headers,
        });
    }
    // Longest prefix first, so the first match is the longest.
    routes.sort_by_key(|r| std::cmp::Reverse(r.prefix.len()));
    Ok(routes)
}

/// Checks a `Cache-Control` value: directives `name` or `name=value` separated by commas, in
/// the characters a header value may hold. A value that is not one would be dropped when the
/// response is built, and the file's intent silently lost.
fn check_cache_control(value: &str) -> Result<(), String> {
    let token = |t: &str| {
        !t.is_empty()
            && t.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
    };
    let quoted = |q: &str| {
        q.len() >= 2
            && q.starts_with('"')
            && q.ends_with('"')
            && q[1..q.len() - 1]
                .bytes()
                .all(|b| b == b'\t' || (b' '..=b'~').contains(&b) && b != b'"')
    };
    if value.trim().is_empty() {
        return Err("give directives such as `public, max-age=3600`, or leave the key out".into());
    }
    for directive in value.split(',') {
        let directive = directive.trim();
        let ok = match directive.split_once('=') {
            None => token(directive),
            Some((name, arg)) => token(name) && (token(arg) || quoted(arg)),
        };
        if !ok {
            return Err(format!(
                "`{directive}` is not a directive (`name` or `name=value`, e.g. `max-age=3600`)"
            ));
        }
    }
    Ok(())
}
