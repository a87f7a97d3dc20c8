//! [`Call`] and [`Reply`]: one store call and its answer, as a hook sees them.

use std::time::Duration;

use leader_core::{
    Acquire, Error, FencingToken, HolderId, Lease, LeaseEvents, LeaseInfo, LeaseKey, LeaseStore,
    Metadata, Result,
};

/// A [`LeaseStore`] operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Op {
    /// [`LeaseStore::acquire`].
    Acquire,
    /// [`LeaseStore::renew`].
    Renew,
    /// [`LeaseStore::release`].
    Release,
    /// [`LeaseStore::current`].
    Current,
    /// [`LeaseStore::force_release`].
    ForceRelease,
    /// [`LeaseStore::watch`].
    Watch,
    /// [`LeaseStore::update_metadata`] (`acquire_with_metadata` counts as
    /// [`Op::Acquire`]).
    UpdateMetadata,
    /// [`LeaseStore::request_resign`].
    RequestResign,
}

impl Op {
    /// Every operation, in the trait's order.
    pub const ALL: [Op; 8] = [
        Op::Acquire,
        Op::Renew,
        Op::Release,
        Op::Current,
        Op::ForceRelease,
        Op::Watch,
        Op::UpdateMetadata,
        Op::RequestResign,
    ];

    /// The position in [`Op::ALL`].
    pub(super) fn index(self) -> usize {
        self as usize
    }
}

