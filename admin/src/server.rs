//! The socket side: bind safely, then answer one JSON line per command line.

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::watch;

use crate::{progress_line, reply_line, Command, Handler, Progress};

/// Longest command line accepted, newline excluded.
pub const MAX_LINE: usize = 64 * 1024;
/// Admin connections open at once; one more gets an error line and is closed.
pub const MAX_CONNECTIONS: usize = 64;

/// Why the admin socket could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    /// Another process answers on the socket.
    #[error("{0}: a running proxy already listens on this admin socket; stop it or choose another [admin] socket")]
    Live(PathBuf),
    /// The socket could not be created.
    #[error("{path}: cannot open admin socket: {source}")]
    Io {
        /// The socket path.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
}

/// Binds the admin socket at `path` with file mode `mode`.
///
/// A stale socket file (nobody accepts on it) is replaced; a live one is an error, so that a
/// second proxy started by mistake cannot steal the first one's admin channel. Meant to be called
/// before the runtime starts, so that a bad socket stops the process before it serves anything.
pub fn bind(path: &Path, mode: u32) -> Result<std::os::unix::net::UnixListener, BindError> {
    let io_err = |source| BindError::Io {
        path: path.to_path_buf(),
        source,
    };
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(BindError::Live(path.to_path_buf()));
        }
        std::fs::remove_file(path).map_err(io_err)?;
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(io_err)?;
    }
    let listener = std::os::unix::net::UnixListener::bind(path).map_err(io_err)?;
    // Tighten right after bind: the window before it is as narrow as the OS allows.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(io_err)?;
    listener.set_nonblocking(true).map_err(io_err)?;
    Ok(listener)
}

/// Accepts connections until `shutdown` turns true, serving each on its own task, at most
/// [`MAX_CONNECTIONS`] at once. A connection that waits longer than `idle` between two command
/// lines (a command that runs, `drain --wait` or `deploy`, is not waiting) is closed.
pub async fn serve<H: Handler>(
    listener: std::os::unix::net::UnixListener,
    handler: Arc<H>,
    idle: std::time::Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let listener = match UnixListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "admin socket cannot be served");
            return;
        }
    };
    let open = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((mut stream, _)) => {
                    let Ok(permit) = open.clone().try_acquire_owned() else {
                        tokio::spawn(async move {
                            let err = format!("too many admin connections ({MAX_CONNECTIONS} open)");
                            let mut line = reply_line(&Err(err));
                            line.push('\n');
                            let write = stream.write_all(line.as_bytes());
                            let _ = tokio::time::timeout(std::time::Duration::from_secs(1), write).await;
                        });
                        continue;
                    };
                    let handler = handler.clone();
                    tokio::spawn(async move {
                        if let Err(e) = serve_connection(stream, handler, idle).await {
                            tracing::debug!(error = %e, "admin connection ended");
                        }
                        drop(permit);
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            },
            _ = shutdown.changed() => {
                if *shutdown.borrow() {
                    return;
                }
            }
        }
    }
}

/// Answers command lines on one connection until the client closes it, or waits longer than
/// `idle` for a whole line.
pub async fn serve_connection<H: Handler>(
    stream: UnixStream,
    handler: Arc<H>,
    idle: std::time::Duration,
) -> io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    let mut line = Vec::with_capacity(256);
    loop {
        line.clear();
        let Ok(read) = tokio::time::timeout(idle, read_line(&mut reader, &mut line)).await else {
            return Ok(());
        };
        let outcome = match read? {
            Line::Eof => return Ok(()),
            Line::TooLong => Err(format!("line longer than {} KiB", MAX_LINE / 1024)),
            Line::Complete => match std::str::from_utf8(&line) {
                Err(_) => Err("command is not valid UTF-8".to_string()),
                Ok(text) => match Command::parse(text.trim_end_matches('\r')) {
                    Err(e) => Err(e.0),
                    Ok(cmd) if cmd.reports_progress() => {
                        with_progress(&*handler, cmd, &mut write).await?
                    }
                    Ok(cmd) => handler.handle(cmd).await,
                },
            },
        };
        let mut reply = reply_line(&outcome);
        reply.push('\n');
        write.write_all(reply.as_bytes()).await?;
    }
}

/// Runs `cmd`, writing a progress line for each step as it ends, and returns its outcome.
async fn with_progress<H: Handler, W: tokio::io::AsyncWrite + Unpin>(
    handler: &H,
    cmd: Command,
    write: &mut W,
) -> io::Result<Result<crate::Reply, String>> {
    let (progress, mut steps) = Progress::channel();
    let run = handler.handle_with_progress(cmd, progress);
    tokio::pin!(run);
    loop {
        tokio::select! {
            biased;
            Some(step) = steps.recv() => {
                let mut line = progress_line(&step);
                line.push('\n');
                write.write_all(line.as_bytes()).await?;
            }
            outcome = &mut run => {
                // Steps sent just before the end are written before the reply.
                while let Ok(step) = steps.try_recv() {
                    let mut line = progress_line(&step);
                    line.push('\n');
                    write.write_all(line.as_bytes()).await?;
                }
                return Ok(outcome);
            }
        }
    }
}

enum Line {
    Complete,
    TooLong,
    Eof,
}

/// Reads one `\n`-terminated line into `buf`, never holding more than [`MAX_LINE`] bytes of it.
///
/// An over-long line is consumed to its end and reported as [`Line::TooLong`], so the next line
/// is read in step. A last line without a newline counts as complete; a client that hangs up
/// mid-line has nothing to be answered.
async fn read_line<R: tokio::io::AsyncBufRead + Unpin>(
    reader: &mut R,
    buf: &mut Vec<u8>,
) -> io::Result<Line> {
    let mut too_long = false;
    loop {
        let chunk = reader.fill_buf().await?;
        if chunk.is_empty() {
            return Ok(if buf.is_empty() && !too_long {
                Line::Eof
            } else if too_long {
                Line::TooLong
            } else {
                Line::Complete
            });
        }
        let (take, done) = match chunk.iter().position(|&b| b == b'\n') {
            Some(i) => (i, true),
            None => (chunk.len(), false),
        };
        if !too_long {
            if buf.len() + take > MAX_LINE {
                too_long = true;
                buf.clear();
            } else {
                buf.extend_from_slice(&chunk[..take]);
            }
        }
        reader.consume(if done { take + 1 } else { take });
        if done {
            return Ok(if too_long {
                Line::TooLong
            } else {
                Line::Complete
            });
        }
    }
}
