//! [`PostgresStore`]: leases as session-level advisory locks on pinned
//! connections, with fencing tokens from a counter table.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use futures::future::BoxFuture;
use leader_core::{
    Acquire, Capabilities, Error, FencingSource, FencingToken, HolderId, Lease, LeaseEvents,
    LeaseInfo, LeaseKey, LeaseStore, NotificationSupport, Result, check_ttl,
};
use sqlx::postgres::{PgConnection, PgRow};
use sqlx::{AssertSqlSafe, Row};
use tokio::time::Instant;

use crate::conn::{Conn, Connector, classify, is_connection_error};
use crate::keys::{self, Keepalive};
use crate::options::PostgresOptions;
use crate::sql::Statements;

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
}

struct Inner {
    options: PostgresOptions,
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
}

/// A [`LeaseStore`] on PostgreSQL session-level advisory locks.
///
/// Each lease is `pg_try_advisory_lock(key)` held on a dedicated connection
/// that stays pinned to the lease until it is released or lost; it never
/// goes back to a pool while it holds the lock. The fencing token is minted
/// in the same statement from the counter table (created if missing). The
/// pinned session's `application_name` is the holder id (63 bytes at most)
/// and its TCP keepalive / user timeout follow the lease TTL, so the server
/// frees a silent holder's lock about one TTL after it last heard from it.
///
/// Connections are opened lazily: creating the store never fails because
/// the server is down. Cheap to clone; clones share connections and leases.
#[derive(Clone)]
pub struct PostgresStore {
    inner: Arc<Inner>,
}

/// What the server says about the session pinned to a lease: which backend
/// holds the lock and the TCP settings the store applied to it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SessionInfo {
    /// The backend's pid (`pg_backend_pid()`, the `pid` in `pg_stat_activity`).
    pub pid: i32,
    /// The session's `application_name` (the holder id, 63 bytes at most).
    pub application_name: String,
    /// `SHOW tcp_keepalives_idle` (0 on a Unix socket, where it has no effect).
    pub tcp_keepalives_idle: String,
    /// `SHOW tcp_keepalives_interval`.
    pub tcp_keepalives_interval: String,
    /// `SHOW tcp_keepalives_count`.
    pub tcp_keepalives_count: String,
    /// `SHOW tcp_user_timeout`.
    pub tcp_user_timeout: String,
}

/// What the acquire statement reported.
enum Minted {
    Got {
        token: FencingToken,
        pid: i32,
    },
    /// The lock is busy: who holds it (if still there) and its session pid.
    Missed(Option<LeaseInfo>, Option<i32>),
    /// The lock was free but the previous term ended without a release:
    /// the lock delay keeps the seat empty a while longer.
    HeldBack(LeaseInfo),
}

impl PostgresStore {
    /// A store for `options`. Connects on first use.
    pub fn new(options: PostgresOptions) -> Self {
        let conns = Connector::new(
            options.connect.clone(),
            options.connect_timeout,
            options.max_idle_connections,
        );
        PostgresStore {
            inner: Arc::new(Inner {
                sql: Statements::new(&options.table),
                options,
                conns,
                schema_ready: AtomicBool::new(false),
                schema_lock: tokio::sync::Mutex::new(()),
                leases: Mutex::new(HashMap::new()),
                acquiring: Mutex::new(HashMap::new()),
                next_handle: AtomicU64::new(1),
            }),
        }
    }

    /// Parses `url` (see [`PostgresOptions::from_url`]) and builds a store.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidConfig`](leader_core::ErrorKind::InvalidConfig) naming the bad part of the URL.
    pub fn from_url(url: &str) -> Result<Self> {
        Ok(Self::new(PostgresOptions::from_url(url)?))
    }

    /// The options this store was built with.
    pub fn options(&self) -> &PostgresOptions {
        &self.inner.options
    }

