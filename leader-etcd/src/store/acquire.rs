//! Acquisition: the loop over grant and transactions, the transactions
//! themselves, and the guard that revokes a fresh grant when an acquisition
//! does not complete.

use std::time::Duration;

use etcd_client::{Client, Compare, CompareOp, KeyValue, PutOptions, Txn, TxnOp};
use leader_core::{Acquire, Error, HolderId, LeaseKey, Metadata, Result};

use super::records::{lease, token_of, ttl_seconds, txn_get};
use super::value::{names_holder, start_value};
use super::{EtcdStore, MAX_ATTEMPTS};
use crate::error::protocol;

/// What the first acquisition transaction found.
enum Put {
    Created(KeyValue),
    Existing(KeyValue),
}

/// How many candidates [`EtcdStore::note_held_by_other`] remembers before
/// it forgets them all (a forgotten candidate costs one lease grant and
/// revoke on its next attempt, nothing else).
const SEEN_HELD_LIMIT: usize = 4096;

impl EtcdStore {
    /// `acquire` and `acquire_with_metadata`: a new term for `holder`,
    /// whose value carries `metadata` if given (see [`EtcdStore`]).
    pub(super) async fn take(
        &self,
        key: &LeaseKey,
        holder: &HolderId,
        ttl: Duration,
        metadata: Option<&Metadata>,
    ) -> Result<Acquire> {
        const OP: &str = "acquire";
        let k = key.as_str();
        let client = self.client(OP, k).await?;
        let value = start_value(holder, metadata);
        // Followers woken together by a release take turns: the first takes
        // the seat, the next reads it taken, the others share that read.
        let turn = self.inner.turns.take(&k.to_owned(), holder).await;
        if let Some(info) = turn.shared() {
            self.note_held_by_other(k, holder, true);
            return Ok(Acquire::Held(info));
        }
        for _ in 0..MAX_ATTEMPTS {
            // A seat last seen taken is read before a lease is granted for
            // it: a follower's poll is then a read, not a grant + revoke.
            if self.last_seen_held(k, holder)
                && let (Some(kv), _) = self.get_kv(&client, OP, k).await?
                && !names_holder(kv.value(), holder)
            {
                let info = self.info(&client, OP, k, &kv).await?;
                return Ok(turn.held(info));
            }
            let grant = self
                .retrying(OP, k, &client, |mut c| async move {
                    c.lease_grant(ttl_seconds(ttl), None).await
                })
                .await?;
            let id = grant.id();
            let guard = RevokeGuard::new(self, &client, id);
            match self.put_if_absent(&client, k, &value, id).await? {
                Put::Created(kv) => {
                    guard.disarm();
                    self.note_held_by_other(k, holder, false);
                    let token = token_of(OP, k, &kv)?;
                    return Ok(Acquire::Acquired(lease(key, holder, token, ttl, id)));
                }
                Put::Existing(kv) if names_holder(kv.value(), holder) => {
                    // Our own key, still there after a transient error: start
                    // a new term (a new revision) under the new lease.
                    if let Some(new) = self.recreate_own(&client, k, &value, id, &kv).await? {
                        guard.disarm();
                        self.note_held_by_other(k, holder, false);
                        let token = token_of(OP, k, &new)?;
                        if kv.lease() != id {
                            self.forget_renewal(kv.lease());
                            self.revoke_in_background(&client, kv.lease());
                        }
                        return Ok(Acquire::Acquired(lease(key, holder, token, ttl, id)));
                    }
                    // It changed meanwhile: drop this grant and start over.
                    guard.revoke_now().await;
                }
                Put::Existing(kv) => {
                    guard.revoke_now().await;
                    self.note_held_by_other(k, holder, true);
                    let info = self.info(&client, OP, k, &kv).await?;
                    return Ok(turn.held(info));
                }
            }
        }
        Err(Error::indeterminate(format!(
            "the key kept changing during {MAX_ATTEMPTS} attempts"
        ))
        .with_store("etcd")
        .with_operation(OP)
        .with_key(k))
    }

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

    /// The acquisition transaction: create the key with `value` under lease
    /// `id` if it does not exist, else read it.
    async fn put_if_absent(&self, client: &Client, k: &str, value: &[u8], id: i64) -> Result<Put> {
        let txn = Txn::new()
            .when([Compare::create_revision(k, CompareOp::Equal, 0)])
            .and_then([
                TxnOp::put(k, value, Some(PutOptions::new().with_lease(id))),
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

    /// Re-puts our own key `old` with `value` under lease `id` (detaching
    /// it from the old lease), so the new term gets a new, higher revision.
    /// `None` if the key changed meanwhile.
    ///
    /// etcd refuses a delete and a put of one key in one transaction, so the
    /// create revision cannot be renewed atomically; the mod revision can.
    async fn recreate_own(
        &self,
        client: &Client,
        k: &str,
        value: &[u8],
        id: i64,
        old: &KeyValue,
    ) -> Result<Option<KeyValue>> {
        let txn = Txn::new()
            .when([
                Compare::mod_revision(k, CompareOp::Equal, old.mod_revision()),
                Compare::value(k, CompareOp::Equal, old.value()),
            ])
            .and_then([
                TxnOp::put(k, value, Some(PutOptions::new().with_lease(id))),
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
