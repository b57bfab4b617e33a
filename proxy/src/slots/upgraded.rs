//! Open connections per slot, so that a drain that times out can close them: upgraded ones
//! (WebSockets) and the fast path's upstream exchanges (long polls).
//!
//! Pingora gives no handle on a proxied connection's task, so the registry keeps a duplicate of
//! each upgraded connection's upstream socket. An upgraded connection is never returned to the
//! upstream pool, so acting on its socket cannot touch another request. Cutting is done in two
//! steps: a WebSocket close frame (code 1001, "going away") sent to the upstream on the client's
//! behalf, so the upstream answers with its own close frame that reaches the client through the
//! proxy; then, after a grace period, a TCP shutdown of whatever is still open.

use std::collections::HashMap;
use std::net::Shutdown;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use tokio::net::TcpStream;

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

impl UpgradedConns {
    /// Registers the upgraded connection whose upstream socket is `fd`; returns its key.
    pub fn register(&self, slot: SlotName, fd: RawFd) -> Option<u64> {
        // SAFETY: `fd` is the upstream socket of the request being processed, handed over by
        // Pingora while that connection is open (from the response header hook of the same
        // request).
        #[allow(unsafe_code)]
        let owned = unsafe { crate::fd::duplicate(fd) }.ok()?;
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

/// The fast path's upstream connections in use, per slot, by raw descriptor.
///
/// A descriptor is registered while its exchange owns the socket and unregistered (under the
/// same lock) before the socket is closed or parked, so every descriptor in the registry is an
/// open socket of that exchange. Costs one uncontended lock per request.
#[derive(Debug, Default)]
pub struct Exchanges {
    slots: [Mutex<Slab>; 2],
    cuts: [AtomicU64; 2],
}

#[derive(Debug, Default)]
struct Slab {
    fds: Vec<Option<RawFd>>,
    free: Vec<usize>,
    used: usize,
}

/// An upstream socket in use by one exchange, registered with its slot until dropped or
/// released. It owns the socket, so the socket cannot close (or go back to the pool) while
/// still registered: `Drop` unregisters before the socket field is dropped.
pub struct Registered<'a> {
    reg: &'a Exchanges,
    slot: SlotName,
    key: usize,
    stream: Option<TcpStream>,
}

impl Registered<'_> {
    /// The socket.
    #[inline]
    pub fn stream(&mut self) -> &mut TcpStream {
        self.stream.as_mut().expect("present until released")
    }

    /// Unregisters and hands the socket back (to be pooled).
    #[inline]
    pub fn release(mut self) -> TcpStream {
        let stream = self.stream.take().expect("present until released");
        drop(self);
        stream
    }
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        let mut slab = self.reg.slots[self.slot.index()]
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        slab.fds[self.key] = None;
        slab.free.push(self.key);
        slab.used -= 1;
    }
}

impl Exchanges {
    /// Registers the upstream socket of an exchange on `slot`, which the guard then owns.
    #[inline]
    pub fn register(&self, slot: SlotName, stream: TcpStream) -> Registered<'_> {
        let fd = stream.as_raw_fd();
        let mut slab = self.slots[slot.index()]
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let key = match slab.free.pop() {
            Some(k) => {
                slab.fds[k] = Some(fd);
                k
            }
            None => {
                slab.fds.push(Some(fd));
                slab.fds.len() - 1
            }
        };
        slab.used += 1;
        Registered {
            reg: self,
            slot,
            key,
            stream: Some(stream),
        }
    }

    /// How many times `slot`'s exchanges were cut; an exchange that sees it change stops.
    #[inline]
    pub fn cut_epoch(&self, slot: SlotName) -> u64 {
        self.cuts[slot.index()].load(Ordering::Acquire)
    }

    /// Shuts down every registered exchange of `slot`; returns how many.
    #[allow(unsafe_code)]
    pub fn shutdown_all(&self, slot: SlotName) -> usize {
        self.cuts[slot.index()].fetch_add(1, Ordering::AcqRel);
        let slab = self.slots[slot.index()]
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        for fd in slab.fds.iter().flatten() {
            // SAFETY: a registered descriptor is an open socket owned by a running exchange:
            // it is unregistered under this lock before its socket is closed (see `Exchanges`).
            let borrowed = unsafe { BorrowedFd::borrow_raw(*fd) };
            let _ = socket2::SockRef::from(&borrowed).shutdown(Shutdown::Both);
        }
        slab.used
    }
}
