//! [`MemoryFixture`]: the suite's fixture for `leader_core::MemoryStore`.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use leader_core::{ErrorKind, LeaseStore, MemoryStore};

use super::{Fixture, Link, LinkedClient, Profile, ServerControl};
use crate::wrap::{Fault, Faults, Wrapped};

/// The in-memory store as a suite fixture. Every client shares one store
/// (behind a [`Faults`] hook), and "stopping the server"
/// makes every call fail with `Unavailable` until it is started again, so
/// the store-down cases run too. The lease state survives a stop, as with
/// a persistent server.
///
/// Its profile is [`Profile::paused_time`]: run it under
/// `#[tokio::test(start_paused = true)]` (`conformance_tests!(paused, ...)`).
#[derive(Debug)]
pub struct MemoryFixture {
    inner: MemoryStore,
    store: Arc<Wrapped<Faults>>,
    profile: Profile,
}

impl Default for MemoryFixture {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryFixture {
    /// A fresh, empty memory store.
    pub fn new() -> Self {
        let inner = MemoryStore::new();
        MemoryFixture {
            store: Arc::new(Wrapped::new(Arc::new(inner.clone()), Faults::new())),
            inner,
            profile: Profile::paused_time(),
        }
    }

    /// Uses `profile` instead of [`Profile::paused_time`] (for real time).
    pub fn with_profile(mut self, profile: Profile) -> Self {
        self.profile = profile;
        self
    }
}

#[async_trait]
impl Fixture for MemoryFixture {
    fn name(&self) -> String {
        "memory".to_owned()
    }

    async fn store(&self) -> leader_core::Result<Arc<dyn LeaseStore>> {
        Ok(self.store.clone())
    }

    fn control(&self) -> Option<&dyn ServerControl> {
        Some(self)
    }

    fn profile(&self) -> Profile {
        self.profile
    }

    fn links(&self) -> bool {
        true
    }

    async fn linked_client(&self) -> leader_core::Result<Option<LinkedClient>> {
        let link = Arc::new(Wrapped::new(Arc::new(self.inner.clone()), Faults::new()));
        Ok(Some((link.clone(), Box::new(FaultyLink(link)))))
    }
}

/// A [`Link`] made of a per-client store with [`Faults`]: cut makes every call
/// hang, slow delays every call.
#[derive(Debug)]
pub struct FaultyLink(pub Arc<Wrapped<Faults>>);

impl Link for FaultyLink {
    fn cut(&self, _server_notices_after: Duration) {
        self.0.set_all(Some(Fault::Hang));
    }
    fn heal(&self) {
        self.0.clear();
    }
    fn slow(&self, delay: Duration) {
        self.0.set_all(Some(Fault::Delay(delay)));
    }
}

#[async_trait]
impl ServerControl for MemoryFixture {
    async fn stop(&self) -> crate::Result<()> {
        self.store
            .set_all(Some(Fault::Fail(ErrorKind::Unavailable)));
        Ok(())
    }

    async fn start(&self) -> crate::Result<()> {
        self.store.clear();
        Ok(())
    }
}