/// One call to a store, with its arguments.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub enum Call<'a> {
    /// [`LeaseStore::acquire`].
    Acquire {
        /// The key.
        key: &'a LeaseKey,
        /// Who asks.
        holder: &'a HolderId,
        /// The TTL asked for.
        ttl: Duration,
        /// The metadata to store with the term
        /// ([`LeaseStore::acquire_with_metadata`]), if any.
        metadata: Option<&'a Metadata>,
    },
    /// [`LeaseStore::renew`].
    Renew(&'a Lease),
    /// [`LeaseStore::release`].
    Release(&'a Lease),
    /// [`LeaseStore::current`].
    Current(&'a LeaseKey),
    /// [`LeaseStore::force_release`].
    ForceRelease(&'a LeaseKey),
    /// [`LeaseStore::watch`].
    Watch(&'a LeaseKey),
    /// [`LeaseStore::update_metadata`].
    UpdateMetadata(&'a Lease, &'a Metadata),
    /// [`LeaseStore::request_resign`]: the key and the token of the term
    /// asked to end.
    RequestResign(&'a LeaseKey, FencingToken),
}

impl Call<'_> {
    /// Which operation this is.
    pub fn op(&self) -> Op {
        match self {
            Call::Acquire { .. } => Op::Acquire,
            Call::Renew(_) => Op::Renew,
            Call::Release(_) => Op::Release,
            Call::Current(_) => Op::Current,
            Call::ForceRelease(_) => Op::ForceRelease,
            Call::Watch(_) => Op::Watch,
            Call::UpdateMetadata(..) => Op::UpdateMetadata,
            Call::RequestResign(..) => Op::RequestResign,
        }
    }

    /// The key the call is about.
    pub fn key(&self) -> &LeaseKey {
        match self {
            Call::Acquire { key, .. }
            | Call::Current(key)
            | Call::ForceRelease(key)
            | Call::Watch(key)
            | Call::RequestResign(key, _) => key,
            Call::Renew(lease) | Call::Release(lease) | Call::UpdateMetadata(lease, _) => {
                &lease.key
            }
        }
    }

    /// The holder making the call (`None` for the calls that name none).
    pub fn holder(&self) -> Option<&HolderId> {
        match self {
            Call::Acquire { holder, .. } => Some(holder),
            Call::Renew(lease) | Call::Release(lease) | Call::UpdateMetadata(lease, _) => {
                Some(&lease.holder)
            }
            Call::Current(_) | Call::ForceRelease(_) | Call::Watch(_) | Call::RequestResign(..) => {
                None
            }
        }
    }

    /// The fencing token the call presents (renew, release, metadata) or
    /// names (a resign request).
    pub fn token(&self) -> Option<FencingToken> {
        match self {
            Call::Renew(lease) | Call::Release(lease) | Call::UpdateMetadata(lease, _) => {
                Some(lease.token)
            }
            Call::RequestResign(_, token) => Some(*token),
            _ => None,
        }
    }

    /// Sends the call to `store` and wraps its answer.
    pub async fn run(self, store: &dyn LeaseStore) -> Reply {
        match self {
            Call::Acquire {
                key,
                holder,
                ttl,
                metadata: None,
            } => Reply::Acquire(store.acquire(key, holder, ttl).await),
            Call::Acquire {
                key,
                holder,
                ttl,
                metadata: Some(metadata),
            } => Reply::Acquire(
                store
                    .acquire_with_metadata(key, holder, ttl, metadata)
                    .await,
            ),
            Call::Renew(lease) => Reply::Renew(store.renew(lease).await),
            Call::Release(lease) => Reply::Release(store.release(lease).await),
            Call::Current(key) => Reply::Current(store.current(key).await),
            Call::ForceRelease(key) => Reply::ForceRelease(store.force_release(key).await),
            Call::Watch(key) => Reply::Watch(store.watch(key).await),
            Call::UpdateMetadata(lease, metadata) => {
                Reply::UpdateMetadata(store.update_metadata(lease, metadata).await)
            }
            Call::RequestResign(key, token) => {
                Reply::RequestResign(store.request_resign(key, token).await)
            }
        }
    }
}

/// The answer to a [`Call`], one variant per [`Op`].
#[derive(Debug)]
#[non_exhaustive]
pub enum Reply {
    /// [`LeaseStore::acquire`]'s answer.
    Acquire(Result<Acquire>),
    /// [`LeaseStore::renew`]'s answer.
    Renew(Result<()>),
    /// [`LeaseStore::release`]'s answer.
    Release(Result<bool>),
    /// [`LeaseStore::current`]'s answer.
    Current(Result<Option<LeaseInfo>>),
    /// [`LeaseStore::force_release`]'s answer.
    ForceRelease(Result<Option<LeaseInfo>>),
    /// [`LeaseStore::watch`]'s answer.
    Watch(Result<LeaseEvents>),
    /// [`LeaseStore::update_metadata`]'s answer.
    UpdateMetadata(Result<()>),
    /// [`LeaseStore::request_resign`]'s answer.
    RequestResign(Result<bool>),
}

impl Reply {
    /// The answer `error` to a call of `op`.
    pub fn failed(op: Op, error: Error) -> Reply {
        match op {
            Op::Acquire => Reply::Acquire(Err(error)),
            Op::Renew => Reply::Renew(Err(error)),
            Op::Release => Reply::Release(Err(error)),
            Op::Current => Reply::Current(Err(error)),
            Op::ForceRelease => Reply::ForceRelease(Err(error)),
            Op::Watch => Reply::Watch(Err(error)),
            Op::UpdateMetadata => Reply::UpdateMetadata(Err(error)),
            Op::RequestResign => Reply::RequestResign(Err(error)),
        }
    }

    /// Which operation this answers.
    pub fn op(&self) -> Op {
        match self {
            Reply::Acquire(_) => Op::Acquire,
            Reply::Renew(_) => Op::Renew,
            Reply::Release(_) => Op::Release,
            Reply::Current(_) => Op::Current,
            Reply::ForceRelease(_) => Op::ForceRelease,
            Reply::Watch(_) => Op::Watch,
            Reply::UpdateMetadata(_) => Op::UpdateMetadata,
            Reply::RequestResign(_) => Op::RequestResign,
        }
    }

    /// The error, when the call failed.
    pub fn error(&self) -> Option<&Error> {
        match self {
            Reply::Acquire(r) => r.as_ref().err(),
            Reply::Renew(r) | Reply::UpdateMetadata(r) => r.as_ref().err(),
            Reply::Release(r) | Reply::RequestResign(r) => r.as_ref().err(),
            Reply::Current(r) | Reply::ForceRelease(r) => r.as_ref().err(),
            Reply::Watch(r) => r.as_ref().err(),
        }
    }

    /// Whether the call did what it asked for: acquired (not `Held`),
    /// renewed, released (`true`), or answered without error.
    pub fn granted(&self) -> bool {
        match self {
            Reply::Acquire(r) => matches!(r, Ok(Acquire::Acquired(_))),
            Reply::Release(r) | Reply::RequestResign(r) => matches!(r, Ok(true)),
            _ => self.error().is_none(),
        }
    }

    /// The token a granted acquire starts its term with.
    pub fn acquired_token(&self) -> Option<FencingToken> {
        match self {
            Reply::Acquire(Ok(Acquire::Acquired(lease))) => Some(lease.token),
            _ => None,
        }
    }

    /// The error a caller of `expected` sees when a hook answered with this
    /// reply of another operation.
    pub(super) fn mismatch(&self, expected: Op) -> Error {
        Error::protocol(format!(
            "a test hook answered a {expected:?} call with a {:?} reply",
            self.op()
        ))
    }
}
