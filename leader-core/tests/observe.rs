//! `Observer`, leader metadata, and what followers' `LeaderState` carries.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{LEASE, config, start, wait_until};
use leader_core::{
    Capabilities, Elector, ErrorKind, FencingSource, LeaderInfo, LeaseStore, MemoryStore, Metadata,
    Observer,
};
use leader_testkit::wrap::{Faults, Op, Wrapped};
use tokio::sync::watch;
use tokio::time::{Instant, timeout};

fn meta(s: &str) -> Metadata {
    Metadata::new(s).expect("small metadata")
}

fn start_with(store: Arc<dyn LeaseStore>, instance: &str, m: &str) -> Elector {
    Elector::start_with_metadata(store, config("job", instance), meta(m)).expect("valid config")
}

/// Waits for the next change of seat and returns it.
async fn next_change(
    rx: &mut watch::Receiver<Option<LeaderInfo>>,
    within: Duration,
) -> Option<LeaderInfo> {
    timeout(within, rx.changed())
        .await
        .expect("a change of seat in time")
        .expect("observer alive");
    rx.borrow_and_update().clone()
}

/// Every change is published: a leader with its token and metadata, an
/// empty seat after it leaves, the next leader; the observer itself never
/// takes the seat.
#[tokio::test(start_paused = true)]
async fn the_observer_sees_every_seat_and_the_empty_ones() {
    let store = Arc::new(MemoryStore::new());
    let observer = Observer::start(store.clone(), &config("job", "watcher"))
        .await
        .expect("observer");
    assert_eq!(observer.leader(), None, "nobody leads yet");
    let mut rx = observer.subscribe();
    let a = start_with(store.clone(), "pod-a", "10.0.0.1:80");
    let seen = next_change(&mut rx, LEASE).await.expect("a leads");
    assert_eq!(&seen.holder, a.instance_id());
    assert_eq!(Some(seen.token), a.token());
    assert_eq!(seen.metadata, Some(meta("10.0.0.1:80")));
    let left = seen.remaining().expect("memory keeps a TTL");
    assert!(left > Duration::ZERO && left <= LEASE, "time left {left:?}");

    a.shutdown().await;
    assert_eq!(next_change(&mut rx, LEASE).await, None, "the empty seat");
    let b = start_with(store.clone(), "pod-b", "10.0.0.2:80");
    let seen = next_change(&mut rx, LEASE).await.expect("b leads");
    assert_eq!(&seen.holder, b.instance_id());
    assert_eq!(seen.metadata, Some(meta("10.0.0.2:80")));
    assert!(!seen.holder.as_str().starts_with("watcher"));
    b.shutdown().await;
}

/// A store without notifications: the observer polls, and sees the same
/// changes within a retry period.
#[tokio::test(start_paused = true)]
async fn without_notifications_the_observer_polls() {
    let memory = MemoryStore::new();
    let store = Arc::new(Wrapped::new(
        Arc::new(memory.clone()),
        Faults::new().with_capabilities(Capabilities::new(FencingSource::Counter).with_metadata()),
    ));
    let retry = config("job", "x").retry_period.expect("set");
    let observer = Observer::start(store.clone(), &config("job", "watcher"))
        .await
        .expect("observer");
    let mut rx = observer.subscribe();
    let a = start(store.clone(), "job", "pod-a");
    wait_until("a leads", LEASE, || a.is_leader()).await;
    let led = Instant::now();
    let seen = next_change(&mut rx, retry * 2).await.expect("a leads");
    assert_eq!(&seen.holder, a.instance_id());
    assert!(led.elapsed() <= retry.mul_f64(1.2) + Duration::from_millis(1));
    assert_eq!(
        store.calls(Op::Watch),
        0,
        "subscribed to a store that does not notify"
    );
    a.shutdown().await;
    assert_eq!(next_change(&mut rx, retry * 2).await, None);
}

/// Followers' `LeaderState` carries who leads, the token and the metadata;
/// a proclaimed update reaches followers and observers.
#[tokio::test(start_paused = true)]
async fn followers_see_the_leader_metadata_and_its_updates() {
    let store = Arc::new(MemoryStore::new());
    let a = start_with(store.clone(), "pod-a", "10.0.0.1:80");
    wait_until("a leads", LEASE, || a.is_leader()).await;
    let b = start_with(store.clone(), "pod-b", "10.0.0.2:80");
    let mut follower = b.subscribe();
    let state = follower
        .wait_for(|s| s.leader.is_some())
        .await
        .expect("b alive")
        .clone();
    let leader = state.leader.expect("known");
    assert!(!state.is_leader);
    assert_eq!(&leader.holder, a.instance_id());
    assert_eq!(Some(leader.token), a.token());
    assert_eq!(leader.metadata, Some(meta("10.0.0.1:80")));

    let observer = Observer::start(store.clone(), &config("job", "watcher"))
        .await
        .expect("observer");
    let mut rx = observer.subscribe();
    a.proclaim(meta("10.0.0.9:80")).await.expect("proclaim");
    let own = a.subscribe().borrow().leader.clone().expect("a leads");
    assert_eq!(own.metadata, Some(meta("10.0.0.9:80")));
    let seen = next_change(&mut rx, LEASE).await.expect("a still leads");
    assert_eq!(seen.metadata, Some(meta("10.0.0.9:80")));
    assert_eq!(Some(seen.token), a.token(), "an update is not a new term");
    timeout(
        LEASE,
        follower.wait_for(|s| {
            s.leader.as_ref().and_then(|l| l.metadata.clone()) == Some(meta("10.0.0.9:80"))
        }),
    )
    .await
    .expect("the follower saw the update")
    .expect("b alive");
    a.shutdown().await;
    b.shutdown().await;
}

/// A store that keeps no metadata refuses it with a typed error at start,
/// and `proclaim` says so; nothing is acquired.
#[tokio::test(start_paused = true)]
async fn a_store_without_metadata_refuses_it_clearly() {
    let memory = MemoryStore::new();
    let plain = Arc::new(Wrapped::new(
        Arc::new(memory.clone()),
        Faults::new().with_capabilities(Capabilities::new(FencingSource::Counter)),
    ));
    let e = Elector::start_with_metadata(plain.clone(), config("job", "a"), meta("x"))
        .expect_err("no metadata on this store");
    assert_eq!(e.kind(), ErrorKind::Unsupported);
    let a = start(plain.clone(), "job", "pod-a");
    wait_until("a leads", LEASE, || a.is_leader()).await;
    let e = a.proclaim(meta("x")).await.expect_err("unsupported");
    assert_eq!(e.kind(), ErrorKind::Unsupported);
    assert_eq!(plain.calls(Op::UpdateMetadata), 0);
    a.shutdown().await;
}
