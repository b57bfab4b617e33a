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

pub mod client;
pub mod server;

pub use command::{Command, ParseError, SetField, HELP};
pub use reply::{
    parse_reply, reply_line, DeployReply, DrainReply, DrainTimes, FlipReply, HealthReply,
    HelpReply, MemberHealth, ReloadReply, Reply, SetReply, SlotState, SlotStatus, Slots, Status,
    Step, StepDetail, Upstream, Weights, WeightsReply,
};

/// What the proxy does with a parsed command.
#[async_trait::async_trait]
pub trait Handler: Send + Sync + 'static {
    /// Carries out `cmd`. `Err` carries the message of an `{"ok":false}` reply: the command was
    /// understood but refused (an unhealthy flip target, a slot that is active, …).
    async fn handle(&self, cmd: Command) -> Result<Reply, String>;
}
