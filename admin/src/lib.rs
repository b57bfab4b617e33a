//! Bascule's admin protocol.
//!
//! A client writes one command line (`flip green --force\n`) to a Unix stream socket; the proxy
//! answers with one line of JSON, `{"ok":true,…}` or `{"ok":false,"error":"…"}`, and keeps the
//! connection open for more lines. This crate owns both ends of that exchange:
//!
//! - [`Command`]: parsing of command lines, shared by the server and `bascule ctl`;
//! - [`Reply`]: one serde type per command's reply, written by the proxy and read by
//!   `bascule ctl` and the tests;
//! - [`server`]: binding the socket safely and serving lines to a [`Handler`];
//! - [`client`]: the blocking client behind `bascule ctl`, and its human output.
//!
//! It knows nothing of the proxy: the proxy implements [`Handler`].

mod command;
mod reply;
mod stats;

pub mod client;
pub mod ctl;
pub mod monitor;
pub mod server;

pub use command::{Command, ParseError, SetField, HELP};
pub use reply::{
    parse_reply, progress_line, progress_of, reply_line, ClusterInstance, ClusterStatus,
    DeployReply, DrainReply, DrainTimes, FlipReply, HealthReply, HelpReply, LastRollback,
    MemberHealth, ProgressLine, ReloadReply, Reply, SetReply, SlotCounts, SlotState, SlotStatus,
    Slots, Status, Step, StepDetail, Upstream, Weights, WeightsReply,
};
pub use stats::{
    buckets_since, percentile, LatencyBucket, MonitorSample, Percentiles, SlotRate, SlotStats,
    StatsReply, StatusClasses,
};

/// What the proxy does with a parsed command.
#[async_trait::async_trait]
pub trait Handler: Send + Sync + 'static {
    /// Carries out `cmd`. `Err` carries the message of an `{"ok":false}` reply: the command was
    /// understood but refused (an unhealthy flip target, a slot that is active, …).
    async fn handle(&self, cmd: Command) -> Result<Reply, String>;

    /// Carries out `cmd`, sending each step to `progress` as it ends (commands that report
    /// progress: `deploy --progress`). By default, steps are not reported.
    async fn handle_with_progress(
        &self,
        cmd: Command,
        progress: Progress,
    ) -> Result<Reply, String> {
        drop(progress);
        self.handle(cmd).await
    }
}

/// Where a long command reports its steps as they end; sending never blocks, and a client
/// that went away is simply not told.
#[derive(Debug, Clone)]
pub struct Progress(Option<tokio::sync::mpsc::UnboundedSender<Step>>);

impl Progress {
    /// A sink that drops every step.
    pub fn none() -> Progress {
        Progress(None)
    }

    /// A sink and the receiver the server writes progress lines from.
    pub fn channel() -> (Progress, tokio::sync::mpsc::UnboundedReceiver<Step>) {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        (Progress(Some(tx)), rx)
    }

    /// Whether steps reach a client (which then needs no list of them in the reply).
    pub fn is_live(&self) -> bool {
        self.0.is_some()
    }

    /// Reports `step`.
    pub fn send(&self, step: &Step) {
        if let Some(tx) = &self.0 {
            let _ = tx.send(step.clone());
        }
    }
}
