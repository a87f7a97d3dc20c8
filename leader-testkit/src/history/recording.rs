//! [`RecordingStore`]: a store wrapper that records every lease operation.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use leader_core::{
    Acquire, Capabilities, ErrorKind, HolderId, Lease, LeaseEvents, LeaseInfo, LeaseKey,
    LeaseStore, Result,
};

use super::{History, Op, Outcome};

/// Wraps a store and records each `acquire`, `renew` and `release` in a
/// [`History`], under the holder id as the process name, timed inside the
/// call (so the recorded interval contains the store's real one).
///
/// An error of kind `Indeterminate` (or a call dropped before it returned)
/// is recorded as [`Outcome::Indeterminate`]; other errors as
/// [`Outcome::Fail`]; `acquire` answering `Held` as `Fail`.
#[derive(Debug, Clone)]
pub struct RecordingStore {
    inner: Arc<dyn LeaseStore>,
    history: History,
}

impl RecordingStore {
    /// Records `inner`'s operations in `history`.
    pub fn new(inner: Arc<dyn LeaseStore>, history: History) -> Self {
        RecordingStore { inner, history }
    }

    /// The history it records into.
    pub fn history(&self) -> &History {
        &self.history
    }
}

fn failed<T>(result: &Result<T>) -> Outcome {
    match result {
        Ok(_) => Outcome::Ok,
        Err(e) if e.kind() == ErrorKind::Indeterminate => Outcome::Indeterminate,
        Err(_) => Outcome::Fail,
    }
}

#[async_trait]
impl LeaseStore for RecordingStore {
    fn kind(&self) -> &'static str {
        self.inner.kind()
    }

    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }

    async fn acquire(&self, key: &LeaseKey, holder: &HolderId, ttl: Duration) -> Result<Acquire> {
        let call = self.history.invoke(holder.as_str(), Op::Acquire);
        let result = self.inner.acquire(key, holder, ttl).await;
        match &result {
            Ok(Acquire::Acquired(lease)) => call.complete(Outcome::Ok, Some(lease.token)),
            Ok(Acquire::Held(_)) => call.complete(Outcome::Fail, None),
            Err(_) => call.complete(failed(&result), None),
        }
        result
    }

    async fn renew(&self, lease: &Lease) -> Result<()> {
        let call = self
            .history
            .invoke(lease.holder.as_str(), Op::Renew)
            .with_token(lease.token);
        let result = self.inner.renew(lease).await;
        call.complete(failed(&result), Some(lease.token));
        result
    }

    async fn release(&self, lease: &Lease) -> Result<bool> {
        let call = self
            .history
            .invoke(lease.holder.as_str(), Op::Release)
            .with_token(lease.token);
        let result = self.inner.release(lease).await;
        let outcome = match &result {
            Ok(true) => Outcome::Ok,
            Ok(false) => Outcome::Fail,
            Err(_) => failed(&result),
        };
        call.complete(outcome, Some(lease.token));
        result
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
