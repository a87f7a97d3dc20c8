//! The elector's state machine under paused time: exclusivity, renewal,
//! step-down before expiry, re-join, handover, self lock-out, shutdown.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use common::*;
use leader_core::{ErrorKind, LeaseKey, LeaseStore, MemoryStore};
use leader_testkit::wrap::{Fault, Op};
use tokio::time::Instant;

fn key(resource: &str) -> LeaseKey {
    LeaseKey::new("test:", resource).expect("valid key")
}

#[tokio::test(start_paused = true)]
async fn exactly_one_of_several_electors_leads_and_keeps_leading() {
    let store = Arc::new(MemoryStore::new());
    let electors: Vec<_> = (0..5)
        .map(|i| start(store.clone(), "one", &format!("node-{i}")))
        .collect();
    let leader = one_leader(&electors, LEASE).await;
    // Over many renewal intervals nobody else ever leads and the leader never flaps.
    let until = Instant::now() + LEASE * 10;
    while Instant::now() < until {
        let leading: Vec<usize> = (0..5).filter(|i| electors[*i].is_leader()).collect();
        assert_eq!(leading, vec![leader]);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let holder = store
        .current(&key("one"))
        .await
        .expect("current")
        .expect("held");
    assert_eq!(holder.holder, *electors[leader].instance_id());
    assert_eq!(Some(holder.token), electors[leader].token());
}

#[tokio::test(start_paused = true)]
async fn the_leader_renews_once_per_interval() {
    let (store, _) = faulty();
    let e = start(store.clone(), "renew", "a");
    let t0 = wait_until("leader", LEASE, || e.is_leader()).await;
    tokio::time::sleep_until(t0 + RENEW * 10 + RENEW / 2).await;
    assert_eq!(store.calls(Op::Renew), 10);
    assert!(e.is_leader());
}

/// The leader must stop believing before the store could let anyone else in.
async fn steps_down_before_expiry(fault: Fault) {
    let (store, memory) = faulty();
    let e = start(store.clone(), "down", "a");
    let mut state = e.subscribe();
    wait_until("leader", LEASE, || e.is_leader()).await;
    let lost = Arc::new(AtomicU32::new(0));
    let cancelled_at = Arc::new(std::sync::Mutex::new(None));
    let at = cancelled_at.clone();
    let lost2 = lost.clone();
    let _work = e.run_while_leader(move |ctx| {
        let at = at.clone();
        let lost = lost2.clone();
        async move {
            ctx.cancelled().await;
            lost.fetch_add(1, Ordering::SeqCst);
            *at.lock().expect("lock") = Some(Instant::now());
        }
    });
    // Let the work start, then break the store right after a renewal.
    tokio::time::sleep(RENEW + Duration::from_millis(10)).await;
    let remaining = memory
        .current(&key("down"))
        .await
        .expect("current")
        .expect("held")
        .remaining
        .expect("memory store reports a TTL");
    let expires_at = Instant::now() + remaining;
    store.set_all(Some(fault));
    state
        .wait_for(|s| !s.is_leader)
        .await
        .expect("elector alive");
    let stepped_down = Instant::now();
    assert!(!e.is_leader());
    assert!(
        stepped_down < expires_at,
        "stepped down at {:?} but the lease could expire at {:?}",
        stepped_down,
        expires_at
    );
    wait_until("work cancelled", LEASE, || lost.load(Ordering::SeqCst) == 1).await;
    let cancelled = cancelled_at.lock().expect("lock").expect("cancel time");
    assert!(
        cancelled < expires_at,
        "work cancelled only after the lease could expire"
    );
}

#[tokio::test(start_paused = true)]
async fn steps_down_before_expiry_when_the_store_fails() {
    steps_down_before_expiry(Fault::Fail(ErrorKind::Unavailable)).await;
}

#[tokio::test(start_paused = true)]
async fn steps_down_before_expiry_when_the_store_hangs() {
    steps_down_before_expiry(Fault::Hang).await;
}

#[tokio::test(start_paused = true)]
async fn steps_down_before_expiry_when_replies_are_lost() {
    // The renewals take effect but their outcome is unknown: never a success.
    steps_down_before_expiry(Fault::DropReply).await;
}

#[tokio::test(start_paused = true)]
async fn rejoins_after_loss_with_a_new_token() {
    let (store, _) = faulty();
    let e = start(store.clone(), "rejoin", "a");
    let mut state = e.subscribe();
    wait_until("leader", LEASE, || e.is_leader()).await;
    let first = e.token().expect("token");
    store.set_all(Some(Fault::Fail(ErrorKind::Unavailable)));
    state.wait_for(|s| !s.is_leader).await.expect("alive");
    // Stay down past the lease so the key is gone, then heal.
    tokio::time::sleep(LEASE * 2).await;
    assert!(!e.is_leader());
    store.clear();
    state.wait_for(|s| s.is_leader).await.expect("alive");
    assert!(e.token().expect("token") > first);
}

#[tokio::test(start_paused = true)]
async fn a_transient_error_does_not_lock_the_instance_out_of_its_own_key() {
    let (store, memory) = faulty();
    let a = start(store.clone(), "self", "a");
    let b = start(Arc::new(memory.clone()), "self", "b");
    let mut state = a.subscribe();
    wait_until("a leads", LEASE, || a.is_leader()).await;
    assert!(!b.is_leader());
    let first = a.token().expect("token");
    // The store is unreachable until a steps down; its key is still there.
    store.set_all(Some(Fault::Fail(ErrorKind::Unavailable)));
    state.wait_for(|s| !s.is_leader).await.expect("alive");
    let held = memory
        .current(&key("self"))
        .await
        .expect("current")
        .expect("held");
    assert_eq!(held.holder, *a.instance_id(), "the old key is still a's");
    let expires_at = Instant::now() + held.remaining.expect("ttl");
    store.clear();
    state.wait_for(|s| s.is_leader).await.expect("alive");
    assert!(
        Instant::now() < expires_at,
        "a got its lease back before it expired"
    );
    assert!(
        a.token().expect("token") > first,
        "a new term has a new token"
    );
    assert!(!b.is_leader());
}

#[tokio::test(start_paused = true)]
async fn a_lost_acquire_reply_does_not_lock_the_instance_out() {
    let (store, _) = faulty();
    store.set(Op::Acquire, Some(Fault::DropReply));
    let a = start(store.clone(), "lostreply", "a");
    wait_until("an acquire whose reply is lost", LEASE, || {
        store.calls(Op::Acquire) >= 1
    })
    .await;
    assert!(!a.is_leader(), "an unknown outcome is not leadership");
    store.clear();
    // The key holds a's id from the lost reply; a gets it back at its next try.
    let mut state = a.subscribe();
    tokio::time::timeout(Duration::from_secs(1), state.wait_for(|s| s.is_leader))
        .await
        .expect("a leads within one retry period")
        .expect("alive");
}

#[tokio::test(start_paused = true)]
async fn graceful_shutdown_hands_over_at_once_and_never_reacquires() {
    let (store, memory) = faulty();
    let a = start(store.clone(), "handover", "a");
    wait_until("a leads", LEASE, || a.is_leader()).await;
    let b = start(Arc::new(memory.clone()), "handover", "b");
    let mut b_state = b.subscribe();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!b.is_leader());
    let before = Instant::now();
    a.shutdown().await;
    assert!(!a.is_leader());
    b_state.wait_for(|s| s.is_leader).await.expect("alive");
    // Notified by the release: no retry period, no lease expiry.
    assert!(Instant::now() - before < Duration::from_millis(10));
    let acquires = store.calls(Op::Acquire);
    b.shutdown().await;
    tokio::time::sleep(LEASE * 5).await;
    assert_eq!(
        store.calls(Op::Acquire),
        acquires,
        "a shut-down elector never competes again"
    );
    assert!(!a.is_leader());
    assert_eq!(
        memory.current(&key("handover")).await.expect("current"),
        None
    );
}

