//! [`StallingStore`]: a store whose acquire answers arrive late, as after a
//! stall of the caller's process (a blocked runtime thread, a VM pause).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use leader_core::{
    Acquire, Capabilities, HolderId, Lease, LeaseEvents, LeaseInfo, LeaseKey, LeaseStore, Metadata,
    Result,
};

/// Wraps a store; every `acquire` is performed on the inner store and its
/// answer is then held back for `stall`, during which the calling task
/// cannot run: the thread is blocked (real time), or tokio's paused clock
/// is advanced (paused time). A caller's own timeout around the call
/// therefore cannot fire first: the answer arrives after `stall` whatever
/// the request timeout, which is how a stalled process sees a late answer.
#[derive(Debug)]
pub struct StallingStore {
    inner: Arc<dyn LeaseStore>,
    stall: Duration,
}

impl StallingStore {
    /// Stalls each acquire answer of `inner` by `stall`.
    pub fn new(inner: Arc<dyn LeaseStore>, stall: Duration) -> Self {
        StallingStore { inner, stall }
    }

    /// Hands an acquire's `answer` over only after the stall.
    fn hold_back(&self, answer: Result<Acquire>) -> Result<Acquire> {
        if clock_paused() {
            // One poll of `advance` moves the clock; its trailing yield is
            // dropped, so the caller's timeout gets no turn in between.
            let _ = futures::FutureExt::now_or_never(tokio::time::advance(self.stall));
        } else {
            // Deliberately blocking: the caller's timeout must not get a
            // chance to run before the answer is handed over.
            std::thread::sleep(self.stall);
        }
        answer
    }
}

/// Whether tokio's clock is paused: it does not move while the thread
/// sleeps.
fn clock_paused() -> bool {
    let before = tokio::time::Instant::now();
    std::thread::sleep(Duration::from_millis(1));
    tokio::time::Instant::now() == before
}

#[async_trait]
impl LeaseStore for StallingStore {
    fn kind(&self) -> &'static str {
        self.inner.kind()
    }

    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }

    async fn acquire(&self, key: &LeaseKey, holder: &HolderId, ttl: Duration) -> Result<Acquire> {
        let answer = self.inner.acquire(key, holder, ttl).await;
        self.hold_back(answer)
    }

    async fn acquire_with_metadata(
        &self,
        key: &LeaseKey,
        holder: &HolderId,
        ttl: Duration,
        metadata: &Metadata,
    ) -> Result<Acquire> {
        let answer = self
            .inner
            .acquire_with_metadata(key, holder, ttl, metadata)
            .await;
        self.hold_back(answer)
    }

    async fn update_metadata(&self, lease: &Lease, metadata: &Metadata) -> Result<()> {
        self.inner.update_metadata(lease, metadata).await
    }

    async fn renew(&self, lease: &Lease) -> Result<()> {
        self.inner.renew(lease).await
    }

    async fn release(&self, lease: &Lease) -> Result<bool> {
        self.inner.release(lease).await
    }

    async fn current(&self, key: &LeaseKey) -> Result<Option<LeaseInfo>> {
        self.inner.current(key).await
    }

    async fn force_release(&self, key: &LeaseKey) -> Result<Option<LeaseInfo>> {
        self.inner.force_release(key).await
    }

    async fn watch(&self, key: &LeaseKey) -> Result<LeaseEvents> {
        self.inner.watch(key).await
    }
}
