//! The [`LeaseStore`] trait: what a store must do, and nothing more.
//!
//! Everything derived from these operations (the election state machine,
//! timing, health, metrics) lives in the core, so a store implementation stays
//! small and a third-party store gets every elector feature by implementing
//! this trait and passing the conformance suite in `leader-testkit`.

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::mpsc;

use crate::error::{Error, Result};
use crate::metadata::Metadata;
use crate::names::{FencingToken, HolderId, LeaseKey};

/// The longest TTL a store accepts; anything above is refused as absurd.
pub const MAX_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// Refuses zero and absurd TTLs with [`ErrorKind::InvalidArgument`](crate::ErrorKind::InvalidArgument).
/// Every store calls this before talking to its server.
///
/// # Errors
///
/// When `ttl` is zero, below one millisecond or above [`MAX_TTL`].
pub fn check_ttl(ttl: Duration) -> Result<()> {
    if ttl < Duration::from_millis(1) {
        return Err(Error::invalid_argument(format!(
            "lease ttl must be at least 1ms, got {ttl:?}"
        )));
    }
    if ttl > MAX_TTL {
        return Err(Error::invalid_argument(format!(
            "lease ttl {ttl:?} is longer than the limit of {MAX_TTL:?}"
        )));
    }
    Ok(())
}

/// Where a store's fencing tokens come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum FencingSource {
    /// A per-resource counter kept in the store and incremented atomically
    /// with each acquisition (Redis, Postgres, memory).
    Counter,
    /// A store-wide revision number assigned to the acquisition (etcd's
    /// create revision). Strictly increasing, not contiguous.
    Revision,
}

/// Which lease events a store can push to followers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum NotificationSupport {
    /// None: followers poll every retry period.
    None,
    /// Graceful releases are pushed; expiry is found by polling.
    Release,
    /// Releases and expiries are pushed.
    ReleaseAndExpiry,
}

/// What a store can do, so the core and the conformance suite can adapt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Capabilities {
    /// Where fencing tokens come from.
    pub fencing: FencingSource,
    /// The server removes a lease whose TTL ran out, without the client.
    pub server_side_expiry: bool,
    /// Which events [`LeaseStore::watch`] delivers.
    pub notifications: NotificationSupport,
    /// While a [`LeaseStore::watch`] subscription is live, every vacancy of
    /// the seat reaches it (release, expiry, and any other removal of the
    /// lease), and the store ends the subscription whenever one may have
    /// been missed (a broken or stalled connection, an event it could not
    /// queue). With [`NotificationSupport::ReleaseAndExpiry`] a waiting
    /// follower then makes no store call at all while subscribed; without
    /// this promise it keeps a safety poll every four lease durations.
    pub complete_notifications: bool,
    /// The lease lives as long as a client session (Postgres advisory locks):
    /// it ends when the session ends, not when a TTL runs out.
    pub session_bound: bool,
    /// The smallest TTL the store can honour exactly; shorter TTLs are rounded
    /// up by the store (etcd grants whole seconds).
    pub ttl_granularity: Duration,
    /// The store keeps [`Metadata`] with the lease:
    /// [`LeaseStore::acquire_with_metadata`] and
    /// [`LeaseStore::update_metadata`] work, and [`LeaseInfo::metadata`] is
    /// filled in.
    pub metadata: bool,
    /// The store carries resign requests to a running holder:
    /// [`LeaseStore::request_resign`] works and the holder's
    /// [`LeaseStore::watch`] delivers [`LeaseEvent::ResignRequested`].
    pub resign_requests: bool,
}

impl Capabilities {
    /// Capabilities of a store with server-side expiry, no notifications and
    /// millisecond TTLs; adjust with the `with_*` methods.
    pub fn new(fencing: FencingSource) -> Self {
        Capabilities {
            fencing,
            server_side_expiry: true,
            notifications: NotificationSupport::None,
            complete_notifications: false,
            session_bound: false,
            ttl_granularity: Duration::from_millis(1),
            metadata: false,
            resign_requests: false,
        }
    }

    /// Declares [`Capabilities::resign_requests`].
    pub fn with_resign_requests(mut self) -> Self {
        self.resign_requests = true;
        self
    }

    /// Declares [`Capabilities::metadata`].
    pub fn with_metadata(mut self) -> Self {
        self.metadata = true;
        self
    }

    /// Sets [`Capabilities::notifications`].
    pub fn with_notifications(mut self, notifications: NotificationSupport) -> Self {
        self.notifications = notifications;
        self
    }

    /// Declares [`Capabilities::complete_notifications`].
    pub fn with_complete_notifications(mut self) -> Self {
        self.complete_notifications = true;
        self
    }

    /// Marks the store as session-bound (and without server-side expiry).
    pub fn session_bound(mut self) -> Self {
        self.session_bound = true;
        self.server_side_expiry = false;
        self
    }