#[tokio::test(start_paused = true)]
async fn shutdown_during_an_acquire_in_flight_leaves_no_lease_behind() {
    let (store, memory) = faulty();
    store.set(Op::Acquire, Some(Fault::Delay(Duration::from_millis(200))));
    let a = start(store.clone(), "race", "a");
    tokio::time::sleep(Duration::from_millis(50)).await;
    a.shutdown().await;
    assert_eq!(memory.current(&key("race")).await.expect("current"), None);
    assert!(!a.is_leader());
}

#[tokio::test(start_paused = true)]
async fn a_crashed_leader_is_replaced_within_lease_plus_retry() {
    let store = Arc::new(MemoryStore::new());
    let a = start(store.clone(), "crash", "a");
    wait_until("a leads", LEASE, || a.is_leader()).await;
    let b = start(store.clone(), "crash", "b");
    let crashed = Instant::now();
    a.abort();
    assert!(!a.is_leader());
    let took = wait_until("b leads", LEASE * 2, || b.is_leader()).await - crashed;
    assert!(took <= LEASE + Duration::from_millis(500), "took {took:?}");
}

#[tokio::test(start_paused = true)]
async fn election_disabled_means_always_leader() {
    let mut c = config("solo", "a");
    c.enabled = false;
    // The store is never touched: a store that fails everything proves it.
    let (store, _) = faulty();
    store.set_all(Some(Fault::Fail(ErrorKind::Unavailable)));
    let e = leader_core::Elector::start(store.clone(), c).expect("valid");
    assert!(e.is_leader());
    assert!(!e.is_enabled());
    assert_eq!(e.token().map(|t| t.get()), Some(0));
    let ran = Arc::new(AtomicU32::new(0));
    let r = ran.clone();
    let _w = e.run_while_leader(move |ctx| {
        let r = r.clone();
        async move {
            r.fetch_add(1, Ordering::SeqCst);
            ctx.cancelled().await;
        }
    });
    wait_until("work runs", RENEW, || ran.load(Ordering::SeqCst) == 1).await;
    e.shutdown().await;
    assert!(!e.is_leader());
    assert_eq!(store.calls(Op::Acquire), 0);
}

