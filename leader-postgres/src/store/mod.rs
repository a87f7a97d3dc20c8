//! [`PostgresStore`]: leases as session-level advisory locks on pinned
//! connections, with fencing tokens from a counter table.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use leader_core::{
    Acquire, Capabilities, Error, FencingSource, FencingToken, HolderId, Lease, LeaseEvents,
    LeaseInfo, LeaseKey, LeaseStore, NotificationSupport, Result, check_ttl,
};
use sqlx::{AssertSqlSafe, Row};
use tokio::time::Instant;

mod acquire;
mod delay;
mod session;

pub use session::SessionInfo;

use crate::config::{PostgresConfig, TableName};
use crate::conn::{Conn, Connector};
use crate::keys;
use crate::sql::Statements;
use acquire::{Turn, pooler_error};

const STORE: &str = "postgres";
/// The payload of the NOTIFY sent on release and force release.
pub(crate) const VACATED: &str = "vacated";

/// A lease's pinned connection and what it holds.
struct Pinned {
    handle: u64,
    holder: HolderId,
    lock_key: i64,
    state: tokio::sync::Mutex<PinnedState>,
    /// Wakes the expiry task when the lease ends otherwise.
    ended: tokio::sync::Notify,
}

struct PinnedState {
    token: FencingToken,
    /// The backend pid that took the lock; every renewal must see the same.
    pid: i32,
    /// `None` once an operation on it failed or was cancelled: the socket is
    /// closed, so the server frees the lock, and the lease is lost.
    conn: Option<Conn>,
    /// Send time of the last successful acquire or renew plus the TTL: the
    /// store gives the lease up itself after this (see `spawn_expiry`).
    valid_until: Instant,
    /// When `pg_locks` last showed the lock held by this session (the
    /// acquisition, or a renewal that looked): renewals look again once
    /// per TTL and otherwise only confirm the backend pid.
    locks_checked: Instant,
}

struct Inner {
    config: PostgresConfig,
    /// The counter table, checked when the store was built.
    table: TableName,
    sql: Statements,
    conns: Connector,
    /// The counter table is known to exist (reset when a statement says it
    /// does not: a server restored from an older backup, or a dropped table).
    schema_ready: AtomicBool,
    schema_lock: tokio::sync::Mutex<()>,
    leases: Mutex<HashMap<LeaseKey, Arc<Pinned>>>,
    /// Serializes acquisitions of one key through this store, so that two
    /// concurrent calls with the same holder never take each other for a
    /// stale session of that holder.
    acquiring: Mutex<HashMap<LeaseKey, Arc<tokio::sync::Mutex<()>>>>,
    next_handle: AtomicU64,
    /// Vacated terms this client is waiting out (the lock delay), by lock key.
    vacated: Mutex<HashMap<i64, delay::Vacated>>,
    /// The warning about a server without `idle_session_timeout` was logged.
    warned_old_server: AtomicBool,
}

/// A [`LeaseStore`] on PostgreSQL session-level advisory locks.
///
/// Each lease is `pg_try_advisory_lock(key)` held on a dedicated connection
/// that stays pinned to the lease until it is released or lost; it never
/// goes back to a pool while it holds the lock. The fencing token is minted
/// in the same statement from the counter table (created if missing). The
/// pinned session's `application_name` is the holder id (63 bytes at most)
/// and its TCP keepalive / user timeout follow the lease TTL, so the server
/// frees a silent holder's lock about one TTL after it last heard from it;
/// its `idle_session_timeout` is the TTL too, so the server also ends the
/// session of a holder that is reachable but stopped (PostgreSQL 14+).
///
/// Connections are opened lazily: creating the store never fails because
/// the server is down. Cheap to clone; clones share connections and leases.
#[derive(Clone)]
pub struct PostgresStore {
    inner: Arc<Inner>,
}

/// What the acquire statement reported.
enum Minted {
    Got {
        token: FencingToken,
        pid: i32,
    },
    /// Someone else holds the lock: who (if still held), the locking
    /// backend's pid, and whether the counter row confirmed the holder (it
    /// is committed just after the lock shows, so a racing read may only see
    /// the session's application name).
    Missed(Option<LeaseInfo>, Option<i32>, bool),
    /// The lock was free but the previous term ended without a release:
    /// the lock delay keeps the seat empty a while longer.
    HeldBack(LeaseInfo),
}

