//! How often a follower asks the store, depending on what its subscription
//! pushes, and that a crashed leader is still replaced promptly.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use common::wait_until;
use leader_core::{
    Acquire, Capabilities, ElectionConfig, Elector, Error, FencingSource, HolderId, Lease,
    LeaseEvents, LeaseInfo, LeaseKey, LeaseStore, MemoryStore, NotificationSupport, Result,
    async_trait,
};
use leader_testkit::wrap::{Faults, Op, Wrapped};
use tokio::time::Instant;

/// The card's production timing: 30 s lease, 10 s renewal, 10 s retry period.
fn production(instance: &str) -> ElectionConfig {
    let mut c = ElectionConfig::new("idle");
    c.instance_id = Some(instance.to_owned());
    c
}

fn notifying(support: NotificationSupport) -> Capabilities {
    Capabilities::new(FencingSource::Counter).with_notifications(support)
}

/// Runs a leader and a follower for ten minutes, returns the follower's
/// acquire calls, then crashes the leader and returns how long the follower
/// took to lead.
async fn follower_polls(caps: Capabilities) -> (u64, Duration) {
    let memory = MemoryStore::new();
    let leader = Elector::start(Arc::new(memory.clone()), production("leader")).expect("valid");
    wait_until("leader", Duration::from_secs(1), || leader.is_leader()).await;
    let store = Arc::new(Wrapped::new(
        Arc::new(memory),
        Faults::new().with_capabilities(caps),
    ));
    let follower = Elector::start(store.clone(), production("follower")).expect("valid");
    tokio::time::sleep(Duration::from_secs(600)).await;
    assert!(!follower.is_leader());
    // Every request: a follower without metadata makes acquire calls only.
    let polls = [
        Op::Acquire,
        Op::Current,
        Op::Renew,
        Op::Release,
        Op::ForceRelease,
    ]
    .into_iter()
    .map(|op| store.calls(op))
    .sum();
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
    let (polls, took) = follower_polls(notifying(NotificationSupport::None)).await;
    // 600 s / (10 s + up to 20 % jitter) = 50..60, plus the first attempt.
    assert!((50..=61).contains(&polls), "{polls} polls");
    assert!(
        took <= Duration::from_secs(31),
        "crash failover took {took:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn with_release_notifications_a_follower_polls_only_when_the_lease_could_expire() {
    let (polls, took) = follower_polls(notifying(NotificationSupport::Release)).await;
    // The holder's lease has 20..30 s left at each poll: at most 31 polls.
    assert!(polls <= 31, "{polls} polls");
    assert!(
        took <= Duration::from_secs(31),
        "crash failover took {took:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn with_expiry_notifications_a_follower_hardly_polls() {
    let (polls, took) = follower_polls(notifying(NotificationSupport::ReleaseAndExpiry)).await;
    // A store that may miss a vacancy without ending the subscription: one
    // safety poll every four leases (120 s + up to 24 s of jitter), plus the
    // first attempt.
    assert!((5..=6).contains(&polls), "{polls} polls");
    assert!(
        took <= Duration::from_secs(31),
        "crash failover took {took:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn with_complete_notifications_an_idle_follower_makes_no_store_call() {
    let caps = notifying(NotificationSupport::ReleaseAndExpiry).with_complete_notifications();
    let (polls, took) = follower_polls(caps).await;
    // Only the first attempt, in ten minutes.
    assert_eq!(polls, 1, "{polls} store calls");
    assert!(
        took <= Duration::from_secs(31),
        "crash failover took {took:?}"
    );
}

/// The memory store, whose subscriptions the test can end, and refuse.
#[derive(Debug)]
struct Cuttable {
    inner: MemoryStore,
    cut: tokio::sync::watch::Sender<u64>,
    refuse: AtomicBool,
    acquires: AtomicU64,
}

impl Cuttable {
    fn new(inner: MemoryStore) -> Self {
        Cuttable {
            inner,
            cut: tokio::sync::watch::Sender::new(0),
            refuse: AtomicBool::new(false),
            acquires: AtomicU64::new(0),
        }
    }

    /// Ends every live subscription.
    fn cut(&self) {
        self.cut.send_modify(|n| *n += 1);
    }

    fn acquires(&self) -> u64 {
        self.acquires.load(Ordering::SeqCst)
    }
}

#[async_trait]
impl LeaseStore for Cuttable {
    fn kind(&self) -> &'static str {
        "cuttable"
    }

    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }

    async fn acquire(&self, key: &LeaseKey, holder: &HolderId, ttl: Duration) -> Result<Acquire> {
        self.acquires.fetch_add(1, Ordering::SeqCst);
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
        if self.refuse.load(Ordering::SeqCst) {
            return Err(Error::unavailable("subscriptions refused by the test"));
        }
        let mut inner = self.inner.watch(key).await?;
        let (tx, events) = LeaseEvents::channel(16);
        let mut cut = self.cut.subscribe();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = cut.changed() => break,
                    event = inner.recv() => {
                        let Some(e) = event else { break };
                        if tx.send(e).await.is_err() {
                            break;
                        }
                    }
                }
            }
        });
        Ok(events)
    }
}

#[tokio::test(start_paused = true)]
async fn an_idle_follower_polls_only_while_its_subscription_is_lost() {
    let memory = MemoryStore::new();
    let leader = Elector::start(Arc::new(memory.clone()), production("leader")).expect("valid");
    wait_until("leader", Duration::from_secs(1), || leader.is_leader()).await;
    let store = Arc::new(Cuttable::new(memory));
    assert!(store.capabilities().complete_notifications);
    let follower = Elector::start(store.clone(), production("follower")).expect("valid");
    tokio::time::sleep(Duration::from_secs(180)).await;
    assert_eq!(store.acquires(), 1, "store calls in 3 min while subscribed");

    // Subscription lost, and refused for a minute: it polls every retry
    // period (10 s + up to 20 % jitter): 5 or 6 times in 65 s.
    store.refuse.store(true, Ordering::SeqCst);
    store.cut();
    tokio::time::sleep(Duration::from_secs(65)).await;
    let lost = store.acquires() - 1;
    assert!(
        (5..=6).contains(&lost),
        "{lost} polls in 65 s without a subscription"
    );

    // Subscribed again (at its next poll): no more polls.
    store.refuse.store(false, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(30)).await;
    let back = store.acquires();
    tokio::time::sleep(Duration::from_secs(180)).await;
    assert_eq!(
        store.acquires(),
        back,
        "store calls in 3 min after subscribing again"
    );
    assert!(!follower.is_leader());

    // A crashed leader is still replaced when its lease expires.
    let crashed = Instant::now();
    leader.abort();
    let took = wait_until("the follower leads", Duration::from_secs(60), || {
        follower.is_leader()
    })
    .await
        - crashed;
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