#[tokio::test(start_paused = true)]
async fn work_that_returns_is_restarted_only_in_a_new_term() {
    let (store, _) = faulty();
    let e = start(store.clone(), "once", "a");
    let runs = Arc::new(std::sync::Mutex::new(Vec::new()));
    let r = runs.clone();
    let _work = e.run_while_leader(move |ctx| {
        let r = r.clone();
        async move { r.lock().expect("lock").push(ctx.token()) }
    });
    let mut state = e.subscribe();
    state.wait_for(|s| s.is_leader).await.expect("alive");
    tokio::time::sleep(LEASE * 3).await;
    assert_eq!(runs.lock().expect("lock").len(), 1, "one run per term");
    // Lose and regain leadership: one more run, with the new term's token.
    store.set_all(Some(Fault::Fail(ErrorKind::Unavailable)));
    state.wait_for(|s| !s.is_leader).await.expect("alive");
    store.clear();
    state.wait_for(|s| s.is_leader).await.expect("alive");
    tokio::time::sleep(RENEW).await;
    let runs = runs.lock().expect("lock").clone();
    assert_eq!(runs.len(), 2, "{runs:?}");
    assert!(runs[1] > runs[0]);
}

/// Two electors (or processes) configured with the same `InstanceId`: one
/// leads, the other follows, and they never take the lease from each other.
#[tokio::test(start_paused = true)]
async fn two_electors_sharing_an_instance_id_never_lead_together() {
    let store = Arc::new(MemoryStore::new());
    let electors = [
        start(store.clone(), "shared-id", "pod-a"),
        start(store.clone(), "shared-id", "pod-a"),
    ];
    let leader = one_leader(&electors, LEASE).await;
    let token = electors[leader].token();
    let until = Instant::now() + LEASE * 10;
    while Instant::now() < until {
        let leading: Vec<usize> = (0..2).filter(|i| electors[*i].is_leader()).collect();
        assert_eq!(leading, vec![leader], "leadership moved or was shared");
        assert_eq!(electors[leader].token(), token, "the term changed hands");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_ne!(electors[0].instance_id(), electors[1].instance_id());
    let held = store
        .current(&key("shared-id"))
        .await
        .expect("current")
        .expect("held");
    assert_eq!(held.holder, *electors[leader].instance_id());
    assert!(held.holder.as_str().starts_with("pod-a/"));
}