    /// Sets [`Capabilities::ttl_granularity`].
    pub fn with_ttl_granularity(mut self, granularity: Duration) -> Self {
        self.ttl_granularity = granularity;
        self
    }

    /// Whether [`LeaseStore::watch`] delivers anything at all.
    pub fn notifies(&self) -> bool {
        self.notifications != NotificationSupport::None
    }
}

/// A lease held by the caller: what `acquire` returns and what `renew` and
/// `release` take back.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Lease {
    /// The key the lease lives under.
    pub key: LeaseKey,
    /// Who holds it.
    pub holder: HolderId,
    /// This term's fencing token.
    pub token: FencingToken,
    /// The TTL it was acquired with; renewals extend it by the same amount.
    pub ttl: Duration,
    /// A store-private value (the etcd lease id, a pinned connection's slot).
    /// The core carries it and never interprets it.
    pub handle: u64,
}

impl Lease {
    /// A lease value, as a store builds it after a successful acquisition.
    pub fn new(key: LeaseKey, holder: HolderId, token: FencingToken, ttl: Duration) -> Self {
        Lease {
            key,
            holder,
            token,
            ttl,
            handle: 0,
        }
    }

    /// Sets the store-private [`Lease::handle`].
    pub fn with_handle(mut self, handle: u64) -> Self {
        self.handle = handle;
        self
    }
}

impl fmt::Debug for Lease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lease")
            .field("key", &self.key)
            .field("holder", &self.holder)
            .field("token", &self.token.0)
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

/// Who holds a resource now, as the store sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct LeaseInfo {
    /// The holder id.
    pub holder: HolderId,
    /// The holder's fencing token.
    pub token: FencingToken,
    /// Time left on the store's clock, when the store has a TTL for it
    /// (`None` for session-bound locks).
    pub remaining: Option<Duration>,
    /// The holder's metadata, read atomically with `holder` and `token`
    /// (always `None` on stores without [`Capabilities::metadata`]).
    pub metadata: Option<Metadata>,
}

impl LeaseInfo {
    /// A holder record as read from the store.
    pub fn new(holder: HolderId, token: FencingToken, remaining: Option<Duration>) -> Self {
        LeaseInfo {
            holder,
            token,
            remaining,
            metadata: None,
        }
    }

    /// Sets [`LeaseInfo::metadata`].
    pub fn with_metadata(mut self, metadata: Option<Metadata>) -> Self {
        self.metadata = metadata;
        self
    }
}

/// The outcome of [`LeaseStore::acquire`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Acquire {
    /// The caller holds the lease now, with a new fencing token.
    Acquired(Lease),
    /// Someone else holds it.
    Held(LeaseInfo),
}

/// An event pushed by a store that offers notifications.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum LeaseEvent {
    /// The lease was released or expired: the seat is empty.
    Vacated,
    /// Someone acquired the lease.
    Acquired {
        /// The new holder.
        holder: HolderId,
        /// Its fencing token.
        token: FencingToken,
    },
    /// The holder replaced its metadata ([`LeaseStore::update_metadata`]);
    /// informational, like `Acquired`.
    MetadataUpdated {
        /// The holder.
        holder: HolderId,
        /// Its fencing token.
        token: FencingToken,
    },
    /// Someone asked the holder of the term with `token` to resign
    /// ([`LeaseStore::request_resign`]); a holder with another token ignores
    /// it.
    ResignRequested {
        /// The token of the term asked to end.
        token: FencingToken,
    },
}

/// A subscription to one key's [`LeaseEvent`]s.
///
/// `recv` returning `None` means the subscription is down (the connection
/// dropped); the caller falls back to polling and subscribes again later.
/// Dropping it ends the store's forwarding task.
#[derive(Debug)]
pub struct LeaseEvents {
    rx: mpsc::Receiver<LeaseEvent>,
}

impl LeaseEvents {
    /// A new subscription and the sender a store feeds it through.
    pub fn channel(capacity: usize) -> (mpsc::Sender<LeaseEvent>, LeaseEvents) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        (tx, LeaseEvents { rx })
    }

    /// The next event, or `None` once the subscription is down.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: no event is lost if the future is dropped.
    pub async fn recv(&mut self) -> Option<LeaseEvent> {
        self.rx.recv().await
    }
}

