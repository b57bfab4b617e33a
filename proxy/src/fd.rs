//! Descriptor duplication, for the registries that must keep a socket reachable after the
//! object that owns it is gone or out of reach (upgraded connections, parked connections); the
//! send timeout of client sockets; the accept loops' backoff.

use std::os::fd::{BorrowedFd, OwnedFd, RawFd};

/// Duplicates `fd` into a descriptor of its own, open however the original is closed.
///
/// # Safety
/// `fd` must be an open descriptor for the whole call; each caller says why it is.
#[allow(unsafe_code)]
pub(crate) unsafe fn duplicate(fd: RawFd) -> std::io::Result<OwnedFd> {
    // SAFETY: open for the call, by this function's contract; only borrowed for the `dup`.
    unsafe { BorrowedFd::borrow_raw(fd) }.try_clone_to_owned()
}

/// Sets `TCP_USER_TIMEOUT` on the socket `fd`: the kernel aborts the connection once data it
/// sent stays unacknowledged, or the peer's window stays shut, for `timeout` — how a client that
/// stops reading is let go of (nginx's `send_timeout`) without a timer per write.
///
/// # Safety
/// `fd` must be an open descriptor for the whole call.
#[allow(unsafe_code)]
pub(crate) unsafe fn set_user_timeout(
    fd: RawFd,
    timeout: std::time::Duration,
) -> std::io::Result<()> {
    let ms = libc::c_uint::try_from(timeout.as_millis()).unwrap_or(libc::c_uint::MAX);
    // SAFETY: `fd` is open for the call (this function's contract); the option value is a
    // `c_uint` on the stack, its size passed with it.
    let r = unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_USER_TIMEOUT,
            (&ms as *const libc::c_uint).cast(),
            std::mem::size_of::<libc::c_uint>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// What an accept loop does after `accept` failed: descriptors or memory ran out (EMFILE,
/// ENFILE, ENOBUFS, ENOMEM) and the next call would fail at once again, so it waits instead of
/// spinning; other errors (a connection reset before it was accepted) wait a little too. The
/// error is logged at most once per [`ACCEPT_LOG_EVERY`], with the count since the last line.
pub(crate) struct AcceptBackoff {
    what: &'static str,
    last_log: Option<std::time::Instant>,
    quiet: u64,
}

/// Wait after running out of descriptors or memory.
const ACCEPT_EXHAUSTED_WAIT: std::time::Duration = std::time::Duration::from_millis(100);
/// Wait after any other accept error.
const ACCEPT_OTHER_WAIT: std::time::Duration = std::time::Duration::from_millis(5);
/// Shortest time between two log lines of one accept loop.
const ACCEPT_LOG_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

impl AcceptBackoff {
    /// For the accept loop of `what` (`"metrics"`, `"admin"`, …).
    pub(crate) fn new(what: &'static str) -> AcceptBackoff {
        AcceptBackoff {
            what,
            last_log: None,
            quiet: 0,
        }
    }

    /// Logs `e` (rate-limited) and waits before the next `accept`.
    pub(crate) async fn failed(&mut self, e: &std::io::Error) {
        let exhausted = matches!(
            e.raw_os_error(),
            Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
        );
        let now = std::time::Instant::now();
        if self
            .last_log
            .is_none_or(|t| now.duration_since(t) >= ACCEPT_LOG_EVERY)
        {
            tracing::warn!(listener = self.what, error = %e, since_last = self.quiet, "accept failed");
            self.last_log = Some(now);
            self.quiet = 0;
        } else {
            self.quiet += 1;
        }
        let wait = if exhausted {
            ACCEPT_EXHAUSTED_WAIT
        } else {
            ACCEPT_OTHER_WAIT
        };
        tokio::time::sleep(wait).await;
    }
}
