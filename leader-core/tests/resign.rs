//! `Elector::resign`: ending the current term without leaving the election.

mod common;

use common::{LEASE, config, one_leader, start, wait_until};
use leader_core::{Elector, LeaseStore, MemoryStore};
use std::sync::Arc;
use tokio::time::Instant;

/// The resigning leader stops at once, the other elector leads within the
/// handover time (one retry period: it is woken by the release), and the
/// first one can lead again later, with a higher token.
#[tokio::test(start_paused = true)]
async fn the_resigning_leader_hands_over_and_can_lead_again() {
    let store = Arc::new(MemoryStore::new());
    let a = start(store.clone(), "job", "pod-a");
    wait_until("a leads", LEASE, || a.is_leader()).await;
    let b = start(store.clone(), "job", "pod-b");
    let mut state = a.subscribe();
    let first = a.token().expect("a leads");

    let resigned_at = Instant::now();
    assert!(a.resign(None).await, "resign ended no term");
    assert!(!a.is_leader(), "still leads after resign returned");
    assert!(!state.borrow_and_update().is_leader);
    let retry = config("job", "x").retry_period.expect("set");
    wait_until("b leads", retry * 2, || b.is_leader()).await;
    assert!(
        resigned_at.elapsed() < LEASE / 2,
        "b took over {:?} after the resign: that is expiry, not a handover",
        resigned_at.elapsed()
    );
    let second = b.token().expect("b leads");
    assert!(second > first);

    // Still a candidate: when b goes, a takes over again (once its
    // default hold-off, one follower reaction, has passed).
    b.shutdown().await;
    wait_until("a leads again", LEASE * 2, || a.is_leader()).await;
    assert!(a.token().expect("a leads") > second);
    a.shutdown().await;
}

/// With a hold-off the resigned elector does not compete until it passes,
/// even when the seat is free; afterwards it leads again.
#[tokio::test(start_paused = true)]
async fn a_hold_off_keeps_the_resigned_elector_out() {
    let store = Arc::new(MemoryStore::new());
    let a = start(store.clone(), "job", "pod-a");
    wait_until("a leads", LEASE, || a.is_leader()).await;
    let hold_off = LEASE * 4;
    let resigned_at = Instant::now();
    assert!(a.resign(Some(hold_off)).await);
    // Nobody else competes: the seat stays free, and a stays out.
    let regained = wait_until("a leads again", hold_off * 2, || a.is_leader()).await;
    assert!(
        regained - resigned_at >= hold_off,
        "led again {:?} after resigning with a hold-off of {hold_off:?}",
        regained - resigned_at
    );
    a.shutdown().await;
}

/// A follower's hold-off keeps it from taking a seat that comes free.
#[tokio::test(start_paused = true)]
async fn a_follower_that_resigns_with_a_hold_off_does_not_take_over() {
    let store = Arc::new(MemoryStore::new());
    let a = start(store.clone(), "job", "pod-a");
    wait_until("a leads", LEASE, || a.is_leader()).await;
    let b = start(store.clone(), "job", "pod-b");
    let electors: [Elector; 2] = [a.clone(), b.clone()];
    assert_eq!(one_leader(&electors, LEASE).await, 0);
    let hold_off = LEASE * 4;
    let resigned_at = Instant::now();
    assert!(!b.resign(Some(hold_off)).await, "a follower ended a term");
    a.shutdown().await;
    let took = wait_until("b leads", hold_off * 2, || b.is_leader()).await;
    assert!(
        took - resigned_at >= hold_off,
        "b took the seat {:?} after a resign with a {hold_off:?} hold-off",
        took - resigned_at
    );
    b.shutdown().await;
}

/// A resign request sent through the store (`leaderctl resign`) ends the
/// term that has the named token: the leader steps down, the other elector
/// takes over by the release notification (well before expiry), and a
/// request naming an ended term changes nothing and says so.
#[tokio::test(start_paused = true)]
async fn a_request_through_the_store_makes_the_leader_resign() {
    let store = Arc::new(MemoryStore::new());
    let a = start(store.clone(), "job", "pod-a");
    wait_until("a leads", LEASE, || a.is_leader()).await;
    let b = start(store.clone(), "job", "pod-b");
    let electors: [Elector; 2] = [a.clone(), b.clone()];
    assert_eq!(one_leader(&electors, LEASE).await, 0);
    let first = a.token().expect("a leads");

    let asked_at = Instant::now();
    assert!(
        store
            .request_resign(a.key(), first)
            .await
            .expect("memory store"),
        "the request did not find the current term"
    );
    let retry = config("job", "x").retry_period.expect("set");
    wait_until("b leads", retry * 2, || b.is_leader()).await;
    assert!(!a.is_leader(), "a still leads after b took over");
    assert!(
        asked_at.elapsed() < LEASE / 2,
        "b took over {:?} after the request: that is expiry, not a resignation",
        asked_at.elapsed()
    );
    let second = b.token().expect("b leads");
    assert!(second > first);

    // The ended term's token names nobody now.
    assert!(
        !store
            .request_resign(b.key(), first)
            .await
            .expect("memory store"),
        "a request for the ended term {first} was sent"
    );
    // The next request, for b's term, still works: b had ignored nothing
    // it should not have.
    assert!(store.request_resign(b.key(), second).await.expect("memory"));
    wait_until("a leads again", LEASE * 2, || a.is_leader()).await;
    assert!(a.token().expect("a leads") > second);
    a.shutdown().await;
    b.shutdown().await;
}
