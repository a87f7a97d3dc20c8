//! How often a follower asks the store, depending on what its subscription
//! pushes, and that a crashed leader is still replaced promptly.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::wait_until;
use leader_core::{
    Capabilities, ElectionConfig, Elector, FencingSource, MemoryStore, NotificationSupport,
};
use leader_testkit::wrap::{Faults, Op, Wrapped};
use tokio::time::Instant;

/// The card's production timing: 30 s lease, 10 s renewal, 10 s retry period.
fn production(instance: &str) -> ElectionConfig {
    let mut c = ElectionConfig::new("idle");
    c.instance_id = Some(instance.to_owned());
    c
}

/// Runs a leader and a follower for ten minutes, returns the follower's
/// acquire calls, then crashes the leader and returns how long the follower
/// took to lead.
async fn follower_polls(support: NotificationSupport) -> (u64, Duration) {
    let memory = MemoryStore::new();
    let leader = Elector::start(Arc::new(memory.clone()), production("leader")).expect("valid");
    wait_until("leader", Duration::from_secs(1), || leader.is_leader()).await;
    let caps = Capabilities::new(FencingSource::Counter).with_notifications(support);
    let store = Arc::new(Wrapped::new(
        Arc::new(memory),
        Faults::new().with_capabilities(caps),
    ));
    let follower = Elector::start(store.clone(), production("follower")).expect("valid");
    tokio::time::sleep(Duration::from_secs(600)).await;
    assert!(!follower.is_leader());
    let polls = store.calls(Op::Acquire);
    let crashed = Instant::now();
    leader.abort();
    let took = wait_until("the follower leads", Duration::from_secs(60), || {
        follower.is_leader()
    })
    .await
        - crashed;
    (polls, took)
}

#[tokio::test(start_paused = true)]
async fn without_notifications_a_follower_polls_every_retry_period() {
    let (polls, took) = follower_polls(NotificationSupport::None).await;
    // 600 s / (10 s + up to 20 % jitter) = 50..60, plus the first attempt.
    assert!((50..=61).contains(&polls), "{polls} polls");
    assert!(
        took <= Duration::from_secs(31),
        "crash failover took {took:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn with_release_notifications_a_follower_polls_only_when_the_lease_could_expire() {
    let (polls, took) = follower_polls(NotificationSupport::Release).await;
    // The holder's lease has 20..30 s left at each poll: at most 31 polls.
    assert!(polls <= 31, "{polls} polls");
    assert!(
        took <= Duration::from_secs(31),
        "crash failover took {took:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn with_expiry_notifications_a_follower_hardly_polls() {
    let (polls, took) = follower_polls(NotificationSupport::ReleaseAndExpiry).await;
    // One safety poll every four leases (120 s + jitter), plus the first.
    assert!(polls <= 6, "{polls} polls");
    assert!(
        took <= Duration::from_secs(31),
        "crash failover took {took:?}"
    );
}

/// A huge retry period used to pass validation and then panic the elector
/// task on `Instant` arithmetic, leaving a follower that never competes.
#[tokio::test(start_paused = true)]
async fn an_absurd_retry_period_is_refused_at_start() {
    let mut config = production("b");
    config.retry_period = Some(Duration::from_secs(u64::MAX / 2));
    let err = Elector::start(Arc::new(MemoryStore::new()), config).expect_err("refused");
    assert_eq!(err.kind(), leader_core::ErrorKind::InvalidConfig);
    assert!(err.message().starts_with("RetryPeriodSeconds"), "{err}");
}