    /// The advisory lock key used for `key`: an explicit one from the options,
    /// else [`keys::hashed_lock_key`] of the full lease key.
    pub fn lock_key(&self, key: &LeaseKey) -> i64 {
        self.inner
            .options
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
            tracing::warn!(table = ?self.inner.options.table, "the counter table is missing; creating it again");
            self.inner.schema_ready.store(false, Ordering::Release);
        }
        missing
    }

    async fn create_schema(&self) -> Result<()> {
        let table = self.inner.options.table.as_written();
        let (exists, create) = (
            self.inner.sql.table_exists.clone(),
            self.inner.sql.create_table.clone(),
        );
        let what = format!("could not check or create the counter table {table:?}");
        self.on_idle(self.inner.options.operation_timeout, &what, |conn| {
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

    /// Runs the acquire (or re-acquire) statement on `conn`.
    async fn mint(
        &self,
        conn: &mut Conn,
        sql: &Arc<str>,
        key: &LeaseKey,
        lock_key: i64,
        holder: &HolderId,
        ttl: Duration,
    ) -> std::result::Result<Minted, sqlx::Error> {
        let ka = Keepalive::for_ttl(ttl);
        let row = sqlx::query(AssertSqlSafe(sql.clone()))
            .bind(lock_key)
            .bind(key.as_str())
            .bind(holder.as_str())
            .bind(keys::application_name(holder.as_str()))
            .bind(ka.idle_secs.to_string())
            .bind(ka.interval_secs.to_string())
            .bind(ka.count.to_string())
            .bind(ka.user_timeout_ms.to_string())
            .bind(self.inner.options.lock_delay)
            .bind(i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX))
            .fetch_one(&mut conn.inner)
            .await?;
        let got: bool = row.try_get("got")?;
        let wait_ms: i64 = row.try_get("wait_ms")?;
        if wait_ms > 0 {
            let prev: Option<String> = row.try_get("prev_holder")?;
            let token: Option<i64> = row.try_get("prev_token")?;
            let holder = prev.and_then(|h| HolderId::new(h).ok()).ok_or_else(|| {
                sqlx::Error::Protocol("held back without a previous holder".into())
            })?;
            let token = FencingToken(token.and_then(|t| u64::try_from(t).ok()).unwrap_or(0));
            let remaining = Duration::from_millis(wait_ms.unsigned_abs());
            return Ok(Minted::HeldBack(LeaseInfo::new(
                holder,
                token,
                Some(remaining),
            )));
        }
        if got {
            let token: Option<i64> = row.try_get("token")?;
            let token = token
                .and_then(|t| u64::try_from(t).ok())
                .ok_or_else(|| sqlx::Error::Protocol("lock taken but no token minted".into()))?;
            Ok(Minted::Got {
                token: FencingToken(token),
                pid: row.try_get("pid")?,
            })
        } else {
            let lock_pid: Option<i32> = row.try_get("lock_pid")?;
            Ok(Minted::Missed(holder_info(&row, "held_token")?, lock_pid))
        }
    }

    /// Checks on `conn` that its session holds `lock_key`: `(backend pid, held)`.
    async fn check_held(
        &self,
        conn: &mut Conn,
        lock_key: i64,
    ) -> std::result::Result<(i32, bool), sqlx::Error> {
        let row = sqlx::query(AssertSqlSafe(self.inner.sql.renew.clone()))
            .bind(lock_key)
            .fetch_one(&mut conn.inner)
            .await?;
        Ok((row.try_get("pid")?, row.try_get("held")?))
    }

    /// A re-acquisition by the holder of the pinned lease on `key`: a new term
    /// (new token) on the same session. `None` when that session is gone.
    async fn reacquire(
        &self,
        pinned: &Arc<Pinned>,
        key: &LeaseKey,
        lock_key: i64,
        ttl: Duration,
    ) -> Option<Lease> {
        let mut state = pinned.state.lock().await;
        let mut conn = state.conn.take()?;
        let limit = self.inner.options.operation_timeout;
        let sql = self.inner.sql.reacquire.clone();
        let sent = Instant::now();
        match tokio::time::timeout(
            limit,
            self.mint(&mut conn, &sql, key, lock_key, &pinned.holder, ttl),
        )
        .await
        {
            Ok(Ok(Minted::Got { token, pid })) if pid == state.pid => {
                state.conn = Some(conn);
                state.token = token;
                state.valid_until = sent + ttl;
                Some(
                    Lease::new(key.clone(), pinned.holder.clone(), token, ttl)
                        .with_handle(pinned.handle),
                )
            }
            // Lost, broken or a different backend: close it (freeing any
            // lock it has) and start afresh.
            _ => None,
        }
    }

    async fn acquire_fresh(
        &self,
        key: &LeaseKey,
        lock_key: i64,
        holder: &HolderId,
        ttl: Duration,
    ) -> Result<Acquire> {
        let err = |e: Error| {
            e.with_store(STORE)
                .with_operation("acquire")
                .with_key(key.as_str())
        };
        let limit = self.inner.options.operation_timeout;
        let sql = self.inner.sql.acquire.clone();
        let mut terminated_stale = false;
        for attempt in 0..3 {
            let (mut conn, reused) = self.inner.conns.take().await.map_err(err)?;
            // If this future is dropped mid-statement, `conn` is dropped with
            // it: the socket closes and the server frees any lock it took.
            let sent = Instant::now();
            let outcome = tokio::time::timeout(
                limit,
                self.mint(&mut conn, &sql, key, lock_key, holder, ttl),
            )
            .await;
            match outcome {
                Ok(Ok(Minted::Got { token, pid })) => {
                    if !conn.verified {
                        self.verify_session(&mut conn, lock_key, pid)
                            .await
                            .map_err(err)?;
                    }
                    let handle = self.inner.next_handle.fetch_add(1, Ordering::Relaxed);
                    let pinned = Arc::new(Pinned {
                        handle,
                        holder: holder.clone(),
                        lock_key,
                        state: tokio::sync::Mutex::new(PinnedState {
                            token,
                            pid,
                            conn: Some(conn),
                            valid_until: sent + ttl,
                        }),
                        ended: tokio::sync::Notify::new(),
                    });
                    // Replaces a stale entry whose session lost the lock.
                    if let Some(old) = self.leases().insert(key.clone(), pinned.clone()) {
                        old.ended.notify_one();
                    }
                    self.spawn_expiry(key.clone(), pinned);
                    tracing::debug!(key = %key, %holder, token = token.0, pid, "postgres lease acquired");
                    return Ok(Acquire::Acquired(
                        Lease::new(key.clone(), holder.clone(), token, ttl).with_handle(handle),
                    ));
                }
                Ok(Ok(Minted::HeldBack(info))) => {
                    // The statement gave the lock back: the session is clean.
                    self.inner.conns.put_back(conn);
                    tracing::debug!(key = %key, previous = %info.holder, remaining = ?info.remaining, "lock delay after a term that ended without release");
                    return Ok(Acquire::Held(info));
                }
                Ok(Ok(Minted::Missed(info, lock_pid))) => {
                    self.inner.conns.put_back(conn);
                    match (info, lock_pid) {
                        // Our own holder id on another session: a session of
                        // ours the server has not dropped yet (its socket died
                        // or a renewal timed out). Same holder means acquire
                        // succeeds, so end that session and try again.
                        (Some(info), Some(pid)) if &info.holder == holder && !terminated_stale => {
                            tracing::info!(key = %key, %holder, pid, "terminating a stale session of the same holder");
                            terminated_stale = true;
                            self.terminate(pid, lock_key, info.token, limit)
                                .await
                                .map_err(err)?;
                        }
                        (Some(info), _) => return Ok(Acquire::Held(info)),
                        // The holder let go between the try and the lookup.
                        (None, _) => {}
                    }
                }
                Ok(Err(e)) => {
                    drop(conn);
                    // Lost with a server restored from an old backup (or
                    // dropped): create it again and retry. Closing the
                    // connection freed any lock the failed statement took.
                    if self.table_missing(&e) && attempt < 2 {
                        self.ensure_schema().await.map_err(err)?;
                        continue;
                    }
                    // A reused idle connection may have died while idle; its
                    // session is gone, so one retry on a fresh one is safe.
                    if !(reused && is_connection_error(&e) && attempt == 0) {
                        return Err(err(classify(e, false, "acquire statement failed")));
                    }
                    self.inner.conns.clear();
                }
                Err(_) => {
                    drop(conn);
                    return Err(err(Error::indeterminate(format!(
                        "acquire got no answer within {limit:?}; the connection was closed, so \
                         any lock it took is freed"
                    ))));
                }
            }
        }
        Err(err(Error::unavailable(
            "the lock was busy but its holder could not be identified (it kept changing)",
        )))
    }

    /// Gives the lease up if it is not renewed within its TTL (its holder
    /// stopped renewing without releasing: a stuck task, an aborted
    /// elector). A session lock has no server-side expiry; this gives it one,
    /// no earlier than the elector's own validity ends. It ends as a release
    /// (followers are notified and no lock delay applies, since the holder
    /// cannot believe it leads any more).
    fn spawn_expiry(&self, key: LeaseKey, pinned: Arc<Pinned>) {
        let store = self.clone();
        tokio::spawn(async move {
            loop {
                let until = pinned.state.lock().await.valid_until;
                tokio::select! {
                    _ = tokio::time::sleep_until(until) => {}
                    _ = pinned.ended.notified() => return,
                }
                let mut state = pinned.state.lock().await;
                if state.valid_until > Instant::now() {
                    continue; // renewed meanwhile
                }
                let Some(conn) = state.conn.take() else {
                    return;
                };
                let token = state.token;
                drop(state);
                store.unpin(&key, pinned.handle);
                tracing::warn!(key = %key, holder = %pinned.holder, token = token.0, "postgres lease not renewed within its TTL; giving it up");
                // Errors only mean the session is closed: the lock is freed.
                let _ = store.unlock(conn, pinned.lock_key, token).await;
            }
        });
    }

    /// Marks the term released, unlocks, notifies followers and returns the
    /// connection to the idle set (or closes it on any failure).
    async fn unlock(&self, mut conn: Conn, lock_key: i64, token: FencingToken) -> Result<bool> {
        let limit = self.inner.options.operation_timeout;
        let token = i64::try_from(token.0).unwrap_or(i64::MAX);
        let outcome = tokio::time::timeout(limit, async {
            sqlx::query(AssertSqlSafe(self.inner.sql.mark_released.clone()))
                .bind(lock_key)
                .bind(token)
                .execute(&mut conn.inner)
                .await?;
            let row = sqlx::query(AssertSqlSafe(self.inner.sql.release.clone()))
                .bind(lock_key)
                .bind(keys::channel(lock_key))
                .bind(VACATED)
                .bind(keys::application_name(&self.inner.options.application_name))
                .fetch_one(&mut conn.inner)
                .await?;
            row.try_get::<bool, _>("ok")
        })
        .await;
        match outcome {
            Ok(Ok(true)) => {
                self.inner.conns.put_back(conn);
                Ok(true)
            }
            // Not held any more (unlocked behind our back): close it anyway.
            Ok(Ok(false)) => Ok(false),
            Ok(Err(e)) => Err(classify(
                e,
                false,
                "unlock failed; the pinned session was closed, so the server frees the lock when \
                 it sees the connection end",
            )),
            Err(_) => Err(Error::indeterminate(format!(
                "unlock got no answer within {limit:?}; the pinned session was closed, so the \
                 server frees the lock when it sees the connection end"
            ))),
        }
    }

    /// Detects a transaction-mode pooler: a second statement on the same
    /// connection must reach the same backend and still see the lock.
    async fn verify_session(&self, conn: &mut Conn, lock_key: i64, pid: i32) -> Result<()> {
        let limit = self.inner.options.operation_timeout;
        match self
            .with_timeout(limit, self.check_held(conn, lock_key))
            .await?
        {
            Ok((now_pid, true)) if now_pid == pid => {
                conn.verified = true;
                Ok(())
            }
            Ok((now_pid, _)) => Err(pooler_error(pid, now_pid)),
            Err(e) => Err(classify(e, false, "checking the new lock failed")),
        }
    }

    /// Asks the session pinned to the lease on `key` (held through this
    /// store) who it is and which TCP settings it runs with; `None` when this
    /// store holds no lease on `key`. For operators and tests.
    ///
    /// # Errors
    ///
    /// When the session does not answer; the lease is then given up, as a
    /// failed renewal would.
    pub async fn pinned_session(&self, key: &LeaseKey) -> Result<Option<SessionInfo>> {
        let Some(pinned) = self.pinned(key) else {
            return Ok(None);
        };
        let mut state = pinned.state.lock().await;
        let Some(mut conn) = state.conn.take() else {
            return Ok(None);
        };
        let limit = self.inner.options.operation_timeout;
        let outcome = tokio::time::timeout(limit, async {
            let row = sqlx::query(
                "SELECT pg_backend_pid() AS pid, \
                        current_setting('application_name') AS app, \
                        current_setting('tcp_keepalives_idle') AS idle, \
                        current_setting('tcp_keepalives_interval') AS intvl, \
                        current_setting('tcp_keepalives_count') AS cnt, \
                        current_setting('tcp_user_timeout') AS uto",
            )
            .fetch_one(&mut conn.inner)
            .await?;
            Ok::<_, sqlx::Error>(SessionInfo {
                pid: row.try_get("pid")?,
                application_name: row.try_get("app")?,
                tcp_keepalives_idle: row.try_get("idle")?,
                tcp_keepalives_interval: row.try_get("intvl")?,
                tcp_keepalives_count: row.try_get("cnt")?,
                tcp_user_timeout: row.try_get("uto")?,
            })
        })
        .await;
        let err = |e: Error| {
            e.with_store(STORE)
                .with_operation("pinned_session")
                .with_key(key.as_str())
        };
        match outcome {
            Ok(Ok(info)) => {
                state.conn = Some(conn);
                Ok(Some(info))
            }
            Ok(Err(e)) => {
                drop(state);
                self.unpin(key, pinned.handle);
                Err(err(classify(e, false, "the pinned session failed")))
            }
            Err(_) => {
                drop(state);
                self.unpin(key, pinned.handle);
                Err(err(Error::indeterminate(format!(
                    "the pinned session did not answer within {limit:?}"
                ))))
            }
        }
    }

    /// Runs `op` on an idle connection within `limit`, returning the
    /// connection to the idle set after success. A reused idle connection
    /// that turns out dead (the server restarted) is replaced once.
    async fn on_idle<T, F>(&self, limit: Duration, what: &str, op: F) -> Result<T>
    where
        F: for<'c> Fn(&'c mut PgConnection) -> BoxFuture<'c, std::result::Result<T, sqlx::Error>>,
    {
        for attempt in 0..2 {
            let (mut conn, reused) = self.inner.conns.take().await?;
            match tokio::time::timeout(limit, op(&mut conn.inner)).await {
                Ok(Ok(value)) => {
                    self.inner.conns.put_back(conn);
                    return Ok(value);
                }
                Ok(Err(e)) if reused && attempt == 0 && is_connection_error(&e) => {
                    self.inner.conns.clear();
                }
                Ok(Err(e)) => {
                    self.table_missing(&e);
                    return Err(classify(e, false, what));
                }
                Err(_) => {
                    return Err(Error::indeterminate(format!(
                        "{what}: no answer within {limit:?}"
                    )));
                }
            }
        }
        Err(Error::unavailable(format!(
            "{what}: the connection failed twice"
        )))
    }

    /// `pg_terminate_backend(pid)`, waiting up to `limit` for it to exit,
    /// marking its term (`token`) released and notifying followers.
    async fn terminate(
        &self,
        pid: i32,
        lock_key: i64,
        token: FencingToken,
        limit: Duration,
    ) -> Result<bool> {
        let sql = self.inner.sql.terminate.clone();
        let wait_ms = i64::try_from(limit.as_millis()).unwrap_or(i64::MAX);
        let token = i64::try_from(token.0).unwrap_or(i64::MAX);
        let channel = keys::channel(lock_key);
        let what = format!("terminating backend {pid}");
        self.on_idle(limit + Duration::from_secs(1), &what, |conn| {
            let (sql, channel) = (sql.clone(), channel.clone());
            Box::pin(async move {
                let row = sqlx::query(AssertSqlSafe(sql))
                    .bind(pid)
                    .bind(wait_ms)
                    .bind(channel)
                    .bind(VACATED)
                    .bind(lock_key)
                    .bind(token)
                    .fetch_one(conn)
                    .await?;
                row.try_get::<bool, _>("done")
            })
        })
        .await
    }

    /// Who holds `lock_key` now, read on an idle connection.
    async fn lookup(&self, lock_key: i64) -> Result<Option<(LeaseInfo, i32)>> {
        let sql = self.inner.sql.holder.clone();
        let limit = self.inner.options.operation_timeout;
        self.on_idle(limit, "reading the holder failed", |conn| {
            let sql = sql.clone();
            Box::pin(async move {
                // The counter row is committed just after the lock shows in
                // pg_locks; a read in between sees the previous holder's pid.
                // That window is microseconds: read again a few times.
                let mut last = None;
                for _ in 0..3 {
                    let row = sqlx::query(AssertSqlSafe(sql.clone()))
                        .bind(lock_key)
                        .fetch_optional(&mut *conn)
                        .await?;
                    let Some(row) = row else { return Ok(None) };
                    let lock_pid: i32 = row.try_get("lock_pid")?;
                    let row_pid: Option<i32> = row.try_get("row_pid")?;
                    let info = holder_info(&row, "token")?;
                    if row_pid == Some(lock_pid) {
                        return Ok(info.map(|i| (i, lock_pid)));
                    }
                    last = info.map(|i| (i, lock_pid));
                    tokio::task::yield_now().await;
                }
                Ok(last)
            })
        })
        .await
    }
}

