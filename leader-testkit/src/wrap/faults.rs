//! [`Faults`]: a hook that fails, hangs, delays or loses the reply of
//! chosen operations on demand, for deterministic tests of code built on
//! electors and locks (use it with paused tokio time).

use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use leader_core::{Capabilities, Error, ErrorKind, LeaseStore};

use super::{Call, Hooks, Op, Reply};

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
    /// Panic inside the call, as a store with a bug would: the calling task
    /// dies.
    Panic,
}

/// The fault hook: one optional [`Fault`] per [`Op`], read when a call
/// arrives; it may also present the store with other [`Capabilities`].
///
/// ```
/// use std::sync::Arc;
/// use leader_core::{ErrorKind, MemoryStore};
/// use leader_testkit::wrap::{Fault, Faults, Op, Wrapped};
///
/// let store = Arc::new(Wrapped::new(Arc::new(MemoryStore::new()), Faults::new()));
/// store.set(Op::Renew, Some(Fault::Fail(ErrorKind::Unavailable)));
/// store.set_all(Some(Fault::Hang)); // every call hangs from now on
/// store.clear();
/// ```
#[derive(Debug, Default)]
pub struct Faults {
    capabilities: Option<Capabilities>,
    faults: Mutex<[Option<Fault>; Op::ALL.len()]>,
}

impl Faults {
    /// No faults set.
    pub fn new() -> Self {
        Faults::default()
    }

    /// Reports `capabilities` instead of the inner store's, to present a
    /// store as one with fewer features (e.g. no notifications: `watch` is
    /// then never called by the elector).
    pub fn with_capabilities(mut self, capabilities: Capabilities) -> Self {
        self.capabilities = Some(capabilities);
        self
    }

    fn faults(&self) -> std::sync::MutexGuard<'_, [Option<Fault>; Op::ALL.len()]> {
        self.faults.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sets (or with `None` clears) the fault for one operation.
    pub fn set(&self, op: Op, fault: Option<Fault>) {
        self.faults()[op.index()] = fault;
    }

    /// Sets (or clears) the fault for every operation.
    pub fn set_all(&self, fault: Option<Fault>) {
        *self.faults() = [fault; Op::ALL.len()];
    }

    /// Clears every fault.
    pub fn clear(&self) {
        self.set_all(None);
    }
}

fn injected(error: Error) -> Error {
    error.with_store("faulty")
}

#[async_trait]
impl Hooks for Faults {
    fn capabilities(&self, inner: &dyn LeaseStore) -> Capabilities {
        self.capabilities.unwrap_or_else(|| inner.capabilities())
    }

    async fn around(&self, call: Call<'_>, inner: &dyn LeaseStore) -> Reply {
        let op = call.op();
        let fault = self.faults()[op.index()];
        match fault {
            None => call.run(inner).await,
            Some(Fault::Fail(kind)) => {
                Reply::failed(op, injected(Error::new(kind, "injected fault")))
            }
            Some(Fault::Hang) => std::future::pending().await,
            Some(Fault::Panic) => panic!("injected fault: a bug in the store ({op:?})"),
            Some(Fault::Delay(delay)) => {
                tokio::time::sleep(delay).await;
                call.run(inner).await
            }
            Some(Fault::DelayReply(delay)) => {
                let answer = call.run(inner).await;
                tokio::time::sleep(delay).await;
                answer
            }
            Some(Fault::DropReply) => {
                let _ = call.run(inner).await;
                Reply::failed(
                    op,
                    injected(Error::indeterminate("injected fault: reply lost")),
                )
            }
        }
    }
}
