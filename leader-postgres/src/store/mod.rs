//! [`PostgresStore`]: leases as session-level advisory locks on pinned
//! connections, with fencing tokens from a counter table.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use leader_core::turns::Turns;
use leader_core::{
    Acquire, Capabilities, Error, FencingSource, FencingToken, HolderId, Lease, LeaseEvents,
    LeaseInfo, LeaseKey, LeaseStore, Metadata, NotificationSupport, Result, check_ttl,
};
use sqlx::{AssertSqlSafe, Row};
use tokio::time::Instant;

mod acquire;
mod delay;
mod finish;
mod metadata;
mod pool;
mod resign;
mod session;

pub use session::SessionInfo;

use crate::config::{PostgresConfig, TableName};
use crate::conn::Connector;
use crate::keys;
use crate::sql::Statements;
use crate::watch::Hub;
use pool::{Pool, Session, Slot};

const STORE: &str = "postgres";
/// The payload of the NOTIFY sent on release and force release.
pub(crate) const VACATED: &str = "vacated";

/// A lease held through this store: its term on a shared pinned session.
struct Pinned {
    handle: u64,
    key: LeaseKey,
    holder: HolderId,
    lock_key: i64,
    session: Arc<Session>,
    /// The term and its metadata, under one lock so that a reader never
    /// pairs one term's token with another term's metadata.
    state: Mutex<(PinnedState, Option<Metadata>)>,
    /// Wakes the expiry task when the lease ends otherwise.
    ended: tokio::sync::Notify,
}

#[derive(Debug, Clone, Copy)]
struct PinnedState {
    token: FencingToken,
    /// Send time of the last successful acquire or renew plus the TTL: the
    /// store gives the lease up itself after this (see `spawn_expiry`).
    valid_until: Instant,
}

impl Pinned {
    fn locked(&self) -> MutexGuard<'_, (PinnedState, Option<Metadata>)> {
        // Updates are single assignments; a panic cannot corrupt them.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn state(&self) -> PinnedState {
        self.locked().0
    }

    /// Updates the term's validity (a renewal: same token, same metadata).
    fn set_state(&self, state: PinnedState) {
        self.locked().0 = state;
    }

    /// Starts a new term with its own metadata.
    fn set_term(&self, state: PinnedState, metadata: Option<Metadata>) {
        *self.locked() = (state, metadata);
    }

    /// Replaces the metadata of term `token`, if it is still the current one.
    fn set_metadata(&self, token: FencingToken, metadata: Metadata) {
        let mut locked = self.locked();
        if locked.0.token == token {
            locked.1 = Some(metadata);
        }
    }

    /// The current term as a holder record.
    fn info(&self) -> LeaseInfo {
        let (state, metadata) = self.locked().clone();
        LeaseInfo::new(self.holder.clone(), state.token, None).with_metadata(metadata)
    }
}

struct Inner {
    /// The counter table, checked.
    table: TableName,
    config: PostgresConfig,
    sql: Statements,
    conns: Connector,
    /// The pinned sessions the leases share.
    pool: Pool,
    /// The one LISTEN connection of this store.
    hub: Hub,
    /// The counter table is known to exist (reset when a statement says it
    /// does not: a server restored from an older backup, or a dropped table).
    schema_ready: AtomicBool,
    schema_lock: tokio::sync::Mutex<()>,
    /// The leases held through this store, by advisory lock key.
    leases: Mutex<HashMap<i64, Arc<Pinned>>>,
    /// Serializes acquisitions of one lock key through this store, so that
    /// two concurrent calls never take each other for a stale session, and
    /// a session never takes a lock it already holds (advisory locks are
    /// reentrant within a session); followers woken together by a release
    /// share the answer of the one in flight (see [`leader_core::turns`]).
    acquiring: Turns<i64>,
    next_handle: AtomicU64,
    /// Vacated terms this client is waiting out (the lock delay), by lock key.
    vacated: Mutex<HashMap<i64, delay::Vacated>>,
    /// The warning about a server without `idle_session_timeout` was logged.
    warned_old_server: AtomicBool,
}

