//! Replies: one type per command, serialised by the proxy and read back by `bascule ctl` and
//! the tests, so that both ends agree on every field by construction.
//!
//! On the wire a reply is one JSON object: `{"ok":true, …fields…}` or
//! `{"ok":false,"error":"…"}`. Field names and shapes are the user contract (SPEC.md): a
//! field is added here, never renamed.

use std::path::PathBuf;

use bascule_config::SlotName;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::stats::StatsReply;
use crate::Command;

/// A successful reply, as the handler returns it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
// One reply per admin command: its size is of no consequence, and boxing would only add noise.
#[allow(clippy::large_enum_variant)]
pub enum Reply {
    /// `status`.
    Status(Status),
    /// `flip`, `rollback`.
    Flip(FlipReply),
    /// `set`.
    Set(SetReply),
    /// `drain`.
    Drain(DrainReply),
    /// `health`.
    Health(HealthReply),
    /// `weights`.
    Weights(WeightsReply),
    /// `deploy`.
    Deploy(DeployReply),
    /// `reload`.
    Reload(ReloadReply),
    /// `stats`.
    Stats(StatsReply),
    /// `help`.
    Help(HelpReply),
}

/// Whether a slot takes new requests, still has some in flight, or neither.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SlotState {
    /// Takes new requests (active, or weighted above zero).
    Active,
    /// Takes none, but some are still in flight.
    Draining,
    /// Takes none and has none in flight.
    Idle,
}

/// The canary split.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Weights {
    /// Share of blue.
    pub blue: u32,
    /// Share of green.
    pub green: u32,
}

/// `status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// The slot new requests go to.
    pub active: SlotName,
    /// The slot active before the last flip.
    pub previous: Option<SlotName>,
    /// RFC 3339 time of the last flip.
    pub last_switch: Option<String>,
    /// Generation of the routing snapshot.
    pub generation: u64,
    /// The canary split, when one is set.
    pub weights: Option<Weights>,
    /// Both slots.
    pub slots: Slots,
    /// The last automatic rollback, when there has been one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_rollback: Option<LastRollback>,
    /// The shared slot state, when this instance has a `[cluster]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterStatus>,
    /// What an operator must know about this instance (a state file that could not be used
    /// at start); absent when there is nothing.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// `status`'s `cluster` object: the etcd store and the live instances sharing it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterStatus {
    /// The etcd endpoints.
    pub endpoints: Vec<String>,
    /// The key prefix shared by the instances.
    pub prefix: String,
    /// This instance's name.
    pub name: String,
    /// The etcd revision of the slot state this instance serves.
    pub revision: i64,
    /// Whether this instance's watch is connected to etcd now.
    pub connected: bool,
    /// Times the whole state was read again because the watch fell behind a compaction.
    pub reloads: u64,
    /// The live instances (registered under a lease), by name.
    pub instances: Vec<ClusterInstance>,
}

/// One live instance, as it registers itself under `PREFIX/instances/NAME`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterInstance {
    /// Its name.
    pub name: String,
    /// The generation of the snapshot it serves.
    pub generation: u64,
    /// Requests in flight on each slot.
    pub inflight: SlotCounts,
}

/// A count per slot.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotCounts {
    /// Blue's count.
    pub blue: u64,
    /// Green's count.
    pub green: u64,
}

impl SlotCounts {
    /// The count of `slot`.
    pub fn get(&self, slot: SlotName) -> u64 {
        match slot {
            SlotName::Blue => self.blue,
            SlotName::Green => self.green,
        }
    }
}

/// An automatic rollback, in `status` and in the state file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastRollback {
    /// RFC 3339 time it flipped back.
    pub at: String,
    /// The slot left.
    pub from: SlotName,
    /// The slot flipped back to.
    pub to: SlotName,
    /// Why: `5xx 47/50 = 94% > 5%`.
    pub reason: String,
}

/// Both slots' status, by name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Slots {
    /// Blue.
    pub blue: SlotStatus,
    /// Green.
    pub green: SlotStatus,
}

