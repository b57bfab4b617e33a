//! The state file: what the admin socket changed, kept across restarts.
//!
//! Written atomically on every change (temp file in the same directory, fsync, rename, fsync of
//! the directory), so a crash leaves either the old file or the new one. Before each replace
//! the file in place becomes `PATH.prev` (a hard link, so no moment without a state file): a
//! file corrupted later (a full disk, a bad edit) falls back to the last good state instead of
//! putting production back on the config's default slot. Read once at start; when neither file
//! can be used, that is reported (stderr, log, `status`) and the config's defaults apply —
//! never a reason not to start.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use bascule_admin::LastRollback;

use crate::SlotName;

/// Runtime state worth keeping across a restart.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PersistedState {
    /// The active slot.
    pub active: SlotName,
    /// The slot active before the last flip.
    pub previous: Option<SlotName>,
    /// RFC 3339 time of the last flip.
    pub last_switch: Option<String>,
    /// Generation of the snapshot this state was taken from.
    pub generation: u64,
    /// Canary split `[blue, green]`.
    #[serde(default)]
    pub weights: Option<[u32; 2]>,
    /// Each slot's runtime parts, by name.
    pub slots: BTreeMap<SlotName, PersistedSlot>,
    /// The last automatic rollback.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_rollback: Option<LastRollback>,
}

/// One slot's runtime parts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PersistedSlot {
    /// Upstream members.
    pub upstreams: Vec<String>,
    /// Version label.
    pub version: Option<String>,
    /// Static root.
    pub static_root: Option<PathBuf>,
}

/// Why the state file could not be used or written.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// Reading failed.
    #[error("{path}: cannot read state file: {source}")]
    Read {
        /// The state file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The content is not a state file.
    #[error("{path}: state file is corrupt ({message})")]
    Corrupt {
        /// The state file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// Writing failed.
    #[error("{path}: cannot write state file: {source}")]
    Write {
        /// The state file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

/// `PATH.prev`: the state file as it was before its last replace.
pub fn previous_path(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(".prev");
    PathBuf::from(p)
}

/// What start-up found: the state to restore, and what to tell the operator about it.
#[derive(Debug)]
pub struct Loaded {
    /// The state to restore; `None` when there is none (or none usable).
    pub state: Option<PersistedState>,
    /// Why the state file itself was not used, when it was not.
    pub warning: Option<String>,
}

/// Reads the state file, falling back to `PATH.prev` when the file cannot be used.
pub fn load(path: &Path) -> Loaded {
    let first = match read(path) {
        Ok(state) => {
            return Loaded {
                state,
                warning: None,
            }
        }
        Err(e) => e,
    };
    let prev = previous_path(path);
    match read(&prev) {
        Ok(Some(state)) => Loaded {
            state: Some(state),
            warning: Some(format!(
                "{first}; restored the previous state from {}",
                prev.display()
            )),
        },
        Ok(None) => Loaded {
            state: None,
            warning: Some(format!(
                "{first}; no previous state ({} absent): starting from the config's default slot",
                prev.display()
            )),
        },
        Err(second) => Loaded {
            state: None,
            warning: Some(format!(
                "{first}; {second}: starting from the config's default slot"
            )),
        },
    }
}

/// Reads one state file; `Ok(None)` when there is none yet.
pub fn read(path: &Path) -> Result<Option<PersistedState>, StateError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(StateError::Read {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| StateError::Corrupt {
            path: path.to_path_buf(),
            message: e.to_string(),
        })
}

/// Writes `state` to `path` atomically.
pub fn save(path: &Path, state: &PersistedState) -> Result<(), StateError> {
    let err = |source| StateError::Write {
        path: path.to_path_buf(),
        source,
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(dir).map_err(err)?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(err)?;
    let mut text = serde_json::to_vec_pretty(state).expect("state serialises");
    text.push(b'\n');
    tmp.write_all(&text).map_err(err)?;
    tmp.as_file().sync_all().map_err(err)?;
    keep_previous(path);
    tmp.persist(path).map_err(|e| err(e.error))?;
    // The rename is durable only once the directory entry is.
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(err)?;
    Ok(())
}

/// Makes the file at `path`, when it holds a usable state, the previous state. A corrupt one
/// is not kept: `PATH.prev` stays the last good state. Failing here loses only the fallback,
/// never the write, so it is logged and not returned.
fn keep_previous(path: &Path) {
    if !matches!(read(path), Ok(Some(_))) {
        return;
    }
    let prev = previous_path(path);
    // Gone or not, the link below says whether the place is free.
    let _ = std::fs::remove_file(&prev);
    let linked = std::fs::hard_link(path, &prev);
    if let Err(e) = linked.or_else(|_| std::fs::copy(path, &prev).map(drop)) {
        tracing::warn!(path = %prev.display(), error = %e, "previous state not kept");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/state.json");
        let none = load(&path);
        assert!(none.state.is_none() && none.warning.is_none());
        let mut slots = BTreeMap::new();
        slots.insert(
            SlotName::Green,
            PersistedSlot {
                upstreams: vec!["127.0.0.1:9".into()],
                version: Some("2".into()),
                static_root: None,
            },
        );
        let state = PersistedState {
            active: SlotName::Green,
            previous: Some(SlotName::Blue),
            last_switch: Some("2026-01-01T00:00:00Z".into()),
            generation: 7,
            weights: None,
            slots,
            last_rollback: Some(LastRollback {
                at: "2026-01-01T00:00:01Z".into(),
                from: SlotName::Green,
                to: SlotName::Blue,
                reason: "5xx 47/50 = 94% > 5%".into(),
            }),
        };
        save(&path, &state).unwrap();
        assert_eq!(load(&path).state, Some(state.clone()));
        assert!(
            !previous_path(&path).exists(),
            "nothing to keep before the first write"
        );
        let second = PersistedState {
            generation: 8,
            ..state.clone()
        };
        save(&path, &second).unwrap();
        assert_eq!(read(&previous_path(&path)).unwrap(), Some(state.clone()));

        // Corrupt: the previous state is restored, and the warning names both files.
        std::fs::write(&path, "{not json").unwrap();
        assert!(matches!(read(&path), Err(StateError::Corrupt { .. })));
        let loaded = load(&path);
        assert_eq!(loaded.state, Some(state.clone()));
        let warning = loaded.warning.unwrap();
        assert!(
            warning.contains("corrupt") && warning.contains("state.json.prev"),
            "{warning}"
        );

        // A write over a corrupt file keeps the last good one as the previous state.
        save(&path, &second).unwrap();
        assert_eq!(read(&previous_path(&path)).unwrap(), Some(state));

        // Both unusable: nothing restored, and said.
        std::fs::write(&path, "{").unwrap();
        std::fs::write(previous_path(&path), "[").unwrap();
        let loaded = load(&path);
        assert!(loaded.state.is_none());
        assert!(loaded.warning.unwrap().contains("default slot"));
    }
}
