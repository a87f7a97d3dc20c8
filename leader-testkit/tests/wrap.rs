//! The test plumbing itself: `wrap::Wrapped` passes calls through its hook
//! and counts them, and `wait::eventually` returns the value or fails with
//! the caller's description.

use std::sync::Arc;
use std::time::Duration;

use leader_core::{Acquire, ErrorKind, HolderId, LeaseKey, LeaseStore, MemoryStore};
use leader_testkit::wait::{STEP, eventually};
use leader_testkit::wrap::{Call, Fault, Faults, Hooks, Op, Reply, Wrapped};
use tokio::time::Instant;

fn names() -> (LeaseKey, HolderId) {
    (
        LeaseKey::new("wrap:", "job").expect("key"),
        HolderId::new("a").expect("holder"),
    )
}

#[tokio::test(start_paused = true)]
async fn faults_lose_the_reply_but_not_the_effect_and_calls_are_counted() {
    let memory = MemoryStore::new();
    let store = Wrapped::new(Arc::new(memory.clone()), Faults::new());
    let (key, holder) = names();
    store.set(Op::Acquire, Some(Fault::DropReply));
    let err = store
        .acquire(&key, &holder, Duration::from_secs(1))
        .await
        .expect_err("the reply is lost");
    assert_eq!(err.kind(), ErrorKind::Indeterminate, "{err}");
    assert!(
        memory.current(&key).await.expect("ok").is_some(),
        "the acquire took effect"
    );
    store.set(Op::Current, Some(Fault::Fail(ErrorKind::Unavailable)));
    assert!(store.current(&key).await.is_err());
    store.clear();
    assert!(store.current(&key).await.expect("ok").is_some());
    assert_eq!(
        (store.calls(Op::Acquire), store.successes(Op::Acquire)),
        (1, 0)
    );
    assert_eq!(
        (store.calls(Op::Current), store.successes(Op::Current)),
        (2, 1)
    );
}

/// Answers every call as if it were a renewal.
#[derive(Debug)]
struct WrongReply;

#[leader_core::async_trait]
impl Hooks for WrongReply {
    async fn around(&self, _call: Call<'_>, _inner: &dyn LeaseStore) -> Reply {
        Reply::Renew(Ok(()))
    }
}

#[tokio::test]
async fn a_hook_answering_another_operation_is_a_protocol_error() {
    let store = Wrapped::new(Arc::new(MemoryStore::new()), WrongReply);
    let (key, holder) = names();
    let err = store
        .acquire(&key, &holder, Duration::from_secs(1))
        .await
        .expect_err("a renew reply cannot answer an acquire");
    assert_eq!(err.kind(), ErrorKind::Protocol, "{err}");
    assert!(err.to_string().contains("Acquire"), "{err}");
    assert_eq!(store.successes(Op::Acquire), 0);
}

#[tokio::test(start_paused = true)]
async fn eventually_returns_the_value_as_soon_as_the_condition_holds() {
    let started = Instant::now();
    let mut checks = 0;
    let got = eventually(Duration::from_secs(1), "the fifth check", || {
        checks += 1;
        let n = checks;
        async move { (n == 5).then_some(n) }
    })
    .await;
    assert_eq!(got, 5);
    assert_eq!(started.elapsed(), STEP * 4);
}

#[tokio::test(start_paused = true)]
#[should_panic(expected = "timed out after 1s waiting for the impossible")]
async fn eventually_fails_with_the_callers_description() {
    eventually(Duration::from_secs(1), "the impossible", || async { false }).await;
}

#[tokio::test(start_paused = true)]
async fn a_memory_store_behind_the_wrapper_still_elects() {
    let store = Wrapped::new(Arc::new(MemoryStore::new()), ());
    let (key, holder) = names();
    let got = store
        .acquire(&key, &holder, Duration::from_secs(1))
        .await
        .expect("acquire");
    assert!(matches!(got, Acquire::Acquired(_)), "{got:?}");
    assert_eq!(store.kind(), "memory");
}
