//! [`EtcdStore`]: the [`LeaseStore`] on etcd leases and transactions.

mod acquire;
mod client;
mod keep_alive;
mod records;
mod renewals;
mod resign;
mod value;

use std::collections::HashSet;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use etcd_client::{Client, Compare, CompareOp, PutOptions, Txn, TxnOp};
use leader_core::turns::Turns;
use leader_core::{
    Acquire, Capabilities, Error, FencingSource, FencingToken, HolderId, Lease, LeaseEvents,
    LeaseInfo, LeaseKey, LeaseStore, Metadata, NotificationSupport, Result, check_ttl,
};
use tokio::sync::OnceCell;

use self::keep_alive::KeepAliveHub;
use self::records::{lease_id_of, not_holder};
use self::renewals::Renewals;
pub(crate) use self::resign::{request_key, requested_token, watch_range_end};
pub(crate) use self::value::Term;
use self::value::{held, term_of, updated_value, while_held};
use crate::config::EtcdConfig;
use crate::watch::WatchHub;

/// How often `acquire` and `force_release` retry when the key changed
/// between their read and their conditional write.
const MAX_ATTEMPTS: usize = 3;

/// A lease store on etcd v3.
///
/// * **acquire** by a candidate whose last attempt found the key held by
///   someone else first reads the key (linearizable): still held, it returns
///   [`Acquire::Held`] without granting anything, so a follower's poll costs
///   two reads and no write. Acquisitions of one key on one store take
///   turns ([`leader_core::turns`]), so followers woken together by a
///   release do not all grant a lease: the first takes the seat, the next
///   reads it taken, and the others waiting behind that read share its
///   answer. Otherwise it grants an etcd lease of the TTL rounded up to
///   whole seconds, then one transaction puts the key (value = holder id,
///   plus the metadata for `acquire_with_metadata`, as the README
///   describes) under that lease if the key does not exist
///   (`create_revision == 0`), else reads it. If the
///   key holds the caller's own holder id (a re-acquire after a transient
///   error), a second transaction re-puts it under the new lease if it did
///   not change meanwhile, which mints a new, higher token; the old lease is
///   revoked. On every failure the granted lease is revoked so nothing leaks.
/// * **The fencing token is the revision of the transaction that started
///   the term**: the key's mod revision until `update_metadata` re-puts the
///   key, which writes the term's token into the value instead. For a fresh
///   acquisition it equals the key's
///   create revision (etcd's `Election` API token); a same-holder
///   re-acquisition re-puts the key, so its mod revision moves on while the
///   create revision stays (etcd refuses to delete and re-create one key in
///   one transaction). etcd revisions are store-wide and only grow, so tokens
///   strictly increase across terms; they are not contiguous (other writes
///   to etcd advance the revision too).
/// * **renew** is one keep-alive round trip on the store's one keep-alive
///   stream, shared by every lease (every request names its lease, every
///   answer is routed to the request it answers; a TTL of 0 means the lease
///   is gone: `NotHolder`), plus a
///   linearizable `get` proving the key still holds our term (token, lease
///   and holder id), *unless* the keep-alive answer shows that the store's
///   revision has not moved since the last such check (then nothing in etcd
///   was written, so the key cannot have changed). On a quiet store a renewal
///   costs one keep-alive round trip; when other keys are being written it
///   costs a keep-alive plus a `get`. A deletion of the key by someone else
///   (not through this library, which revokes the lease as well) is therefore
///   seen on the first renewal after it, up to the lag of the member
///   answering the keep-alive.
/// * **release** deletes the key in a transaction that checks the key still
///   holds our term (token, lease and holder id), then
///   revokes the lease in the background (a lease without keys is harmless
///   and expires anyway).
/// * **update_metadata** re-puts the key, under the same etcd lease, with the
///   new metadata and the term's token, in one transaction guarded like
///   release's; the put is a `PUT` event that watchers see as
///   `MetadataUpdated`.
/// * **current** reads the key and the remaining TTL of its lease. etcd
///   truncates it to whole seconds; the store reports it plus one second, the
///   latest the lease can end, so a follower waiting for the expiry does not
///   poll in a loop while etcd says 0.
/// * **force_release** deletes the key (if it did not change meanwhile) and
///   revokes its lease.
/// * **request_resign** reads the key, then puts its *request key* (the key
///   followed by `\0resign`, valued with the token) under the holder's etcd
///   lease in one transaction guarded like release's: it dies with the
///   term's lease (revoked by release and force release, or expired).
/// * **watch** follows the key and its request key on the store's one
///   shared watch stream (one etcd watcher per key, events routed to that
///   key's subscribers; a `PUT` of the request key is `ResignRequested`); when
///   the stream breaks, every subscription ends and the electors poll until
///   they subscribe again, which re-opens the stream once for all. Every
///   deletion of the key reaches a live subscription, so the store declares
///   [`Capabilities::complete_notifications`]: an idle follower makes no
///   store call while subscribed.
///
/// The connection is made on first use, so a store can be built while etcd
/// is down; each request is bounded by the request timeout.
///
/// # Cancel safety
///
/// Dropping an `acquire` future after its grant was answered revokes the
/// grant in the background (or leaves the key held by the caller if the
/// transaction already ran, which the same holder's next `acquire` takes
/// over). A grant whose answer never arrived holds no key and expires after
/// its TTL. Dropping a `renew` future leaves its keep-alive request's answer
/// unclaimed: it is dropped when it comes, never given to a later renewal.
///
/// `Debug` shows the endpoints and user name, never the password.
#[derive(Clone)]
pub struct EtcdStore {
    inner: Arc<Inner>,
}

