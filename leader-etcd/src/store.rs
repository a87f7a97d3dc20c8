//! [`EtcdStore`]: the [`LeaseStore`] on etcd leases and transactions.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use etcd_client::{
    Client, Compare, CompareOp, KeyValue, LeaseKeepAliveStream, LeaseKeeper, PutOptions, Txn,
    TxnOp, TxnOpResponse, TxnResponse,
};
use leader_core::{
    Acquire, Capabilities, Error, ErrorKind, FencingSource, FencingToken, HolderId, Lease,
    LeaseEvents, LeaseInfo, LeaseKey, LeaseStore, NotificationSupport, Result, check_ttl,
};
use tokio::sync::OnceCell;
use tokio::time::Instant;

use crate::config::EtcdConfig;
use crate::error::{classify, from_etcd, is_lease_not_found, protocol, timed_out};

/// How often `acquire` and `force_release` retry when the key changed
/// between their read and their conditional write.
const MAX_ATTEMPTS: usize = 3;

/// The whole seconds etcd grants for `ttl`: rounded up, at least 1.
pub(crate) fn ttl_seconds(ttl: Duration) -> i64 {
    let millis = ttl.as_millis().max(1);
    i64::try_from(millis.div_ceil(1000)).unwrap_or(i64::MAX)
}

/// A lease store on etcd v3.
///
/// * **acquire** grants an etcd lease of the TTL rounded up to whole seconds,
///   then one transaction puts the key (value = holder id) under that lease
///   if the key does not exist (`create_revision == 0`), else reads it. If the
///   key holds the caller's own holder id (a re-acquire after a transient
///   error), a second transaction re-puts it under the new lease if it did
///   not change meanwhile, which mints a new, higher token; the old lease is
///   revoked. On every failure the granted lease is revoked so nothing leaks.
/// * **The fencing token is the revision of the transaction that started
///   the term**, i.e. the key's mod revision, which this library only
///   changes when a term starts. For a fresh acquisition it equals the key's
///   create revision (etcd's `Election` API token); a same-holder
///   re-acquisition re-puts the key, so its mod revision moves on while the
///   create revision stays (etcd refuses to delete and re-create one key in
///   one transaction). etcd revisions are store-wide and only grow, so tokens
///   strictly increase across terms; they are not contiguous (other writes
///   to etcd advance the revision too).
/// * **renew** is one keep-alive round trip on a per-lease keep-alive
///   stream (a TTL of 0 means the lease is gone: `NotHolder`), plus a
///   linearizable `get` proving the key still holds our revision, lease
///   and holder id, *unless* the keep-alive answer shows that the store's
///   revision has not moved since the last such check (then nothing in etcd
///   was written, so the key cannot have changed). On a quiet store a renewal
///   costs one keep-alive round trip; when other keys are being written it
///   costs a keep-alive plus a `get`. A deletion of the key by someone else
///   (not through this library, which revokes the lease as well) is therefore
///   seen on the first renewal after it, up to the lag of the member
///   answering the keep-alive.
/// * **release** deletes the key in a transaction that checks its revision
///   (our token), lease and holder id are still ours, then revokes the lease
///   in the background (a lease without keys is harmless and expires anyway).
/// * **current** reads the key and the remaining TTL of its lease (whole
///   seconds, as etcd reports it; the real expiry is within one second after).
/// * **force_release** deletes the key (if it did not change meanwhile) and
///   revokes its lease.
/// * **watch** follows the key with an etcd watch that resumes from the last
///   seen revision after a reconnect; see [`LeaseStore::watch`].
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
/// its TTL. Dropping a `renew` future drops that lease's keep-alive stream;
/// the next renewal opens a new one.
///
/// `Debug` shows the endpoints and user name, never the password.
#[derive(Clone)]
pub struct EtcdStore {
    inner: Arc<Inner>,
}

