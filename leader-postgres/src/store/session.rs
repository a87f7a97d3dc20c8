//! A pinned session's life after acquisition (store-side expiry, unlock,
//! inspection) and the statements run on idle connections (holder lookup,
//! termination).

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use leader_core::{Error, FencingToken, HolderId, LeaseInfo, LeaseKey, Result};
use sqlx::postgres::{PgConnection, PgRow};
use sqlx::{AssertSqlSafe, Row};
use tokio::time::Instant;

use super::{Pinned, PostgresStore, STORE, VACATED};
use crate::conn::{Conn, classify, is_connection_error};
use crate::keys;

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
    /// `SHOW idle_session_timeout` (the lease TTL in milliseconds, so the
    /// server ends a holder's session that stopped renewing; `None` on
    /// servers before PostgreSQL 14, which lack it).
    pub idle_session_timeout: Option<String>,
}

impl PostgresStore {
    /// Gives the lease up if it is not renewed within its TTL (its holder
    /// stopped renewing without releasing: a stuck task, an aborted
    /// elector). A session lock has no server-side expiry; this gives it one,
    /// no earlier than the elector's own validity ends. It ends as a release
    /// (followers are notified and no lock delay applies, since the holder
    /// cannot believe it leads any more).
    pub(super) fn spawn_expiry(&self, key: LeaseKey, pinned: Arc<Pinned>) {
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
    pub(super) async fn unlock(
        &self,
        mut conn: Conn,
        lock_key: i64,
        token: FencingToken,
    ) -> Result<bool> {
        let limit = self.inner.config.request_timeout;
        let token = i64::try_from(token.0).unwrap_or(i64::MAX);
        let sql = self.inner.sql.release(lock_key, token, conn.idle_timeout);
        let outcome = tokio::time::timeout(limit, async {
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
        let limit = self.inner.config.request_timeout;
        let outcome = tokio::time::timeout(limit, async {
            let row = sqlx::query(
                "SELECT pg_backend_pid() AS pid, \
                        current_setting('application_name') AS app, \
                        current_setting('tcp_keepalives_idle') AS idle, \
                        current_setting('tcp_keepalives_interval') AS intvl, \
                        current_setting('tcp_keepalives_count') AS cnt, \
                        current_setting('tcp_user_timeout') AS uto, \
                        current_setting('idle_session_timeout', true) AS ist",
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
                idle_session_timeout: row.try_get("ist")?,
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

/// A [`LeaseInfo`] from a holder lookup row: the full holder id from the
/// counter row when it belongs to the locking session, else the session's
/// `application_name` (and the last token minted, or 0).
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