struct Inner {
    config: EtcdConfig,
    client: OnceCell<Client>,
    /// Per etcd lease id: the revision at which its key was last proven ours.
    renewals: Renewals,
    /// The keep-alive stream shared by every lease's renewals.
    keep_alives: KeepAliveHub,
    /// The watch stream shared by every subscription on this store.
    watches: WatchHub,
    /// Candidates (key, holder) whose last `acquire` found the key held by
    /// someone else: their next `acquire` reads the key before granting a
    /// lease.
    seen_held: Mutex<HashSet<(String, String)>>,
    /// One acquisition per key at a time (see [`leader_core::turns`]).
    turns: Turns,
    /// One `current` read per key at a time, its answer shared the same way:
    /// a new term's `Acquired` event wakes every follower on this store, and
    /// each reads the seat for the leader's metadata.
    reads: Turns,
}

/// The holder id under which `current` reads take turns: no term's holder,
/// so a read's answer is always shareable. (A real holder with this id
/// would only stop the sharing, never receive a wrong answer.)
fn seat_reader() -> &'static HolderId {
    static READER: std::sync::OnceLock<HolderId> = std::sync::OnceLock::new();
    READER.get_or_init(|| {
        HolderId::new("leader-etcd current() reader").unwrap_or_else(|_| HolderId::generate())
    })
}

impl fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdStore")
            .field("config", &self.inner.config)
            .field("connected", &self.inner.client.initialized())
            .finish()
    }
}

impl EtcdStore {
    /// A store for `config`. Does not connect: the connection is made on first
    /// use, so this succeeds while etcd is down.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidConfig`](leader_core::ErrorKind::InvalidConfig) for invalid timeouts.
    pub fn new(config: EtcdConfig) -> Result<Self> {
        config.validate()?;
        Ok(EtcdStore {
            inner: Arc::new(Inner {
                config,
                client: OnceCell::new(),
                renewals: Renewals::default(),
                keep_alives: KeepAliveHub::default(),
                watches: WatchHub::default(),
                seen_held: Mutex::new(HashSet::new()),
                turns: Turns::default(),
                reads: Turns::default(),
            }),
        })
    }