struct Inner {
    config: EtcdConfig,
    client: OnceCell<Client>,
    /// Per etcd lease id: its keep-alive stream and the revision at which its
    /// key was last proven ours.
    renewals: Mutex<HashMap<i64, Arc<tokio::sync::Mutex<RenewState>>>>,
}

#[derive(Default)]
struct RenewState {
    stream: Option<(LeaseKeeper, LeaseKeepAliveStream)>,
    /// The store revision at which the key was last proven to hold this
    /// token and holder (a forged or stale `Lease` with the same etcd lease
    /// id never matches it).
    verified: Option<(i64, FencingToken, HolderId)>,
}

impl fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdStore")
            .field("config", &self.inner.config)
            .field("connected", &self.inner.client.initialized())
            .finish()
    }
}

/// What the first acquisition transaction found.
enum Put {
    Created(KeyValue),
    Existing(KeyValue),
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
                renewals: Mutex::new(HashMap::new()),
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

    fn request_timeout(&self) -> Duration {
        self.inner.config.request_timeout()
    }

    /// The shared client, connecting on first use. A failed connection is not
    /// cached: the next call tries again.
    pub(crate) async fn client(&self, op: &'static str, key: &str) -> Result<Client> {
        let config = &self.inner.config;
        let bound = config.connect_timeout() + config.request_timeout();
        let connect = self.inner.client.get_or_try_init(|| async {
            Client::connect(config.endpoint_urls(), Some(config.connect_options())).await
        });
        match tokio::time::timeout(bound, connect).await {
            Ok(Ok(client)) => Ok(client.clone()),
            Ok(Err(e)) => Err(from_etcd(op, key, e)),
            Err(_) => Err(Error::unavailable(format!(
                "could not connect to etcd within {bound:?}"
            ))
            .with_store("etcd")
            .with_operation(op)
            .with_key(key)),
        }
    }

