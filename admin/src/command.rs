//! Command lines: `flip green --force`, `set blue upstreams 127.0.0.1:3000,127.0.0.1:3001`, …

use std::path::PathBuf;
use std::time::Duration;

use bascule_config::SlotName;

/// One admin command, parsed.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// Report slots, upstreams and drain state.
    Status,
    /// Send new requests to `slot`.
    Flip {
        /// The slot to activate.
        slot: SlotName,
        /// Flip even if the slot has no healthy upstream.
        force: bool,
        /// Overrides `[drain] timeout` for the slot being left.
        drain_timeout: Option<Duration>,
    },
    /// Flip back to the previous slot.
    Rollback {
        /// Roll back even if the previous slot has no healthy upstream.
        force: bool,
    },
    /// Replace one part of a slot.
    Set {
        /// The slot to change.
        slot: SlotName,
        /// What to replace.
        field: SetField,
        /// Allow changing the active slot.
        force: bool,
    },
    /// Report, or wait for, a slot's in-flight count reaching zero.
    Drain {
        /// The slot to watch.
        slot: SlotName,
        /// Wait until drained (or until `timeout`).
        wait: bool,
        /// Longest wait.
        timeout: Option<Duration>,
    },
    /// Report every upstream's health.
    Health,
    /// Split new requests between the slots.
    Weights {
        /// Share of blue.
        blue: u32,
        /// Share of green.
        green: u32,
    },
    /// Set upstreams, wait for health, flip, wait for the old slot to drain.
    Deploy {
        /// The slot to deploy to.
        slot: SlotName,
        /// Its new upstreams.
        upstreams: Vec<String>,
        /// Its new version label.
        version: Option<String>,
        /// Longest wait for health and for the drain.
        timeout: Option<Duration>,
        /// Send each step as a progress line the moment it ends, before the reply.
        progress: bool,
    },
    /// Re-read the config file.
    Reload,
    /// Report per-slot request counts, status classes and latency since start.
    Stats,
    /// List the commands.
    Help,
}

/// The part of a slot that `set` replaces.
#[derive(Debug, Clone, PartialEq)]
pub enum SetField {
    /// The upstream members.
    Upstreams(Vec<String>),
    /// The version label.
    Version(String),
    /// The static root directory.
    StaticRoot(PathBuf),
}

/// A command line that cannot be understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ParseError(pub String);

/// One line per command, for `help` and usage errors.
pub const HELP: &[&str] = &[
    "status",
    "flip SLOT [--force] [--drain-timeout DUR]",
    "rollback [--force]",
    "set SLOT upstreams ADDR[,ADDR...] [--force]",
    "set SLOT version V [--force]",
    "set SLOT static_root DIR [--force]",
    "drain SLOT [--wait] [--timeout DUR]",
    "health",
    "weights blue=N green=M",
    "deploy SLOT --upstreams ADDR[,ADDR...] [--version V] [--timeout DUR] [--progress]",
    "reload",
    "help",
    "stats",
];

fn fail<T>(msg: impl Into<String>) -> Result<T, ParseError> {
    Err(ParseError(msg.into()))
}

fn slot(word: Option<&str>, usage: &str) -> Result<SlotName, ParseError> {
    match word {
        None => fail(format!("missing slot; usage: {usage}")),
        Some(w) => w
            .parse()
            .map_err(|e: bascule_config::UnknownSlot| ParseError(e.to_string())),
    }
}

fn duration(word: Option<&str>, flag: &str) -> Result<Duration, ParseError> {
    let Some(w) = word else {
        return fail(format!("{flag} needs a duration such as 500ms, 30s or 1m"));
    };
    let d = humantime::parse_duration(w).map_err(|e| ParseError(format!("{flag} `{w}`: {e}")))?;
    if d > bascule_config::MAX_DURATION {
        return fail(format!(
            "{flag} `{w}` is longer than {}",
            humantime::format_duration(bascule_config::MAX_DURATION)
        ));
    }
    Ok(d)
}

fn addresses(word: &str) -> Result<Vec<String>, ParseError> {
    let addrs: Vec<String> = word
        .split(',')
        .filter(|a| !a.is_empty())
        .map(str::to_string)
        .collect();
    if addrs.is_empty() {
        return fail("give at least one upstream address");
    }
    for a in &addrs {
        bascule_config::check_upstream(a).map_err(ParseError)?;
    }
    Ok(addrs)
}