impl PostgresStore {
    /// A store for `config`. Does not connect: the connection is made on
    /// first use, so this succeeds while Postgres is down.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidConfig`](leader_core::ErrorKind::InvalidConfig) as
    /// [`PostgresConfig::validate`] reports it.
    pub fn new(config: PostgresConfig) -> Result<Self> {
        config.validate()?;
        let table = config.table_name()?;
        let conns = Connector::new(
            config.connect.clone(),
            config.connect_timeout,
            config.max_idle_connections,
        );
        Ok(PostgresStore {
            inner: Arc::new(Inner {
                sql: Statements::new(&table),
                table,
                config,
                conns,
                schema_ready: AtomicBool::new(false),
                schema_lock: tokio::sync::Mutex::new(()),
                leases: Mutex::new(HashMap::new()),
                acquiring: Mutex::new(HashMap::new()),
                next_handle: AtomicU64::new(1),
                vacated: Mutex::new(HashMap::new()),
                warned_old_server: AtomicBool::new(false),
            }),
        })
    }

    /// A store for a `postgres://` or `postgresql://` URL; see
    /// [`PostgresConfig::from_url`].
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidConfig`](leader_core::ErrorKind::InvalidConfig)
    /// naming the bad part of the URL (never the password).
    pub fn from_url(url: &str) -> Result<Self> {
        Self::new(PostgresConfig::from_url(url)?)
    }

    /// The settings this store was built with.
    pub fn config(&self) -> &PostgresConfig {
        &self.inner.config
    }

    /// The advisory lock key used for `key`: an explicit one from the config,
    /// else [`keys::hashed_lock_key`] of the full lease key.
    pub fn lock_key(&self, key: &LeaseKey) -> i64 {
        self.inner
            .config
            .explicit_lock_key(key.as_str(), key.resource())
            .unwrap_or_else(|| keys::hashed_lock_key(key.as_str()))
    }

    /// The LISTEN/NOTIFY channel on which releases of `key` are announced.
    pub fn channel(&self, key: &LeaseKey) -> String {
        keys::channel(self.lock_key(key))
    }

    /// Connects and creates the counter table if it is missing. Optional:
    /// every operation does this on first use; call it to fail fast.
    ///
    /// # Errors
    ///
    /// Unavailable, authentication, or missing privileges to create the table.
    pub async fn ensure_schema(&self) -> Result<()> {
        if self.inner.schema_ready.load(Ordering::Acquire) {
            return Ok(());
        }
        let _one_at_a_time = self.inner.schema_lock.lock().await;
        if !self.inner.schema_ready.load(Ordering::Acquire) {
            self.create_schema().await?;
            self.inner.schema_ready.store(true, Ordering::Release);
        }
        Ok(())
    }

    /// Notes a statement's complaint that the counter table is missing, so
    /// the next operation creates it again. Returns whether that was it.
    fn table_missing(&self, e: &sqlx::Error) -> bool {
        let missing =
            matches!(e, sqlx::Error::Database(db) if db.code().as_deref() == Some("42P01"));
        if missing {
            tracing::warn!(table = ?self.inner.table, "the counter table is missing; creating it again");
            self.inner.schema_ready.store(false, Ordering::Release);
        }
        missing
    }

    async fn create_schema(&self) -> Result<()> {
        let table = self.inner.table.as_written();
        let (exists, create) = (
            self.inner.sql.table_exists.clone(),
            self.inner.sql.create_table.clone(),
        );
        let what = format!("could not check or create the counter table {table:?}");
        self.on_idle(self.inner.config.request_timeout, &what, |conn| {
            let (exists, create, table) = (exists.clone(), create.clone(), table.clone());
            Box::pin(async move {
                let present: bool = sqlx::query(AssertSqlSafe(exists))
                    .bind(table)
                    .fetch_one(&mut *conn)
                    .await?
                    .try_get("present")?;
                if !present {
                    match sqlx::query(AssertSqlSafe(create)).execute(&mut *conn).await {
                        Ok(_) => {}
                        // Another instance created it at the same moment.
                        Err(sqlx::Error::Database(db))
                            if matches!(
                                db.code().as_deref(),
                                Some("42P07" | "42710" | "23505")
                            ) => {}
                        Err(e) => return Err(e),
                    }
                }
                Ok(())
            })
        })
        .await
        .map_err(|e| e.with_store(STORE).with_operation("create schema"))
    }

    async fn with_timeout<F: Future>(&self, limit: Duration, f: F) -> Result<F::Output> {
        tokio::time::timeout(limit, f)
            .await
            .map_err(|_| Error::indeterminate(format!("postgres did not answer within {limit:?}")))
    }

    fn leases(&self) -> MutexGuard<'_, HashMap<LeaseKey, Arc<Pinned>>> {
        // Map updates are single inserts/removes; a panic cannot corrupt it.
        self.inner.leases.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn pinned(&self, key: &LeaseKey) -> Option<Arc<Pinned>> {
        self.leases().get(key).cloned()
    }

    /// Forgets the pinned lease `handle` on `key` (if still the current one).
    fn unpin(&self, key: &LeaseKey, handle: u64) {
        let mut leases = self.leases();
        if leases.get(key).is_some_and(|p| p.handle == handle)
            && let Some(p) = leases.remove(key)
        {
            p.ended.notify_one();
        }
    }
}

impl PostgresStore {
    /// Renews the lease on its pinned session (see [`LeaseStore::renew`]).
    async fn renew_pinned(&self, lease: &Lease) -> Result<()> {
        let lost = |message: String| {
            Error::not_holder(message)
                .with_store(STORE)
                .with_operation("renew")
                .with_key(lease.key.as_str())
        };
        let Some(pinned) = self
            .pinned(&lease.key)
            .filter(|p| p.handle == lease.handle && p.holder == lease.holder)
        else {
            return Err(lost(format!(
                "this store holds no session for the lease with token {}",
                lease.token
            )));
        };
        let mut state = pinned.state.lock().await;
        if state.token != lease.token {
            return Err(lost(format!(
                "token {} was replaced by a newer term (token {})",
                lease.token, state.token
            )));
        }
        let Some(mut conn) = state.conn.take() else {
            return Err(lost(
                "the pinned session was closed after an earlier failure".into(),
            ));
        };
        let lock_key = pinned.lock_key;
        let limit = self.inner.config.request_timeout.min(lease.ttl);
        let sent = Instant::now();
        // A session advisory lock ends only by an unlock on its own session
        // (this store unlocks only when it releases) or with the session
        // (which fails the statement), so confirming the backend pid proves
        // the lock is still held; pg_locks is read once per TTL regardless.
        let look = sent.saturating_duration_since(state.locks_checked) >= lease.ttl;
        // Taken out of the slot for the statement: if this future is dropped
        // (only with its runtime: `renew` runs it in a task of its own), the
        // connection closes and the lease is lost, never left in doubt.
        let outcome = tokio::time::timeout(limit, async {
            if look {
                self.check_held(&mut conn, lock_key).await
            } else {
                Ok((self.backend_pid(&mut conn).await?, true))
            }
        })
        .await;
        let failure = match outcome {
            Ok(Ok((pid, true))) if pid == state.pid => {
                state.conn = Some(conn);
                state.valid_until = sent + lease.ttl;
                if look {
                    state.locks_checked = sent;
                }
                return Ok(());
            }
            Ok(Ok((pid, _))) if pid != state.pid => {
                lost(pooler_error(state.pid, pid).message().to_owned())
            }
            Ok(Ok(_)) => lost(format!(
                "the session no longer holds advisory lock {lock_key} (it was unlocked by someone)"
            )),
            Ok(Err(e)) => lost(
                "the pinned session failed: the server has dropped or will drop its lock".into(),
            )
            .with_source(e),
            Err(_) => lost(format!(
                "renewal got no answer within {limit:?}; the pinned session was closed and its \
                 lock given up"
            )),
        };
        drop(conn);
        drop(state);
        self.unpin(&lease.key, pinned.handle);
        tracing::debug!(key = %lease.key, error = %failure, "postgres lease lost");
        Err(failure)
    }
}

#[async_trait]
impl LeaseStore for PostgresStore {
    fn kind(&self) -> &'static str {
        STORE
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::new(FencingSource::Counter)
            .session_bound()
            .with_notifications(NotificationSupport::Release)
    }

    async fn acquire(&self, key: &LeaseKey, holder: &HolderId, ttl: Duration) -> Result<Acquire> {
        check_ttl(ttl)?;
        self.ensure_schema().await?;
        let lock_key = self.lock_key(key);
        let turn = Turn::take(self, key);
        let _turn = turn.mutex.lock().await;
        if let Some(pinned) = self.pinned(key).filter(|p| &p.holder == holder) {
            if let Some(lease) = self.reacquire(&pinned, key, lock_key, ttl).await {
                return Ok(Acquire::Acquired(lease));
            }
            self.unpin(key, pinned.handle);
        }
        self.acquire_fresh(key, lock_key, holder, ttl).await
    }

    async fn renew(&self, lease: &Lease) -> Result<()> {
        check_ttl(lease.ttl)?;
        // In a task of its own: a caller that drops the renewal (an elector
        // shutting down mid-renewal) must not close the pinned session
        // under the statement, or its release finds no session, the lock
        // ends without a release, and followers wait out the lock delay.
        // The statement finishes (bounded by the operation timeout) and the
        // release, which waits for the session, then runs as usual.
        let (store, lease) = (self.clone(), lease.clone());
        tokio::spawn(async move { store.renew_pinned(&lease).await })
            .await
            .map_err(|e| {
                Error::indeterminate(format!("the renewal task failed: {e}"))
                    .with_store(STORE)
                    .with_operation("renew")
            })?
    }

    async fn release(&self, lease: &Lease) -> Result<bool> {
        let err = |e: Error| {
            e.with_store(STORE)
                .with_operation("release")
                .with_key(lease.key.as_str())
        };
        let Some(pinned) = self
            .pinned(&lease.key)
            .filter(|p| p.handle == lease.handle && p.holder == lease.holder)
        else {
            return Ok(false);
        };
        let mut state = pinned.state.lock().await;
        if state.token != lease.token {
            return Ok(false);
        }
        let conn = state.conn.take();
        drop(state);
        self.unpin(&lease.key, pinned.handle);
        let Some(conn) = conn else {
            return Ok(false);
        };
        self.unlock(conn, pinned.lock_key, lease.token)
            .await
            .map_err(err)
    }

    async fn current(&self, key: &LeaseKey) -> Result<Option<LeaseInfo>> {
        let err = |e: Error| {
            e.with_store(STORE)
                .with_operation("current")
                .with_key(key.as_str())
        };
        self.ensure_schema().await?;
        let found = self.lookup(self.lock_key(key)).await.map_err(err)?;
        Ok(found.map(|(info, _)| info))
    }

    async fn force_release(&self, key: &LeaseKey) -> Result<Option<LeaseInfo>> {
        let err = |e: Error| {
            e.with_store(STORE)
                .with_operation("force_release")
                .with_key(key.as_str())
        };
        self.ensure_schema().await?;
        let lock_key = self.lock_key(key);
        let Some((info, pid)) = self.lookup(lock_key).await.map_err(err)? else {
            return Ok(None);
        };
        let limit = self.inner.config.request_timeout;
        if !self
            .terminate(pid, lock_key, info.token, limit)
            .await
            .map_err(err)?
        {
            return Err(err(Error::indeterminate(format!(
                "backend {pid} holding the lock did not exit within {limit:?}"
            ))));
        }
        tracing::info!(key = %key, holder = %info.holder, token = info.token.0, pid, "postgres lease force-released");
        Ok(Some(info))
    }

    async fn watch(&self, key: &LeaseKey) -> Result<LeaseEvents> {
        crate::watch::subscribe(
            &self.inner.conns,
            self.inner.config.request_timeout,
            self.channel(key),
        )
        .await
        .map_err(|e| {
            e.with_store(STORE)
                .with_operation("watch")
                .with_key(key.as_str())
        })
    }
}

impl fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresStore")
            .field("config", &self.inner.config)
            .field("pinned_leases", &self.leases().len())
            .finish()
    }
}