    /// Runs one etcd request under the request timeout, without retries (for
    /// reads from an open stream).
    pub(crate) async fn call<T>(
        &self,
        op: &'static str,
        key: &str,
        fut: impl Future<Output = std::result::Result<T, etcd_client::Error>>,
    ) -> Result<T> {
        let t = self.request_timeout();
        match tokio::time::timeout(t, fut).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(from_etcd(op, key, e)),
            Err(_) => Err(timed_out(op, key, t)),
        }
    }

    /// Runs an etcd request under the request timeout, sending it again while
    /// it was certainly not processed ([`ErrorKind::Unavailable`]: a refused
    /// connection or a member without a leader), a few times per endpoint.
    ///
    /// This is what makes a dead cluster member harmless: etcd-client's
    /// balancer keeps picking the dead member's endpoint now and then, and
    /// those requests fail at connect; resending reaches a live member. A
    /// request that may have been processed is never resent.
    pub(crate) async fn retrying<T, F, Fut>(
        &self,
        op: &'static str,
        key: &str,
        client: &Client,
        send: F,
    ) -> Result<T>
    where
        F: Fn(Client) -> Fut,
        Fut: Future<Output = std::result::Result<T, etcd_client::Error>>,
    {
        let t = self.request_timeout();
        let deadline = Instant::now() + t;
        let attempts = 2 * self.inner.config.endpoints().len() + 1;
        let mut pause = Duration::from_millis(2);
        let mut attempt = 1;
        loop {
            match tokio::time::timeout_at(deadline, send(client.clone())).await {
                Ok(Ok(v)) => return Ok(v),
                Ok(Err(e)) => {
                    let retry = attempt < attempts
                        && classify(&e) == ErrorKind::Unavailable
                        && Instant::now() + pause < deadline;
                    if !retry {
                        return Err(from_etcd(op, key, e));
                    }
                    tracing::trace!(op, attempt, error = %e, "etcd request not sent; resending");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(50));
                    attempt += 1;
                }
                Err(_) => return Err(timed_out(op, key, t)),
            }
        }
    }

    /// Revokes `id` in the background, ignoring the outcome (the lease expires
    /// on its own if this fails).
    fn revoke_in_background(&self, client: &Client, id: i64) {
        if id == 0 || tokio::runtime::Handle::try_current().is_err() {
            return;
        }
        let mut client = client.clone();
        let t = self.request_timeout();
        tokio::spawn(async move {
            if let Ok(Err(e)) = tokio::time::timeout(t, client.lease_revoke(id)).await
                && !is_lease_not_found(&e)
            {
                tracing::debug!(lease = id, error = %e, "etcd lease revoke failed");
            }
        });
    }

    /// Revokes `id` and waits (bounded), ignoring failure.
    async fn revoke_now(&self, client: &Client, id: i64) {
        if id == 0 {
            return;
        }
        let mut client = client.clone();
        let revoke = client.lease_revoke(id);
        if let Ok(Err(e)) = tokio::time::timeout(self.request_timeout(), revoke).await
            && !is_lease_not_found(&e)
        {
            tracing::debug!(lease = id, error = %e, "etcd lease revoke failed");
        }
    }

    /// The remaining TTL of lease `id`, if it has one.
    async fn remaining(
        &self,
        client: &Client,
        op: &'static str,
        key: &str,
        id: i64,
    ) -> Result<Option<Duration>> {
        if id == 0 {
            return Ok(None);
        }
        let resp = self
            .retrying(op, key, client, |mut c| async move {
                c.lease_time_to_live(id, None).await
            })
            .await?;
        // -1: the lease just expired and its key is being deleted.
        Ok(Some(Duration::from_secs(
            u64::try_from(resp.ttl()).unwrap_or(0),
        )))
    }

    async fn info(
        &self,
        client: &Client,
        op: &'static str,
        key: &str,
        kv: &KeyValue,
    ) -> Result<LeaseInfo> {
        let holder = holder_of(op, key, kv)?;
        let token = token_of(op, key, kv)?;
        let remaining = self.remaining(client, op, key, kv.lease()).await?;
        Ok(LeaseInfo::new(holder, token, remaining))
    }

    async fn get_kv(
        &self,
        client: &Client,
        op: &'static str,
        key: &str,
    ) -> Result<(Option<KeyValue>, i64)> {
        let mut resp = self
            .retrying(
                op,
                key,
                client,
                |mut c| async move { c.get(key, None).await },
            )
            .await?;
        let revision = resp.header().map(|h| h.revision()).unwrap_or(0);
        Ok((resp.take_kvs().into_iter().next(), revision))
    }

    async fn send_txn(
        &self,
        op: &'static str,
        key: &str,
        client: &Client,
        txn: Txn,
    ) -> Result<TxnResponse> {
        self.retrying(op, key, client, |mut c| {
            let txn = txn.clone();
            async move { c.txn(txn).await }
        })
        .await
    }

    fn renew_slot(&self, id: i64) -> Arc<tokio::sync::Mutex<RenewState>> {
        let mut map = self
            .inner
            .renewals
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        map.entry(id).or_default().clone()
    }

    fn forget_renewal(&self, id: i64) {
        self.inner
            .renewals
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
    }

    /// One keep-alive round trip for lease `id`: `Some(revision)` of the answer
    /// when known, `None` when the lease is gone. Reuses the lease's stream,
    /// opening a new one when there is none or the old one broke.
    async fn keep_alive(
        &self,
        client: &Client,
        state: &mut RenewState,
        lease: &Lease,
        id: i64,
    ) -> Result<Option<Option<i64>>> {
        let key = lease.key.as_str();
        let deadline = Instant::now() + self.request_timeout();
        // Taken out, so that a cancelled renewal drops the stream instead of
        // leaving an unread answer in it for the next renewal.
        if let Some((mut keeper, mut stream)) = state.stream.take() {
            let round = async {
                keeper.keep_alive().await?;
                stream.message().await
            };
            match tokio::time::timeout_at(deadline, round).await {
                Err(_) => return Err(timed_out("renew", key, self.request_timeout())),
                Ok(Ok(Some(resp))) => {
                    if resp.ttl() <= 0 {
                        return Ok(None);
                    }
                    let revision = resp.header().map(|h| h.revision());
                    state.stream = Some((keeper, stream));
                    return Ok(Some(revision));
                }
                // The stream broke or ended (a reconnect, a member change):
                // open a new one below, within the same deadline.
                Ok(Ok(None)) | Ok(Err(_)) => {}
            }
        }
        let open = self.retrying("renew", key, client, |mut c| async move {
            c.lease_keep_alive(id).await
        });
        match tokio::time::timeout_at(deadline, open).await {
            Err(_) => Err(timed_out("renew", key, self.request_timeout())),
            // etcd: "requested lease not found" (expired or revoked).
            Ok(Err(e)) if e.kind() == ErrorKind::NotHolder => Ok(None),
            Ok(Err(e)) => Err(e),
            Ok(Ok(pair)) => {
                state.stream = Some(pair);
                // The opening answer's header is not exposed: force a check.
                Ok(Some(None))
            }
        }
    }
}

