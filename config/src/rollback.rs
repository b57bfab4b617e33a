//! `[rollback]`: the automatic rollback after a flip, deploy or weights change.

use std::time::Duration;

use crate::validate::Violation;

/// Default time the newly active slot is watched after a change.
pub const DEFAULT_ROLLBACK_WINDOW: Duration = Duration::from_secs(5 * 60);
/// Default count of requests the watched slot must have answered before it is judged.
pub const DEFAULT_ROLLBACK_MIN_REQUESTS: u64 = 20;
/// Default largest share (0–1) of 5xx answers the watched slot may give.
pub const DEFAULT_ROLLBACK_MAX_ERROR_RATIO: f64 = 0.05;

/// `[rollback]`: when the slot that just became active answers too many 5xx, flip back.
#[derive(Debug, Clone, PartialEq)]
pub struct RollbackConfig {
    /// Whether the automatic rollback is on (off by default).
    pub auto: bool,
    /// How long after a change the newly active slot is watched.
    pub window: Duration,
    /// Requests the watched slot must have answered since the change before it is judged.
    pub min_requests: u64,
    /// Largest share of 5xx answers (the proxy's own 502/503/504 included), 0–1.
    pub max_error_ratio: f64,
}

impl Default for RollbackConfig {
    fn default() -> Self {
        RollbackConfig {
            auto: false,
            window: DEFAULT_ROLLBACK_WINDOW,
            min_requests: DEFAULT_ROLLBACK_MIN_REQUESTS,
            max_error_ratio: DEFAULT_ROLLBACK_MAX_ERROR_RATIO,
        }
    }
}

pub(crate) mod file {
    use serde::Deserialize;
    use toml::Spanned;

    use crate::file::HumanDuration;

    #[derive(Debug, Deserialize, Default)]
    #[serde(deny_unknown_fields)]
    pub(crate) struct Rollback {
        pub(crate) auto: Option<bool>,
        pub(crate) window: Option<Spanned<HumanDuration>>,
        pub(crate) min_requests: Option<Spanned<u64>>,
        pub(crate) max_error_ratio: Option<Spanned<f64>>,
    }
}

pub(crate) fn rollback(f: file::Rollback) -> Result<RollbackConfig, Violation> {
    let d = RollbackConfig::default();
    let window = match f.window {
        Some(w) if w.get_ref().0.is_zero() => {
            return Err(Violation {
                span: w.span(),
                message: "rollback.window: must be longer than 0".into(),
            })
        }
        Some(w) => w.into_inner().0,
        None => d.window,
    };
    let min_requests = match f.min_requests {
        Some(n) if *n.get_ref() == 0 => {
            return Err(Violation {
                span: n.span(),
                message: "rollback.min_requests: at least 1 (a slot is not judged on no answer)"
                    .into(),
            })
        }
        Some(n) => n.into_inner(),
        None => d.min_requests,
    };
    let max_error_ratio =
        match f.max_error_ratio {
            Some(r) if !(0.0..1.0).contains(r.get_ref()) => return Err(Violation {
                span: r.span(),
                message:
                    "rollback.max_error_ratio: a share from 0 up to (not including) 1, such as 0.05"
                        .into(),
            }),
            Some(r) => r.into_inner(),
            None => d.max_error_ratio,
        };
    Ok(RollbackConfig {
        auto: f.auto.unwrap_or(d.auto),
        window,
        min_requests,
        max_error_ratio,
    })
}

#[cfg(test)]
mod tests {
    use crate::{parse, ConfigError};

    fn located(text: &str) -> (usize, usize, String) {
        match parse(text, "t.toml") {
            Err(ConfigError::Invalid {
                line, col, message, ..
            }) => (line, col, message),
            other => panic!("expected an Invalid error, got {other:?}"),
        }
    }

    #[test]
    fn defaults_and_values() {
        let c = parse("", "t.toml").unwrap();
        assert_eq!(c.rollback, super::RollbackConfig::default());
        assert!(!c.rollback.auto);
        let c = parse(
            "[rollback]\nauto = true\nwindow = \"30s\"\nmin_requests = 5\nmax_error_ratio = 0.5\n",
            "t.toml",
        )
        .unwrap();
        assert!(c.rollback.auto);
        assert_eq!(c.rollback.window, std::time::Duration::from_secs(30));
        assert_eq!(
            (c.rollback.min_requests, c.rollback.max_error_ratio),
            (5, 0.5)
        );
    }

    #[test]
    fn bad_values_are_located() {
        let (line, col, msg) = located("[rollback]\nauto = true\nmax_error_ratio = 1.5\n");
        assert_eq!((line, col), (3, 19));
        assert!(msg.contains("max_error_ratio"), "{msg}");
        let (line, _, msg) = located("[rollback]\nmin_requests = 0\n");
        assert_eq!(line, 2);
        assert!(msg.contains("min_requests"), "{msg}");
        let (line, _, msg) = located("[rollback]\n\nwindow = \"0s\"\n");
        assert_eq!(line, 3);
        assert!(msg.contains("window"), "{msg}");
        let (_, _, msg) = located("[rollback]\nautomatic = true\n");
        assert!(msg.contains("automatic"), "{msg}");
    }
}