/// One caller's turn to acquire a key through a store; the key's entry in
/// `Inner::acquiring` is removed when no one else is waiting (also when the
/// acquisition's future is dropped).
struct Turn<'a> {
    store: &'a PostgresStore,
    key: &'a LeaseKey,
    mutex: Arc<tokio::sync::Mutex<()>>,
}

impl<'a> Turn<'a> {
    fn take(store: &'a PostgresStore, key: &'a LeaseKey) -> Self {
        let mutex = store
            .inner
            .acquiring
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(key.clone())
            .or_default()
            .clone();
        Turn { store, key, mutex }
    }
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        let mut map = self
            .store
            .inner
            .acquiring
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        // Only the map's copy and ours: nobody else waits for this key.
        if Arc::strong_count(&self.mutex) == 2 {
            map.remove(self.key);
        }
    }
}

/// The error for a connection whose statements reach different backends.
fn pooler_error(pid: i32, now_pid: i32) -> Error {
    Error::invalid_config(format!(
        "the advisory lock taken by backend {pid} is not visible to the next statement on the \
         same connection (backend {now_pid}): a connection pooler in transaction or statement \
         mode (e.g. PgBouncer) sits between this process and Postgres, and session advisory \
         locks cannot work through it; connect to Postgres directly or use session pooling"
    ))
}

