//! Resign requests on the Postgres store: sent to the key's watchers only
//! while the named term holds the lock, from any client.

mod common;

use std::time::Duration;

use common::*;
use leader_core::{FencingToken, LeaseEvent, LeaseStore};

const TTL: Duration = Duration::from_secs(10);

#[tokio::test]
async fn a_request_for_the_current_term_reaches_watchers_and_a_stale_one_sends_nothing() {
    let pg = server().await;
    let (a, watcher, ops) = (store(pg.url()), store(pg.url()), store(pg.url()));
    let key = key("resign-watch");
    let h = holder("resign_1_aa");
    let first = acquired(a.acquire(&key, &h, TTL).await.expect("acquire"));
    let mut events = watcher.watch(&key).await.expect("watch");

    // From a client that holds nothing: the current term's token.
    assert!(
        ops.request_resign(&key, first.token)
            .await
            .expect("request_resign"),
        "the request did not find the current term {}",
        first.token
    );
    let event = tokio::time::timeout(TTL, events.recv())
        .await
        .expect("an event within the TTL");
    assert_eq!(
        event,
        Some(LeaseEvent::ResignRequested { token: first.token })
    );
    // A request changes nothing by itself: the holder decides.
    a.renew(&first).await.expect("still held after a request");

    // A replaced term (same holder, same session, new token), a token never
    // minted, and one beyond the table's bigint: nothing is sent.
    let second = acquired(a.acquire(&key, &h, TTL).await.expect("re-acquire"));
    assert!(second.token > first.token);
    for stale in [
        first.token,
        FencingToken(second.token.0 + 1),
        FencingToken(u64::MAX),
    ] {
        assert!(
            !ops.request_resign(&key, stale)
                .await
                .expect("request_resign"),
            "a request for token {stale} (current: {}) was sent",
            second.token
        );
    }
    // A released term: nothing is sent either.
    assert!(a.release(&second).await.expect("release"));
    assert!(
        !ops.request_resign(&key, second.token)
            .await
            .expect("request_resign"),
        "a request for the released term {} was sent",
        second.token
    );
    // Notifications of one channel arrive in commit order: had a refused
    // request been sent, it would come before the release.
    let event = tokio::time::timeout(TTL, events.recv())
        .await
        .expect("an event within the TTL");
    assert_eq!(event, Some(LeaseEvent::Vacated));
}

#[tokio::test]
async fn a_term_whose_session_ended_without_a_release_is_not_current() {
    let pg = server().await;
    let (a, ops) = (store(pg.url()), store(pg.url()));
    let key = key("resign-crashed");
    let h = holder("resign_crashed_bb");
    let lease = acquired(a.acquire(&key, &h, TTL).await.expect("acquire"));
    assert_eq!(
        terminate_holder(pg.url(), h.as_str()).await,
        1,
        "the holder's session"
    );
    // The row still names the term, unreleased (as after a crash): only
    // pg_locks tells that it ended.
    let mut admin = admin(pg.url()).await;
    let (token, released): (i64, bool) =
        sqlx::query_as("SELECT token, released FROM leader_fencing WHERE lock_key = $1")
            .bind(a.lock_key(&key))
            .fetch_one(&mut admin)
            .await
            .expect("the counter row");
    assert_eq!(
        (u64::try_from(token).ok(), released),
        (Some(lease.token.0), false)
    );
    assert!(
        !ops.request_resign(&key, lease.token)
            .await
            .expect("request_resign"),
        "a request for the term of an ended session was sent"
    );
}
