//! Named locks that wait (`Locks::acquire`) and hold bounds
//! (`LockOptions::hold_at_least`, `LockOptions::hold_at_most`).

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{LEASE, RENEW, config, faulty};
use leader_core::{
    Capabilities, FencingSource, LeaseKey, LeaseStore, LockOptions, Locks, MemoryStore,
};
use leader_testkit::wrap::{Fault, Faults, Op, Wrapped};
use tokio::time::{Instant, sleep, timeout};

fn locks(store: Arc<dyn LeaseStore>, instance: &str) -> Locks {
    Locks::new(store, config("unused", instance)).expect("valid config")
}

fn key(name: &str) -> LeaseKey {
    LeaseKey::new("test:", name).expect("key")
}

/// A waiter gets the lock as soon as the holder releases it (woken by the
/// release notification, long before a retry period), with a higher token.
#[tokio::test(start_paused = true)]
async fn a_waiter_is_woken_by_the_release() {
    let store = Arc::new(MemoryStore::new());
    let (a, b) = (locks(store.clone(), "a"), locks(store.clone(), "b"));
    let held = a.try_acquire("job").await.expect("ok").expect("free");
    let token = held.token();
    let waiter = tokio::spawn(async move { b.acquire("job", LEASE * 10).await });
    sleep(LEASE * 2).await;
    assert!(
        !waiter.is_finished(),
        "the waiter returned while the lock was held"
    );
    let released = Instant::now();
    assert!(held.release().await.expect("release"));
    let got = waiter
        .await
        .expect("no panic")
        .expect("ok")
        .expect("the lock");
    assert!(
        released.elapsed() < Duration::from_millis(10),
        "woken {:?} after the release: not by the notification",
        released.elapsed()
    );
    assert!(got.token() > token);
}

/// Without notifications the waiter polls: it gets the lock within a
/// retry period of the release.
#[tokio::test(start_paused = true)]
async fn without_notifications_the_waiter_polls() {
    let memory = MemoryStore::new();
    let store = Arc::new(Wrapped::new(
        Arc::new(memory.clone()),
        Faults::new().with_capabilities(Capabilities::new(FencingSource::Counter)),
    ));
    let retry = config("x", "x").retry_period.expect("set");
    let (a, b) = (locks(store.clone(), "a"), locks(store.clone(), "b"));
    let held = a.try_acquire("job").await.expect("ok").expect("free");
    let waiter = tokio::spawn(async move { b.acquire("job", LEASE * 10).await });
    sleep(LEASE).await;
    let released = Instant::now();
    assert!(held.release().await.expect("release"));
    waiter
        .await
        .expect("no panic")
        .expect("ok")
        .expect("the lock");
    assert!(released.elapsed() <= retry.mul_f64(1.2) + Duration::from_millis(1));
    assert_eq!(store.calls(Op::Watch), 0);
}

/// The wait ends with `None` at the timeout while the lock stays held.
#[tokio::test(start_paused = true)]
async fn the_wait_gives_up_at_the_timeout() {
    let store = Arc::new(MemoryStore::new());
    let (a, b) = (locks(store.clone(), "a"), locks(store.clone(), "b"));
    let _held = a.try_acquire("job").await.expect("ok").expect("free");
    let started = Instant::now();
    let wait = LEASE * 3;
    assert!(b.acquire("job", wait).await.expect("ok").is_none());
    let took = started.elapsed();
    assert!(
        took >= wait && took < wait + Duration::from_millis(10),
        "gave up after {took:?}"
    );
}

/// A wait dropped at any point leaves nothing held: not while its acquire
/// is in flight (the store answers late), not after it was granted.
#[tokio::test(start_paused = true)]
async fn a_dropped_wait_leaves_nothing_held() {
    let (store, memory) = faulty();
    let b = locks(store.clone(), "b");
    let a = locks(store.clone(), "a");
    let delay = RENEW / 2;
    for step in 0..40u32 {
        let held = a.try_acquire("job").await.expect("ok").expect("free");
        store.set(Op::Acquire, Some(Fault::DelayReply(delay)));
        let wait = b.acquire("job", LEASE * 10);
        let drop_after = delay / 8 * (step % 8) + Duration::from_millis(u64::from(step));
        let release_first = step >= 20;
        let outcome = timeout(drop_after, async {
            if release_first {
                held.release().await.expect("release");
            } else {
                drop(held);
            }
            wait.await
        })
        .await;
        store.set(Op::Acquire, None);
        if let Ok(got) = outcome {
            drop(got.expect("ok"));
        }
        // The dropped wait's acquire may still be answered: the lock it
        // takes must come back at once, not at expiry.
        sleep(delay + Duration::from_millis(5)).await;
        assert_eq!(
            memory.current(&key("job")).await.expect("ok"),
            None,
            "step {step}: a lock is held after the wait was dropped at {drop_after:?}"
        );
    }
}

