//! Descriptor duplication, for the registries that must keep a socket reachable after the
//! object that owns it is gone or out of reach (upgraded connections, parked connections).

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
