//! The pinned sessions that the leases of one store share: at most
//! [`PostgresConfig::with_pinned_sessions`](crate::PostgresConfig::with_pinned_sessions)
//! connections, each holding the advisory locks of many leases.
//!
//! A session's statements run one at a time under its [`Slot`] mutex, in
//! the caller's task but finished in a task of their own if the caller
//! drops them (see `PostgresStore::detached`): a caller that stops waiting
//! never cancels a statement halfway, which would leave the
//! connection unusable and end every lease on it.
//!
//! # Session settings
//!
//! `idle_session_timeout` and the TCP keepalive settings are per session,
//! and any statement on the session restarts the idle clock. So a session
//! runs with the settings of the *longest* TTL among its leases: the server
//! then never ends it while one of its leases may still be valid (every
//! lease's validity ends at most one TTL after a statement it sent), and a
//! stopped process, which sends nothing at all, loses every session one
//! longest-TTL after its last statement. A lease whose own renewals stop
//! while the process runs is given up by the store-side expiry. Sessions are
//! chosen so that leases of one TTL share sessions (see [`Pool::pick`]),
//! which keeps every lease's bound at its own TTL in the usual case.
//!
//! Settings are applied as part of an acquisition, only when the session's
//! TTL changes; they stay when leases leave. An empty session with a
//! timeout may be ended by the server after that long; the next
//! acquisition on it then replaces it (nothing was held on it).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use leader_core::{FencingToken, HolderId};
use tokio::time::Instant;

use crate::conn::Conn;

/// One lease's term on a session, as the session knows it.
#[derive(Debug, Clone)]
pub(super) struct Term {
    pub(super) handle: u64,
    pub(super) holder: HolderId,
    pub(super) token: FencingToken,
    pub(super) ttl: Duration,
}

/// A session's connection and what it holds. Guarded by the session's
/// async mutex: whoever holds it may run a statement.
pub(super) struct Slot {
    /// `None` before the first statement opened it, or once it failed.
    pub(super) conn: Option<Conn>,
    /// The connection failed or went unanswered: every lease on it is
    /// lost, and the session is out of the pool.
    pub(super) lost: bool,
    /// The backend pid of the connection (from the first acquisition).
    pub(super) pid: Option<i32>,
    /// The advisory locks this session holds, by lock key.
    pub(super) held: HashMap<i64, Term>,
    /// The TTL whose settings the session runs with (`None`: the server's).
    pub(super) settings: Option<Duration>,
    /// Send time of the latest statement that confirmed the backend pid:
    /// the session (and so every lock on it) was alive after this.
    pub(super) proven: Option<Instant>,
    /// When `pg_locks` last showed this session's locks.
    pub(super) locks_checked: Instant,
}

impl Slot {
    /// The TTL the session's settings must fit with a new lease of `ttl`:
    /// the longest of its leases' and that one.
    pub(super) fn wanted_settings(&self, ttl: Duration) -> Duration {
        self.held.values().map(|t| t.ttl).fold(ttl, Duration::max)
    }
}

/// A pinned session shared by leases.
pub(super) struct Session {
    /// Unique within the store (for logs and the pool's bookkeeping).
    pub(super) id: u64,
    pub(super) slot: Arc<tokio::sync::Mutex<Slot>>,
    /// What placement needs without waiting for a statement.
    load: Mutex<Load>,
}

/// A session's load as [`Pool::pick`] sees it.
#[derive(Debug, Default, Clone, Copy)]
struct Load {
    /// Leases on it.
    held: usize,
    /// Acquisitions on their way to it.
    pending: usize,
    /// The TTL its settings are for.
    ttl: Option<Duration>,
    /// Its backend pid, once connected.
    pid: Option<i32>,
}

impl Session {
    fn new(id: u64) -> Self {
        Session {
            id,
            slot: Arc::new(tokio::sync::Mutex::new(Slot {
                conn: None,
                lost: false,
                pid: None,
                held: HashMap::new(),
                settings: None,
                proven: None,
                locks_checked: Instant::now(),
            })),
            load: Mutex::new(Load::default()),
        }
    }

    fn load(&self) -> MutexGuard<'_, Load> {
        // Plain counters: a panic cannot leave them half-updated.
        self.load.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records the slot's lease count, settings and pid for placement.
    pub(super) fn note(&self, slot: &Slot) {
        let mut load = self.load();
        load.held = slot.held.len();
        load.ttl = slot.settings;
        load.pid = slot.pid;
    }
}

impl Load {
    fn leases(&self) -> usize {
        self.held + self.pending
    }
}

/// A session chosen by [`Pool::pick`] for one acquisition; counts as load
/// on it until dropped.
pub(super) struct Reserved(Arc<Session>);

