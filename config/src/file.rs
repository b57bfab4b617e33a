//! The serde model of the TOML file: shapes and syntax only, no cross-field rules.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::SlotName;

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct FileConfig {
    #[serde(default)]
    pub(crate) listen: Listen,
    #[serde(default)]
    pub(crate) server: Server,
    #[serde(default)]
    pub(crate) admin: Admin,
    pub(crate) metrics: Option<Metrics>,
    pub(crate) state: Option<State>,
    #[serde(default)]
    pub(crate) slots: Slots,
    #[serde(default)]
    pub(crate) upstream: Upstream,
    #[serde(default)]
    pub(crate) health: Health,
    #[serde(default)]
    pub(crate) drain: Drain,
    #[serde(default, rename = "static")]
    pub(crate) statics: Static,
    #[serde(default)]
    pub(crate) routes: Vec<Spanned<Route>>,
    #[serde(default)]
    pub(crate) forwarding: crate::edge::file::Forwarding,
    #[serde(default)]
    pub(crate) limits: crate::edge::file::Limits,
    pub(crate) tls: Option<crate::tls::file::Tls>,
    #[serde(default)]
    pub(crate) rollback: crate::rollback::file::Rollback,
    pub(crate) access_log: Option<crate::access_log::file::AccessLog>,
    #[serde(default)]
    pub(crate) headers: crate::headers::file::Headers,
    #[serde(default)]
    pub(crate) rate_limits: Vec<crate::rate_limits::file::RateLimit>,
    pub(crate) cluster: Option<crate::cluster::file::Cluster>,
    pub(crate) preview: Option<crate::preview::file::Preview>,
    #[serde(default)]
    pub(crate) canary: crate::preview::file::Canary,
    pub(crate) compression: Option<crate::compression::file::Compression>,
    #[serde(default)]
    pub(crate) request_id: crate::headers::file::RequestId,
    pub(crate) outlier: Option<crate::outlier::file::Outlier>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct Listen {
    pub(crate) http: Option<Spanned<Vec<SocketAddr>>>,
    pub(crate) https: Option<Spanned<Vec<SocketAddr>>>,
    pub(crate) redirect_http: Option<bool>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct Server {
    pub(crate) threads: Option<Spanned<usize>>,
    pub(crate) work_stealing: Option<bool>,
    pub(crate) slot_header: Option<Spanned<String>>,
    pub(crate) shutdown_grace: Option<Spanned<HumanDuration>>,
    pub(crate) keepalive_timeout: Option<Spanned<HumanDuration>>,
    pub(crate) park_idle_after: Option<Spanned<HumanDuration>>,
    pub(crate) fast_path: Option<bool>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct Admin {
    pub(crate) socket: Option<PathBuf>,
    pub(crate) mode: Option<Spanned<u32>>,
    pub(crate) idle_timeout: Option<Spanned<HumanDuration>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Metrics {
    pub(crate) listen: SocketAddr,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct State {
    pub(crate) path: PathBuf,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct Slots {
    pub(crate) default: Option<SlotName>,
    pub(crate) blue: Option<Slot>,
    pub(crate) green: Option<Slot>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct Slot {
    #[serde(default)]
    pub(crate) upstreams: Vec<Spanned<String>>,
    pub(crate) version: Option<String>,
    pub(crate) static_root: Option<PathBuf>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct Upstream {
    pub(crate) connect_timeout: Option<Spanned<HumanDuration>>,
    pub(crate) read_timeout: Option<Spanned<HumanDuration>>,
    pub(crate) keepalive_pool: Option<usize>,
    pub(crate) idle_timeout: Option<Spanned<HumanDuration>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct Health {
    pub(crate) path: Option<Spanned<String>>,
    pub(crate) interval: Option<Spanned<HumanDuration>>,
    pub(crate) timeout: Option<Spanned<HumanDuration>>,
    pub(crate) healthy_threshold: Option<Spanned<u32>>,
    pub(crate) unhealthy_threshold: Option<Spanned<u32>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct Drain {
    pub(crate) timeout: Option<Spanned<HumanDuration>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct Static {
    pub(crate) cache_max_file: Option<u64>,
    pub(crate) hash_min_len: Option<Spanned<usize>>,
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Target {
    Upstream,
    Static,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Route {
    pub(crate) prefix: Spanned<String>,
    pub(crate) to: Spanned<Target>,
    pub(crate) spa_fallback: Option<Spanned<String>>,
    pub(crate) cache_control: Option<Spanned<String>>,
    pub(crate) headers: Option<std::collections::BTreeMap<Spanned<String>, Spanned<String>>>,
}

/// A duration written `500ms`, `2s`, `1m`; spanned in the model, so that a zero or a
/// cross-field conflict is reported at its place in the file.
#[derive(Debug, Clone, Copy)]
pub(crate) struct HumanDuration(pub(crate) Duration);

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let d: Duration = humantime_serde::deserialize(d)?;
        if d > crate::MAX_DURATION {
            return Err(serde::de::Error::custom(format!(
                "`{}` is longer than the longest duration allowed, {}",
                humantime::format_duration(d),
                humantime::format_duration(crate::MAX_DURATION)
            )));
        }
        Ok(HumanDuration(d))
    }
}
