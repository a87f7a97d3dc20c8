//! Named one-shot locks (the card's Pattern 2).

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use leader_core::{ErrorKind, LeaseKey, LeaseStore, Locks, MemoryStore};
use leader_testkit::wrap::{Fault, Op, Stall, Wrapped};

fn locks(store: Arc<dyn LeaseStore>, instance: &str) -> Locks {
    Locks::new(store, config("unused", instance)).expect("valid config")
}

#[tokio::test(start_paused = true)]
async fn two_callers_in_one_process_never_share_or_release_each_others_lock() {
    let store = Arc::new(MemoryStore::new());
    let locks = locks(store.clone(), "proc");
    let first = locks
        .try_acquire("nightly-report")
        .await
        .expect("store ok")
        .expect("free");
    assert!(
        locks
            .try_acquire("nightly-report")
            .await
            .expect("store ok")
            .is_none()
    );
    let other = locks
        .try_acquire("other-job")
        .await
        .expect("store ok")
        .expect("free");
    assert_ne!(first.holder(), other.holder());
    assert!(first.release().await.expect("release"));
    assert!(other.is_held(), "releasing one lock leaves the other alone");
    let again = locks
        .try_acquire("nightly-report")
        .await
        .expect("store ok")
        .expect("free again");
    assert!(again.token() > other.token() || again.token().get() >= 2);
}

#[tokio::test(start_paused = true)]
async fn a_stale_guard_cannot_release_the_next_holders_lock() {
    let store = Arc::new(MemoryStore::new());
    let locks = locks(store.clone(), "proc");
    let stale = locks.try_acquire("job").await.expect("ok").expect("free");
    let key = LeaseKey::new("test:", "job").expect("key");
    store.force_release(&key).await.expect("operator release");
    let fresh = locks
        .try_acquire("job")
        .await
        .expect("ok")
        .expect("free after release");
    assert!(fresh.token() > stale.token());
    assert!(
        !stale.release().await.expect("release"),
        "stale release is a no-op"
    );
    let now = store.current(&key).await.expect("ok").expect("still held");
    assert_eq!(now.holder, *fresh.holder());
}

#[tokio::test(start_paused = true)]
async fn a_held_lock_is_renewed_past_its_ttl_and_dropping_releases_it() {
    let store = Arc::new(MemoryStore::new());
    let locks = locks(store.clone(), "proc");
    let guard = locks
        .try_acquire("long-job")
        .await
        .expect("ok")
        .expect("free");
    tokio::time::sleep(LEASE * 4).await;
    assert!(guard.is_held(), "renewed in the background");
    drop(guard);
    let key = LeaseKey::new("test:", "long-job").expect("key");
    wait_until_released(&*store, &key).await;
}

async fn wait_until_released(store: &dyn LeaseStore, key: &LeaseKey) {
    for _ in 0..100 {
        if store.current(key).await.expect("ok").is_none() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    panic!("the dropped guard did not release {key}");
}

#[tokio::test(start_paused = true)]
async fn a_lock_that_cannot_be_renewed_signals_loss_before_it_expires() {
    let (store, memory) = faulty();
    let locks = locks(store.clone(), "proc");
    let guard = locks.try_acquire("job").await.expect("ok").expect("free");
    let key = LeaseKey::new("test:", "job").expect("key");
    let rem = memory
        .current(&key)
        .await
        .expect("ok")
        .expect("held")
        .remaining
        .expect("ttl");
    let expires_at = tokio::time::Instant::now() + rem;
    store.set(Op::Renew, Some(Fault::Fail(ErrorKind::Unavailable)));
    guard.lost().await;
    assert!(tokio::time::Instant::now() < expires_at);
    assert!(!guard.is_held());
    assert!(guard.cancellation_token().is_cancelled());
}

#[tokio::test(start_paused = true)]
async fn bad_lock_names_are_refused() {
    let locks = locks(Arc::new(MemoryStore::new()), "proc");
    for name in ["", "  ", "a\nb"] {
        let err = locks.try_acquire(name).await.expect_err(name);
        assert_eq!(err.kind(), ErrorKind::InvalidName);
    }
}

/// A reused pod name or a copied config file gives two lock factories the
/// same `InstanceId`: their holder ids must still differ, or the store takes
/// the second acquisition for a re-acquisition by the first holder.
#[tokio::test(start_paused = true)]
async fn two_lock_factories_sharing_an_instance_id_exclude_each_other() {
    let store = Arc::new(MemoryStore::new());
    let first = locks(store.clone(), "pod-a");
    let second = locks(store.clone(), "pod-a");
    let held = first.try_acquire("job").await.expect("ok").expect("free");
    assert!(
        second.try_acquire("job").await.expect("ok").is_none(),
        "a second factory with the same InstanceId took the held lock"
    );
    assert!(held.is_held());
    let key = LeaseKey::new("test:", "job").expect("key");
    let now = store.current(&key).await.expect("ok").expect("held");
    assert_eq!(now.holder, *held.holder());
    assert!(
        now.holder.as_str().starts_with("pod-a/"),
        "the store shows {}, which does not start with the instance id",
        now.holder
    );
}

#[tokio::test(start_paused = true)]
async fn an_acquire_answered_after_its_validity_gives_no_guard_and_frees_the_lock() {
    let memory = MemoryStore::new();
    // The acquire answers, then the caller stalls (a GC pause, a stopped
    // process) before it sees the answer: the request timeout cannot catch
    // this. Validity is LEASE * (1 - 0.01); the store's TTL runs 30 ms longer.
    let stall = LEASE - Duration::from_millis(20);
    let late = locks(
        Arc::new(Wrapped::new(Arc::new(memory.clone()), Stall(stall))),
        "late",
    );
    let err = late
        .try_acquire("job")
        .await
        .expect_err("a late answer must not give a usable guard");
    assert_eq!(err.kind(), ErrorKind::Indeterminate, "{err}");
    let key = LeaseKey::new("test:", "job").expect("key");
    assert_eq!(
        memory.current(&key).await.expect("ok"),
        None,
        "the late lock was not released (its TTL had not run out yet)"
    );
    let other = locks(Arc::new(memory.clone()), "other");
    assert!(other.try_acquire("job").await.expect("ok").is_some());
}
