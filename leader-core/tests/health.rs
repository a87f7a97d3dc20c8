//! Kubernetes-style probes: liveness fails when the elector task is dead or
//! not being polled; readiness follows the policy the application picks.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use common::*;
use leader_core::testing::{Fault, FaultyStore, Op};
use leader_core::{
    Acquire, Capabilities, Elector, ErrorKind, HealthStatus, HolderId, Lease, LeaseEvents,
    LeaseInfo, LeaseKey, LeaseStore, MemoryStore, NotificationSupport, Readiness, Result,
};
use tokio::time::Instant;

/// A store whose `acquire` panics: the elector task dies on its first call.
#[derive(Debug, Default)]
struct PanickingStore(MemoryStore);

#[async_trait]
impl LeaseStore for PanickingStore {
    fn kind(&self) -> &'static str {
        "panicking"
    }
    fn capabilities(&self) -> Capabilities {
        self.0.capabilities()
    }
    async fn acquire(&self, _: &LeaseKey, _: &HolderId, _: Duration) -> Result<Acquire> {
        panic!("injected: a bug in the store");
    }
    async fn renew(&self, lease: &Lease) -> Result<()> {
        self.0.renew(lease).await
    }
    async fn release(&self, lease: &Lease) -> Result<bool> {
        self.0.release(lease).await
    }
    async fn current(&self, key: &LeaseKey) -> Result<Option<LeaseInfo>> {
        self.0.current(key).await
    }
    async fn force_release(&self, key: &LeaseKey) -> Result<Option<LeaseInfo>> {
        self.0.force_release(key).await
    }
    async fn watch(&self, key: &LeaseKey) -> Result<LeaseEvents> {
        self.0.watch(key).await
    }
}

#[tokio::test(start_paused = true)]
async fn a_dead_elector_task_fails_liveness_and_makes_health_unhealthy() {
    let e = start(Arc::new(PanickingStore::default()), "dead", "a");
    wait_until("the task died", LEASE, || !e.liveness().pass).await;
    let probe = e.liveness();
    assert_eq!(probe.http_status(), 503);
    assert!(probe.reason.contains("ended"), "{probe:?}");
    assert_eq!(probe.to_document()["status"], "fail");
    let report = e.health();
    assert_eq!(report.status, HealthStatus::Unhealthy, "{report:?}");
    assert_eq!(report.status.http_status(), 503);
    assert_eq!(report.to_document()["status"], "Unhealthy");
    // Readiness is a separate question: the default policy stays ready.
    assert!(Readiness::Always.check(&e).pass);
}

#[tokio::test(start_paused = true)]
async fn liveness_passes_for_leader_idle_follower_and_store_outage_and_after_shutdown() {
    let memory = MemoryStore::new();
    let a = start(Arc::new(memory.clone()), "live", "a");
    wait_until("a leads", LEASE, || a.is_leader()).await;
    // b's store pushes releases and expiries: it sleeps four leases between
    // polls, far longer than the liveness bound.
    let b = start(Arc::new(memory.clone()), "live", "b");
    // c's store hangs on every call: each is cut by the request timeout.
    let (hanging, _) = faulty();
    hanging.set_all(Some(Fault::Hang));
    let c = start(hanging.clone(), "live", "c");
    let end = Instant::now() + LEASE * 20;
    while Instant::now() < end {
        tokio::time::sleep(RENEW / 3).await;
        for e in [&a, &b, &c] {
            let probe = e.liveness();
            assert!(probe.pass, "{}: {probe:?}", e.instance_id());
        }
    }
    assert!(a.is_leader() && !b.is_leader());
    assert!(hanging.calls(Op::Acquire) > 10, "c kept trying");
    for e in [&a, &b, &c] {
        e.shutdown().await;
        let probe = e.liveness();
        assert!(probe.pass, "a shut-down elector is not dead: {probe:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn readiness_follows_the_chosen_policy() {
    let memory = MemoryStore::new();
    let a = start(Arc::new(memory.clone()), "ready", "a");
    // b polls every retry period (no notifications), so it sees the outage.
    let polling = memory
        .capabilities()
        .with_notifications(NotificationSupport::None);
    let store = Arc::new(FaultyStore::new(Arc::new(memory)).with_capabilities(polling));
    wait_until("a leads", LEASE, || a.is_leader()).await;
    let b = start(store.clone(), "ready", "b");
    tokio::time::sleep(RENEW).await;
    assert!(Readiness::Always.check(&b).pass);
    assert!(Readiness::WhenLeader.check(&a).pass);
    let probe = Readiness::WhenLeader.check(&b);
    assert!(!probe.pass && probe.http_status() == 503, "{probe:?}");
    assert!(
        Readiness::WhenStoreHealthy.check(&b).pass,
        "a healthy follower"
    );

    store.set_all(Some(Fault::Fail(ErrorKind::Unavailable)));
    let config = config("ready", "b");
    tokio::time::sleep(config.unhealthy_after() + RENEW).await;
    let probe = Readiness::WhenStoreHealthy.check(&b);
    assert!(
        !probe.pass,
        "store down: not ready under this policy: {probe:?}"
    );
    assert!(Readiness::Always.check(&b).pass);
    assert!(
        b.liveness().pass,
        "a store outage is not a reason to restart"
    );
    a.abort();
    b.abort();
}

/// Acquisitions block the calling thread while `block` is set: the elector
/// task cannot be polled (a store client doing blocking I/O).
#[derive(Debug)]
struct BlockingAcquire {
    inner: MemoryStore,
    block: AtomicBool,
}

#[async_trait]
impl LeaseStore for BlockingAcquire {
    fn kind(&self) -> &'static str {
        "blocking"
    }
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
    async fn acquire(&self, key: &LeaseKey, holder: &HolderId, ttl: Duration) -> Result<Acquire> {
        while self.block.load(Ordering::SeqCst) {
            // Deliberately blocking: this is the stuck task under test.
            std::thread::sleep(Duration::from_millis(10));
        }
        self.inner.acquire(key, holder, ttl).await
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn liveness_fails_while_the_elector_task_is_not_polled() {
    let store = Arc::new(BlockingAcquire {
        inner: MemoryStore::new(),
        block: AtomicBool::new(true),
    });
    let config = config("stuck", "a");
    // The bound documented on `Elector::liveness`.
    let bound = config.retry_period() + config.request_timeout() + Duration::from_secs(1);
    let started = Instant::now();
    let e = Elector::start(store.clone(), config).expect("valid");
    // Real time: generous limits, only the lower bound is exact.
    wait_until("liveness fails", bound * 10, || !e.liveness().pass).await;
    assert!(
        started.elapsed() >= bound,
        "failed after {:?}, before the bound {bound:?}",
        started.elapsed()
    );
    let probe = e.liveness();
    assert!(probe.reason.contains("not run"), "{probe:?}");
    assert_eq!(e.health().status, HealthStatus::Unhealthy);

    store.block.store(false, Ordering::SeqCst);
    wait_until("leads once unblocked", bound * 10, || e.is_leader()).await;
    assert!(e.liveness().pass, "{:?}", e.liveness());
    e.shutdown().await;
}
