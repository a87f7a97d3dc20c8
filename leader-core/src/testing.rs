//! A store wrapper that fails, hangs or delays calls on demand, for
//! deterministic tests of code built on electors and locks (use it with
//! paused tokio time).
//!
//! ```
//! # async fn example() {
//! use std::sync::Arc;
//! use leader_core::{ErrorKind, MemoryStore};
//! use leader_core::testing::{Fault, FaultyStore, Op};
//!
//! let store = Arc::new(FaultyStore::new(Arc::new(MemoryStore::new())));
//! store.set(Op::Renew, Some(Fault::Fail(ErrorKind::Unavailable)));
//! store.set_all(Some(Fault::Hang)); // every call hangs from now on
//! store.clear();
//! # }
//! ```

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;

use crate::error::{Error, ErrorKind, Result};
use crate::metadata::Metadata;
use crate::names::{HolderId, LeaseKey};
use crate::store::{Acquire, Capabilities, Lease, LeaseEvents, LeaseInfo, LeaseStore};

/// A store operation, to aim a fault at.
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
}

const OPS: [Op; 7] = [
    Op::Acquire,
    Op::Renew,
    Op::Release,
    Op::Current,
    Op::ForceRelease,
    Op::Watch,
    Op::UpdateMetadata,
];

/// What happens to a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Fault {
    /// Fail at once with this kind, without reaching the inner store.
    Fail(ErrorKind),
    /// Never answer (the caller's timeout decides).
    Hang,
    /// Answer after this delay.
    Delay(Duration),
    /// Perform the call on the inner store, then report
    /// [`ErrorKind::Indeterminate`]: the effect happened, the reply was lost.
    DropReply,
    /// Perform the call on the inner store at once, then hand its answer
    /// over after this delay: the effect happened, the reply is slow (a
    /// caller that gives up meanwhile never learns of it).
    DelayReply(Duration),
}

/// The wrapper. See the module docs.
#[derive(Debug)]
pub struct FaultyStore {
    inner: Arc<dyn LeaseStore>,
    capabilities: Option<Capabilities>,
    faults: Mutex<[Option<Fault>; OPS.len()]>,
    calls: [AtomicU64; OPS.len()],
}

impl FaultyStore {
    /// Wraps `inner` with no faults set.
    pub fn new(inner: Arc<dyn LeaseStore>) -> Self {
        FaultyStore {
            inner,
            capabilities: None,
            faults: Mutex::new([None; OPS.len()]),
            calls: Default::default(),
        }
    }

    /// Reports `capabilities` instead of the inner store's, to present a
    /// store as one with fewer features (e.g. no notifications: `watch` is
    /// then never called by the elector).
    pub fn with_capabilities(mut self, capabilities: Capabilities) -> Self {
        self.capabilities = Some(capabilities);
        self
    }

    fn index(op: Op) -> usize {
        OPS.iter().position(|o| *o == op).unwrap_or(0)
    }

    /// Sets (or with `None` clears) the fault for one operation.
    pub fn set(&self, op: Op, fault: Option<Fault>) {
        self.faults.lock().unwrap_or_else(|e| e.into_inner())[Self::index(op)] = fault;
    }

    /// Sets (or clears) the fault for every operation.
    pub fn set_all(&self, fault: Option<Fault>) {
        *self.faults.lock().unwrap_or_else(|e| e.into_inner()) = [fault; OPS.len()];
    }

    /// Clears every fault.
    pub fn clear(&self) {
        self.set_all(None);
    }

    /// How many times `op` was called (faulted or not).
    pub fn calls(&self, op: Op) -> u64 {
        self.calls[Self::index(op)].load(Ordering::Relaxed)
    }

    async fn run<T, F>(&self, op: Op, call: F) -> Result<T>
    where
        F: std::future::Future<Output = Result<T>>,
    {
        let i = Self::index(op);
        self.calls[i].fetch_add(1, Ordering::Relaxed);
        let fault = self.faults.lock().unwrap_or_else(|e| e.into_inner())[i];
        match fault {
            None => call.await,
            Some(Fault::Fail(kind)) => Err(Error::new(kind, "injected fault").with_store("faulty")),
            Some(Fault::Hang) => std::future::pending().await,
            Some(Fault::Delay(d)) => {
                tokio::time::sleep(d).await;
                call.await
            }
            Some(Fault::DelayReply(d)) => {
                let answer = call.await;
                tokio::time::sleep(d).await;
                answer
            }
            Some(Fault::DropReply) => {
                let _ = call.await;
                Err(Error::indeterminate("injected fault: reply lost").with_store("faulty"))
            }
        }
    }
}

#[async_trait]
impl LeaseStore for FaultyStore {
    fn kind(&self) -> &'static str {
        self.inner.kind()
    }

    fn capabilities(&self) -> Capabilities {
        self.capabilities
            .unwrap_or_else(|| self.inner.capabilities())
    }

    async fn acquire(&self, key: &LeaseKey, holder: &HolderId, ttl: Duration) -> Result<Acquire> {
        self.run(Op::Acquire, self.inner.acquire(key, holder, ttl))
            .await
    }

    async fn renew(&self, lease: &Lease) -> Result<()> {
        self.run(Op::Renew, self.inner.renew(lease)).await
    }

    async fn release(&self, lease: &Lease) -> Result<bool> {
        self.run(Op::Release, self.inner.release(lease)).await
    }

    async fn current(&self, key: &LeaseKey) -> Result<Option<LeaseInfo>> {
        self.run(Op::Current, self.inner.current(key)).await
    }

    async fn force_release(&self, key: &LeaseKey) -> Result<Option<LeaseInfo>> {
        self.run(Op::ForceRelease, self.inner.force_release(key))
            .await
    }

    async fn watch(&self, key: &LeaseKey) -> Result<LeaseEvents> {
        self.run(Op::Watch, self.inner.watch(key)).await
    }

    async fn acquire_with_metadata(
        &self,
        key: &LeaseKey,
        holder: &HolderId,
        ttl: Duration,
        metadata: &Metadata,
    ) -> Result<Acquire> {
        self.run(
            Op::Acquire,
            self.inner.acquire_with_metadata(key, holder, ttl, metadata),
        )
        .await
    }

    async fn update_metadata(&self, lease: &Lease, metadata: &Metadata) -> Result<()> {
        self.run(
            Op::UpdateMetadata,
            self.inner.update_metadata(lease, metadata),
        )
        .await
    }
}
