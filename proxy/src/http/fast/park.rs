//! Idle client connections, parked outside their tasks.
//!
//! A keep-alive connection waiting for its next request costs, as a Tokio task, its future, a
//! Pingora stream and a reactor registration: kilobytes. Most such connections wait for seconds
//! or minutes (browsers keep them open between page views), so after `[server]
//! park_idle_after` of silence the fast path hands the socket here instead. Its task ends and
//! the socket waits in one epoll set shared by the process, with a few dozen bytes of
//! bookkeeping — an idle connection becomes a file descriptor and a small record, as in nginx
//! and HAProxy.
//!
//! Lifecycle of a parked socket:
//! 1. [`Parking::park`] duplicates the descriptor, drops the Pingora stream (its task ends) and
//!    registers the duplicate for readability under its slab key.
//! 2. The park thread waits on the epoll set. When a socket turns readable (a request, or the
//!    client's FIN), its record is removed and deregistered, and the socket is spawned back onto
//!    the runtime it came from, into the same request loop ([`FastApp::resume`]).
//! 3. Once a second the thread closes sockets whose keep-alive deadline has passed and has the
//!    allocator return the memory the ended tasks freed; on shutdown it closes every parked
//!    socket and new ones are closed instead of parked.
//!
//! Only the park thread removes records, and it deregisters or closes a socket before its key
//! can be handed out again, so an event's token always names the record it was registered for.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Registry, Token};
use pingora_core::protocols::l4::stream::Stream as L4Stream;
use pingora_core::server::ShutdownWatch;
use prometheus::IntGauge;
use slab::Slab;
use tokio::runtime::Handle;

use super::FastApp;

/// How often parked sockets are checked against their deadline and the shutdown flag.
const SWEEP: Duration = Duration::from_secs(1);
/// Readiness events taken from the kernel per wait.
const EVENTS: usize = 256;

/// One parked socket.
struct Parked {
    fd: OwnedFd,
    /// When its keep-alive time runs out.
    deadline: Instant,
    /// The runtime whose request loop it left, and returns to.
    runtime: Handle,
}

/// What the park thread and the runtimes share.
#[derive(Default)]
struct Shared {
    parked: Slab<Parked>,
    /// Runtimes that parked a connection since the last sweep: their threads freed that
    /// connection's task, and only the owning thread can hand the allocator's pages back.
    collect: Vec<Handle>,
}

/// The process's set of parked idle client connections, and the thread that watches it.
pub(super) struct Parking {
    registry: Registry,
    shared: Mutex<Shared>,
    shutdown: ShutdownWatch,
    /// `bascule_connections_parked`.
    gauge: IntGauge,
}

impl Parking {
    /// Creates the epoll set and starts the park thread, which serves `app` until it is dropped;
    /// `gauge` shows how many connections are parked.
    pub(super) fn start(
        app: Weak<FastApp>,
        shutdown: ShutdownWatch,
        gauge: IntGauge,
    ) -> io::Result<Arc<Parking>> {
        let poll = Poll::new()?;
        let parking = Arc::new(Parking {
            registry: poll.registry().try_clone()?,
            shared: Mutex::default(),
            shutdown,
            gauge,
        });
        let watcher = parking.clone();
        std::thread::Builder::new()
            .name("bascule-park".into())
            .spawn(move || watcher.run(poll, app))?;
        Ok(parking)
    }

    /// Takes `client` out of its task until it turns readable or `deadline` passes.
    ///
    /// Called from a runtime's task with no request bytes pending on the connection. On any
    /// failure, and once shutdown has begun, the connection is closed instead, as an idle
    /// keep-alive connection may be at any time.
    pub(super) fn park(&self, client: Box<L4Stream>, deadline: Instant) {
        if *self.shutdown.borrow() {
            return;
        }
        // SAFETY: `client` owns its socket and outlives the call.
        #[allow(unsafe_code)]
        let fd = unsafe { crate::fd::duplicate(client.as_raw_fd()) };
        let (Ok(runtime), Ok(fd)) = (Handle::try_current(), fd) else {
            return;
        };
        // Closes Pingora's descriptor and its Tokio registration; the duplicate keeps the
        // connection open.
        drop(client);
        let mut shared = lock(&self.shared);
        if !shared.collect.iter().any(|h| h.id() == runtime.id()) {
            shared.collect.push(runtime.clone());
        }
        let slot = shared.parked.vacant_entry();
        let token = Token(slot.key());
        let registered =
            self.registry
                .register(&mut SourceFd(&fd.as_raw_fd()), token, Interest::READABLE);
        if registered.is_ok() {
            slot.insert(Parked {
                fd,
                deadline,
                runtime,
            });
        }
    }

