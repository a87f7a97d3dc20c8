//! Resign requests ([`LeaseStore::request_resign`]): one statement on any
//! pooled connection that notifies the key's channel only while the named
//! term is current.
//!
//! [`LeaseStore::request_resign`]: leader_core::LeaseStore::request_resign

use leader_core::{Error, FencingToken, LeaseKey, Result};
use sqlx::{AssertSqlSafe, Row};

use super::{PostgresStore, STORE};
use crate::{keys, watch};

impl PostgresStore {
    /// Sends `resign <token>` on `key`'s channel if the term with `token`
    /// holds the lock now (its row is not released and its session holds
    /// the lock in `pg_locks`); returns whether it did.
    pub(super) async fn send_resign(&self, key: &LeaseKey, token: FencingToken) -> Result<bool> {
        let err = |e: Error| {
            e.with_store(STORE)
                .with_operation("request_resign")
                .with_key(key.as_str())
        };
        // Tokens are bigints in the table: a larger one names no term.
        let Ok(wanted) = i64::try_from(token.0) else {
            return Ok(false);
        };
        self.ensure_schema().await.map_err(err)?;
        let lock_key = self.lock_key(key);
        let sql = self.inner.sql.request_resign.clone();
        let (channel, payload) = (keys::channel(lock_key), watch::resign_payload(token));
        let limit = self.inner.config.request_timeout;
        self.on_idle(limit, "the resign request failed", |conn| {
            let (sql, channel, payload) = (sql.clone(), channel.clone(), payload.clone());
            Box::pin(async move {
                let row = sqlx::query(AssertSqlSafe(sql))
                    .bind(lock_key)
                    .bind(wanted)
                    .bind(channel)
                    .bind(payload)
                    .fetch_one(conn)
                    .await?;
                Ok(row.try_get::<i64, _>("notified")? > 0)
            })
        })
        .await
        .map_err(err)
    }
}