impl std::ops::Deref for Reserved {
    type Target = Arc<Session>;

    fn deref(&self) -> &Arc<Session> {
        &self.0
    }
}

impl Drop for Reserved {
    fn drop(&mut self) {
        let mut load = self.0.load();
        load.pending = load.pending.saturating_sub(1);
    }
}

/// The store's pinned sessions.
pub(super) struct Pool {
    max: usize,
    sessions: Mutex<Vec<Arc<Session>>>,
    next_id: AtomicU64,
}

impl Pool {
    pub(super) fn new(max: usize) -> Self {
        Pool {
            max: max.max(1),
            sessions: Mutex::new(Vec::new()),
            next_id: AtomicU64::new(1),
        }
    }

    fn sessions(&self) -> MutexGuard<'_, Vec<Arc<Session>>> {
        // Pushes and removals only: a panic cannot corrupt the list.
        self.sessions.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A session for a new lease of `ttl`, reserved for it (the caller
    /// [`Session::note`]s the outcome). Prefers, in order: a new session
    /// while below the bound and no empty session of a fitting TTL is open;
    /// the least loaded session whose settings are for `ttl` (or that has
    /// none); the least loaded session.
    pub(super) fn pick(&self, ttl: Duration) -> Reserved {
        let mut sessions = self.sessions();
        let loads: Vec<(Load, &Arc<Session>)> = sessions.iter().map(|s| (*s.load(), s)).collect();
        let fitting = loads
            .iter()
            .filter(|(l, _)| l.ttl.is_none_or(|t| t == ttl) || l.leases() == 0)
            .min_by_key(|(l, _)| l.leases());
        let chosen = match fitting {
            Some((l, s)) if l.leases() == 0 || sessions.len() >= self.max => Some(Arc::clone(s)),
            _ if sessions.len() < self.max => None,
            Some((_, s)) => Some(Arc::clone(s)),
            None => loads
                .iter()
                .min_by_key(|(l, _)| l.leases())
                .map(|(_, s)| Arc::clone(s)),
        };
        let session = chosen.unwrap_or_else(|| {
            let session = Arc::new(Session::new(self.next_id.fetch_add(1, Ordering::Relaxed)));
            sessions.push(Arc::clone(&session));
            session
        });
        session.load().pending += 1;
        Reserved(session)
    }

    /// Takes a failed session out of the pool (its leases are lost).
    pub(super) fn remove(&self, id: u64) {
        self.sessions().retain(|s| s.id != id);
    }

    /// How many sessions are open or about to be.
    pub(super) fn len(&self) -> usize {
        self.sessions().len()
    }

    /// The backend pids of the live sessions (those that have connected).
    pub(super) fn pids(&self) -> Vec<i32> {
        self.sessions()
            .iter()
            .filter_map(|s| s.load().pid)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Duration = Duration::from_secs(2);

    #[test]
    fn sessions_open_up_to_the_bound_then_are_shared() {
        let pool = Pool::new(2);
        let a = pool.pick(TTL);
        let b = pool.pick(TTL);
        assert_ne!(
            a.id, b.id,
            "a second session while busy and below the bound"
        );
        let c = pool.pick(TTL);
        assert!(c.id == a.id || c.id == b.id, "no third session");
        assert_eq!(pool.len(), 2);
        let d = pool.pick(TTL);
        assert_ne!(d.id, c.id, "the least loaded session is chosen");
    }

    #[test]
    fn an_empty_session_is_reused_before_a_new_one_is_opened() {
        let pool = Pool::new(4);
        let a = pool.pick(TTL).id;
        assert_eq!(pool.pick(TTL).id, a, "the reservation ended with its drop");
        assert_eq!(pool.len(), 1);
    }

    #[test]
    fn leases_of_one_ttl_share_sessions_when_the_bound_is_reached() {
        let pool = Pool::new(2);
        let short = pool.pick(TTL);
        short.load().ttl = Some(TTL);
        let long = pool.pick(TTL * 10);
        *long.load() = Load {
            held: 3,
            pending: 1,
            ttl: Some(TTL * 10),
            pid: None,
        };
        // `short` has 1 lease, `long` 4: each TTL still goes to its own.
        let again = pool.pick(TTL);
        assert_eq!(again.id, short.id);
        assert_eq!(pool.pick(TTL * 10).id, long.id);
        // A TTL that fits neither goes to the least loaded.
        assert_eq!(pool.pick(TTL * 3).id, short.id);
    }

    #[test]
    fn a_removed_session_is_replaced() {
        let pool = Pool::new(1);
        let a = pool.pick(TTL).id;
        pool.remove(a);
        assert_eq!(pool.len(), 0);
        assert_ne!(pool.pick(TTL).id, a);
    }
}
