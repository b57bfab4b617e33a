//! `bascule ctl`: `monitor` (a loop of `stats`, `crate::monitor`) or one command
//! (`crate::client`). Apart from both, so that neither imports the other.

use std::path::Path;

use crate::client::EXIT_USAGE;

/// Runs `bascule ctl` with `words`; returns the exit code.
pub fn run(socket: &Path, json: bool, words: &[String]) -> i32 {
    if words.first().map(String::as_str) == Some("monitor") {
        return match crate::monitor::MonitorArgs::parse(&words[1..], json) {
            Ok(args) => crate::monitor::run(socket, &args),
            Err(e) => {
                eprintln!("bascule ctl: {e}");
                EXIT_USAGE
            }
        };
    }
    crate::client::run(socket, json, words)
}