fn not_holder(op: &'static str, lease: &Lease, why: &str) -> Error {
    Error::not_holder(format!(
        "lease with token {} is no longer held by {}: {why}",
        lease.token, lease.holder
    ))
    .with_store("etcd")
    .with_operation(op)
    .with_key(lease.key.as_str())
}

fn holder_of(op: &'static str, key: &str, kv: &KeyValue) -> Result<HolderId> {
    let text = std::str::from_utf8(kv.value())
        .map_err(|_| protocol(op, key, "the key's value is not UTF-8, so not a holder id"))?;
    HolderId::new(text)
        .map_err(|e| protocol(op, key, "the key's value is not a valid holder id").with_source(e))
}

/// The fencing token of a key written by `acquire`: the revision of the
/// transaction that wrote it (its mod revision; see [`EtcdStore`]).
fn token_of(op: &'static str, key: &str, kv: &KeyValue) -> Result<FencingToken> {
    u64::try_from(kv.mod_revision())
        .ok()
        .filter(|r| *r > 0)
        .map(FencingToken)
        .ok_or_else(|| {
            protocol(
                op,
                key,
                format!("the key has an invalid revision {}", kv.mod_revision()),
            )
        })
}

fn lease_id_of(lease: &Lease) -> Result<i64> {
    i64::try_from(lease.handle)
        .ok()
        .filter(|id| *id > 0)
        .ok_or_else(|| {
            Error::invalid_argument("this lease was not acquired from an etcd store")
                .with_store("etcd")
                .with_key(lease.key.as_str())
        })
}

/// The first key-value of the last `Get` in a transaction's answers.
fn txn_get(resp: &TxnResponse) -> Option<KeyValue> {
    resp.op_responses()
        .into_iter()
        .rev()
        .find_map(|r| match r {
            TxnOpResponse::Get(mut g) => Some(g.take_kvs().into_iter().next()),
            _ => None,
        })
        .flatten()
}

