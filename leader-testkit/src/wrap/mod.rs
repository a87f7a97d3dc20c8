//! [`Wrapped`]: the one store wrapper of the tests. It forwards every
//! [`LeaseStore`] call to an inner store through a [`Hooks`] value, which
//! sees each call and decides what happens to it: pass it on, look at the
//! reply, delay it, fail it, or answer it some other way. A test that needs a
//! misbehaving or observing store writes a small hook, not another forwarding
//! impl of the trait.
//!
//! Ready-made hooks: [`Faults`] (fail, hang, delay or lose the reply of
//! chosen operations), [`Stall`] (late acquire answers, as after a stalled
//! process), [`Recording`](crate::history::Recording) (records calls in a
//! [`History`](crate::history::History)), and `()` (pass-through, for the
//! call counts alone). Every [`Wrapped`] counts its calls per [`Op`].
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! use std::sync::Arc;
//! use leader_core::{ErrorKind, HolderId, LeaseKey, LeaseStore, MemoryStore};
//! use leader_testkit::wrap::{Fault, Faults, Op, Wrapped};
//!
//! let store = Wrapped::new(Arc::new(MemoryStore::new()), Faults::new());
//! store.set(Op::Renew, Some(Fault::Fail(ErrorKind::Unavailable)));
//! let key = LeaseKey::new("doc:", "job").unwrap();
//! let holder = HolderId::new("a").unwrap();
//! store.acquire(&key, &holder, std::time::Duration::from_secs(1)).await.unwrap();
//! assert_eq!(store.calls(Op::Acquire), 1);
//! # }
//! ```

mod call;
mod faults;
mod stall;

use std::fmt;
use std::ops::Deref;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use leader_core::{
    Acquire, Capabilities, FencingToken, HolderId, Lease, LeaseEvents, LeaseInfo, LeaseKey,
    LeaseStore, Metadata, Result,
};

pub use call::{Call, Op, Reply};
pub use faults::{Fault, Faults};
pub use stall::Stall;

/// What a [`Wrapped`] store does with each call. Every method has a
/// default that passes the call on unchanged, so a hook implements only
/// what it changes.
#[async_trait]
pub trait Hooks: fmt::Debug + Send + Sync + 'static {
    /// The kind the wrapper reports; by default the inner store's.
    fn kind(&self, inner: &dyn LeaseStore) -> &'static str {
        inner.kind()
    }

    /// The capabilities the wrapper reports; by default the inner store's.
    fn capabilities(&self, inner: &dyn LeaseStore) -> Capabilities {
        inner.capabilities()
    }

    /// Handles one call. The default sends it to `inner` ([`Call::run`]);
    /// a hook may do something before or after that, or instead of it
    /// (wait, fail with [`Reply::failed`], answer itself). The reply must
    /// be of the call's [`Op`]; a mismatch reaches the caller as a
    /// `Protocol` error naming both.
    async fn around(&self, call: Call<'_>, inner: &dyn LeaseStore) -> Reply {
        call.run(inner).await
    }
}

/// No hooks: every call passes through (the wrapper still counts calls).
impl Hooks for () {}

/// Per-operation call counters.
#[derive(Debug, Default)]
struct Tally {
    calls: [AtomicU64; Op::ALL.len()],
    successes: [AtomicU64; Op::ALL.len()],
}

/// A store that forwards every call to an inner store through `H`; see the
/// [module docs](self). It dereferences to its hooks, so a hook's controls
/// (e.g. [`Faults::set`]) are called on the wrapper.
#[derive(Debug)]
pub struct Wrapped<H> {
    inner: Arc<dyn LeaseStore>,
    hooks: H,
    tally: Tally,
}

impl<H: Hooks> Wrapped<H> {
    /// Wraps `inner`, handing every call to `hooks`.
    pub fn new(inner: Arc<dyn LeaseStore>, hooks: H) -> Self {
        Wrapped {
            inner,
            hooks,
            tally: Tally::default(),
        }
    }

    /// The hooks.
    pub fn hooks(&self) -> &H {
        &self.hooks
    }