/// `hold_at_least`: a job that finished early keeps the lock until the
/// bound passes; `release()` does not wait for that; then the lock is free.
#[tokio::test(start_paused = true)]
async fn hold_at_least_keeps_an_early_release_until_the_bound() {
    let store = Arc::new(MemoryStore::new());
    let (a, b) = (locks(store.clone(), "a"), locks(store.clone(), "b"));
    let at_least = LEASE * 3;
    let acquired = Instant::now();
    let guard = a
        .acquire_with("job", &LockOptions::new().hold_at_least(at_least))
        .await
        .expect("ok")
        .expect("free");
    sleep(Duration::from_millis(200)).await;
    let released = Instant::now();
    assert!(
        guard.release().await.expect("release"),
        "still held at release"
    );
    assert_eq!(released.elapsed(), Duration::ZERO, "release() waited");
    let got = b
        .acquire("job", at_least * 2)
        .await
        .expect("ok")
        .expect("the lock");
    let freed = acquired.elapsed();
    assert!(
        freed >= at_least && freed < at_least + Duration::from_millis(10),
        "the lock came free {freed:?} after it was taken (at least {at_least:?})"
    );
    drop(got);
    // Dropping the guard obeys the bound too (the drop above releases in
    // the background: wait for it).
    let guard = a
        .acquire_with(
            "job",
            &LockOptions::new().hold_at_least(at_least).wait(LEASE),
        )
        .await
        .expect("ok")
        .expect("free");
    let acquired = Instant::now();
    drop(guard);
    b.acquire("job", at_least * 2)
        .await
        .expect("ok")
        .expect("the lock");
    assert!(acquired.elapsed() >= at_least);
}

/// `hold_at_most`: a stuck holder loses the lock at the bound; `lost()`
/// fires before anyone else can take it.
#[tokio::test(start_paused = true)]
async fn hold_at_most_gives_up_a_stuck_holder() {
    let store = Arc::new(MemoryStore::new());
    let (a, b) = (locks(store.clone(), "a"), locks(store.clone(), "b"));
    let at_most = LEASE * 2;
    let acquired = Instant::now();
    let guard = a
        .acquire_with("job", &LockOptions::new().hold_at_most(at_most))
        .await
        .expect("ok")
        .expect("free");
    let lost = async {
        guard.lost().await;
        Instant::now()
    };
    let other = async {
        let got = b
            .acquire("job", at_most * 2)
            .await
            .expect("ok")
            .expect("the lock");
        assert!(
            !guard.is_held() && guard.cancellation_token().is_cancelled(),
            "another holder took the lock while the stuck guard still said it held it"
        );
        got
    };
    let (lost_at, got) = tokio::join!(lost, other);
    let taken_at = Instant::now();
    assert!(!guard.is_held());
    assert!(
        lost_at - acquired >= at_most,
        "lost after {:?}",
        lost_at - acquired
    );
    assert!(
        lost_at <= taken_at,
        "another holder took it before lost() fired"
    );
    assert!(
        taken_at - acquired < at_most + Duration::from_millis(10),
        "the lock was free only {:?} after it was taken: that is expiry",
        taken_at - acquired
    );
    assert!(got.token() > guard.token());
    assert!(
        !guard.release().await.expect("release"),
        "release of a lock given up"
    );
}

/// Contradictory or absurd bounds are refused naming the option.
#[tokio::test(start_paused = true)]
async fn bad_options_are_refused() {
    let store = Arc::new(MemoryStore::new());
    let a = locks(store.clone(), "a");
    let e = a
        .acquire_with(
            "job",
            &LockOptions::new()
                .hold_at_least(LEASE * 2)
                .hold_at_most(LEASE),
        )
        .await
        .expect_err("at least > at most");
    assert!(e.to_string().contains("hold_at_least"), "{e}");
    let e = a
        .acquire_with("job", &LockOptions::new().hold_at_most(Duration::ZERO))
        .await
        .expect_err("zero");
    assert!(e.to_string().contains("hold_at_most"), "{e}");
    assert_eq!(store.current(&key("job")).await.expect("ok"), None);
}