impl Slots {
    /// One slot's status.
    pub fn get(&self, slot: SlotName) -> &SlotStatus {
        match slot {
            SlotName::Blue => &self.blue,
            SlotName::Green => &self.green,
        }
    }
}

/// One slot, as `status` and `set` show it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SlotStatus {
    /// Active, draining or idle.
    pub state: SlotState,
    /// Version label.
    pub version: Option<String>,
    /// Requests and connections in flight.
    pub inflight: u64,
    /// Requests and connections ever counted.
    pub served: u64,
    /// Connections cut because a drain timed out.
    pub cut: u64,
    /// Upgraded (WebSocket) connections open.
    pub upgraded: u64,
    /// Idle upstream connections kept for reuse.
    pub pooled: u64,
    /// Root of the slot's static files.
    pub static_root: Option<PathBuf>,
    /// Upstream members.
    pub upstreams: Vec<Upstream>,
    /// When the slot is not active: since when it drains.
    #[serde(flatten, default, skip_serializing_if = "Option::is_none")]
    pub drain: Option<DrainTimes>,
}

/// When a slot that is not active left active duty.
///
/// Both fields are sent, `null` when unknown, exactly when the slot is not active: they are
/// required on reading, so that an active slot's status reads back without them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DrainTimes {
    /// RFC 3339 time it stopped taking new requests (none if it never took any).
    #[serde(deserialize_with = "nullable")]
    pub drain_started: Option<String>,
    /// Seconds since then.
    #[serde(deserialize_with = "nullable")]
    pub drain_seconds: Option<f64>,
}

/// A field that must be present, and may be `null`.
fn nullable<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d)
}

/// An upstream member in `status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Upstream {
    /// `host:port` as configured.
    pub address: String,
    /// `None` until its first health check.
    pub healthy: Option<bool>,
}

/// `flip` and `rollback`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlipReply {
    /// The slot now active.
    pub active: SlotName,
    /// The slot left.
    pub previous: Option<SlotName>,
    /// Generation of the routing snapshot.
    pub generation: u64,
    /// False when the slot was already active.
    pub changed: bool,
    /// Set when the change is live but something went wrong beside it (the state file could
    /// not be written).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warning: Option<String>,
}

/// `set`: the slot as it now is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SetReply {
    /// The slot changed.
    pub slot: SlotName,
    /// Generation of the routing snapshot.
    pub generation: u64,
    /// As `status` shows it.
    #[serde(flatten)]
    pub status: SlotStatus,
    /// See [`FlipReply::warning`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warning: Option<String>,
}

/// `drain`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrainReply {
    /// The slot asked about.
    pub slot: SlotName,
    /// Requests and connections still in flight.
    pub inflight: u64,
    /// Whether nothing is in flight.
    pub drained: bool,
    /// Its state now.
    pub state: SlotState,
}

/// `health`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthReply {
    /// Every member of both slots, blue first, in configured order.
    pub upstreams: Vec<MemberHealth>,
}

/// One member in `health`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberHealth {
    /// Its slot.
    pub slot: SlotName,
    /// `host:port` as configured.
    pub address: String,
    /// `None` until its first health check.
    pub healthy: Option<bool>,
    /// RFC 3339 time of the last check.
    pub last_check: Option<String>,
    /// Why the last check failed, if it did.
    pub last_error: Option<String>,
    /// RFC 3339 end of an `[outlier]` ejection under way: not picked until then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ejected_until: Option<String>,
}

/// `weights`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WeightsReply {
    /// The split now in force.
    pub weights: Weights,
    /// Generation of the routing snapshot.
    pub generation: u64,
    /// See [`FlipReply::warning`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warning: Option<String>,
}

/// `deploy`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeployReply {
    /// The slot now active.
    pub active: SlotName,
    /// The slot left.
    pub previous: Option<SlotName>,
    /// Generation of the routing snapshot.
    pub generation: u64,
    /// Whether the slot left drained within the deploy's timeout.
    pub drained: bool,
    /// Each step's outcome, in order.
    pub steps: Vec<Step>,
}