    /// The park thread: wakes readable sockets, closes expired ones, until `app` is gone.
    fn run(self: Arc<Self>, mut poll: Poll, app: Weak<FastApp>) {
        let mut events = Events::with_capacity(EVENTS);
        let mut woken = Vec::with_capacity(EVENTS);
        let mut next_sweep = Instant::now() + SWEEP;
        loop {
            if let Err(e) = poll.poll(&mut events, Some(SWEEP)) {
                if e.kind() != io::ErrorKind::Interrupted {
                    // Without its poller the set cannot wake anyone: close what it holds.
                    tracing::error!(error = %e, "idle connection set failed; closing parked connections");
                    lock(&self.shared).parked.clear();
                    self.gauge.set(0);
                    return;
                }
            }
            let app = app.upgrade();
            let closing = app.is_none() || *self.shutdown.borrow();
            let now = Instant::now();
            let sweep = now >= next_sweep;
            let mut collect = Vec::new();
            {
                let mut shared = lock(&self.shared);
                for event in events.iter() {
                    let key = event.token().0;
                    if let Some(p) = shared.parked.try_remove(key) {
                        // Tokio registers the socket anew in its own poller; this set must
                        // stop reporting it.
                        let _ = self.registry.deregister(&mut SourceFd(&p.fd.as_raw_fd()));
                        woken.push(p);
                    }
                }
                // Dropping a record closes its socket, which also leaves the epoll set: the
                // duplicate is the connection's only descriptor.
                if closing {
                    shared.parked.clear();
                } else if sweep {
                    shared.parked.retain(|_, p| p.deadline > now);
                }
                if sweep {
                    collect = std::mem::take(&mut shared.collect);
                    self.gauge.set(shared.parked.len() as i64);
                }
            }
            if sweep {
                for runtime in collect {
                    runtime.spawn(async { release_freed_memory(true) });
                }
                // Pages the runtimes gave back at the last sweep are past the purge delay now.
                release_freed_memory(false);
                next_sweep = now + SWEEP;
            }
            let Some(app) = app else {
                return;
            };
            // A request that arrived on a parked connection is served, even during shutdown:
            // the request loop then closes the connection after it.
            for p in woken.drain(..) {
                let app = app.clone();
                let shutdown = self.shutdown.clone();
                p.runtime
                    .spawn(async move { app.resume(p.fd, shutdown).await });
            }
        }
    }
}

/// Lets the allocator give back to the OS the pages that parked connections' tasks freed.
///
/// mimalloc (the binary's global allocator) keeps a thread's emptied pages until that thread
/// collects them, and returns collected pages to the OS lazily, on a later call past its purge
/// delay. Once every connection is parked the runtime threads make no such call, and the
/// kilobytes each task held would stay resident. So each sweep runs this, forced, once on every
/// runtime that parked something since the last sweep (a normal collection skips the pages
/// mimalloc counts as full, which is where a burst of connection tasks lives), and unforced on
/// the park thread (the process-wide purge, a no-op when nothing is due). At most once a second
/// per runtime, and only while connections are being parked. With `[server] work_stealing`
/// Pingora runs one multi-threaded runtime, and the collection reaches only the worker that
/// runs it; the default (one single-threaded runtime per thread) reaches every thread.
#[allow(unsafe_code)]
fn release_freed_memory(force: bool) {
    // SAFETY: `mi_collect` takes no pointers and may be called from any thread at any time.
    unsafe { libmimalloc_sys::mi_collect(force) }
}

fn lock(m: &Mutex<Shared>) -> MutexGuard<'_, Shared> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
