//! A pinned session's life after acquisition (store-side expiry, unlock,
//! inspection) and the statements run on idle connections (holder lookup,
//! termination).

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use leader_core::{Error, FencingToken, HolderId, LeaseInfo, LeaseKey, Metadata, Result};
use sqlx::postgres::{PgConnection, PgRow};
use sqlx::{AssertSqlSafe, Row};
use tokio::time::Instant;

use super::{Pinned, PostgresStore, STORE, VACATED};
use crate::conn::{classify, is_connection_error};
use crate::keys;

/// What the server says about the session pinned to a lease: which backend
/// holds the lock, the settings the store applied to it, and how many
/// leases share it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SessionInfo {
    /// The backend's pid (`pg_backend_pid()`, the `pid` in `pg_stat_activity`).
    pub pid: i32,
    /// The session's `application_name`: the store's (every lease on the
    /// session shares it; the counter table names each lease's holder).
    pub application_name: String,
    /// `SHOW tcp_keepalives_idle` (0 on a Unix socket, where it has no effect).
    pub tcp_keepalives_idle: String,
    /// `SHOW tcp_keepalives_interval`.
    pub tcp_keepalives_interval: String,
    /// `SHOW tcp_keepalives_count`.
    pub tcp_keepalives_count: String,
    /// `SHOW tcp_user_timeout`.
    pub tcp_user_timeout: String,
    /// `SHOW idle_session_timeout` (1.25 × the longest TTL of the
    /// session's leases, so the server ends the session of a holder process
    /// that stopped; `None` on servers before PostgreSQL 14, which lack it).
    pub idle_session_timeout: Option<String>,
    /// How many leases of this store share the session (its locks).
    pub leases: usize,
}

impl PostgresStore {
    /// Gives the lease up if it is not renewed within its TTL (its holder
    /// stopped renewing without releasing: a stuck task, an aborted
    /// elector). A session lock has no server-side expiry; this gives it one,
    /// no earlier than the elector's own validity ends. It ends as a release
    /// (followers are notified and no lock delay applies, since the holder
    /// cannot believe it leads any more).
    pub(super) fn spawn_expiry(&self, pinned: Arc<Pinned>) {
        let store = self.clone();
        tokio::spawn(async move {
            loop {
                let until = pinned.state().valid_until;
                tokio::select! {
                    _ = tokio::time::sleep_until(until) => {}
                    _ = pinned.ended.notified() => return,
                }
                let state = pinned.state();
                if state.valid_until > Instant::now() {
                    continue; // renewed meanwhile
                }
                tracing::warn!(key = %pinned.key, holder = %pinned.holder, token = state.token.0, "postgres lease not renewed within its TTL; giving it up");
                // Errors only mean the session is lost: the lock is freed.
                let _ = store.end_term(&pinned, state.token).await;
                return;
            }
        });
    }

    /// Ends term `token` of the pinned lease: marks it released, unlocks,
    /// notifies followers, and forgets the lease. `Ok(false)` when the
    /// term is not held any more. A failure loses the session (closing it
    /// frees its locks) and every lease on it.
    pub(super) async fn end_term(&self, pinned: &Pinned, token: FencingToken) -> Result<bool> {
        let limit = self.inner.config.request_timeout;
        let session = &pinned.session;
        let mut slot = self.slot(session, limit).await?;
        let current = slot
            .held
            .get(&pinned.lock_key)
            .is_some_and(|t| t.handle == pinned.handle && t.token == token);
        if slot.lost || !current {
            return Ok(false);
        }
        let sql = self
            .inner
            .sql
            .release(pinned.lock_key, i64::try_from(token.0).unwrap_or(i64::MAX));
        let outcome = match slot.conn.as_mut() {
            Some(conn) => {
                tokio::time::timeout(limit, async {
                    let rows = sqlx::raw_sql(AssertSqlSafe(sql))
                        .fetch_all(&mut conn.inner)
                        .await?;
                    match rows.first() {
                        Some(row) => row.try_get::<bool, _>("ok"),
                        None => Err(sqlx::Error::Protocol(
                            "the release returned no unlock result".into(),
                        )),
                    }
                })
                .await
            }
            None => Ok(Err(sqlx::Error::PoolClosed)),
        };
        let result = match outcome {
            // Released; or not held any more (which only an unlock on this
            // session could do): either way the term is over.
            Ok(Ok(unlocked)) => {
                slot.held.remove(&pinned.lock_key);
                session.note(&slot);
                Ok(unlocked)
            }
            Ok(Err(e)) => {
                self.lose(session, &mut slot, "a release failed");
                Err(classify(
                    e,
                    false,
                    "unlock failed; the pinned session was closed, so the server frees its \
                     locks when it sees the connection end",
                ))
            }
            Err(_) => {
                self.lose(session, &mut slot, "a release got no answer");
                Err(Error::indeterminate(format!(
                    "unlock got no answer within {limit:?}; the pinned session was closed, so \
                     the server frees its locks when it sees the connection end"
                )))
            }
        };
        drop(slot);
        self.unpin(pinned.lock_key, pinned.handle);
        result
    }