/// One step of a deploy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Step {
    /// `set upstreams`, `set version`, `healthy`, `flip` or `drain`.
    pub step: String,
    /// Whether it succeeded.
    pub ok: bool,
    /// What it did.
    pub detail: StepDetail,
    /// How long it took, milliseconds.
    #[serde(default)]
    pub ms: u64,
}

/// A line sent before the reply to a command that reports progress (`deploy --progress`):
/// `{"ok":true,"progress":{…step…}}`. The reply itself never has a `progress` field.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProgressLine {
    /// Always true: the command is still going.
    pub ok: bool,
    /// The step that just ended.
    pub progress: Step,
}

/// Tells a progress line from the reply that follows the progress lines.
#[derive(Deserialize)]
struct MaybeProgress {
    #[serde(default)]
    progress: Option<Step>,
}

/// The step a line carries when it is a progress line, `None` when it is the reply.
pub fn progress_of(line: &str) -> Option<Step> {
    serde_json::from_str::<MaybeProgress>(line)
        .ok()
        .and_then(|m| m.progress)
}

/// Serialises one progress line, without the trailing newline.
pub fn progress_line(step: &Step) -> String {
    serde_json::to_string(&ProgressLine {
        ok: true,
        progress: step.clone(),
    })
    .expect("steps serialise")
}

/// What a deploy step did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum StepDetail {
    /// `set upstreams`: the new members.
    Upstreams(Vec<String>),
    /// `set version`: the new label.
    Version(String),
    /// `flip`: as a plain flip replies.
    Flip(FlipReply),
    /// `drain`: the slot left and what it still has in flight.
    Drain {
        /// The slot left.
        slot: SlotName,
        /// Still in flight.
        inflight: u64,
    },
    /// `healthy`: nothing to add.
    None,
}

/// `reload`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReloadReply {
    /// Dotted names of what changed and is applied from the next request on
    /// (`headers`, `rate_limits`, `slots.blue.upstreams`, `routes`, …).
    pub changed: Vec<String>,
    /// Keys changed in the file that only a restart applies (`listen.http`, `server.threads`,
    /// `admin.socket`, `metrics.listen`, `cluster`); absent when there are none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub restart_needed: Vec<String>,
    /// See [`FlipReply::warning`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warning: Option<String>,
}

/// `help`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HelpReply {
    /// One usage line per command.
    pub commands: Vec<String>,
}

#[derive(Serialize)]
struct Success<'a> {
    ok: bool,
    #[serde(flatten)]
    reply: &'a Reply,
}

#[derive(Serialize, Deserialize)]
struct Envelope {
    ok: bool,
    #[serde(default)]
    error: Option<String>,
}

/// Serialises a handler's outcome as one reply line, without the trailing newline.
pub fn reply_line(outcome: &Result<Reply, String>) -> String {
    let line = match outcome {
        Ok(reply) => serde_json::to_string(&Success { ok: true, reply }),
        Err(error) => serde_json::to_string(&Envelope {
            ok: false,
            error: Some(error.clone()),
        }),
    };
    line.expect("replies serialise")
}

/// Reads one reply line as `T`: `Ok(Ok(reply))`, `Ok(Err(error))` for an `ok:false` reply,
/// `Err` when the line is not a reply of that shape.
pub fn parse_reply<T: DeserializeOwned>(
    line: &str,
) -> Result<Result<T, String>, serde_json::Error> {
    let envelope: Envelope = serde_json::from_str(line)?;
    if !envelope.ok {
        return Ok(Err(envelope.error.unwrap_or_else(|| "refused".into())));
    }
    serde_json::from_str(line).map(Ok)
}