    /// The wrapped store.
    pub fn inner(&self) -> &Arc<dyn LeaseStore> {
        &self.inner
    }

    /// How many times `op` was called (whatever the hooks did with it).
    pub fn calls(&self, op: Op) -> u64 {
        self.tally.calls[op.index()].load(Ordering::Relaxed)
    }

    /// How many calls of `op` returned `Ok` to the caller.
    pub fn successes(&self, op: Op) -> u64 {
        self.tally.successes[op.index()].load(Ordering::Relaxed)
    }

    /// Counts `call`, hands it to the hooks and counts a success.
    async fn handle(&self, call: Call<'_>) -> Reply {
        let op = call.op();
        self.tally.calls[op.index()].fetch_add(1, Ordering::Relaxed);
        let reply = self.hooks.around(call, &*self.inner).await;
        if reply.error().is_none() && reply.op() == op {
            self.tally.successes[op.index()].fetch_add(1, Ordering::Relaxed);
        }
        reply
    }
}

impl<H> Deref for Wrapped<H> {
    type Target = H;

    fn deref(&self) -> &H {
        &self.hooks
    }
}

#[async_trait]
impl<H: Hooks> LeaseStore for Wrapped<H> {
    fn kind(&self) -> &'static str {
        self.hooks.kind(&*self.inner)
    }

    fn capabilities(&self) -> Capabilities {
        self.hooks.capabilities(&*self.inner)
    }

    async fn acquire(&self, key: &LeaseKey, holder: &HolderId, ttl: Duration) -> Result<Acquire> {
        let call = Call::Acquire {
            key,
            holder,
            ttl,
            metadata: None,
        };
        match self.handle(call).await {
            Reply::Acquire(answer) => answer,
            other => Err(other.mismatch(Op::Acquire)),
        }
    }

    async fn acquire_with_metadata(
        &self,
        key: &LeaseKey,
        holder: &HolderId,
        ttl: Duration,
        metadata: &Metadata,
    ) -> Result<Acquire> {
        let call = Call::Acquire {
            key,
            holder,
            ttl,
            metadata: Some(metadata),
        };
        match self.handle(call).await {
            Reply::Acquire(answer) => answer,
            other => Err(other.mismatch(Op::Acquire)),
        }
    }

    async fn update_metadata(&self, lease: &Lease, metadata: &Metadata) -> Result<()> {
        match self.handle(Call::UpdateMetadata(lease, metadata)).await {
            Reply::UpdateMetadata(answer) => answer,
            other => Err(other.mismatch(Op::UpdateMetadata)),
        }
    }

    async fn request_resign(&self, key: &LeaseKey, token: FencingToken) -> Result<bool> {
        match self.handle(Call::RequestResign(key, token)).await {
            Reply::RequestResign(answer) => answer,
            other => Err(other.mismatch(Op::RequestResign)),
        }
    }

    async fn renew(&self, lease: &Lease) -> Result<()> {
        match self.handle(Call::Renew(lease)).await {
            Reply::Renew(answer) => answer,
            other => Err(other.mismatch(Op::Renew)),
        }
    }

    async fn release(&self, lease: &Lease) -> Result<bool> {
        match self.handle(Call::Release(lease)).await {
            Reply::Release(answer) => answer,
            other => Err(other.mismatch(Op::Release)),
        }
    }

    async fn current(&self, key: &LeaseKey) -> Result<Option<LeaseInfo>> {
        match self.handle(Call::Current(key)).await {
            Reply::Current(answer) => answer,
            other => Err(other.mismatch(Op::Current)),
        }
    }

    async fn force_release(&self, key: &LeaseKey) -> Result<Option<LeaseInfo>> {
        match self.handle(Call::ForceRelease(key)).await {
            Reply::ForceRelease(answer) => answer,
            other => Err(other.mismatch(Op::ForceRelease)),
        }
    }

    async fn watch(&self, key: &LeaseKey) -> Result<LeaseEvents> {
        match self.handle(Call::Watch(key)).await {
            Reply::Watch(answer) => answer,
            other => Err(other.mismatch(Op::Watch)),
        }
    }
}
