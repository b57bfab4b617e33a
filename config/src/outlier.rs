//! `[outlier]`: passive ejection of upstream members that fail requests, before the next health
//! check would notice (nginx's `max_fails`/`fail_timeout`, Envoy's outlier detection).

use std::time::Duration;

use crate::validate::Violation;

/// Default failures in a row (connect errors, timeouts, 5xx) that eject a member.
pub const DEFAULT_OUTLIER_FAILURES: u32 = 5;
/// Default time a member is first ejected for; doubled on each repeat, up to ten times.
pub const DEFAULT_EJECT_TIME: Duration = Duration::from_secs(30);
/// Default largest share of a slot's members ejected at once, in percent.
pub const DEFAULT_MAX_EJECTED_PERCENT: u32 = 50;

/// `[outlier]`: when a member is taken out of a slot for failing requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutlierConfig {
    /// Failures in a row that eject a member.
    pub consecutive_failures: u32,
    /// How long the first ejection lasts; each repeat doubles it, up to ten times this.
    pub eject_time: Duration,
    /// Largest share of a slot's members ejected at once (0–100).
    pub max_ejected_percent: u32,
}

pub(crate) mod file {
    use serde::Deserialize;
    use toml::Spanned;

    use crate::file::HumanDuration;

    #[derive(Debug, Deserialize, Default)]
    #[serde(deny_unknown_fields)]
    pub(crate) struct Outlier {
        pub(crate) consecutive_failures: Option<Spanned<u32>>,
        pub(crate) eject_time: Option<Spanned<HumanDuration>>,
        pub(crate) max_ejected_percent: Option<Spanned<u32>>,
    }
}

pub(crate) fn outlier(f: file::Outlier) -> Result<OutlierConfig, Violation> {
    let consecutive_failures = match f.consecutive_failures {
        Some(n) if !(1..=10_000).contains(n.get_ref()) => {
            return Err(Violation {
                span: n.span(),
                message: "outlier.consecutive_failures: 1 to 10000".into(),
            })
        }
        Some(n) => n.into_inner(),
        None => DEFAULT_OUTLIER_FAILURES,
    };
    let max_ejected_percent = match f.max_ejected_percent {
        Some(p) if *p.get_ref() > 100 => {
            return Err(Violation {
                span: p.span(),
                message: "outlier.max_ejected_percent: 0 to 100".into(),
            })
        }
        Some(p) => p.into_inner(),
        None => DEFAULT_MAX_EJECTED_PERCENT,
    };
    Ok(OutlierConfig {
        consecutive_failures,
        eject_time: crate::validate::duration(
            f.eject_time,
            "outlier.eject_time",
            DEFAULT_EJECT_TIME,
        )?,
        max_ejected_percent,
    })
}
