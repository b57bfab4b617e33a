//! Bascule's admin protocol.
//!
//! A client writes one command line (`flip green --force\n`) to a Unix stream socket; the proxy
//! answers with one line of JSON, `{"ok":true,…}` or `{"ok":false,"error":"…"}`, and keeps the
//! connection open for more lines. This crate owns both ends of that exchange:
//!
//! - [`Command`]: parsing of command lines, shared by the server and `bascule ctl`;
//! - [`server`]: binding the socket safely and serving lines to a [`Handler`];
//! - [`client`]: the blocking client behind `bascule ctl`, and its human output.
//!
//! It knows nothing of the proxy: the proxy implements [`Handler`].

mod command;

pub mod client;
pub mod server;

pub use command::{Command, ParseError, SetField, HELP};

use serde_json::{Map, Value};

/// The fields of a successful reply, `ok` excluded.
pub type ReplyFields = Map<String, Value>;

/// What the proxy does with a parsed command.
#[async_trait::async_trait]
pub trait Handler: Send + Sync + 'static {
    /// Carries out `cmd`. `Err` carries the message of an `{"ok":false}` reply: the command was
    /// understood but refused (an unhealthy flip target, a slot that is active, …).
    async fn handle(&self, cmd: Command) -> Result<ReplyFields, String>;
}

/// Serialises a handler's outcome as one reply line, without the trailing newline.
pub fn reply_line(outcome: Result<ReplyFields, String>) -> String {
    let mut map = Map::new();
    match outcome {
        Ok(fields) => {
            map.insert("ok".into(), Value::Bool(true));
            map.extend(fields);
        }
        Err(error) => {
            map.insert("ok".into(), Value::Bool(false));
            map.insert("error".into(), Value::String(error));
        }
    }
    Value::Object(map).to_string()
}
