//! `is_leader()` turns false at the validity point even when the elector's
//! task cannot run at all (a store call blocks its worker thread).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use leader_core::{ElectionConfig, Elector, HealthStatus, LeaseStore, MemoryStore};
use leader_testkit::wrap::{Call, Hooks, Op, Reply, Wrapped};

/// Renewals block the calling thread (a stuck runtime worker).
#[derive(Debug)]
struct BlockingRenew;

#[async_trait]
impl Hooks for BlockingRenew {
    async fn around(&self, call: Call<'_>, inner: &dyn LeaseStore) -> Reply {
        if call.op() == Op::Renew {
            // Deliberately blocking: this is the stuck task under test.
            std::thread::sleep(Duration::from_secs(3));
        }
        call.run(inner).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn is_leader_turns_false_at_the_validity_point_even_if_the_task_is_stuck() {
    let lease = Duration::from_millis(600);
    let store = Arc::new(Wrapped::new(Arc::new(MemoryStore::new()), BlockingRenew));
    let mut config = ElectionConfig::new("stuck").with_timing(lease, Duration::from_millis(200));
    config.instance_id = Some("a".into());
    let e = Elector::start(store, config).expect("valid");
    let mut state = e.subscribe();
    tokio::time::timeout(Duration::from_secs(10), state.wait_for(|s| s.is_leader))
        .await
        .expect("leads within 10 s")
        .expect("alive");
    // The acquire was sent before this point, so its validity ends before
    // `observed + lease`. The first renewal (at 200 ms) blocks the task for 3 s.
    // Wait on the OS clock: with a worker blocked, tokio's timer may fire
    // late, and the point is exactly that is_leader() needs no timer.
    let observed = std::time::Instant::now();
    std::thread::sleep(lease);
    assert!(
        observed.elapsed() < Duration::from_secs(3),
        "the renewal still blocks"
    );
    assert!(!e.is_leader(), "validity passed: is_leader must be false");
    assert_eq!(e.token(), None);
    let health = e.health();
    assert!(
        state.borrow().is_leader,
        "the stuck task still believes it leads"
    );
    assert_eq!(health.status, HealthStatus::Unhealthy, "{health:?}");
    assert!(!health.data.is_leader);
    e.abort();
}

/// `abort()` is a simulated crash: on a multi-threaded runtime the task must
/// never turn it into a graceful release.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_never_releases_the_lease() {
    let store = Arc::new(MemoryStore::new());
    for i in 0..50 {
        let mut config = ElectionConfig::new(format!("abort-{i}"))
            .with_timing(Duration::from_secs(5), Duration::from_secs(1));
        config.instance_id = Some("a".into());
        let key = config.lease_key().expect("key");
        let e = Elector::start(store.clone(), config).expect("valid");
        let mut state = e.subscribe();
        tokio::time::timeout(Duration::from_secs(5), state.wait_for(|s| s.is_leader))
            .await
            .expect("leads")
            .expect("alive");
        e.abort();
        assert!(!e.is_leader());
        // Give a racing graceful path every chance to run.
        tokio::task::yield_now().await;
        e.shutdown().await;
        let held = store.current(&key).await.expect("current");
        assert!(held.is_some(), "round {i}: abort released the lease");
    }
}
