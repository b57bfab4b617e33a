//! When a failed upstream attempt may be tried again: one set of rules for both request paths.
//!
//! A request is tried again only while no byte of its response has reached the client, and
//! never replayed once something that cannot be sent twice has left: a non-idempotent request,
//! or a body no longer held whole. Within that, as nginx's `proxy_next_upstream error`: a
//! connect failure moves to another member; a pooled connection that turns out closed is
//! replaced by a fresh one to the same member; a fresh connection that fails moves to another
//! member; a timeout is answered (504), not multiplied.

/// Whether a request with this method may be sent twice (RFC 9110 §9.2.2).
pub(crate) fn idempotent(method: &str) -> bool {
    matches!(
        method,
        "GET" | "HEAD" | "PUT" | "DELETE" | "OPTIONS" | "TRACE"
    )
}

/// How an attempt failed, before any response byte reached the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Failure {
    /// No connection: nothing was sent.
    Connect,
    /// No connection in time: nothing was sent.
    ConnectTimeout,
    /// A reused (pooled) connection failed before any response byte.
    Stale,
    /// A fresh connection failed before any response byte.
    Exchange,
    /// No answer in time.
    Timeout,
}

/// Most pooled connections that may turn out stale for one request.
const MAX_STALE: u8 = 2;

/// The attempts of one request so far.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Retries {
    /// Members that failed (bit `i` for member `i`).
    tried: u64,
    stale: u8,
    last: Option<Failure>,
}

/// What the next attempt must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Again {
    /// Open a fresh connection (a pooled one just turned out stale).
    pub(crate) fresh_only: bool,
}

impl Failure {
    /// The status the client gets when no attempt is left: 504 for a timeout, else 502.
    pub(crate) fn status(self) -> u16 {
        match self {
            Failure::Timeout | Failure::ConnectTimeout => 504,
            Failure::Connect | Failure::Stale | Failure::Exchange => 502,
        }
    }
}

impl Retries {
    /// The status when no member is left to pick: what the last attempt met, or 503 when
    /// nothing could be tried at all.
    pub(crate) fn exhausted_status(&self) -> u16 {
        self.last.map_or(503, Failure::status)
    }

    /// Members not to pick again (bit `i` for member `i`).
    pub(crate) fn skip(&self) -> u64 {
        self.tried
    }

    /// Records that the attempt on `member` (of `members`) failed with `failure`; returns how
    /// to try again, or `None` when the request must be answered with an error.
    /// `replayable`: the request may be sent again (idempotent, body still whole).
    pub(crate) fn after(
        &mut self,
        failure: Failure,
        member: usize,
        members: usize,
        replayable: bool,
    ) -> Option<Again> {
        self.last = Some(failure);
        match failure {
            Failure::Timeout => None,
            Failure::Stale if replayable && self.stale < MAX_STALE => {
                self.stale += 1;
                Some(Again { fresh_only: true })
            }
            Failure::Stale | Failure::Exchange if !replayable => None,
            Failure::Connect | Failure::ConnectTimeout | Failure::Stale | Failure::Exchange => {
                if member < 64 {
                    self.tried |= 1 << member;
                }
                let left = members.min(64) as u32 > self.tried.count_ones();
                left.then_some(Again { fresh_only: false })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules() {
        let mut r = Retries::default();
        assert_eq!(r.after(Failure::Timeout, 0, 2, true), None);
        assert_eq!(
            r.after(Failure::Stale, 0, 1, true),
            Some(Again { fresh_only: true })
        );
        assert_eq!(r.after(Failure::Exchange, 0, 1, true), None);
        let mut r = Retries::default();
        assert_eq!(
            r.after(Failure::Exchange, 0, 2, true),
            Some(Again { fresh_only: false })
        );
        assert_eq!(r.skip(), 1);
        assert_eq!(r.after(Failure::Connect, 1, 2, true), None);
        assert_eq!(r.exhausted_status(), 502);
        assert_eq!(Retries::default().exhausted_status(), 503);
        let mut r = Retries::default();
        assert_eq!(r.after(Failure::Exchange, 0, 2, false), None);
        assert!(r.after(Failure::Connect, 0, 2, false).is_some());
    }
}