impl Reply {
    /// Reads the reply line to `cmd` as the type that command answers with.
    pub fn parse(cmd: &Command, line: &str) -> Result<Result<Reply, String>, serde_json::Error> {
        fn typed<T: DeserializeOwned>(
            line: &str,
            wrap: fn(T) -> Reply,
        ) -> Result<Result<Reply, String>, serde_json::Error> {
            parse_reply::<T>(line).map(|r| r.map(wrap))
        }
        match cmd {
            Command::Status => typed(line, Reply::Status),
            Command::Flip { .. } | Command::Rollback { .. } => typed(line, Reply::Flip),
            Command::Set { .. } => typed(line, Reply::Set),
            Command::Drain { .. } => typed(line, Reply::Drain),
            Command::Health => typed(line, Reply::Health),
            Command::Weights { .. } => typed(line, Reply::Weights),
            Command::Deploy { .. } => typed(line, Reply::Deploy),
            Command::Reload => typed(line, Reply::Reload),
            Command::Stats => typed(line, Reply::Stats),
            Command::Help => typed(line, Reply::Help),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot(state: SlotState) -> SlotStatus {
        SlotStatus {
            state,
            version: Some("1".into()),
            inflight: 0,
            served: 3,
            cut: 0,
            upgraded: 0,
            pooled: 1,
            static_root: None,
            upstreams: vec![Upstream {
                address: "127.0.0.1:1".into(),
                healthy: None,
            }],
            drain: (state != SlotState::Active).then_some(DrainTimes {
                drain_started: None,
                drain_seconds: None,
            }),
        }
    }

    #[test]
    fn status_keeps_its_wire_shape_and_reads_back() {
        let status = Status {
            active: SlotName::Blue,
            previous: None,
            last_switch: None,
            generation: 1,
            weights: None,
            slots: Slots {
                blue: slot(SlotState::Active),
                green: slot(SlotState::Idle),
            },
            last_rollback: None,
            cluster: None,
            warnings: Vec::new(),
        };
        let line = reply_line(&Ok(Reply::Status(status.clone())));
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["ok"], true);
        assert_eq!(v["slots"]["green"]["state"], "idle");
        assert!(v["slots"]["green"]["drain_started"].is_null());
        assert!(v["slots"]["green"].get("drain_started").is_some());
        assert!(v["slots"]["blue"].get("drain_started").is_none());
        assert_eq!(
            v["slots"]["blue"]["upstreams"][0]["healthy"],
            serde_json::Value::Null
        );
        let back = parse_reply::<Status>(&line).unwrap().unwrap();
        assert_eq!(back, status);
    }

    #[test]
    fn a_refusal_reads_back_as_its_error() {
        let line = reply_line(&Err("no".into()));
        assert_eq!(line, r#"{"ok":false,"error":"no"}"#);
        assert_eq!(parse_reply::<FlipReply>(&line).unwrap(), Err("no".into()));
    }

    #[test]
    fn deploy_steps_read_back() {
        let reply = DeployReply {
            active: SlotName::Green,
            previous: Some(SlotName::Blue),
            generation: 4,
            drained: true,
            steps: vec![
                Step {
                    step: "set upstreams".into(),
                    ok: true,
                    detail: StepDetail::Upstreams(vec!["127.0.0.1:1".into()]),
                    ms: 2,
                },
                Step {
                    step: "healthy".into(),
                    ok: true,
                    detail: StepDetail::None,
                    ms: 0,
                },
                Step {
                    step: "drain".into(),
                    ok: true,
                    detail: StepDetail::Drain {
                        slot: SlotName::Blue,
                        inflight: 0,
                    },
                    ms: 10,
                },
            ],
        };
        let line = reply_line(&Ok(Reply::Deploy(reply.clone())));
        assert!(line.contains(r#""detail":null"#), "{line}");
        assert_eq!(
            parse_reply::<DeployReply>(&line).unwrap(),
            Ok(reply.clone())
        );
        assert_eq!(progress_of(&line), None);
        let step = &reply.steps[0];
        assert_eq!(progress_of(&progress_line(step)).as_ref(), Some(step));
    }
}