    /// A store for an `etcd://`, `etcds://`, `http://` or `https://` URL; see
    /// [`EtcdConfig::from_url`].
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidConfig`](leader_core::ErrorKind::InvalidConfig) naming the bad part of
    /// the URL (never the password).
    pub fn from_url(url: &str) -> Result<Self> {
        Self::new(EtcdConfig::from_url(url)?)
    }

    /// A store using an already connected etcd-client `Client` ("let me pass
    /// my own connection"); `config` supplies the timeouts.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidConfig`](leader_core::ErrorKind::InvalidConfig) for invalid timeouts.
    pub fn with_client(client: Client, config: EtcdConfig) -> Result<Self> {
        let store = Self::new(config)?;
        // A fresh cell always accepts its first value.
        let _ = store.inner.client.set(client);
        Ok(store)
    }

    /// The settings this store was built with.
    pub fn config(&self) -> &EtcdConfig {
        &self.inner.config
    }

    /// The watch stream shared by every subscription on this store.
    pub(crate) fn watch_hub(&self) -> &WatchHub {
        &self.inner.watches
    }
}

#[async_trait]
impl LeaseStore for EtcdStore {
    fn kind(&self) -> &'static str {
        "etcd"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::new(FencingSource::Revision)
            .with_notifications(NotificationSupport::ReleaseAndExpiry)
            // The key's watch sees every deletion (release, lease expiry, by
            // hand); a cancelled watch (compaction, a member without a
            // leader) or a broken stream (HTTP/2 keep-alive) ends the
            // subscriptions, and a full one holds a `Vacated`.
            .with_complete_notifications()
            // etcd leases have whole-second TTLs: acquire rounds up.
            .with_ttl_granularity(Duration::from_secs(1))
            .with_metadata()
            .with_resign_requests()
    }

    async fn acquire(&self, key: &LeaseKey, holder: &HolderId, ttl: Duration) -> Result<Acquire> {
        check_ttl(ttl)?;
        self.take(key, holder, ttl, None).await
    }

    async fn acquire_with_metadata(
        &self,
        key: &LeaseKey,
        holder: &HolderId,
        ttl: Duration,
        metadata: &Metadata,
    ) -> Result<Acquire> {
        check_ttl(ttl)?;
        self.take(key, holder, ttl, Some(metadata)).await
    }

    async fn update_metadata(&self, lease: &Lease, metadata: &Metadata) -> Result<()> {
        const OP: &str = "update_metadata";
        let id = lease_id_of(lease)?;
        let k = lease.key.as_str();
        let value = updated_value(&lease.holder, lease.token, metadata);
        // Same etcd lease: the TTL is neither extended nor reset.
        let put = TxnOp::put(k, value, Some(PutOptions::new().with_lease(id)));
        let Some(txn) = while_held(k, &lease.holder, lease.token, id, &[put]) else {
            return Err(not_holder(OP, lease, "its token cannot be an etcd term's"));
        };
        let client = self.client(OP, k).await?;
        let resp = self.send_txn(OP, k, &client, txn).await?;
        if !held(&resp) {
            return Err(not_holder(OP, lease, "the key was deleted or replaced"));
        }
        Ok(())
    }

    async fn renew(&self, lease: &Lease) -> Result<()> {
        check_ttl(lease.ttl)?;
        const OP: &str = "renew";
        let id = lease_id_of(lease)?;
        let k = lease.key.as_str();
        let client = self.client(OP, k).await?;
        let slot = self.renew_slot(id, lease.ttl);
        let mut state = slot.state.lock().await;
        let Some(revision) = self.keep_alive(&client, lease, id).await? else {
            drop(state);
            self.forget_renewal(id);
            return Err(not_holder(
                OP,
                lease,
                "its etcd lease expired or was revoked",
            ));
        };
        let proven = state.verified.as_ref().is_some_and(|(rev, token, holder)| {
            Some(*rev) == revision && *token == lease.token && *holder == lease.holder
        });
        if proven {
            // Nothing was written to etcd since the key was last proven ours.
            return Ok(());
        }
        let (kv, at) = self.get_kv(&client, OP, k).await?;
        let ours = kv.as_ref().is_some_and(|kv| {
            kv.lease() == id
                && term_of(OP, k, kv)
                    .is_ok_and(|t| t.token == lease.token && t.holder == lease.holder)
        });
        if !ours {
            drop(state);
            self.forget_renewal(id);
            return Err(not_holder(OP, lease, "the key was deleted or replaced"));
        }
        state.verified = Some((at, lease.token, lease.holder.clone()));
        Ok(())
    }

    async fn release(&self, lease: &Lease) -> Result<bool> {
        const OP: &str = "release";
        let id = lease_id_of(lease)?;
        let k = lease.key.as_str();
        self.forget_renewal(id);
        // Only the key: a request key goes with the lease's revocation, so a
        // user granted just the key can still release.
        let ops = [TxnOp::delete(k, None)];
        let Some(txn) = while_held(k, &lease.holder, lease.token, id, &ops) else {
            return Ok(false);
        };
        let client = self.client(OP, k).await?;
        let resp = self.send_txn(OP, k, &client, txn).await?;
        let released = held(&resp);
        if released {
            // The key is gone with the delete; the lease itself is no longer
            // needed by anyone and is revoked off the caller's path. When the
            // release was refused the lease is left alone: the `Lease` may be
            // stale or forged, and its lease id may be someone's live term.
            self.revoke_in_background(&client, id);
        }
        Ok(released)
    }

    async fn current(&self, key: &LeaseKey) -> Result<Option<LeaseInfo>> {
        const OP: &str = "current";
        let k = key.as_str();
        let client = self.client(OP, k).await?;
        // A caller that was waiting when a read was sent takes its answer:
        // that read happened during its own call (as for acquire's turns).
        let turn = self.inner.reads.take(&k.to_owned(), seat_reader()).await;
        if let Some(info) = turn.shared() {
            return Ok(Some(info));
        }
        let (kv, _) = self.get_kv(&client, OP, k).await?;
        match kv {
            None => Ok(None),
            Some(kv) => {
                let info = self.info(&client, OP, k, &kv).await?;
                turn.held(info.clone());
                Ok(Some(info))
            }
        }
    }

    async fn force_release(&self, key: &LeaseKey) -> Result<Option<LeaseInfo>> {
        const OP: &str = "force_release";
        let k = key.as_str();
        let client = self.client(OP, k).await?;
        for _ in 0..MAX_ATTEMPTS {
            let (Some(kv), _) = self.get_kv(&client, OP, k).await? else {
                return Ok(None);
            };
            let info = self.info(&client, OP, k, &kv).await?;
            let txn = Txn::new()
                .when([Compare::mod_revision(
                    k,
                    CompareOp::Equal,
                    kv.mod_revision(),
                )])
                .and_then([TxnOp::delete(k, None)]);
            let resp = self.send_txn(OP, k, &client, txn).await?;
            if resp.succeeded() {
                self.forget_renewal(kv.lease());
                self.revoke_now(&client, kv.lease()).await;
                return Ok(Some(info));
            }
        }
        Err(Error::indeterminate(format!(
            "the key kept changing during {MAX_ATTEMPTS} attempts"
        ))
        .with_store("etcd")
        .with_operation(OP)
        .with_key(k))
    }

    async fn watch(&self, key: &LeaseKey) -> Result<LeaseEvents> {
        crate::watch::subscribe(self.clone(), key.clone()).await
    }

    async fn request_resign(&self, key: &LeaseKey, token: FencingToken) -> Result<bool> {
        self.send_resign_request(key, token).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn construction_does_not_connect_and_debug_hides_password() {
        let store = EtcdStore::from_url("etcd://root:topsecret@127.0.0.1:1").expect("lazy store");
        let dbg = format!("{store:?}");
        assert!(!dbg.contains("topsecret"), "{dbg}");
        assert!(dbg.contains("connected: false"), "{dbg}");
        assert_eq!(store.kind(), "etcd");
        let caps = store.capabilities();
        assert_eq!(caps.fencing, FencingSource::Revision);
        assert_eq!(caps.ttl_granularity, Duration::from_secs(1));
        assert!(caps.server_side_expiry);
        assert!(caps.metadata);
        assert!(caps.resign_requests);
    }
}
