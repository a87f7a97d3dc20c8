//! Helpers shared by the core's integration tests.
#![allow(dead_code, unreachable_pub)]

use std::sync::Arc;
use std::time::Duration;

use leader_core::{ElectionConfig, Elector, LeaseStore, MemoryStore};
use leader_testkit::wait::poll;
use leader_testkit::wrap::{Faults, Wrapped};
use tokio::time::Instant;

pub const LEASE: Duration = Duration::from_secs(3);
pub const RENEW: Duration = Duration::from_secs(1);

/// A config with a 3 s lease, 1 s renewal (deadline 2 s) and a 500 ms retry period.
pub fn config(resource: &str, instance: &str) -> ElectionConfig {
    let mut c = ElectionConfig::new(resource).with_timing(LEASE, RENEW);
    c.retry_period = Some(Duration::from_millis(500));
    c.instance_id = Some(instance.to_owned());
    c.key_prefix = "test:".to_owned();
    c
}

/// A shared memory store behind a fault-injecting wrapper.
pub fn faulty() -> (Arc<Wrapped<Faults>>, MemoryStore) {
    let memory = MemoryStore::new();
    (
        Arc::new(Wrapped::new(Arc::new(memory.clone()), Faults::new())),
        memory,
    )
}

pub fn start(store: Arc<dyn LeaseStore>, resource: &str, instance: &str) -> Elector {
    Elector::start(store, config(resource, instance)).expect("valid config")
}

/// Waits (on tokio's paused clock, checking every millisecond, so the
/// instant returned is exact to 1 ms) until `cond` holds, failing after
/// `within`.
pub async fn wait_until(what: &str, within: Duration, mut cond: impl FnMut() -> bool) -> Instant {
    let held = poll(within, Duration::from_millis(1), || {
        std::future::ready(cond())
    })
    .await;
    assert!(
        held.is_some(),
        "timed out after {within:?} waiting for {what}"
    );
    Instant::now()
}

/// Waits until exactly one of `electors` leads and returns its index.
pub async fn one_leader(electors: &[Elector], within: Duration) -> usize {
    wait_until("a leader", within, || {
        electors.iter().any(Elector::is_leader)
    })
    .await;
    let leaders: Vec<usize> = (0..electors.len())
        .filter(|i| electors[*i].is_leader())
        .collect();
    assert_eq!(
        leaders.len(),
        1,
        "exactly one leader expected, got {leaders:?}"
    );
    leaders[0]
}
