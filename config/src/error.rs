//! Config errors that point at the file, line, column and key.

use std::ops::Range;

/// A config that cannot be used, and where the problem is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{file}: cannot read config: {message}")]
    Io {
        /// The config file.
        file: String,
        /// What the OS said.
        message: String,
    },
    /// The file was read but is not a valid config.
    #[error("{file}:{line}:{col}: {message}")]
    Invalid {
        /// The config file.
        file: String,
        /// 1-based line of the problem.
        line: usize,
        /// 1-based column of the problem.
        col: usize,
        /// What is wrong, starting with the dotted key (`health.interval: …`).
        message: String,
    },
}

impl ConfigError {
    pub(crate) fn from_toml(file: &str, text: &str, e: &toml::de::Error) -> ConfigError {
        let span = e.span().unwrap_or(0..0);
        let message = e.message().trim().to_string();
        ConfigError::at_span(file, text, span, message)
    }

    /// Builds an error at `span` of `text`; prefixes the message with the key found there.
    pub(crate) fn at_span(
        file: &str,
        text: &str,
        span: Range<usize>,
        message: String,
    ) -> ConfigError {
        let (line, col) = line_col(text, span.start);
        let message = match key_at(text, span.start) {
            Some(key) if !message.starts_with(&format!("{key}:")) => format!("{key}: {message}"),
            _ => message,
        };
        ConfigError::Invalid {
            file: file.to_string(),
            line,
            col,
            message,
        }
    }
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

/// The dotted key in force at `offset`: the enclosing table header plus the last `key =` seen.
///
/// A scan of the text, not a parse: it only has to name the key for a human, and it works on
/// text that failed to parse.
fn key_at(text: &str, offset: usize) -> Option<String> {
    let mut table = String::new();
    let mut array_counts: Vec<(String, usize)> = Vec::new();
    let mut key: Option<String> = None;
    let mut pos = 0;
    for raw in text.split_inclusive('\n') {
        if pos > offset {
            break;
        }
        pos += raw.len();
        let line = raw.trim();
        if let Some(name) = line.strip_prefix("[[").and_then(|l| l.split("]]").next()) {
            let name = name.trim().to_string();
            let n = match array_counts.iter_mut().find(|(k, _)| *k == name) {
                Some((_, n)) => {
                    *n += 1;
                    *n
                }
                None => {
                    array_counts.push((name.clone(), 0));
                    0
                }
            };
            table = format!("{name}[{n}]");
            key = None;
        } else if let Some(name) = line.strip_prefix('[').and_then(|l| l.split(']').next()) {
            table = name.trim().to_string();
            key = None;
        } else if let Some((k, _)) = line.split_once('=') {
            let k = k.trim();
            if !k.is_empty() && !k.starts_with('#') && !k.contains(['"', '[', '{', ',']) {
                key = Some(k.to_string());
            }
        }
    }
    match (table.is_empty(), key) {
        (true, None) => None,
        (true, Some(k)) => Some(k),
        (false, None) => Some(table),
        (false, Some(k)) => Some(format!("{table}.{k}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_at_names_table_and_key() {
        let text = "[health]\npath = \"/h\"\ninterval = \"x\"\n";
        let off = text.find("\"x\"").unwrap();
        assert_eq!(key_at(text, off).as_deref(), Some("health.interval"));
        assert_eq!(line_col(text, off), (3, 12));
    }

    #[test]
    fn key_at_counts_array_tables() {
        let text = "[[routes]]\nprefix = \"/\"\n[[routes]]\nprefix = \"x\"\n";
        let off = text.rfind("\"x\"").unwrap();
        assert_eq!(key_at(text, off).as_deref(), Some("routes[1].prefix"));
    }
}
