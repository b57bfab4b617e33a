//! Bascule's configuration.
//!
//! The pipeline is: file text → [`file::FileConfig`] (serde model of the TOML, every table
//! `deny_unknown_fields`) → [`Config`] (validated, typed, defaults filled in). Each stage reports
//! problems as a [`ConfigError`] carrying the file, line, column and dotted key, so that
//! `bascule check` can print `FILE:LINE:COL: key: message`.
//!
//! Precedence: values in the file win over the `DEFAULT_*` constants below. At run time the
//! proxy's state file (active slot, runtime upstreams and versions) wins over `[slots]`; that
//! merge belongs to the proxy, not to this crate.

mod access_log;
mod cluster;
mod compression;
mod edge;
mod error;
mod file;
mod headers;
mod outlier;
mod preview;
mod rate_limits;
mod rollback;
mod slot;
mod tls;
mod validate;

pub use validate::check_upstream;

pub use access_log::{AccessLogConfig, AccessLogFormat, AccessLogPath, DEFAULT_ACCESS_LOG_BUFFER};
pub use cluster::ClusterConfig;
pub use compression::{
    Algorithm, CompressionConfig, DEFAULT_COMPRESSION_ALGORITHMS, DEFAULT_COMPRESSION_MIN_BYTES,
    DEFAULT_COMPRESSION_TYPES,
};
pub use edge::{
    ForwardingConfig, LimitsConfig, DEFAULT_BODY_TIMEOUT, DEFAULT_HEADER_TIMEOUT,
    DEFAULT_MAX_BODY_BYTES, DEFAULT_MAX_HEADER_BYTES, DEFAULT_SEND_TIMEOUT,
};
pub use error::ConfigError;
pub use headers::{HeaderLines, HeadersConfig, DEFAULT_REQUEST_ID_HEADER};
pub use outlier::{
    OutlierConfig, DEFAULT_EJECT_TIME, DEFAULT_MAX_EJECTED_PERCENT, DEFAULT_OUTLIER_FAILURES,
};
pub use preview::{
    CanaryConfig, PreviewConfig, Sticky, DEFAULT_CANARY_COOKIE, DEFAULT_PREVIEW_COOKIE,
    DEFAULT_PREVIEW_HEADER,
};
pub use rate_limits::RateLimit;
pub use rollback::{
    RollbackConfig, DEFAULT_ROLLBACK_MAX_ERROR_RATIO, DEFAULT_ROLLBACK_MIN_REQUESTS,
    DEFAULT_ROLLBACK_WINDOW,
};
pub use slot::{SlotName, UnknownSlot};
pub use tls::{load_pair, CertError, CertPair, TlsConfig, TlsVersion};

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Default admin socket path.
pub const DEFAULT_ADMIN_SOCKET: &str = "/run/bascule/admin.sock";
/// Default admin socket file mode (owner read/write only).
pub const DEFAULT_ADMIN_SOCKET_MODE: u32 = 0o600;
/// Default time an admin connection may wait between two command lines (`[admin]
/// idle_timeout`); `ctl monitor` sends one every interval.
pub const DEFAULT_ADMIN_IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// Default health-check path on each upstream.
pub const DEFAULT_HEALTH_PATH: &str = "/health";
/// Default interval between two health checks of one upstream.
pub const DEFAULT_HEALTH_INTERVAL: Duration = Duration::from_secs(2);
/// Default time a health check may take before it counts as a failure.
pub const DEFAULT_HEALTH_TIMEOUT: Duration = Duration::from_secs(1);
/// Default count of consecutive successes that mark an upstream healthy.
pub const DEFAULT_HEALTHY_THRESHOLD: u32 = 2;
/// Default count of consecutive failures that mark an upstream unhealthy.
pub const DEFAULT_UNHEALTHY_THRESHOLD: u32 = 3;
/// Default time a drained slot is given before its remaining connections are cut.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// Default name of the response header that tells which slot served a request.
pub const DEFAULT_SLOT_HEADER: &str = "x-bascule-slot";
/// Default time allowed to open a TCP connection to an upstream.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Default time allowed between two reads from an upstream (504 after it).
pub const DEFAULT_READ_TIMEOUT: Duration = Duration::from_secs(60);
/// Default time an idle pooled upstream connection is kept (as nginx's upstream keepalive).
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Default count of idle upstream connections kept per upstream member.
pub const DEFAULT_KEEPALIVE_POOL: usize = 256;
/// Default grace period, in seconds, that in-flight requests get on SIGTERM.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// Default time an idle client keep-alive connection is kept open (nginx's `keepalive_timeout`).
pub const DEFAULT_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(60);
/// Default idle time after which a client connection leaves its task and waits in the shared
/// idle set, where it costs tens of bytes instead of kilobytes. Short, so that a burst of new
/// connections never holds many tasks at once; a busy connection is never silent this long.
pub const DEFAULT_PARK_IDLE_AFTER: Duration = Duration::from_millis(100);
/// Default largest hashed asset, in bytes, kept in memory with its headers.
pub const DEFAULT_STATIC_CACHE_MAX_FILE: u64 = 256 * 1024;
/// Longest duration any setting or admin argument takes (24 hours): a timeout, window or
/// interval beyond it is a typo, and deadlines computed from it can never overflow.
pub const MAX_DURATION: Duration = Duration::from_secs(24 * 3600);
/// Largest weight of one slot in `weights blue=N green=M` (weights read as percentages).
pub const MAX_WEIGHT: u32 = 100;