/// A shared store that can hold leases: the only thing a backend implements.
///
/// Object safe: electors hold an `Arc<dyn LeaseStore>`. Every method must be
/// cancel safe in the sense that dropping its future leaves the store
/// consistent (an acquisition whose future was dropped may or may not have
/// taken effect; the lease then expires or is re-acquired by the same holder).
///
/// Semantics every store must provide (the conformance suite checks them):
///
/// * `acquire` succeeds when the key is free, expired, or already held by the
///   same holder; each success starts a new term with a fencing token strictly
///   greater than every earlier token on that key.
/// * `renew` and `release` act only if the key still holds the caller's holder
///   id **and** token.
/// * Errors are classified: [`ErrorKind::Unavailable`](crate::ErrorKind::Unavailable) when the store
///   could not be reached, [`ErrorKind::Indeterminate`](crate::ErrorKind::Indeterminate) when the outcome is unknown.
///
/// # Implementing a store
///
/// A new store is one type implementing this trait (annotate the impl with
/// [`#[leader_core::async_trait]`](crate::async_trait)), run through
/// `leader_testkit::conformance_tests!`, plus one row in the facade's store
/// table (`leader::StoreKind`). The core does all timing; the store owes it
/// these rules, and the suite's failure messages name the rule a case checks:
///
/// 1. **The TTL runs from no earlier than the request's arrival.** The holder
///    trusts a lease until `sent + ttl * (1 - drift)`, measured from when it
///    *sent* the acquire or renew. The store's expiry must therefore start no
///    earlier than when the request reached the server, and a store that can
///    only keep coarser TTLs rounds **up** (etcd grants whole seconds; declare
///    it in [`Capabilities::ttl_granularity`]). Expiring early breaks safety.
/// 2. **Call [`check_ttl`] first** and refuse what it refuses, before talking
///    to the server.
/// 3. **Time out your own calls.** The elector bounds every call with its
///    request timeout and drops the future, so a store must stay consistent
///    when a future is dropped mid-request (a connection with a request in
///    flight is discarded, not reused), and should bound its own network
///    waits with the timeout it was configured with, so an answer that never
///    comes ends as [`ErrorKind::Indeterminate`](crate::ErrorKind::Indeterminate)
///    rather than a hung task. An unknown outcome is never reported as success.
/// 4. **Tokens only go up.** Each successful `acquire` returns a token greater
///    than every token issued before on that key, including across a lost or
///    reset counter (Redis floors it with the server clock).
/// 5. **Same holder, same seat.** `acquire` by the holder that already holds
///    the key succeeds with a new token (the core mints a unique holder id for
///    every elector and every lock acquisition, so only the same term owner
///    can present it). `renew` and `release` match holder **and** token.
/// 6. **Session-bound stores emulate expiry.** A store whose lease lives as
///    long as a client session (Postgres advisory locks) declares
///    [`Capabilities::session_bound`] and must still free a lease that was
///    not renewed within its TTL, counted from the send time of the last
///    successful acquire or renew, so a stuck holder cannot keep it forever.
/// 7. **Notifications are optional and lossy.** Declare what
///    [`LeaseStore::watch`] delivers in [`Capabilities::notifications`]; with
///    `NotificationSupport::None`, return `ErrorKind::Unsupported` and
///    followers poll. [`LeaseEvent::Vacated`] is the event that matters (it
///    wakes followers at once); [`LeaseEvent::Acquired`] is informational and
///    may be omitted. Feed the channel with `try_send`: a full channel already
///    holds an event the follower has not read, and one pending wake-up is as
///    good as many, so dropping is correct. Close the channel (drop the
///    sender) when the subscription breaks: the follower then polls and
///    subscribes again. A store whose live subscription misses no vacancy
///    (it ends the subscription instead) declares
///    [`Capabilities::complete_notifications`], and its followers stop
///    polling altogether; a channel that is full must then hold an unread
///    [`LeaseEvent::Vacated`] (keep a slot free for it) or be closed.
/// 8. **Errors are classified** as above, never a panic: a record under the
///    key that the store cannot parse is
///    [`ErrorKind::Protocol`](crate::ErrorKind::Protocol).
/// 9. **Metadata is optional, and atomic with the term.** A store that
///    declares [`Capabilities::metadata`] implements
///    [`LeaseStore::acquire_with_metadata`] and
///    [`LeaseStore::update_metadata`] and returns the value in every
///    [`LeaseInfo`] (from `current`, `force_release` and
///    [`Acquire::Held`]). The value is written in the same atomic step as
///    the acquisition, is replaced only by a request that matches holder
///    **and** token, and is gone with the term: a reader never sees one
///    term's token with another term's metadata, and a plain `acquire`
///    starts a term without metadata. The default methods return
///    [`ErrorKind::Unsupported`](crate::ErrorKind::Unsupported), so stores
///    adopt metadata one by one; a wrapper store must forward both.
/// 10. **Resign requests are optional, and best effort.** A store that
///    declares [`Capabilities::resign_requests`] implements
///    [`LeaseStore::request_resign`]: if the key's current term has the
///    given token, it pushes [`LeaseEvent::ResignRequested`] to the key's
///    watchers (the holder's elector is one) in the same atomic step as that
///    check, and answers `true`. Like every event the request is lost when
///    the holder is not subscribed at that moment; the caller learns the
///    outcome by watching the seat, not from the answer.
#[async_trait]
pub trait LeaseStore: fmt::Debug + Send + Sync + 'static {
    /// A short name of the store kind: `"redis"`, `"etcd"`, `"postgres"`, `"memory"`.
    fn kind(&self) -> &'static str;

    /// What this store can do.
    fn capabilities(&self) -> Capabilities;

    /// Tries to take the lease on `key` for `holder` for `ttl`.
    ///
    /// # Errors
    ///
    /// Invalid TTLs, unreachable stores, unknown outcomes; never an error just
    /// because someone else holds the key (that is [`Acquire::Held`]).
    async fn acquire(&self, key: &LeaseKey, holder: &HolderId, ttl: Duration) -> Result<Acquire>;

    /// Extends a lease the caller holds by its TTL.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::NotHolder`](crate::ErrorKind::NotHolder) when the key no longer holds this holder and
    /// token (the lease is lost); otherwise unavailable or indeterminate.
    async fn renew(&self, lease: &Lease) -> Result<()>;

    /// Gives a lease up. Returns `true` if it was still held and is now free,
    /// `false` if it was no longer the caller's (nothing was changed).
    ///
    /// # Errors
    ///
    /// Unavailable or indeterminate.
    async fn release(&self, lease: &Lease) -> Result<bool>;

    /// Who holds `key` now, if anyone.
    ///
    /// # Errors
    ///
    /// Unavailable, indeterminate, or a holder record the store cannot parse.
    async fn current(&self, key: &LeaseKey) -> Result<Option<LeaseInfo>>;

    /// Removes whatever lease is on `key`, whoever holds it (the operator's
    /// emergency release). Returns what was removed.
    ///
    /// # Errors
    ///
    /// Unavailable or indeterminate.
    async fn force_release(&self, key: &LeaseKey) -> Result<Option<LeaseInfo>>;

    /// Subscribes to events on `key`, as [`Capabilities::notifications`] says.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Unsupported`](crate::ErrorKind::Unsupported) for stores without notifications;
    /// unavailable when the subscription cannot be set up now.
    async fn watch(&self, key: &LeaseKey) -> Result<LeaseEvents>;

    /// [`LeaseStore::acquire`], storing `metadata` with the lease in the same
    /// atomic step (see rule 9).
    ///
    /// # Errors
    ///
    /// As `acquire`; [`ErrorKind::Unsupported`](crate::ErrorKind::Unsupported)
    /// (the default) on stores without [`Capabilities::metadata`], which
    /// then take nothing.
    async fn acquire_with_metadata(
        &self,
        key: &LeaseKey,
        holder: &HolderId,
        ttl: Duration,
        metadata: &Metadata,
    ) -> Result<Acquire> {
        let _ = (holder, ttl, metadata);
        Err(unsupported_metadata(
            self.kind(),
            "acquire_with_metadata",
            key,
        ))
    }

    /// Replaces the metadata of a lease the caller holds (etcd's
    /// `Proclaim`), only if the key still holds its holder id and token.
    /// Does not extend the lease.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::NotHolder`](crate::ErrorKind::NotHolder) when the lease
    /// is no longer the caller's; unavailable or indeterminate;
    /// [`ErrorKind::Unsupported`](crate::ErrorKind::Unsupported) (the
    /// default) on stores without [`Capabilities::metadata`].
    async fn update_metadata(&self, lease: &Lease, metadata: &Metadata) -> Result<()> {
        let _ = metadata;
        Err(unsupported_metadata(
            self.kind(),
            "update_metadata",
            &lease.key,
        ))
    }

    /// Asks the holder of `key`'s term `token` to resign (etcd's `Resign`
    /// sent from outside, `leaderctl resign`), as rule 10 says. Returns
    /// whether the current term had that token, so the request went out;
    /// `false` changes nothing. The holder's elector ends the term as
    /// `Elector::resign` would and competes again after its hold-off.
    ///
    /// # Errors
    ///
    /// Unavailable or indeterminate;
    /// [`ErrorKind::Unsupported`](crate::ErrorKind::Unsupported) (the
    /// default) on stores without [`Capabilities::resign_requests`].
    async fn request_resign(&self, key: &LeaseKey, token: FencingToken) -> Result<bool> {
        let _ = token;
        Err(Error::unsupported(format!(
            "the {} store cannot carry a resign request to a running holder",
            self.kind()
        ))
        .with_store(self.kind())
        .with_operation("request_resign")
        .with_key(key.as_str()))
    }
}

/// The error of a store that keeps no metadata.
fn unsupported_metadata(store: &'static str, operation: &'static str, key: &LeaseKey) -> Error {
    Error::unsupported(format!("the {store} store does not keep leader metadata"))
        .with_store(store)
        .with_operation(operation)
        .with_key(key.as_str())
}
