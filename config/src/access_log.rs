//! `[access_log]`: one line per answered request, where and in which format.

use std::path::PathBuf;

use crate::validate::Violation;

/// Default count of log lines that may wait for the writer; beyond it, lines are dropped.
pub const DEFAULT_ACCESS_LOG_BUFFER: usize = 8192;

/// Where access log lines go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccessLogPath {
    /// Standard output (`path = "-"`).
    Stdout,
    /// A file, appended to, created if missing; reopened on SIGUSR1.
    File(PathBuf),
}

/// The shape of one access log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessLogFormat {
    /// nginx's `combined`, followed by the request time in seconds, the slot and the upstream.
    Combined,
    /// One JSON object per line.
    Json,
}

/// `[access_log]`: present when the access log is on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessLogConfig {
    /// Where lines go.
    pub path: AccessLogPath,
    /// Line format.
    pub format: AccessLogFormat,
    /// Lines that may wait for the writer, in lines; beyond it they are dropped and counted.
    pub buffer: usize,
}

pub(crate) mod file {
    use serde::Deserialize;
    use toml::Spanned;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub(crate) struct AccessLog {
        pub(crate) path: Spanned<String>,
        pub(crate) format: Option<Spanned<String>>,
        pub(crate) buffer: Option<Spanned<usize>>,
    }
}

pub(crate) fn access_log(f: file::AccessLog) -> Result<AccessLogConfig, Violation> {
    let path = match f.path.get_ref().as_str() {
        "" => {
            return Err(Violation {
                span: f.path.span(),
                message: "access_log.path: a file path, or \"-\" for standard output".into(),
            })
        }
        "-" => AccessLogPath::Stdout,
        p => AccessLogPath::File(PathBuf::from(p)),
    };
    let format = match f.format.as_ref().map(|s| (s.get_ref().as_str(), s.span())) {
        None | Some(("combined", _)) => AccessLogFormat::Combined,
        Some(("json", _)) => AccessLogFormat::Json,
        Some((other, span)) => {
            return Err(Violation {
                span,
                message: format!("access_log.format: `{other}` is not \"combined\" or \"json\""),
            })
        }
    };
    let buffer = match f.buffer {
        Some(b) if *b.get_ref() == 0 => {
            return Err(Violation {
                span: b.span(),
                message: "access_log.buffer: at least 1 line".into(),
            })
        }
        Some(b) => b.into_inner(),
        None => DEFAULT_ACCESS_LOG_BUFFER,
    };
    Ok(AccessLogConfig {
        path,
        format,
        buffer,
    })
}
