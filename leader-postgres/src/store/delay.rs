//! The lock delay on the client's monotonic clock, and the warning for
//! servers without `idle_session_timeout`.
//!
//! A term that ended without a release keeps its seat empty for one TTL of
//! that term after this client first found it vacated. The acquire statement
//! reports such a term (and gives the lock back); this module remembers when
//! it was first seen and, once a TTL has passed on `tokio::time::Instant`,
//! tells the next statement that this client has waited it out. Neither the
//! server's clock nor the client's wall clock takes part, so a stepped clock
//! cannot shorten the delay.

use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::time::Instant;

use super::PostgresStore;
use crate::conn::Conn;

/// A vacated term this client saw: its token, when first seen, its TTL.
#[derive(Debug, Clone, Copy)]
pub(super) struct Vacated {
    token: i64,
    first_seen: Instant,
    ttl: Duration,
}

impl PostgresStore {
    fn vacated(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<i64, Vacated>> {
        // Single inserts and removes: a panic cannot leave it half-done.
        self.inner.vacated.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The token of the vacated term on `lock_key` whose delay this client
    /// has waited out, if any: the acquire statement then takes the seat.
    pub(super) fn waited_out(&self, lock_key: i64) -> Option<i64> {
        self.vacated()
            .get(&lock_key)
            .filter(|v| v.first_seen.elapsed() >= v.ttl)
            .map(|v| v.token)
    }

    /// Notes that the term `token` (TTL `ttl`) on `lock_key` was found
    /// vacated without a release; returns how long the seat stays empty.
    pub(super) fn hold_back(&self, lock_key: i64, token: i64, ttl: Duration) -> Duration {
        let now = Instant::now();
        let mut vacated = self.vacated();
        let entry = vacated
            .entry(lock_key)
            .and_modify(|v| {
                if v.token != token {
                    *v = Vacated {
                        token,
                        first_seen: now,
                        ttl,
                    };
                }
            })
            .or_insert(Vacated {
                token,
                first_seen: now,
                ttl,
            });
        // At least 1 ms: the statement held the seat back, so it is not free.
        entry
            .ttl
            .saturating_sub(now - entry.first_seen)
            .max(Duration::from_millis(1))
    }

    /// Forgets the vacated term on `lock_key` (a new term began).
    pub(super) fn forget_vacated(&self, lock_key: i64) {
        self.vacated().remove(&lock_key);
    }

    /// Logs once per store that the server has no `idle_session_timeout`.
    pub(super) fn warn_no_idle_timeout(&self, conn: &Conn) {
        if !self.inner.warned_old_server.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                server_version_num = ?conn.inner.server_version_num(),
                "postgres before 14 has no idle_session_timeout: a holder process that is \
                 stopped (SIGSTOP, debugger) but not dead keeps its lock until it resumes; \
                 upgrade to PostgreSQL 14 or later"
            );
        }
    }
}
