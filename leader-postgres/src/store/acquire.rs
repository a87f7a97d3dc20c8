//! Taking a lease: the one-statement acquisition on a shared pinned
//! session, a new term on the lease's session, and the check that catches
//! transaction poolers.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use leader_core::{
    Acquire, Error, FencingToken, HolderId, Lease, LeaseInfo, LeaseKey, Metadata, Result,
};
use sqlx::postgres::PgRow;
use sqlx::{AssertSqlSafe, Row};
use tokio::time::Instant;

use super::pool::{Session, Slot, Term};
use super::session::{holder_info, metadata_column};
use super::{Minted, Pinned, PinnedState, PostgresStore, STORE};
use crate::conn::{Conn, classify, is_connection_error};
use crate::keys::{self, Keepalive};

impl PostgresStore {
    /// Runs the acquire (`reacquire`: on a session that already holds the
    /// lock) statement on `conn`, applying the session settings of
    /// `settings` (a TTL) when given, and storing `metadata` (or NULL) with
    /// the new term.
    ///
    /// The common case (a new lease on a session whose settings fit) runs
    /// the short statement; only when it took the lock of a term that ended
    /// without a release does a second statement decide on the lock delay.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn mint(
        &self,
        conn: &mut Conn,
        reacquire: bool,
        key: &LeaseKey,
        lock_key: i64,
        holder: &HolderId,
        ttl: Duration,
        settings: Option<Duration>,
        metadata: Option<&Metadata>,
    ) -> std::result::Result<Minted, sqlx::Error> {
        if reacquire || settings.is_some() {
            return self
                .mint_deciding(
                    conn, reacquire, key, lock_key, holder, ttl, settings, metadata,
                )
                .await;
        }
        let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
        let row = sqlx::query(AssertSqlSafe(self.inner.sql.acquire_fast.clone()))
            .bind(lock_key)
            .bind(key.as_str())
            .bind(holder.as_str())
            .bind(self.inner.config.lock_delay)
            .bind(ttl_ms)
            .bind(self.waited_out(lock_key))
            .bind(metadata.map(Metadata::as_bytes))
            .fetch_one(&mut conn.inner)
            .await?;
        if !row.try_get::<bool, _>("got")? {
            // Busy: who holds it, on the same session and within the same
            // time limit (the statement above leaves the lookup out, which
            // keeps the common case short).
            let found = sqlx::query(AssertSqlSafe(self.inner.sql.holder.clone()))
                .bind(lock_key)
                .fetch_optional(&mut conn.inner)
                .await?;
            return match found {
                Some(row) => self.missed(&row, lock_key, "token"),
                // Released between the two statements: the caller retries.
                None => Ok(Minted::Missed(None, None, false)),
            };
        }
        match row.try_get::<Option<i64>, _>("token")? {
            Some(token) => Ok(self.got(&row, token, lock_key)?),
            // The previous term ended without a release: this session
            // holds the lock now; the deciding statement keeps it or gives
            // it back (the lock delay).
            None => {
                self.mint_deciding(conn, true, key, lock_key, holder, ttl, None, metadata)
                    .await
            }
        }
    }

    /// The full acquire statement: lock (or, `reacquire`, check the lock
    /// this session holds), the lock delay, settings, token, holder.
    #[allow(clippy::too_many_arguments)]
    async fn mint_deciding(
        &self,
        conn: &mut Conn,
        reacquire: bool,
        key: &LeaseKey,
        lock_key: i64,
        holder: &HolderId,
        ttl: Duration,
        settings: Option<Duration>,
        metadata: Option<&Metadata>,
    ) -> std::result::Result<Minted, sqlx::Error> {
        let sql = &self.inner.sql;
        let statement = match (reacquire, settings.is_some()) {
            (false, _) => &sql.acquire_settings,
            (true, false) => &sql.reacquire,
            (true, true) => &sql.reacquire_settings,
        };
        let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
        let waited = self.waited_out(lock_key);
        let mut query = sqlx::query(AssertSqlSafe(statement.clone()))
            .bind(lock_key)
            .bind(key.as_str())
            .bind(holder.as_str())
            .bind(self.inner.config.lock_delay)
            .bind(ttl_ms)
            .bind(waited);
        if settings.is_some() || !reacquire {
            let settings = settings.unwrap_or(ttl);
            let ka = Keepalive::for_ttl(settings);
            let idle_timeout = if conn.idle_timeout {
                Some(keys::idle_session_timeout_ms(settings).to_string())
            } else {
                self.warn_no_idle_timeout(conn);
                None
            };
            query = query
                .bind(idle_timeout)
                .bind(ka.idle_secs.to_string())
                .bind(ka.interval_secs.to_string())
                .bind(ka.count.to_string())
                .bind(ka.user_timeout_ms.to_string());
        }
        // The last parameter in every variant ($7, or $12 with settings).
        let row = query
            .bind(metadata.map(Metadata::as_bytes))
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
            return Ok(Minted::HeldBack(
                LeaseInfo::new(holder, token, Some(remaining))
                    .with_metadata(metadata_column(&row, "prev_metadata")?),
            ));
        }
        if got {
            let token: Option<i64> = row.try_get("token")?;
            let token = token
                .ok_or_else(|| sqlx::Error::Protocol("lock taken but no token minted".into()))?;
            self.got(&row, token, lock_key)
        } else {
            self.missed(&row, lock_key, "held_token")
        }
    }

    /// A minted term from an acquire row.
    fn got(
        &self,
        row: &PgRow,
        token: i64,
        lock_key: i64,
    ) -> std::result::Result<Minted, sqlx::Error> {
        let token = u64::try_from(token)
            .map_err(|_| sqlx::Error::Protocol(format!("a negative token {token} was minted")))?;
        self.forget_vacated(lock_key);
        Ok(Minted::Got {
            token: FencingToken(token),
            pid: row.try_get("pid")?,
        })
    }

    /// Who holds the busy lock, from an acquire or holder row (the holder's
    /// token in `token_column`).
    fn missed(
        &self,
        row: &PgRow,
        lock_key: i64,
        token_column: &str,
    ) -> std::result::Result<Minted, sqlx::Error> {
        let lock_pid: Option<i32> = row.try_get("lock_pid")?;
        let row_pid: Option<i32> = row.try_get("row_pid")?;
        let confirmed = lock_pid.is_some() && row_pid == lock_pid;
        if lock_pid.is_some() {
            // A new term holds the lock: any vacated one is over.
            self.forget_vacated(lock_key);
        }
        Ok(Minted::Missed(
            holder_info(row, token_column)?,
            lock_pid,
            confirmed,
        ))
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

    /// The session's backend pid and every advisory lock key it holds.
    pub(super) async fn locks_held(
        &self,
        conn: &mut Conn,
    ) -> std::result::Result<(i32, Vec<i64>), sqlx::Error> {
        let row = sqlx::query(AssertSqlSafe(self.inner.sql.locks_held.clone()))
            .fetch_one(&mut conn.inner)
            .await?;
        let hi: Vec<i64> = row.try_get("hi")?;
        let lo: Vec<i64> = row.try_get("lo")?;
        // pg_locks shows the key's high half in classid, the low in objid.
        let keys = hi
            .iter()
            .zip(&lo)
            .map(|(h, l)| {
                let bits =
                    ((h.cast_unsigned() & 0xffff_ffff) << 32) | (l.cast_unsigned() & 0xffff_ffff);
                bits.cast_signed()
            })
            .collect();
        Ok((row.try_get("pid")?, keys))
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

    /// A re-acquisition by the holder of the pinned lease on `key`: a new
    /// term (new token) on the same session. `Ok(None)` (with the old term
    /// given up) when that session no longer has it.
    pub(super) async fn reacquire(
        &self,
        pinned: &Arc<Pinned>,
        key: &LeaseKey,
        lock_key: i64,
        ttl: Duration,
        metadata: Option<&Metadata>,
    ) -> Result<Option<Lease>> {
        let limit = self.inner.config.request_timeout;
        let session = &pinned.session;
        let mut slot = self.slot(session, limit).await?;
        let ours = slot
            .held
            .get(&lock_key)
            .is_some_and(|t| t.handle == pinned.handle);
        if slot.lost || !ours {
            self.unpin(lock_key, pinned.handle);
            return Ok(None);
        }
        // The settings must fit the other leases and the new term's TTL.
        let wanted = slot
            .held
            .iter()
            .filter(|(k, _)| **k != lock_key)
            .map(|(_, t)| t.ttl)
            .fold(ttl, Duration::max);
        let settings = (slot.settings != Some(wanted)).then_some(wanted);
        let sent = Instant::now();
        let Some(conn) = slot.conn.as_mut() else {
            self.lose(session, &mut slot, "a pinned session had no connection");
            return Ok(None);
        };
        let outcome = tokio::time::timeout(
            limit,
            self.mint(
                conn,
                true,
                key,
                lock_key,
                &pinned.holder,
                ttl,
                settings,
                metadata,
            ),
        )
        .await;
        match outcome {
            Ok(Ok(Minted::Got { token, pid })) if Some(pid) == slot.pid => {
                if settings.is_some() {
                    slot.settings = settings;
                }
                slot.proven = Some(sent);
                if let Some(term) = slot.held.get_mut(&lock_key) {
                    term.token = token;
                    term.ttl = ttl;
                }
                session.note(&slot);
                pinned.set_term(
                    PinnedState {
                        token,
                        valid_until: sent + ttl,
                    },
                    metadata.cloned(),
                );
                Ok(Some(
                    Lease::new(key.clone(), pinned.holder.clone(), token, ttl)
                        .with_handle(pinned.handle),
                ))
            }
            // The session no longer holds the lock (it answered, so it is
            // alive): forget the term and start afresh.
            Ok(Ok(Minted::Missed(..) | Minted::HeldBack(_))) => {
                slot.held.remove(&lock_key);
                session.note(&slot);
                self.unpin(lock_key, pinned.handle);
                Ok(None)
            }
            // The server refused the statement: give the lock up on the
            // session and start afresh.
            Ok(Err(e)) if !is_connection_error(&e) => {
                self.give_back(session, &mut slot, lock_key).await;
                self.unpin(lock_key, pinned.handle);
                Ok(None)
            }
            // Broken, unanswered, or a different backend: the session is
            // closed (freeing its locks) and every lease on it is lost.
            _ => {
                self.lose(session, &mut slot, "a re-acquisition failed");
                Ok(None)
            }
        }
    }

    /// Unlocks `lock_key` on the session after a statement failed (a
    /// session lock survives the failed statement's rollback) and forgets
    /// any term of it; loses the session if even that fails.
    async fn give_back(&self, session: &Session, slot: &mut Slot, lock_key: i64) {
        slot.held.remove(&lock_key);
        let limit = self.inner.config.request_timeout;
        let unlocked = match slot.conn.as_mut() {
            Some(conn) => tokio::time::timeout(
                limit,
                sqlx::query("SELECT pg_advisory_unlock($1::bigint)")
                    .bind(lock_key)
                    .execute(&mut conn.inner),
            )
            .await
            .is_ok_and(|r| r.is_ok()),
            None => false,
        };
        if unlocked {
            session.note(slot);
        } else {
            self.lose(
                session,
                slot,
                "giving back a lock after a failed statement failed",
            );
        }
    }

    pub(super) async fn acquire_fresh(
        &self,
        key: &LeaseKey,
        lock_key: i64,
        holder: &HolderId,
        ttl: Duration,
        metadata: Option<&Metadata>,
    ) -> Result<Acquire> {
        let err = |e: Error| {
            e.with_store(STORE)
                .with_operation("acquire")
                .with_key(key.as_str())
        };
        let limit = self.inner.config.request_timeout;
        let mut terminated_stale = false;
        for attempt in 0..3 {
            let session = self.inner.pool.pick(ttl);
            let mut slot = self.slot(&session, limit).await.map_err(err)?;
            if slot.lost {
                continue;
            }
            let reused = slot.conn.is_some();
            if !reused {
                match self.inner.conns.take().await {
                    Ok((conn, _)) => slot.conn = Some(conn),
                    Err(e) => {
                        self.lose(&session, &mut slot, "connecting failed");
                        return Err(err(e));
                    }
                }
            }
            if let Some(term) = slot.held.get(&lock_key) {
                // Never lock twice on one session (advisory locks are
                // reentrant): this session holds it for another lease.
                let pinned = self.leases().get(&lock_key).cloned();
                return Ok(Acquire::Held(match pinned {
                    Some(p) if p.handle == term.handle => p.info(),
                    _ => LeaseInfo::new(term.holder.clone(), term.token, None),
                }));
            }
            let wanted = slot.wanted_settings(ttl);
            let settings = (slot.settings != Some(wanted)).then_some(wanted);
            let sent = Instant::now();
            let Some(conn) = slot.conn.as_mut() else {
                continue;
            };
            let outcome = tokio::time::timeout(
                limit,
                self.mint(conn, false, key, lock_key, holder, ttl, settings, metadata),
            )
            .await;
            match outcome {
                Ok(Ok(Minted::Got { token, pid })) => {
                    let known = slot.pid;
                    let checked = match slot.conn.as_mut() {
                        _ if known.is_some_and(|k| k != pid) => {
                            Err(pooler_error(known.unwrap_or_default(), pid))
                        }
                        Some(conn) if !conn.verified => {
                            self.verify_session(conn, lock_key, pid).await
                        }
                        _ => Ok(()),
                    };
                    if let Err(e) = checked {
                        // Closing the connection frees the lock it took.
                        self.lose(&session, &mut slot, "a pinned session failed its check");
                        return Err(err(e));
                    }
                    slot.pid = Some(pid);
                    if settings.is_some() {
                        slot.settings = settings;
                    }
                    if slot.held.is_empty() {
                        slot.locks_checked = sent;
                    }
                    slot.proven = Some(sent);
                    let handle = self.inner.next_handle.fetch_add(1, Ordering::Relaxed);
                    slot.held.insert(
                        lock_key,
                        Term {
                            handle,
                            holder: holder.clone(),
                            token,
                            ttl,
                        },
                    );
                    session.note(&slot);
                    let pinned = Arc::new(Pinned {
                        handle,
                        key: key.clone(),
                        holder: holder.clone(),
                        lock_key,
                        session: Arc::clone(&session),
                        state: std::sync::Mutex::new((
                            PinnedState {
                                token,
                                valid_until: sent + ttl,
                            },
                            metadata.cloned(),
                        )),
                        ended: tokio::sync::Notify::new(),
                    });
                    drop(slot);
                    // Replaces a stale entry whose session lost the lock.
                    if let Some(old) = self.leases().insert(lock_key, pinned.clone()) {
                        old.ended.notify_one();
                    }
                    self.spawn_expiry(pinned);
                    tracing::debug!(key = %key, %holder, token = token.0, pid, session = session.id, "postgres lease acquired");
                    return Ok(Acquire::Acquired(
                        Lease::new(key.clone(), holder.clone(), token, ttl).with_handle(handle),
                    ));
                }
                Ok(Ok(Minted::HeldBack(info))) => {
                    tracing::debug!(key = %key, previous = %info.holder, remaining = ?info.remaining, "lock delay after a term that ended without release");
                    return Ok(Acquire::Held(info));
                }
                Ok(Ok(Minted::Missed(info, lock_pid, confirmed))) => {
                    drop(slot);
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
                        // Our own holder id on a session this store no
                        // longer has (its socket died or a renewal timed
                        // out, and the server has not noticed yet). Same
                        // holder means acquire succeeds, so end that session
                        // and try again.
                        (Some(info), Some(pid))
                            if &info.holder == holder
                                && !terminated_stale
                                && !self.inner.pool.pids().contains(&pid) =>
                        {
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
                Ok(Err(e)) if is_connection_error(&e) => {
                    let had_leases = !slot.held.is_empty();
                    self.lose(&session, &mut slot, "an acquisition failed");
                    // A session without leases that the server ended while
                    // it was unused (its idle_session_timeout, a restart):
                    // nothing was held on it, so one retry on a new one.
                    if !(reused && !had_leases && attempt == 0) {
                        return Err(err(classify(e, false, "acquire statement failed")));
                    }
                }
                Ok(Err(e)) => {
                    // The server refused the statement; the session is fine
                    // but keeps any lock the statement took (session locks
                    // survive its rollback): give it back.
                    self.give_back(&session, &mut slot, lock_key).await;
                    drop(slot);
                    // Lost with a server restored from an old backup (or
                    // dropped): create it again and retry.
                    if self.table_missing(&e) && attempt < 2 {
                        self.ensure_schema().await.map_err(err)?;
                        continue;
                    }
                    return Err(err(classify(e, false, "acquire statement failed")));
                }
                Err(_) => {
                    self.lose(&session, &mut slot, "an acquisition got no answer");
                    return Err(err(Error::indeterminate(format!(
                        "acquire got no answer within {limit:?}; the pinned session was closed, \
                         so any lock it took is freed (and every lease on it is lost)"
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

/// The error for a connection whose statements reach different backends.
pub(super) fn pooler_error(pid: i32, now_pid: i32) -> Error {
    Error::invalid_config(format!(
        "the advisory lock taken by backend {pid} is not visible to the next statement on the \
         same connection (backend {now_pid}): a connection pooler in transaction or statement \
         mode (e.g. PgBouncer) sits between this process and Postgres, and session advisory \
         locks cannot work through it; connect to Postgres directly or use session pooling"
    ))
}
