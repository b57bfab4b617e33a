//! `deploy`: set the slot, wait until it is healthy, flip, wait for the old slot to drain.
//!
//! Each step is timed and reported as it ends (to a `--progress` client) and in the reply. A
//! deploy that fails before its flip puts the slot back as it was — upstreams with their
//! health records, version, static root — so that a failed deploy never destroys the rollback
//! target.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bascule_admin::{DeployReply, Progress, SetField, Step, StepDetail};

use crate::admin::replies::{flip_of, flip_reply, live, routing_of};
use crate::control::Control;
use crate::SlotName;

/// Steps done so far, each reported as it is recorded.
struct Steps<'a> {
    done: Vec<Step>,
    progress: &'a Progress,
    started: Instant,
}

impl Steps<'_> {
    /// Records a step that began at `self.started`, and starts timing the next one.
    fn push(&mut self, step: &str, ok: bool, detail: StepDetail) {
        let step = Step {
            step: step.into(),
            ok,
            detail,
            ms: self.started.elapsed().as_millis() as u64,
        };
        self.progress.send(&step);
        self.done.push(step);
        self.started = Instant::now();
    }

    /// `; steps done: […]` for the refusal, unless the client saw each step already.
    fn tail(&self) -> String {
        if self.progress.is_live() {
            return String::new();
        }
        let json = serde_json::to_string(&self.done).unwrap_or_default();
        format!("; steps done: {json}")
    }
}

/// Runs a deploy of `slot`; `Err` carries the refusal, with the steps done and whether the
/// slot was put back.
pub(crate) async fn deploy(
    control: &Arc<Control>,
    slot: SlotName,
    upstreams: Vec<String>,
    version: Option<String>,
    timeout: Duration,
    progress: &Progress,
) -> Result<DeployReply, String> {
    let mut steps = Steps {
        done: Vec::new(),
        progress,
        started: Instant::now(),
    };
    let before = control.load().slot(slot).clone();
    let set = |field| control.set(slot, field, false);
    // The first failure before the flip: what to say.
    let failure = 'prepare: {
        if let Err(e) = live(
            set(SetField::Upstreams(upstreams.clone())).await,
            routing_of,
        ) {
            // Nothing was changed: a refused `set` leaves the slot as it was.
            steps.push("set upstreams", false, StepDetail::Upstreams(upstreams));
            return Err(format!("set upstreams: {e}{}", steps.tail()));
        }
        steps.push("set upstreams", true, StepDetail::Upstreams(upstreams));
        if let Some(v) = version {
            if let Err(e) = live(set(SetField::Version(v.clone())).await, routing_of) {
                steps.push("set version", false, StepDetail::Version(v));
                break 'prepare format!("set version: {e}");
            }
            steps.push("set version", true, StepDetail::Version(v));
        }
        if !control.wait_healthy(slot, timeout).await {
            let why = control.refusal(slot).await.unwrap_or_default();
            steps.push("healthy", false, StepDetail::None);
            break 'prepare format!(
                "{slot} did not become healthy within {}: {why}",
                humantime::format_duration(timeout)
            );
        }
        steps.push("healthy", true, StepDetail::None);
        let from = control.load().active;
        // The flip starts its drain watch: the drain timeout applies to a deploy too.
        let (outcome, warning) = match live(control.flip(slot, false, None).await, flip_of) {
            Ok(o) => o,
            Err(e) => break 'prepare format!("flip: {e}"),
        };
        steps.push(
            "flip",
            true,
            StepDetail::Flip(flip_reply(outcome.clone(), warning)),
        );
        let drained = from == slot || control.wait_drained_everywhere(from, timeout).await;
        let inflight = control.load().counters.inflight(from);
        steps.push(
            "drain",
            drained,
            StepDetail::Drain {
                slot: from,
                inflight,
            },
        );
        return Ok(DeployReply {
            active: outcome.active,
            previous: outcome.previous,
            generation: outcome.generation,
            drained,
            steps: steps.done,
        });
    };
    let restored = live(control.restore(slot, before).await, routing_of);
    steps.push("restore", restored.is_ok(), StepDetail::None);
    let put_back = match restored {
        Ok(_) => format!("{slot} put back as it was"),
        Err(e) => format!("{slot} NOT put back: {e}"),
    };
    tracing::warn!(slot = %slot, error = %failure, "deploy failed before its flip; {put_back}");
    Err(format!("{failure}; {put_back}{}", steps.tail()))
}
