//! Taking a lease: the one-statement acquisition, a new term on a pinned
//! session, and the check that catches transaction poolers.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use leader_core::{Acquire, Error, FencingToken, HolderId, Lease, LeaseInfo, LeaseKey, Result};
use sqlx::{AssertSqlSafe, Row};
use tokio::time::Instant;

use super::session::holder_info;
use super::{Minted, Pinned, PinnedState, PostgresStore, STORE};
use crate::conn::{Conn, classify, is_connection_error};
use crate::keys::{self, Keepalive};

impl PostgresStore {
    /// Runs the acquire (`reacquire`: on a session that already holds the
    /// lock) statement on `conn`.
    pub(super) async fn mint(
        &self,
        conn: &mut Conn,
        reacquire: bool,
        key: &LeaseKey,
        lock_key: i64,
        holder: &HolderId,
        ttl: Duration,
    ) -> std::result::Result<Minted, sqlx::Error> {
        let sql = &self.inner.sql;
        // TCP settings once per connection and TTL.
        let tcp = conn.tcp_ttl != Some(ttl);
        let statement = match (reacquire, tcp) {
            (false, false) => &sql.acquire,
            (false, true) => &sql.acquire_tcp,
            (true, false) => &sql.reacquire,
            (true, true) => &sql.reacquire_tcp,
        };
        let ka = Keepalive::for_ttl(ttl);
        let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
        let idle_timeout = if conn.idle_timeout {
            Some(keys::idle_session_timeout_ms(ttl).to_string())
        } else {
            self.warn_no_idle_timeout(conn);
            None
        };
        let waited = self.waited_out(lock_key);
        let row = sqlx::query(AssertSqlSafe(statement.clone()))
            .bind(lock_key)
            .bind(key.as_str())
            .bind(holder.as_str())
            .bind(keys::application_name(holder.as_str()))
            .bind(ka.idle_secs.to_string())
            .bind(ka.interval_secs.to_string())
            .bind(ka.count.to_string())
            .bind(ka.user_timeout_ms.to_string())
            .bind(self.inner.config.lock_delay)
            .bind(ttl_ms)
            .bind(idle_timeout)
            .bind(waited)
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
            let token_num = token.unwrap_or(0);
            let token = FencingToken(u64::try_from(token_num).unwrap_or(0));
            let term_ttl = Duration::from_millis(wait_ms.unsigned_abs());
            let remaining = self.hold_back(lock_key, token_num, term_ttl);
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
            conn.tcp_ttl = Some(ttl);
            self.forget_vacated(lock_key);
            Ok(Minted::Got {
                token: FencingToken(token),
                pid: row.try_get("pid")?,
            })
        } else {
            let lock_pid: Option<i32> = row.try_get("lock_pid")?;
            let row_pid: Option<i32> = row.try_get("row_pid")?;
            let confirmed = lock_pid.is_some() && row_pid == lock_pid;
            if lock_pid.is_some() {
                // A new term holds the lock: any vacated one is over.
                self.forget_vacated(lock_key);
            }
            Ok(Minted::Missed(
                holder_info(&row, "held_token")?,
                lock_pid,
                confirmed,
            ))
        }
    }

    /// Checks on `conn` that its session holds `lock_key`: `(backend pid, held)`.
    pub(super) async fn check_held(
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

    /// The session's backend pid (`pg_backend_pid()`).
    pub(super) async fn backend_pid(
        &self,
        conn: &mut Conn,
    ) -> std::result::Result<i32, sqlx::Error> {
        let row = sqlx::query(AssertSqlSafe(self.inner.sql.renew_pid.clone()))
            .fetch_one(&mut conn.inner)
            .await?;
        row.try_get("pid")
    }

    /// A re-acquisition by the holder of the pinned lease on `key`: a new term
    /// (new token) on the same session. `None` when that session is gone.
    pub(super) async fn reacquire(
        &self,
        pinned: &Arc<Pinned>,
        key: &LeaseKey,
        lock_key: i64,
        ttl: Duration,
    ) -> Option<Lease> {
        let mut state = pinned.state.lock().await;
        let mut conn = state.conn.take()?;
        let limit = self.inner.config.request_timeout;
        let sent = Instant::now();
        match tokio::time::timeout(
            limit,
            self.mint(&mut conn, true, key, lock_key, &pinned.holder, ttl),
        )
        .await
        {
            Ok(Ok(Minted::Got { token, pid })) if pid == state.pid => {
                state.conn = Some(conn);
                state.token = token;
                state.valid_until = sent + ttl;
                state.locks_checked = sent;
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

    pub(super) async fn acquire_fresh(
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
        let limit = self.inner.config.request_timeout;
        let mut terminated_stale = false;
        for attempt in 0..3 {
            let (mut conn, reused) = self.inner.conns.take().await.map_err(err)?;
            // If this future is dropped mid-statement, `conn` is dropped with
            // it: the socket closes and the server frees any lock it took.
            let sent = Instant::now();
            let outcome = tokio::time::timeout(
                limit,
                self.mint(&mut conn, false, key, lock_key, holder, ttl),
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
                            locks_checked: sent,
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
                Ok(Ok(Minted::Missed(info, lock_pid, confirmed))) => {
                    self.inner.conns.put_back(conn);
                    // A winner racing with us: read again until its counter
                    // row names it, rather than report its session's name.
                    let info = match (confirmed, lock_pid) {
                        (false, Some(_)) => match self.lookup(lock_key).await {
                            Ok(found) => found.map(|(info, _)| info),
                            Err(_) => info,
                        },
                        _ => info,
                    };
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

    /// Detects a transaction-mode pooler: a second statement on the same
    /// connection must reach the same backend and still see the lock.
    pub(super) async fn verify_session(
        &self,
        conn: &mut Conn,
        lock_key: i64,
        pid: i32,
    ) -> Result<()> {
        let limit = self.inner.config.request_timeout;
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
}

/// One caller's turn to acquire a key through a store; the key's entry in
/// `Inner::acquiring` is removed when no one else is waiting (also when the
/// acquisition's future is dropped).
pub(super) struct Turn<'a> {
    store: &'a PostgresStore,
    key: &'a LeaseKey,
    pub(super) mutex: Arc<tokio::sync::Mutex<()>>,
}

impl<'a> Turn<'a> {
    pub(super) fn take(store: &'a PostgresStore, key: &'a LeaseKey) -> Self {
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
pub(super) fn pooler_error(pid: i32, now_pid: i32) -> Error {
    Error::invalid_config(format!(
        "the advisory lock taken by backend {pid} is not visible to the next statement on the \
         same connection (backend {now_pid}): a connection pooler in transaction or statement \
         mode (e.g. PgBouncer) sits between this process and Postgres, and session advisory \
         locks cannot work through it; connect to Postgres directly or use session pooling"
    ))
}