/// A [`LeaseStore`] on PostgreSQL session-level advisory locks.
///
/// Each lease is `pg_try_advisory_lock(key)` held on a pinned session: a
/// connection that holds the locks of many leases of this store (at most
/// [`PostgresConfig::with_pinned_sessions`] of them) and never goes back to a
/// pool. The fencing token is minted in the same statement from the counter
/// table (created if missing). A session's TCP keepalive / user timeout and
/// `idle_session_timeout` follow the longest TTL of its leases, so the
/// server frees a silent holder's locks about one TTL after it last heard
/// from it, and ends the sessions of a holder process that is reachable but
/// stopped (PostgreSQL 14+). A session's loss ends every lease on it.
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
                pool: Pool::new(config.pinned_sessions),
                hub: Hub::new(),
                table,
                config,
                conns,
                schema_ready: AtomicBool::new(false),
                schema_lock: tokio::sync::Mutex::new(()),
                leases: Mutex::new(HashMap::new()),
                acquiring: Turns::new(),
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

    /// Notes a statement's complaint that the counter table is missing (or
    /// lacks a column: replaced by an earlier version's), so the next
    /// operation creates or upgrades it again. Returns whether that was it.
    fn table_missing(&self, e: &sqlx::Error) -> bool {
        let code = match e {
            sqlx::Error::Database(db) => db.code(),
            _ => None,
        };
        let missing = match code.as_deref() {
            Some("42P01") => "the counter table is missing; creating it again",
            Some("42703") => "the counter table lacks a column; upgrading it again",
            _ => return false,
        };
        tracing::warn!(table = ?self.inner.table, "{missing}");
        self.inner.schema_ready.store(false, Ordering::Release);
        true
    }

    async fn create_schema(&self) -> Result<()> {
        let table = self.inner.table.as_written();
        let sql = &self.inner.sql;
        // The ALTER waits for the table's ACCESS EXCLUSIVE lock, and every
        // statement on the table queues behind it meanwhile: bounded, so a
        // long transaction on the table fails the upgrade (retried by the
        // next operation) instead of stalling every client's acquisitions.
        let lock_timeout = self
            .inner
            .config
            .request_timeout
            .min(Duration::from_secs(1));
        let upgrade = format!(
            "BEGIN; SET LOCAL lock_timeout = {}; {}; COMMIT",
            lock_timeout.as_millis().max(1),
            sql.add_metadata
        );
        let (exists, create) = (sql.table_exists.clone(), sql.create_table.clone());
        let what = format!(
            "could not check, create or upgrade the counter table {table:?} (upgrading a table \
             of an earlier version adds the column `metadata bytea` and needs the table's owner)"
        );
        self.on_idle(self.inner.config.request_timeout, &what, |conn| {
            let (exists, create, upgrade, table) = (
                exists.clone(),
                create.clone(),
                upgrade.clone(),
                table.clone(),
            );
            Box::pin(async move {
                let row = sqlx::query(AssertSqlSafe(exists))
                    .bind(table)
                    .fetch_one(&mut *conn)
                    .await?;
                let present: bool = row.try_get("present")?;
                if present && !row.try_get::<bool, _>("has_metadata")? {
                    // A table from before leader metadata: a nullable
                    // column without default is a catalog change only (no
                    // rewrite), under a brief ACCESS EXCLUSIVE lock. A
                    // failure drops this connection (never put back), so
                    // no aborted transaction block is reused.
                    // Another instance adding it at the same moment is
                    // fine: the second ALTER waits and finds the column.
                    sqlx::raw_sql(AssertSqlSafe(upgrade))
                        .execute(&mut *conn)
                        .await?;
                    tracing::info!("added the metadata column to the counter table");
                }
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

    fn leases(&self) -> MutexGuard<'_, HashMap<i64, Arc<Pinned>>> {
        // Map updates are single inserts/removes; a panic cannot corrupt it.
        self.inner.leases.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The lease on `key` held through this store, if any.
    fn pinned(&self, key: &LeaseKey) -> Option<Arc<Pinned>> {
        self.leases()
            .get(&self.lock_key(key))
            .filter(|p| p.key == *key)
            .cloned()
    }

    /// The pinned lease matching `lease` (key, handle and holder).
    fn pinned_for(&self, lease: &Lease) -> Option<Arc<Pinned>> {
        self.pinned(&lease.key)
            .filter(|p| p.handle == lease.handle && p.holder == lease.holder)
    }

    /// Forgets the pinned lease `handle` on `lock_key` (if still the current one).
    fn unpin(&self, lock_key: i64, handle: u64) {
        let mut leases = self.leases();
        if leases.get(&lock_key).is_some_and(|p| p.handle == handle)
            && let Some(p) = leases.remove(&lock_key)
        {
            p.ended.notify_one();
        }
    }

    /// Waits (within `limit`) for the session's turn to run a statement.
    async fn slot(
        &self,
        session: &Session,
        limit: Duration,
    ) -> Result<tokio::sync::OwnedMutexGuard<Slot>> {
        tokio::time::timeout(limit, Arc::clone(&session.slot).lock_owned())
            .await
            .map_err(|_| {
                Error::indeterminate(format!(
                    "the pinned session was busy for {limit:?} (a statement on it is waiting                      for the server)"
                ))
            })
    }

    /// Ends a session whose connection failed or went unanswered: it is
    /// closed (the server frees its locks when it sees that), taken out of
    /// the pool, and every lease on it is lost.
    fn lose(&self, session: &Session, slot: &mut Slot, why: &str) {
        slot.conn = None;
        slot.lost = true;
        let leases = slot.held.len();
        for (lock_key, term) in slot.held.drain() {
            self.unpin(lock_key, term.handle);
        }
        session.note(slot);
        self.inner.pool.remove(session.id);
        if leases > 0 {
            tracing::warn!(session = session.id, pid = ?slot.pid, leases, "{why}: the pinned postgres session is closed and every lease on it is lost");
        }
    }

    /// Runs `f` so that a caller that stops waiting (an elector's request
    /// timeout) never cancels a statement on a shared session halfway: that
    /// would end every lease on it. `f` runs in the caller's task (no hand-
    /// over between threads on the way there and back) and, if the caller
    /// drops it, finishes in a task of its own (see [`finish::Finish`]),
    /// within the operation's own bounds.
    async fn detached<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: Future<Output = Result<T>> + Send + 'static,
    {
        finish::Finish::new(f).await
    }
}

impl PostgresStore {
    /// Renews the lease on its pinned session (see [`LeaseStore::renew`]).
    ///
    /// A session lock ends only by an unlock on its own session (this store
    /// unlocks only when it releases) or with the session, so any statement
    /// that reached the same backend after this renewal was sent proves the
    /// lock still held: renewals of many leases on one session share one
    /// `SELECT pg_backend_pid()`. Once per TTL the session's locks are also
    /// looked up in `pg_locks`.
    async fn renew_pinned(&self, lease: &Lease) -> Result<()> {
        let sent = Instant::now();
        let lost = |message: String| {
            Error::not_holder(message)
                .with_store(STORE)
                .with_operation("renew")
                .with_key(lease.key.as_str())
        };
        let Some(pinned) = self.pinned_for(lease) else {
            return Err(lost(format!(
                "this store holds no session for the lease with token {}",
                lease.token
            )));
        };
        let limit = self.inner.config.request_timeout.min(lease.ttl);
        let mut slot = self
            .slot(&pinned.session, limit)
            .await
            .map_err(|e| e.with_store(STORE).with_operation("renew"))?;
        if slot.lost {
            return Err(lost(
                "the pinned session was lost (closed after a failure); so is every lease on it"
                    .into(),
            ));
        }
        match slot.held.get(&pinned.lock_key) {
            Some(term) if term.handle == lease.handle && term.token == lease.token => {}
            Some(term) if term.handle == lease.handle => {
                return Err(lost(format!(
                    "token {} was replaced by a newer term (token {})",
                    lease.token, term.token
                )));
            }
            _ => {
                return Err(lost(format!(
                    "the lease with token {} was released or given up",
                    lease.token
                )));
            }
        }
        let check_all = sent.saturating_duration_since(slot.locks_checked)
            >= slot.settings.unwrap_or(lease.ttl);
        if !check_all && slot.proven.is_some_and(|p| p >= sent) {
            // Another renewal on this session answered after we were sent.
            pinned.set_state(PinnedState {
                token: lease.token,
                valid_until: sent + lease.ttl,
            });
            return Ok(());
        }
        let left = limit.saturating_sub(sent.elapsed());
        let statement_sent = Instant::now();
        let outcome = match slot.conn.as_mut() {
            Some(conn) => {
                tokio::time::timeout(left, async {
                    if check_all {
                        self.locks_held(conn)
                            .await
                            .map(|(pid, keys)| (pid, Some(keys)))
                    } else {
                        self.backend_pid(conn).await.map(|pid| (pid, None))
                    }
                })
                .await
            }
            None => Ok(Err(sqlx::Error::PoolClosed)),
        };
        let failure = match outcome {
            Ok(Ok((pid, keys))) if Some(pid) == slot.pid => {
                slot.proven = Some(statement_sent);
                if let Some(keys) = keys {
                    slot.locks_checked = statement_sent;
                    self.drop_unheld(&pinned.session, &mut slot, &keys);
                }
                if slot.held.contains_key(&pinned.lock_key) {
                    pinned.set_state(PinnedState {
                        token: lease.token,
                        valid_until: sent + lease.ttl,
                    });
                    return Ok(());
                }
                return Err(lost(format!(
                    "the session no longer holds advisory lock {} (it was unlocked by someone)",
                    pinned.lock_key
                )));
            }
            Ok(Ok((pid, _))) => {
                let e = acquire::pooler_error(slot.pid.unwrap_or_default(), pid);
                lost(e.message().to_owned())
            }
            Ok(Err(e)) => lost(
                "the pinned session failed: the server has dropped or will drop its locks".into(),
            )
            .with_source(e),
            Err(_) => lost(format!(
                "renewal got no answer within {limit:?}; the pinned session was closed and its \
                 locks given up"
            )),
        };
        self.lose(&pinned.session, &mut slot, "a renewal failed");
        tracing::debug!(key = %lease.key, error = %failure, "postgres lease lost");
        Err(failure)
    }

    /// Forgets the terms whose locks `pg_locks` no longer shows on the
    /// session (`keys`: the locks it holds): those leases are lost.
    fn drop_unheld(&self, session: &Session, slot: &mut Slot, keys: &[i64]) {
        let gone: Vec<i64> = slot
            .held
            .keys()
            .filter(|k| !keys.contains(k))
            .copied()
            .collect();
        for lock_key in gone {
            if let Some(term) = slot.held.remove(&lock_key) {
                tracing::warn!(lock_key, holder = %term.holder, "a pinned session no longer holds a lease's lock; the lease is lost");
                self.unpin(lock_key, term.handle);
            }
        }
        session.note(slot);
    }

    /// Takes the lease on `key` with `metadata` (or none) as the term's
    /// metadata (see [`LeaseStore::acquire`]).
    async fn take(
        &self,
        key: &LeaseKey,
        holder: &HolderId,
        ttl: Duration,
        metadata: Option<Metadata>,
    ) -> Result<Acquire> {
        check_ttl(ttl)?;
        self.ensure_schema().await?;
        let (store, key, holder) = (self.clone(), key.clone(), holder.clone());
        self.detached(async move {
            let lock_key = store.lock_key(&key);
            // Followers woken together by a release take turns; those that
            // waited behind an answer that found the seat taken share it.
            let turn = store.inner.acquiring.take(&lock_key, &holder).await;
            if let Some(info) = turn.shared() {
                return Ok(Acquire::Held(info));
            }
            let existing = store.leases().get(&lock_key).cloned();
            if let Some(pinned) = existing {
                if pinned.key == key && pinned.holder == holder {
                    let again = store
                        .reacquire(&pinned, &key, lock_key, ttl, metadata.as_ref())
                        .await
                        .map_err(|e| {
                            e.with_store(STORE)
                                .with_operation("acquire")
                                .with_key(key.as_str())
                        })?;
                    if let Some(lease) = again {
                        return Ok(Acquire::Acquired(lease));
                    }
                } else {
                    // Held through this very store: no need to ask the
                    // server (and a session must not lock it twice).
                    return Ok(turn.held(pinned.info()));
                }
            }
            let outcome = store
                .acquire_fresh(&key, lock_key, &holder, ttl, metadata.as_ref())
                .await;
            turn.answer(&outcome);
            outcome
        })
        .await
    }

    /// Releases `lease` (see [`LeaseStore::release`]).
    async fn release_pinned(&self, lease: &Lease) -> Result<bool> {
        let Some(pinned) = self.pinned_for(lease) else {
            return Ok(false);
        };
        self.end_term(&pinned, lease.token).await
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
            .with_metadata()
            .with_resign_requests()
    }

    async fn acquire(&self, key: &LeaseKey, holder: &HolderId, ttl: Duration) -> Result<Acquire> {
        self.take(key, holder, ttl, None).await
    }

    async fn acquire_with_metadata(
        &self,
        key: &LeaseKey,
        holder: &HolderId,
        ttl: Duration,
        metadata: &Metadata,
    ) -> Result<Acquire> {
        self.take(key, holder, ttl, Some(metadata.clone())).await
    }

    async fn update_metadata(&self, lease: &Lease, metadata: &Metadata) -> Result<()> {
        let (store, lease, metadata) = (self.clone(), lease.clone(), metadata.clone());
        // Detached for the same reason as `renew`: the statement runs on a
        // shared session and must not be cancelled halfway.
        self.detached(async move { store.update_pinned(&lease, metadata).await })
            .await
    }

    async fn renew(&self, lease: &Lease) -> Result<()> {
        check_ttl(lease.ttl)?;
        // Detached: a caller that drops the renewal (an elector shutting
        // down mid-renewal) must not cancel the statement on the shared
        // session; it finishes (bounded by the operation timeout) and the
        // release that follows runs as usual.
        let (store, lease) = (self.clone(), lease.clone());
        self.detached(async move { store.renew_pinned(&lease).await })
            .await
    }

    async fn release(&self, lease: &Lease) -> Result<bool> {
        let (store, lease) = (self.clone(), lease.clone());
        self.detached(async move {
            store.release_pinned(&lease).await.map_err(|e| {
                e.with_store(STORE)
                    .with_operation("release")
                    .with_key(lease.key.as_str())
            })
        })
        .await
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
        // Held through this very store: end just that term on its shared
        // session (terminating the session would end every lease on it).
        let local = self.leases().get(&lock_key).cloned();
        if let Some(pinned) = local {
            let info = pinned.info();
            let store = self.clone();
            let ended = self
                .detached(async move {
                    store
                        .end_term(&pinned, info.token)
                        .await
                        .map(|ended| ended.then_some(info))
                })
                .await
                .map_err(err)?;
            if let Some(info) = ended {
                tracing::info!(key = %key, holder = %info.holder, token = info.token.0, "postgres lease force-released on this store's own session");
                return Ok(Some(info));
            }
        }
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

    async fn request_resign(&self, key: &LeaseKey, token: FencingToken) -> Result<bool> {
        self.send_resign(key, token).await
    }

    async fn watch(&self, key: &LeaseKey) -> Result<LeaseEvents> {
        self.inner
            .hub
            .subscribe(
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
            .field("pinned_sessions", &self.inner.pool.len())
            .finish()
    }
}