/// Whether `[blue, green]` is a split the proxy can serve: each at most [`MAX_WEIGHT`], and
/// not both zero. Weights read back from a state file or the cluster store are checked too.
pub fn valid_weights([blue, green]: [u32; 2]) -> Result<(), String> {
    if blue > MAX_WEIGHT || green > MAX_WEIGHT {
        return Err(format!(
            "a weight is at most {MAX_WEIGHT} (got blue={blue} green={green})"
        ));
    }
    if blue == 0 && green == 0 {
        return Err("at least one weight must be above 0".into());
    }
    Ok(())
}

/// The validated configuration of one Bascule process.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The file this config was read from, if any.
    pub source: Option<PathBuf>,
    /// Addresses the HTTP proxy listens on.
    pub listen: Vec<SocketAddr>,
    /// Addresses it listens on with TLS (`[listen] https`).
    pub https: Vec<SocketAddr>,
    /// Plain listeners answer 308 to the same URL on https.
    pub redirect_http: bool,
    /// TLS termination, when there are https listeners.
    pub tls: Option<TlsConfig>,
    /// Process-level settings.
    pub server: ServerConfig,
    /// The admin socket.
    pub admin: AdminConfig,
    /// Where Prometheus metrics are served, if anywhere.
    pub metrics: Option<SocketAddr>,
    /// Where runtime state is persisted, if anywhere.
    pub state_path: Option<PathBuf>,
    /// Slot that is active when no state file exists.
    pub default_slot: SlotName,
    /// The blue slot.
    pub blue: SlotConfig,
    /// The green slot.
    pub green: SlotConfig,
    /// Upstream connection settings.
    pub upstream: UpstreamConfig,
    /// Active health checks.
    pub health: HealthConfig,
    /// Draining of a slot that leaves active duty.
    pub drain: DrainConfig,
    /// Static file serving.
    pub statics: StaticConfig,
    /// Routes, longest prefix first.
    pub routes: Vec<Route>,
    /// Forwarded headers added to proxied requests.
    pub forwarding: ForwardingConfig,
    /// Limits on what a client may send.
    pub limits: LimitsConfig,
    /// The automatic rollback.
    pub rollback: RollbackConfig,
    /// The access log, when on.
    pub access_log: Option<AccessLogConfig>,
    /// Response headers set and hidden.
    pub headers: HeadersConfig,
    /// Rate limits per client address, longest prefix first.
    pub rate_limits: Vec<RateLimit>,
    /// The shared slot state, when several edges share one (`[cluster]`).
    pub cluster: Option<ClusterConfig>,
    /// `[preview]`: requests that name the slot they want; `None` without the table.
    pub preview: Option<PreviewConfig>,
    /// `[canary]`: how clients keep their slot while weights split traffic.
    pub canary: CanaryConfig,
    /// Compression of proxied responses (off without a `[compression]` table).
    pub compression: CompressionConfig,
    /// `[request_id]`: the header that carries each request's id (lowercase), `None` when off.
    pub request_id: Option<String>,
    /// `[outlier]`: passive ejection of failing members, `None` (no table) when off.
    pub outlier: Option<OutlierConfig>,
}

