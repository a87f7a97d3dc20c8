//! Kubernetes-style probes: liveness fails when the elector task is dead or
//! not being polled; readiness follows the policy the application picks.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use common::*;
use leader_core::{
    Elector, ErrorKind, HealthStatus, LeaseStore, MemoryStore, NotificationSupport, Readiness,
};
use leader_testkit::wrap::{Call, Fault, Faults, Hooks, Op, Reply, Wrapped};
use tokio::time::Instant;

#[tokio::test(start_paused = true)]
async fn a_dead_elector_task_fails_liveness_and_makes_health_unhealthy() {
    // `acquire` panics: the elector task dies on its first call.
    let (store, _) = faulty();
    store.set(Op::Acquire, Some(Fault::Panic));
    let e = start(store, "dead", "a");
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
    // b's store pushes every vacancy: it makes no store call while it
    // waits, far longer than the liveness bound.
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
    let store = Arc::new(Wrapped::new(
        Arc::new(memory),
        Faults::new().with_capabilities(polling),
    ));
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
    block: AtomicBool,
}

#[async_trait]
impl Hooks for BlockingAcquire {
    async fn around(&self, call: Call<'_>, inner: &dyn LeaseStore) -> Reply {
        while call.op() == Op::Acquire && self.block.load(Ordering::SeqCst) {
            // Deliberately blocking: this is the stuck task under test.
            std::thread::sleep(Duration::from_millis(10));
        }
        call.run(inner).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn liveness_fails_while_the_elector_task_is_not_polled() {
    let store = Arc::new(Wrapped::new(
        Arc::new(MemoryStore::new()),
        BlockingAcquire {
            block: AtomicBool::new(true),
        },
    ));
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
