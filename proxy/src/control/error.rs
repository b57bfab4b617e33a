//! Why a change to the routing snapshot was not made, or was made but not saved.

use std::sync::Arc;

use bascule_config::{ConfigError, SlotName};

use crate::control::state::StateError;
use crate::control::FlipOutcome;
use crate::slots::routing::{PoolError, Routing};

/// A change that [`Control`](crate::control::Control) refused, or applied without saving.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The change is understood but not allowed now (an unhealthy flip target, a slot that
    /// takes traffic, nothing to roll back to); the reason says what would allow it.
    #[error("{0}")]
    Refused(String),
    /// An argument cannot be used (a static root that is not a directory).
    #[error("{0}")]
    Invalid(String),
    /// A slot's upstream addresses cannot be resolved.
    #[error("slots.{slot}.upstreams: {source}")]
    Pool {
        /// The slot whose pool was being built.
        slot: SlotName,
        /// Which address failed, and why.
        source: PoolError,
    },
    /// A slot's upstreams restored from the state file cannot be resolved.
    #[error("{}: slot {slot}'s upstreams (set at runtime, kept in this state file): {source}; fix the name, or remove the state file to start from the config's upstreams", path.display())]
    StatePool {
        /// The state file.
        path: std::path::PathBuf,
        /// The slot whose pool was being built.
        slot: SlotName,
        /// Which address failed, and why.
        source: PoolError,
    },
    /// With `[cluster]`: etcd cannot be reached, so no change can be made; the last state
    /// stays in force.
    #[error("cluster store unreachable ({endpoints}: {why}); nothing changed")]
    Unreachable {
        /// The etcd endpoints tried.
        endpoints: String,
        /// What failed.
        why: String,
    },
    /// With `[cluster]`: another change was committed since the state this one was built on.
    #[error(
        "another change to the cluster's slot state came first (this one was based on \
         revision {base}, the store is at {now}); nothing changed: check status and try again"
    )]
    Conflict {
        /// The revision this change was based on.
        base: i64,
        /// The store's revision when it was refused.
        now: i64,
    },
    /// With `[cluster]`: the change was committed, but this instance's watch did not bring it
    /// back in time (etcd went away just then); it applies it once the watch is back.
    #[error(
        "committed to the cluster store at revision {revision}, but not yet applied here: the \
         watch is reconnecting; check status"
    )]
    NotApplied {
        /// The revision of the commit.
        revision: i64,
    },
    /// `reload` found the config file unusable; the config in force is kept.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The change is live, with every side effect done (drain watch, released pools,
    /// metrics), but the state file could not be written: a restart would not restore it.
    #[error("applied, but {source}")]
    NotPersisted {
        /// What was applied.
        outcome: Box<Applied>,
        /// Why the state file was not written.
        source: StateError,
    },
}

/// What a change that went live produced, for the reply to it.
#[derive(Debug, Clone)]
pub enum Applied {
    /// A flip or rollback.
    Flip(FlipOutcome),
    /// A `set` or `weights`: the snapshot it made.
    Routing(Arc<Routing>),
    /// A `reload`: what it changed.
    Reload(crate::control::Reloaded),
}

impl ControlError {
    /// For an applied-but-not-saved change, its outcome (if `take` recognises it) and the
    /// warning to show with it; any other error is given back as is.
    pub fn applied<T>(
        self,
        take: impl FnOnce(Applied) -> Option<T>,
    ) -> Result<(T, String), ControlError> {
        match self {
            ControlError::NotPersisted { outcome, source } => {
                let warning = format!("applied, but not saved: {source}");
                match take(*outcome) {
                    Some(value) => Ok((value, warning)),
                    None => Err(ControlError::Invalid(warning)),
                }
            }
            other => Err(other),
        }
    }
}

/// `value`, or [`ControlError::NotPersisted`] carrying it when `unsaved` says why it was not
/// saved.
pub(crate) fn saved<T>(
    value: T,
    unsaved: Option<StateError>,
    wrap: impl FnOnce(T) -> Applied,
) -> Result<T, ControlError> {
    match unsaved {
        None => Ok(value),
        Some(source) => Err(ControlError::NotPersisted {
            outcome: Box::new(wrap(value)),
            source,
        }),
    }
}
