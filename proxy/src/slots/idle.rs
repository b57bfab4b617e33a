//! Idle upstream connections of the fast path, kept per member for reuse.
//!
//! A connection is handed to a request only when it is provably idle: nothing has arrived on
//! it since its last response ended, not even EOF. An upstream that writes after its response
//! (a body after a HEAD's head, a stray second response) would otherwise have those bytes read
//! as the answer to the next request — another client's (pool poisoning). nginx and Pingora
//! test the same on reuse.

use std::io::ErrorKind;
use std::mem::MaybeUninit;
use std::time::{Duration, Instant};

use tokio::net::TcpStream;

/// Idle upstream connections kept for reuse, newest last.
#[derive(Debug, Default)]
pub struct IdleConns {
    conns: std::sync::Mutex<Vec<(TcpStream, Instant)>>,
}

/// Whether nothing is waiting to be read on `conn`: no bytes and no EOF. One non-blocking
/// `recv(MSG_PEEK)` of one byte.
fn provably_idle(conn: &TcpStream) -> bool {
    let mut byte = [MaybeUninit::<u8>::uninit(); 1];
    match socket2::SockRef::from(conn).peek(&mut byte) {
        Err(e) => e.kind() == ErrorKind::WouldBlock,
        // 0: EOF; more: bytes nobody asked for.
        Ok(_) => false,
    }
}

impl IdleConns {
    /// The most recently parked connection that is not idle longer than `max_idle` and has
    /// received nothing while idle; the others are closed on the way.
    #[inline]
    pub fn take(&self, max_idle: Duration) -> Option<TcpStream> {
        loop {
            let (c, since) = {
                let mut conns = self.conns.lock().unwrap_or_else(|p| p.into_inner());
                conns.pop()?
            };
            if since.elapsed() < max_idle && provably_idle(&c) {
                return Some(c);
            }
        }
    }

    /// Parks `conn` for reuse, unless `max` are parked already.
    #[inline]
    pub fn put(&self, conn: TcpStream, max: usize) {
        let mut conns = self.conns.lock().unwrap_or_else(|p| p.into_inner());
        if conns.len() < max {
            conns.push((conn, Instant::now()));
        }
    }

    /// Closes every parked connection.
    pub fn clear(&self) {
        self.conns.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    /// Connections parked now.
    pub fn len(&self) -> usize {
        self.conns.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Whether none is parked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
