//! Upgraded connections (WebSockets) per slot, so that a drain that times out can close them.
//!
//! Pingora gives no handle on a proxied connection's task, so the registry keeps a duplicate of
//! each upgraded connection's upstream socket. An upgraded connection is never returned to the
//! upstream pool, so acting on its socket cannot touch another request. Cutting is done in two
//! steps: a WebSocket close frame (code 1001, "going away") sent to the upstream on the client's
//! behalf, so the upstream answers with its own close frame that reaches the client through the
//! proxy; then, after a grace period, a TCP shutdown of whatever is still open.

use std::collections::HashMap;
use std::net::Shutdown;
use std::os::fd::{BorrowedFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use crate::SlotName;

/// A masked client close frame: FIN + close opcode, mask bit + 2-byte payload, mask key,
/// payload 1001 (0x03E9) masked with the key.
const CLOSE_GOING_AWAY: [u8; 8] = [0x88, 0x82, 0x37, 0xfa, 0x21, 0x3d, 0x03 ^ 0x37, 0xE9 ^ 0xfa];

/// The upgraded connections of both slots.
#[derive(Debug, Default)]
pub struct UpgradedConns {
    slots: [Mutex<HashMap<u64, OwnedFd>>; 2],
    next: AtomicU64,
}

/// Duplicates `fd` so that it stays valid however the proxy's own copy is closed.
#[allow(unsafe_code)]
fn duplicate(fd: RawFd) -> std::io::Result<OwnedFd> {
    // SAFETY: `fd` is the upstream socket of the request being processed, handed to us by
    // Pingora while that connection is open (called from the response header hook of the same
    // request); it is only borrowed for the `dup` call below.
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    borrowed.try_clone_to_owned()
}

impl UpgradedConns {
    /// Registers the upgraded connection whose upstream socket is `fd`; returns its key.
    pub fn register(&self, slot: SlotName, fd: RawFd) -> Option<u64> {
        let owned = duplicate(fd).ok()?;
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.slots[slot.index()]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, owned);
        Some(id)
    }

    /// Forgets a connection that ended.
    pub fn unregister(&self, slot: SlotName, id: u64) {
        self.slots[slot.index()]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
    }

    /// Upgraded connections open on `slot`.
    pub fn count(&self, slot: SlotName) -> usize {
        self.slots[slot.index()]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }

    /// Asks every upgraded connection of `slot` to close (WebSocket close 1001 to the
    /// upstream); returns how many were asked.
    pub fn close_all(&self, slot: SlotName) -> usize {
        let map = self.slots[slot.index()]
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        for fd in map.values() {
            let _ = socket2::SockRef::from(fd).send(&CLOSE_GOING_AWAY);
        }
        map.len()
    }

    /// Shuts down every upgraded connection of `slot` still open; returns how many.
    pub fn shutdown_all(&self, slot: SlotName) -> usize {
        let map = self.slots[slot.index()]
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        for fd in map.values() {
            let _ = socket2::SockRef::from(fd).shutdown(Shutdown::Both);
        }
        map.len()
    }
}
