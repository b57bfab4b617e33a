//! Idle upstream connections of the fast path, kept per member for reuse.

/// Idle upstream connections kept for reuse, newest last.
#[derive(Debug, Default)]
pub struct IdleConns {
    conns: std::sync::Mutex<Vec<(tokio::net::TcpStream, std::time::Instant)>>,
}

impl IdleConns {
    /// The most recently parked connection not idle longer than `max_idle`.
    #[inline]
    pub fn take(&self, max_idle: std::time::Duration) -> Option<tokio::net::TcpStream> {
        let mut conns = self.conns.lock().unwrap_or_else(|p| p.into_inner());
        while let Some((c, since)) = conns.pop() {
            if since.elapsed() < max_idle {
                return Some(c);
            }
        }
        None
    }

    /// Parks `conn` for reuse, unless `max` are parked already.
    #[inline]
    pub fn put(&self, conn: tokio::net::TcpStream, max: usize) {
        let mut conns = self.conns.lock().unwrap_or_else(|p| p.into_inner());
        if conns.len() < max {
            conns.push((conn, std::time::Instant::now()));
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
