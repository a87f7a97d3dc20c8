//! Replacing the metadata of a held lease ([`LeaseStore::update_metadata`])
//! on its pinned session.
//!
//! [`LeaseStore::update_metadata`]: leader_core::LeaseStore::update_metadata

use leader_core::{Error, Lease, Metadata, Result};
use sqlx::{AssertSqlSafe, Row};

use super::{PostgresStore, STORE};
use crate::conn::{classify, is_connection_error};
use crate::{keys, watch};

impl PostgresStore {
    /// Writes `metadata` into the lease's counter row, in one statement that
    /// changes it only while the row names this holder, token and session
    /// and the session still holds the lock; followers are notified with
    /// the commit. A lost lease is `NotHolder`, as for a renewal.
    pub(super) async fn update_pinned(&self, lease: &Lease, metadata: Metadata) -> Result<()> {
        let err = |e: Error| {
            e.with_store(STORE)
                .with_operation("update_metadata")
                .with_key(lease.key.as_str())
        };
        let lost = |message: String| err(Error::not_holder(message));
        let Some(pinned) = self.pinned_for(lease) else {
            return Err(lost(format!(
                "this store holds no session for the lease with token {}",
                lease.token
            )));
        };
        let limit = self.inner.config.request_timeout;
        let mut slot = self.slot(&pinned.session, limit).await.map_err(err)?;
        if slot.lost {
            return Err(lost(
                "the pinned session was lost (closed after a failure); so is every lease on it"
                    .into(),
            ));
        }
        match slot.held.get(&pinned.lock_key) {
            Some(term) if term.handle == lease.handle && term.token == lease.token => {}
            _ => {
                return Err(lost(format!(
                    "the term with token {} is over (released, replaced or given up)",
                    lease.token
                )));
            }
        }
        let token = i64::try_from(lease.token.0).unwrap_or(i64::MAX);
        let payload = watch::metadata_payload(&lease.holder, lease.token);
        let outcome = match slot.conn.as_mut() {
            Some(conn) => {
                let query = sqlx::query(AssertSqlSafe(self.inner.sql.update_metadata.clone()))
                    .bind(pinned.lock_key)
                    .bind(lease.holder.as_str())
                    .bind(token)
                    .bind(metadata.as_bytes())
                    .bind(keys::channel(pinned.lock_key))
                    .bind(payload)
                    .fetch_one(&mut conn.inner);
                tokio::time::timeout(limit, query).await
            }
            None => Ok(Err(sqlx::Error::PoolClosed)),
        };
        let failure = match outcome {
            Ok(Ok(row)) => {
                let updated: i64 = row
                    .try_get("updated")
                    .map_err(|e| err(classify(e, false, "update_metadata answered oddly")))?;
                if updated == 1 {
                    pinned.set_metadata(lease.token, metadata);
                    return Ok(());
                }
                return Err(lost(format!(
                    "the counter row no longer names the term with token {} on this lease's \
                     session (its lock was lost)",
                    lease.token
                )));
            }
            // The server refused the statement; the session is fine.
            Ok(Err(e)) if !is_connection_error(&e) => {
                self.table_missing(&e);
                return Err(err(classify(
                    e,
                    false,
                    "the update_metadata statement failed",
                )));
            }
            Ok(Err(e)) => lost(
                "the pinned session failed: the server has dropped or will drop its locks".into(),
            )
            .with_source(e),
            Err(_) => lost(format!(
                "update_metadata got no answer within {limit:?}; the pinned session was closed \
                 and its locks given up"
            )),
        };
        self.lose(&pinned.session, &mut slot, "a metadata update failed");
        Err(failure)
    }
}
