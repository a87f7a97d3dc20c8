//! The acquisition transactions, and the guard that revokes a fresh grant
//! when an acquisition does not complete.

use etcd_client::{Client, Compare, CompareOp, KeyValue, PutOptions, Txn, TxnOp};
use leader_core::{HolderId, Result};

use super::EtcdStore;
use super::records::txn_get;
use crate::error::protocol;

/// What the first acquisition transaction found.
pub(super) enum Put {
    Created(KeyValue),
    Existing(KeyValue),
}

/// How many candidates [`EtcdStore::note_held_by_other`] remembers before
/// it forgets them all (a forgotten candidate costs one lease grant and
/// revoke on its next attempt, nothing else).
const SEEN_HELD_LIMIT: usize = 4096;

impl EtcdStore {
    /// Whether `holder`'s last attempt on `k` found it held by someone else.
    pub(super) fn last_seen_held(&self, k: &str, holder: &HolderId) -> bool {
        self.seen_held()
            .contains(&(k.to_owned(), holder.as_str().to_owned()))
    }

    /// Records what `holder`'s attempt on `k` found.
    pub(super) fn note_held_by_other(&self, k: &str, holder: &HolderId, held: bool) {
        let mut seen = self.seen_held();
        let entry = (k.to_owned(), holder.as_str().to_owned());
        if !held {
            seen.remove(&entry);
            return;
        }
        if seen.len() >= SEEN_HELD_LIMIT {
            seen.clear();
        }
        seen.insert(entry);
    }

    fn seen_held(&self) -> std::sync::MutexGuard<'_, std::collections::HashSet<(String, String)>> {
        self.inner
            .seen_held
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// The acquisition transaction: create the key under lease `id` if it
    /// does not exist, else read it.
    pub(super) async fn put_if_absent(
        &self,
        client: &Client,
        k: &str,
        holder: &HolderId,
        id: i64,
    ) -> Result<Put> {
        let txn = Txn::new()
            .when([Compare::create_revision(k, CompareOp::Equal, 0)])
            .and_then([
                TxnOp::put(k, holder.as_str(), Some(PutOptions::new().with_lease(id))),
                TxnOp::get(k, None),
            ])
            .or_else([TxnOp::get(k, None)]);
        let resp = self.send_txn("acquire", k, client, txn).await?;
        let kv = txn_get(&resp)
            .ok_or_else(|| protocol("acquire", k, "the acquisition transaction returned no key"))?;
        Ok(if resp.succeeded() {
            Put::Created(kv)
        } else {
            Put::Existing(kv)
        })
    }

    /// Re-puts our own key `old` under lease `id` (detaching it from the old
    /// lease), so the new term gets a new, higher revision. `None` if the key
    /// changed meanwhile.
    ///
    /// etcd refuses a delete and a put of one key in one transaction, so the
    /// create revision cannot be renewed atomically; the mod revision can.
    pub(super) async fn recreate_own(
        &self,
        client: &Client,
        k: &str,
        holder: &HolderId,
        id: i64,
        old: &KeyValue,
    ) -> Result<Option<KeyValue>> {
        let txn = Txn::new()
            .when([
                Compare::mod_revision(k, CompareOp::Equal, old.mod_revision()),
                Compare::value(k, CompareOp::Equal, holder.as_str()),
            ])
            .and_then([
                TxnOp::put(k, holder.as_str(), Some(PutOptions::new().with_lease(id))),
                TxnOp::get(k, None),
            ]);
        let resp = self.send_txn("acquire", k, client, txn).await?;
        if !resp.succeeded() {
            return Ok(None);
        }
        let kv = txn_get(&resp).ok_or_else(|| {
            protocol(
                "acquire",
                k,
                "the re-acquisition transaction returned no key",
            )
        })?;
        if kv.mod_revision() <= old.mod_revision() {
            return Err(protocol(
                "acquire",
                k,
                "etcd kept the old revision when re-writing the key",
            ));
        }
        Ok(Some(kv))
    }
}

/// Revokes a freshly granted lease unless disarmed: on early return, error or
/// cancellation of `acquire`, nothing is left behind.
pub(super) struct RevokeGuard<'a> {
    store: &'a EtcdStore,
    client: Client,
    id: i64,
    armed: bool,
}

impl<'a> RevokeGuard<'a> {
    pub(super) fn new(store: &'a EtcdStore, client: &Client, id: i64) -> Self {
        RevokeGuard {
            store,
            client: client.clone(),
            id,
            armed: true,
        }
    }

    pub(super) fn disarm(mut self) {
        self.armed = false;
    }

    pub(super) async fn revoke_now(mut self) {
        self.armed = false;
        let id = self.id;
        self.store.revoke_now(&self.client, id).await;
    }
}

impl Drop for RevokeGuard<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.store.revoke_in_background(&self.client, self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::time::Instant;

    use super::*;

    /// What a cancelled `acquire` relies on: a grant whose guard is dropped
    /// without being disarmed (the future was dropped between the grant and
    /// the end of the acquisition) is revoked; a disarmed one is kept.
    #[tokio::test]
    async fn an_armed_grant_guard_revokes_on_drop() {
        let server = leader_testkit::servers::EtcdServer::start()
            .await
            .expect("etcd");
        let store = EtcdStore::from_url(server.url()).expect("store");
        let mut client = store.client("test", "k").await.expect("client");
        let dropped = client.lease_grant(60, None).await.expect("grant").id();
        let kept = client.lease_grant(60, None).await.expect("grant").id();
        drop(RevokeGuard::new(&store, &client, dropped));
        RevokeGuard::new(&store, &client, kept).disarm();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ttl = client.lease_time_to_live(dropped, None).await.expect("ttl");
            if ttl.ttl() <= 0 {
                break;
            }
            assert!(Instant::now() < deadline, "the dropped guard never revoked");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let ttl = client.lease_time_to_live(kept, None).await.expect("ttl");
        assert!(ttl.ttl() > 0, "a disarmed guard must not revoke");
    }
}