/// A [`LeaseInfo`] from a holder lookup row: the full holder id from the
/// counter row when it belongs to the locking session, else the session's
/// `application_name` (and the last token minted, or 0).
fn holder_info(
    row: &PgRow,
    token_column: &str,
) -> std::result::Result<Option<LeaseInfo>, sqlx::Error> {
    let Some(lock_pid) = row.try_get::<Option<i32>, _>("lock_pid")? else {
        return Ok(None);
    };
    let app: Option<String> = row.try_get("app")?;
    let holder: Option<String> = row.try_get("holder")?;
    let token: Option<i64> = row.try_get(token_column)?;
    let row_pid: Option<i32> = row.try_get("row_pid")?;
    let token = FencingToken(token.and_then(|t| u64::try_from(t).ok()).unwrap_or(0));
    let named = if row_pid == Some(lock_pid) {
        holder
    } else {
        None
    };
    let holder = named
        .or(app.filter(|a| !a.trim().is_empty()))
        .and_then(|h| HolderId::new(h).ok())
        .or_else(|| HolderId::new(format!("postgres backend {lock_pid}")).ok());
    Ok(holder.map(|h| LeaseInfo::new(h, token, None)))
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
        let limit = self.inner.options.operation_timeout.min(lease.ttl);
        let sent = Instant::now();
        // Taken out of the slot for the statement: if this future is dropped,
        // the connection closes and the lease is lost, never left in doubt.
        let outcome = tokio::time::timeout(limit, self.check_held(&mut conn, lock_key)).await;
        let failure = match outcome {
            Ok(Ok((pid, true))) if pid == state.pid => {
                state.conn = Some(conn);
                state.valid_until = sent + lease.ttl;
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
        let limit = self.inner.options.operation_timeout;
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
            self.inner.options.operation_timeout,
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
            .field("options", &self.inner.options)
            .field("pinned_leases", &self.leases().len())
            .finish()
    }
}