    /// Asks the session pinned to the lease on `key` (held through this
    /// store) who it is and which settings it runs with; `None` when this
    /// store holds no lease on `key`. For operators and tests.
    ///
    /// # Errors
    ///
    /// When the session does not answer; it is then closed and every lease
    /// on it is lost, as after a failed renewal.
    pub async fn pinned_session(&self, key: &LeaseKey) -> Result<Option<SessionInfo>> {
        let Some(pinned) = self.pinned(key) else {
            return Ok(None);
        };
        let err = |e: Error| {
            e.with_store(STORE)
                .with_operation("pinned_session")
                .with_key(key.as_str())
        };
        let limit = self.inner.config.request_timeout;
        let store = self.clone();
        self.detached(async move {
            let session = &pinned.session;
            let mut slot = store.slot(session, limit).await?;
            if slot.lost || !slot.held.contains_key(&pinned.lock_key) {
                return Ok(None);
            }
            let leases = slot.held.len();
            let outcome = match slot.conn.as_mut() {
                Some(conn) => {
                    tokio::time::timeout(limit, session_info(&mut conn.inner, leases)).await
                }
                None => Ok(Err(sqlx::Error::PoolClosed)),
            };
            match outcome {
                Ok(Ok(info)) => Ok(Some(info)),
                Ok(Err(e)) => {
                    store.lose(session, &mut slot, "a session inspection failed");
                    Err(classify(e, false, "the pinned session failed"))
                }
                Err(_) => {
                    store.lose(session, &mut slot, "a session inspection got no answer");
                    Err(Error::indeterminate(format!(
                        "the pinned session did not answer within {limit:?}"
                    )))
                }
            }
        })
        .await
        .map_err(err)
    }

    /// Runs `op` on an idle connection within `limit`, returning the
    /// connection to the idle set after success. A reused idle connection
    /// that turns out dead (the server restarted) is replaced once.
    pub(super) async fn on_idle<T, F>(&self, limit: Duration, what: &str, op: F) -> Result<T>
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
    pub(super) async fn terminate(
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
    pub(super) async fn lookup(&self, lock_key: i64) -> Result<Option<(LeaseInfo, i32)>> {
        let sql = self.inner.sql.holder.clone();
        let limit = self.inner.config.request_timeout;
        self.on_idle(limit, "reading the holder failed", |conn| {
            let sql = sql.clone();
            Box::pin(async move {
                // The counter row is committed just after the lock shows in
                // pg_locks; a read in between sees the previous holder's pid.
                // The window is short but grows on a loaded machine: read
                // again with a small backoff, for at most about 50 ms.
                let mut last = None;
                for attempt in 0..12u32 {
                    if attempt > 0 {
                        tokio::time::sleep(std::time::Duration::from_millis(u64::from(attempt)))
                            .await;
                    }
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
                }
                Ok(last)
            })
        })
        .await
    }
}

/// A [`LeaseInfo`] from a holder lookup row: the full holder id and the
/// term's metadata from the counter row when it belongs to the locking
/// session, else the session's `application_name` (and the last token
/// minted, or 0, without metadata: the row is another term's).
pub(super) fn holder_info(
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
    let (named, metadata) = if row_pid == Some(lock_pid) {
        (holder, metadata_column(row, "metadata")?)
    } else {
        (None, None)
    };
    let holder = named
        .or(app.filter(|a| !a.trim().is_empty()))
        .and_then(|h| HolderId::new(h).ok())
        .or_else(|| HolderId::new(format!("postgres backend {lock_pid}")).ok());
    Ok(holder.map(|h| LeaseInfo::new(h, token, None).with_metadata(metadata)))
}

/// The term's metadata in `column` of a row (NULL: none). A value over the
/// size limit (written by hand) is a protocol error, not a panic.
pub(super) fn metadata_column(
    row: &PgRow,
    column: &str,
) -> std::result::Result<Option<Metadata>, sqlx::Error> {
    let Some(bytes) = row.try_get::<Option<Vec<u8>>, _>(column)? else {
        return Ok(None);
    };
    // A decode error, not `Protocol`: the session itself is fine.
    Metadata::new(bytes).map(Some).map_err(|e| {
        sqlx::Error::Decode(format!("the counter table's {column} column: {e}").into())
    })
}

/// What the server says about a session (`leases`: how many share it).
async fn session_info(
    conn: &mut PgConnection,
    leases: usize,
) -> std::result::Result<SessionInfo, sqlx::Error> {
    let row = sqlx::query(
        "SELECT pg_backend_pid() AS pid, \
                current_setting('application_name') AS app, \
                current_setting('tcp_keepalives_idle') AS idle, \
                current_setting('tcp_keepalives_interval') AS intvl, \
                current_setting('tcp_keepalives_count') AS cnt, \
                current_setting('tcp_user_timeout') AS uto, \
                current_setting('idle_session_timeout', true) AS ist",
    )
    .fetch_one(conn)
    .await?;
    Ok(SessionInfo {
        pid: row.try_get("pid")?,
        application_name: row.try_get("app")?,
        tcp_keepalives_idle: row.try_get("idle")?,
        tcp_keepalives_interval: row.try_get("intvl")?,
        tcp_keepalives_count: row.try_get("cnt")?,
        tcp_user_timeout: row.try_get("uto")?,
        idle_session_timeout: row.try_get("ist")?,
        leases,
    })
}