#[async_trait]
impl LeaseStore for EtcdStore {
    fn kind(&self) -> &'static str {
        "etcd"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::new(FencingSource::Revision)
            .with_notifications(NotificationSupport::ReleaseAndExpiry)
            // etcd leases have whole-second TTLs: acquire rounds up.
            .with_ttl_granularity(Duration::from_secs(1))
    }

    async fn acquire(&self, key: &LeaseKey, holder: &HolderId, ttl: Duration) -> Result<Acquire> {
        check_ttl(ttl)?;
        const OP: &str = "acquire";
        let k = key.as_str();
        let client = self.client(OP, k).await?;
        for _ in 0..MAX_ATTEMPTS {
            let grant = self
                .retrying(OP, k, &client, |mut c| async move {
                    c.lease_grant(ttl_seconds(ttl), None).await
                })
                .await?;
            let id = grant.id();
            let guard = RevokeGuard::new(self, &client, id);
            match self.put_if_absent(&client, k, holder, id).await? {
                Put::Created(kv) => {
                    guard.disarm();
                    let token = token_of(OP, k, &kv)?;
                    return Ok(Acquire::Acquired(lease(key, holder, token, ttl, id)));
                }
                Put::Existing(kv) if kv.value() == holder.as_str().as_bytes() => {
                    // Our own key, still there after a transient error: start
                    // a new term (a new revision) under the new lease.
                    if let Some(new) = self.recreate_own(&client, k, holder, id, &kv).await? {
                        guard.disarm();
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
                    let info = self.info(&client, OP, k, &kv).await?;
                    return Ok(Acquire::Held(info));
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

    async fn renew(&self, lease: &Lease) -> Result<()> {
        check_ttl(lease.ttl)?;
        const OP: &str = "renew";
        let id = lease_id_of(lease)?;
        let k = lease.key.as_str();
        let client = self.client(OP, k).await?;
        let slot = self.renew_slot(id);
        let mut state = slot.lock().await;
        let Some(revision) = self.keep_alive(&client, &mut state, lease, id).await? else {
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
            u64::try_from(kv.mod_revision()).ok() == Some(lease.token.0)
                && kv.lease() == id
                && kv.value() == lease.holder.as_str().as_bytes()
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
        let client = self.client(OP, k).await?;
        let token = i64::try_from(lease.token.0).unwrap_or(-1);
        let txn = Txn::new()
            .when([
                Compare::mod_revision(k, CompareOp::Equal, token),
                Compare::lease(k, CompareOp::Equal, id),
                Compare::value(k, CompareOp::Equal, lease.holder.as_str()),
            ])
            .and_then([TxnOp::delete(k, None)]);
        let resp = self.send_txn(OP, k, &client, txn).await?;
        if resp.succeeded() {
            // The key is gone with the delete; the lease itself is no longer
            // needed by anyone and is revoked off the caller's path. When the
            // release was refused the lease is left alone: the `Lease` may be
            // stale or forged, and its lease id may be someone's live term.
            self.revoke_in_background(&client, id);
        }
        Ok(resp.succeeded())
    }

    async fn current(&self, key: &LeaseKey) -> Result<Option<LeaseInfo>> {
        const OP: &str = "current";
        let k = key.as_str();
        let client = self.client(OP, k).await?;
        let (kv, _) = self.get_kv(&client, OP, k).await?;
        match kv {
            None => Ok(None),
            Some(kv) => Ok(Some(self.info(&client, OP, k, &kv).await?)),
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
}

fn lease(key: &LeaseKey, holder: &HolderId, token: FencingToken, ttl: Duration, id: i64) -> Lease {
    // Lease ids granted by etcd are positive.
    Lease::new(key.clone(), holder.clone(), token, ttl).with_handle(id.unsigned_abs())
}

impl EtcdStore {
    /// The acquisition transaction: create the key under lease `id` if it
    /// does not exist, else read it.
    async fn put_if_absent(
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
    async fn recreate_own(
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
struct RevokeGuard<'a> {
    store: &'a EtcdStore,
    client: Client,
    id: i64,
    armed: bool,
}

impl<'a> RevokeGuard<'a> {
    fn new(store: &'a EtcdStore, client: &Client, id: i64) -> Self {
        RevokeGuard {
            store,
            client: client.clone(),
            id,
            armed: true,
        }
    }

    fn disarm(mut self) {
        self.armed = false;
    }

    async fn revoke_now(mut self) {
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

    #[test]
    fn ttls_round_up_to_whole_seconds() {
        assert_eq!(ttl_seconds(Duration::from_millis(1)), 1);
        assert_eq!(ttl_seconds(Duration::from_millis(999)), 1);
        assert_eq!(ttl_seconds(Duration::from_millis(1000)), 1);
        assert_eq!(ttl_seconds(Duration::from_millis(1001)), 2);
        assert_eq!(ttl_seconds(Duration::from_secs(30)), 30);
    }

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
    }
}
