//! A [`LeaseStore`] wrapper that counts the store operations an elector or
//! lock makes, so idle and scale costs can be given in operations per minute.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use leader_core::{
    Acquire, Capabilities, HolderId, Lease, LeaseEvents, LeaseInfo, LeaseKey, LeaseStore, Result,
};

/// Live counters, one per operation.
#[derive(Debug, Default)]
pub struct OpCounters {
    acquire: AtomicU64,
    renew: AtomicU64,
    release: AtomicU64,
    current: AtomicU64,
    force_release: AtomicU64,
    watch: AtomicU64,
    watch_ok: AtomicU64,
}

/// A snapshot of [`OpCounters`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// `acquire` calls.
    pub acquire: u64,
    /// `renew` calls.
    pub renew: u64,
    /// `release` calls.
    pub release: u64,
    /// `current` calls.
    pub current: u64,
    /// `force_release` calls.
    pub force_release: u64,
    /// `watch` calls (subscriptions asked for).
    pub watch: u64,
    /// `watch` calls that succeeded (subscriptions set up).
    pub watch_ok: u64,
}

impl Counts {
    /// Every operation except subscriptions.
    pub fn requests(&self) -> u64 {
        self.acquire + self.renew + self.release + self.current + self.force_release
    }

    /// The operations made between `earlier` and `self`.
    pub fn since(&self, earlier: &Counts) -> Counts {
        Counts {
            acquire: self.acquire - earlier.acquire,
            renew: self.renew - earlier.renew,
            release: self.release - earlier.release,
            current: self.current - earlier.current,
            force_release: self.force_release - earlier.force_release,
            watch: self.watch - earlier.watch,
            watch_ok: self.watch_ok - earlier.watch_ok,
        }
    }

    /// `acquire=1 renew=6 release=0 watch=0` (zero fields other than the
    /// main three left out).
    pub fn describe(&self) -> String {
        let mut s = format!(
            "acquire={} renew={} release={}",
            self.acquire, self.renew, self.release
        );
        for (name, n) in [
            ("current", self.current),
            ("force_release", self.force_release),
            ("watch", self.watch),
        ] {
            if n > 0 {
                s.push_str(&format!(" {name}={n}"));
            }
        }
        s
    }
}

impl OpCounters {
    /// The counts now.
    pub fn snapshot(&self) -> Counts {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Counts {
            acquire: get(&self.acquire),
            renew: get(&self.renew),
            release: get(&self.release),
            current: get(&self.current),
            force_release: get(&self.force_release),
            watch: get(&self.watch),
            watch_ok: get(&self.watch_ok),
        }
    }
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// Counts every call before handing it to the wrapped store.
#[derive(Debug)]
pub struct CountingStore {
    inner: Arc<dyn LeaseStore>,
    counters: Arc<OpCounters>,
}

impl CountingStore {
    /// Wraps `inner`; returns the wrapper and its counters.
    pub fn wrap(inner: Arc<dyn LeaseStore>) -> (Arc<dyn LeaseStore>, Arc<OpCounters>) {
        let counters = Arc::new(OpCounters::default());
        let store = CountingStore {
            inner,
            counters: counters.clone(),
        };
        (Arc::new(store), counters)
    }
}

#[async_trait]
impl LeaseStore for CountingStore {
    fn kind(&self) -> &'static str {
        self.inner.kind()
    }

    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }

    async fn acquire(&self, key: &LeaseKey, holder: &HolderId, ttl: Duration) -> Result<Acquire> {
        bump(&self.counters.acquire);
        self.inner.acquire(key, holder, ttl).await
    }

    async fn renew(&self, lease: &Lease) -> Result<()> {
        bump(&self.counters.renew);
        self.inner.renew(lease).await
    }

    async fn release(&self, lease: &Lease) -> Result<bool> {
        bump(&self.counters.release);
        self.inner.release(lease).await
    }

    async fn current(&self, key: &LeaseKey) -> Result<Option<LeaseInfo>> {
        bump(&self.counters.current);
        self.inner.current(key).await
    }

    async fn force_release(&self, key: &LeaseKey) -> Result<Option<LeaseInfo>> {
        bump(&self.counters.force_release);
        self.inner.force_release(key).await
    }

    async fn watch(&self, key: &LeaseKey) -> Result<LeaseEvents> {
        bump(&self.counters.watch);
        let events = self.inner.watch(key).await?;
        bump(&self.counters.watch_ok);
        Ok(events)
    }
}

/// A store wrapper that can play dead: once [`Crashable::wrap`]'s flag is
/// set, every call waits forever and nothing reaches the store, as if the
/// process had died. Used with `Elector::abort()` so that a crash can never
/// turn into a release.
#[derive(Debug)]
pub struct Crashable {
    inner: Arc<dyn LeaseStore>,
    dead: Arc<std::sync::atomic::AtomicBool>,
}

impl Crashable {
    /// Wraps `inner`; returns the wrapper and its "dead" flag.
    pub fn wrap(
        inner: Arc<dyn LeaseStore>,
    ) -> (Arc<dyn LeaseStore>, Arc<std::sync::atomic::AtomicBool>) {
        let dead = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let store = Crashable {
            inner,
            dead: dead.clone(),
        };
        (Arc::new(store), dead)
    }

    async fn gate(&self) {
        if self.dead.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
    }
}

#[async_trait]
impl LeaseStore for Crashable {
    fn kind(&self) -> &'static str {
        self.inner.kind()
    }

    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }

    async fn acquire(&self, key: &LeaseKey, holder: &HolderId, ttl: Duration) -> Result<Acquire> {
        self.gate().await;
        self.inner.acquire(key, holder, ttl).await
    }

    async fn renew(&self, lease: &Lease) -> Result<()> {
        self.gate().await;
        self.inner.renew(lease).await
    }

    async fn release(&self, lease: &Lease) -> Result<bool> {
        self.gate().await;
        self.inner.release(lease).await
    }

    async fn current(&self, key: &LeaseKey) -> Result<Option<LeaseInfo>> {
        self.gate().await;
        self.inner.current(key).await
    }

    async fn force_release(&self, key: &LeaseKey) -> Result<Option<LeaseInfo>> {
        self.gate().await;
        self.inner.force_release(key).await
    }

    async fn watch(&self, key: &LeaseKey) -> Result<LeaseEvents> {
        self.gate().await;
        self.inner.watch(key).await
    }
}