/// Process-level settings (`[server]`).
#[derive(Debug, Clone, PartialEq)]
pub struct ServerConfig {
    /// Worker threads of the proxy service.
    pub threads: usize,
    /// Whether Pingora may steal work between threads (off: steadier latency).
    pub work_stealing: bool,
    /// Response header naming the serving slot; `None` turns it off.
    pub slot_header: Option<String>,
    /// Time in-flight requests get to finish on SIGTERM.
    pub shutdown_grace: Duration,
    /// Time an idle client keep-alive connection is kept open.
    pub keepalive_timeout: Duration,
    /// Idle time after which a client connection is parked (never after `keepalive_timeout`).
    pub park_idle_after: Duration,
    /// Whether plain HTTP/1.1 connections start on the fast path (`false`: every connection
    /// goes to Pingora's full proxy; for comparison and as a kill switch).
    pub fast_path: bool,
}

/// The admin socket (`[admin]`).
#[derive(Debug, Clone, PartialEq)]
pub struct AdminConfig {
    /// Path of the Unix socket.
    pub socket: PathBuf,
    /// File mode of the socket.
    pub mode: u32,
    /// How long a connection may wait between two command lines before it is closed.
    pub idle_timeout: Duration,
}

/// One slot's configured pool (`[slots.blue]`, `[slots.green]`).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SlotConfig {
    /// Upstream members, `host:port`.
    pub upstreams: Vec<String>,
    /// Version label shown in status.
    pub version: Option<String>,
    /// Root directory of the slot's static files.
    pub static_root: Option<PathBuf>,
}

impl Config {
    /// The configuration of one slot.
    pub fn slot(&self, name: SlotName) -> &SlotConfig {
        match name {
            SlotName::Blue => &self.blue,
            SlotName::Green => &self.green,
        }
    }
}

/// Upstream connection settings (`[upstream]`).
#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamConfig {
    /// Time allowed to connect.
    pub connect_timeout: Duration,
    /// Time allowed between reads of the response (504 after it).
    pub read_timeout: Duration,
    /// Idle connections kept per upstream member.
    pub keepalive_pool: usize,
    /// Time an idle pooled connection is kept; also bounds how long a slot that left active
    /// duty keeps its pooled connections.
    pub idle_timeout: Duration,
}

/// Active health checks (`[health]`).
#[derive(Debug, Clone, PartialEq)]
pub struct HealthConfig {
    /// Path requested with GET on each upstream.
    pub path: String,
    /// Time between two checks of one upstream.
    pub interval: Duration,
    /// Time a check may take.
    pub timeout: Duration,
    /// Consecutive successes that mark an upstream healthy.
    pub healthy_threshold: u32,
    /// Consecutive failures that mark an upstream unhealthy.
    pub unhealthy_threshold: u32,
}

/// Draining (`[drain]`).
#[derive(Debug, Clone, PartialEq)]
pub struct DrainConfig {
    /// Time after a flip until connections left on the old slot are cut.
    pub timeout: Duration,
}

/// Static file serving (`[static]`).
#[derive(Debug, Clone, PartialEq)]
pub struct StaticConfig {
    /// Largest hashed file, in bytes, kept in memory.
    pub cache_max_file: u64,
    /// Minimum length of the hash part of a hashed file name.
    pub hash_min_len: usize,
}

/// Where a route sends its requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteTarget {
    /// The active slot's upstream pool.
    Upstream,
    /// The active slot's static root.
    Static,
}

/// One `[[routes]]` entry.
#[derive(Debug, Clone, PartialEq)]
pub struct Route {
    /// Path prefix; the longest matching prefix wins.
    pub prefix: String,
    /// Where matching requests go.
    pub to: RouteTarget,
    /// File served (200, no-cache) for a missing non-hashed path.
    pub spa_fallback: Option<String>,
    /// `Cache-Control` for non-hashed files of this route, instead of `no-cache`.
    pub cache_control: Option<String>,
    /// Headers set on this route's responses (over `[headers] response` of the same name).
    pub headers: HeaderLines,
}

/// Reads and validates the config file at `path`.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Io {
        file: path.display().to_string(),
        message: e.to_string(),
    })?;
    let mut config = parse(&text, &path.display().to_string())?;
    config.source = Some(path.to_path_buf());
    Ok(config)
}

/// Parses and validates config `text`; `file` names it in errors.
pub fn parse(text: &str, file: &str) -> Result<Config, ConfigError> {
    let model: file::FileConfig =
        toml::from_str(text).map_err(|e| ConfigError::from_toml(file, text, &e))?;
    let base = Path::new(file).parent().unwrap_or(Path::new("."));
    validate::validate(model, base).map_err(|v| ConfigError::at_span(file, text, v.span, v.message))
}

#[cfg(test)]
mod tests;