impl Command {
    /// Whether the command sends progress lines before its reply.
    pub fn reports_progress(&self) -> bool {
        matches!(self, Command::Deploy { progress: true, .. })
    }

    /// Parses one command line (without its newline).
    pub fn parse(line: &str) -> Result<Command, ParseError> {
        let mut words = line.split_whitespace();
        let Some(name) = words.next() else {
            return fail("empty command; try `help`");
        };
        let rest: Vec<&str> = words.collect();
        let mut args = rest.iter().copied();
        let cmd = match name {
            "status" => Command::Status,
            "health" => Command::Health,
            "reload" => Command::Reload,
            "stats" => Command::Stats,
            "help" => Command::Help,
            "flip" => {
                let usage = HELP[1];
                let slot = slot(args.next(), usage)?;
                let (mut force, mut drain_timeout) = (false, None);
                while let Some(flag) = args.next() {
                    match flag {
                        "--force" => force = true,
                        "--drain-timeout" => drain_timeout = Some(duration(args.next(), flag)?),
                        other => return fail(format!("unexpected `{other}`; usage: {usage}")),
                    }
                }
                Command::Flip {
                    slot,
                    force,
                    drain_timeout,
                }
            }
            "rollback" => {
                let mut force = false;
                for flag in args.by_ref() {
                    match flag {
                        "--force" => force = true,
                        other => return fail(format!("unexpected `{other}`; usage: {}", HELP[2])),
                    }
                }
                Command::Rollback { force }
            }
            "set" => {
                let usage = "set SLOT upstreams|version|static_root VALUE [--force]";
                let slot = slot(args.next(), usage)?;
                let (Some(what), Some(value)) = (args.next(), args.next()) else {
                    return fail(format!("usage: {usage}"));
                };
                let field = match what {
                    "upstreams" => SetField::Upstreams(addresses(value)?),
                    "version" => SetField::Version(value.to_string()),
                    "static_root" => SetField::StaticRoot(PathBuf::from(value)),
                    other => {
                        return fail(format!(
                            "cannot set `{other}`; one of upstreams, version, static_root"
                        ))
                    }
                };
                let mut force = false;
                for flag in args.by_ref() {
                    match flag {
                        "--force" => force = true,
                        other => return fail(format!("unexpected `{other}`; usage: {usage}")),
                    }
                }
                Command::Set { slot, field, force }
            }
            "drain" => {
                let usage = HELP[6];
                let slot = slot(args.next(), usage)?;
                let (mut wait, mut timeout) = (false, None);
                while let Some(flag) = args.next() {
                    match flag {
                        "--wait" => wait = true,
                        "--timeout" => timeout = Some(duration(args.next(), flag)?),
                        other => return fail(format!("unexpected `{other}`; usage: {usage}")),
                    }
                }
                Command::Drain {
                    slot,
                    wait,
                    timeout,
                }
            }
            "weights" => {
                let (mut blue, mut green) = (None, None);
                for arg in args.by_ref() {
                    let Some((k, v)) = arg.split_once('=') else {
                        return fail(format!("usage: {}", HELP[8]));
                    };
                    let n: u32 = v
                        .parse()
                        .map_err(|_| ParseError(format!("weight `{v}` is not a whole number")))?;
                    match slot(Some(k), HELP[8])? {
                        SlotName::Blue => blue = Some(n),
                        SlotName::Green => green = Some(n),
                    }
                }
                let (Some(blue), Some(green)) = (blue, green) else {
                    return fail(format!("give both weights; usage: {}", HELP[8]));
                };
                bascule_config::valid_weights([blue, green]).map_err(ParseError)?;
                Command::Weights { blue, green }
            }
            "deploy" => {
                let usage = HELP[9];
                let slot = slot(args.next(), usage)?;
                let (mut upstreams, mut version, mut timeout) = (None, None, None);
                let mut progress = false;
                while let Some(flag) = args.next() {
                    if flag == "--progress" {
                        progress = true;
                        continue;
                    }
                    match (flag, args.next()) {
                        ("--upstreams", Some(v)) => upstreams = Some(addresses(v)?),
                        ("--version", Some(v)) => version = Some(v.to_string()),
                        ("--timeout", v) => timeout = Some(duration(v, flag)?),
                        _ => return fail(format!("unexpected `{flag}`; usage: {usage}")),
                    }
                }
                let Some(upstreams) = upstreams else {
                    return fail(format!("deploy needs --upstreams; usage: {usage}"));
                };
                Command::Deploy {
                    slot,
                    upstreams,
                    version,
                    timeout,
                    progress,
                }
            }
            other => return fail(format!("unknown command `{other}`; try `help`")),
        };
        if let Some(extra) = args.next() {
            return fail(format!("unexpected `{extra}` after `{name}`"));
        }
        Ok(cmd)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_command() {
        assert_eq!(Command::parse("status"), Ok(Command::Status));
        assert_eq!(
            Command::parse("flip green --force --drain-timeout 5s"),
            Ok(Command::Flip {
                slot: SlotName::Green,
                force: true,
                drain_timeout: Some(Duration::from_secs(5))
            })
        );
        assert_eq!(
            Command::parse("rollback"),
            Ok(Command::Rollback { force: false })
        );
        assert_eq!(
            Command::parse("set blue upstreams 127.0.0.1:1,127.0.0.1:2"),
            Ok(Command::Set {
                slot: SlotName::Blue,
                field: SetField::Upstreams(vec!["127.0.0.1:1".into(), "127.0.0.1:2".into()]),
                force: false
            })
        );
        assert_eq!(
            Command::parse("set green version 2.0 --force"),
            Ok(Command::Set {
                slot: SlotName::Green,
                field: SetField::Version("2.0".into()),
                force: true
            })
        );
        assert_eq!(
            Command::parse("drain blue --wait --timeout 500ms"),
            Ok(Command::Drain {
                slot: SlotName::Blue,
                wait: true,
                timeout: Some(Duration::from_millis(500))
            })
        );
        assert_eq!(
            Command::parse("weights blue=100 green=0"),
            Ok(Command::Weights {
                blue: 100,
                green: 0
            })
        );
        assert_eq!(
            Command::parse("flip blue --drain-timeout 24h"),
            Ok(Command::Flip {
                slot: SlotName::Blue,
                force: false,
                drain_timeout: Some(Duration::from_secs(24 * 3600))
            })
        );
        assert_eq!(
            Command::parse("weights green=1 blue=9"),
            Ok(Command::Weights { blue: 9, green: 1 })
        );
        assert_eq!(
            Command::parse("deploy green --upstreams 127.0.0.1:5 --version 2 --timeout 1m"),
            Ok(Command::Deploy {
                slot: SlotName::Green,
                upstreams: vec!["127.0.0.1:5".into()],
                version: Some("2".into()),
                timeout: Some(Duration::from_secs(60)),
                progress: false,
            })
        );
        assert_eq!(
            Command::parse("deploy blue --progress --upstreams 127.0.0.1:5"),
            Ok(Command::Deploy {
                slot: SlotName::Blue,
                upstreams: vec!["127.0.0.1:5".into()],
                version: None,
                timeout: None,
                progress: true,
            })
        );
        assert_eq!(Command::parse("  help  "), Ok(Command::Help));
        assert_eq!(Command::parse("reload"), Ok(Command::Reload));
        assert_eq!(Command::parse("health"), Ok(Command::Health));
        assert_eq!(Command::parse("stats"), Ok(Command::Stats));
    }

    #[test]
    fn rejects_bad_lines_with_a_reason() {
        for (line, needle) in [
            ("", "empty"),
            ("frobnicate", "unknown command"),
            ("flip purple", "unknown slot"),
            ("flip", "missing slot"),
            ("flip blue --forse", "unexpected"),
            ("flip blue --drain-timeout soon", "--drain-timeout"),
            ("set blue upstreams nohost", "host:port"),
            ("set blue colour red", "cannot set"),
            ("set blue", "usage"),
            ("weights blue=1", "both weights"),
            ("weights blue=0 green=0", "above 0"),
            ("weights blue=x green=1", "whole number"),
            ("weights blue=4294967295 green=1", "at most 100"),
            ("weights blue=101 green=0", "at most 100"),
            ("weights blue=99999999999 green=1", "whole number"),
            (
                "flip green --drain-timeout 18446744073709551615s",
                "longer than",
            ),
            ("flip green --drain-timeout 25h", "longer than"),
            ("drain blue --wait --timeout 1000000000y", "--timeout"),
            (
                "deploy green --upstreams 127.0.0.1:5 --timeout 2days",
                "longer than",
            ),
            ("deploy green", "--upstreams"),
            ("status now", "unexpected `now`"),
        ] {
            let err = Command::parse(line).unwrap_err();
            assert!(err.0.contains(needle), "{line:?} gave {err}");
        }
    }
}
