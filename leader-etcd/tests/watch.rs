//! EtcdStore::watch: events for acquisitions, releases and expiry, resuming
//! after a broken connection without losing events, and ending when it
//! cannot resume.

mod support;

use std::time::Duration;

use leader_core::{Acquire, HolderId, Lease, LeaseEvent, LeaseEvents, LeaseKey, LeaseStore};
use leader_etcd::EtcdStore;
use leader_testkit::proxy::{FaultProxy, Mode};
use leader_testkit::servers::EtcdServer;
use support::{PATIENCE, unique_key};

const TTL: Duration = Duration::from_secs(5);

fn holder(name: &str) -> HolderId {
    HolderId::new(name).expect("valid holder id")
}

async fn acquired(store: &EtcdStore, key: &LeaseKey, who: &HolderId, ttl: Duration) -> Lease {
    match store.acquire(key, who, ttl).await.expect("acquire") {
        Acquire::Acquired(lease) => lease,
        Acquire::Held(info) => panic!("expected to acquire, held by {info:?}"),
    }
}

async fn next(events: &mut LeaseEvents) -> Option<LeaseEvent> {
    tokio::time::timeout(PATIENCE, events.recv())
        .await
        .expect("an event (or the end of the subscription) within the patience bound")
}

fn acquired_event(lease: &Lease) -> LeaseEvent {
    LeaseEvent::Acquired {
        holder: lease.holder.clone(),
        token: lease.token,
    }
}

#[tokio::test]
async fn watch_reports_acquire_release_and_expiry() {
    let server = EtcdServer::start().await.expect("etcd");
    let store = EtcdStore::from_url(server.url()).expect("store");
    let key = unique_key("watch");
    let mut events = store.watch(&key).await.expect("watch");

    let a = acquired(&store, &key, &holder("a"), TTL).await;
    assert_eq!(next(&mut events).await, Some(acquired_event(&a)));
    assert!(store.release(&a).await.expect("release"));
    assert_eq!(next(&mut events).await, Some(LeaseEvent::Vacated));

    // Expiry on the server is pushed too (1 s, the fast server's minimum).
    let b = acquired(&store, &key, &holder("b"), Duration::from_secs(1)).await;
    assert_eq!(next(&mut events).await, Some(acquired_event(&b)));
    assert_eq!(next(&mut events).await, Some(LeaseEvent::Vacated));
}

#[tokio::test]
async fn watch_resumes_after_a_broken_connection_without_losing_events() {
    let server = EtcdServer::start().await.expect("etcd");
    let proxy = FaultProxy::start(server.addr()).await.expect("proxy");
    let watched = EtcdStore::from_url(&format!(
        "{}?request_timeout=5s&connect_timeout=500ms",
        server.url_via(proxy.addr())
    ))
    .expect("store via proxy");
    let direct = EtcdStore::from_url(server.url()).expect("direct store");
    let key = unique_key("resume");
    let mut events = watched.watch(&key).await.expect("watch");

    let first = acquired(&direct, &key, &holder("a"), TTL).await;
    assert_eq!(next(&mut events).await, Some(acquired_event(&first)));

    // Break every connection through the proxy and refuse new ones, then
    // change the key three times while the watch is cut off.
    proxy.set_mode(Mode::Reset);
    assert!(direct.release(&first).await.expect("release"));
    let second = acquired(&direct, &key, &holder("b"), TTL).await;
    let third = acquired(&direct, &key, &holder("b"), TTL).await;
    proxy.set_mode(Mode::PassThrough);

    // The resumed watch starts after the last event seen: nothing is lost,
    // nothing is repeated.
    assert_eq!(next(&mut events).await, Some(LeaseEvent::Vacated));
    assert_eq!(next(&mut events).await, Some(acquired_event(&second)));
    assert_eq!(next(&mut events).await, Some(acquired_event(&third)));
    assert!(third.token > second.token);
}

#[tokio::test]
async fn watch_ends_when_it_cannot_resume() {
    let server = EtcdServer::start().await.expect("etcd");
    let proxy = FaultProxy::start(server.addr()).await.expect("proxy");
    let store = EtcdStore::from_url(&format!(
        "{}?request_timeout=1s&connect_timeout=200ms",
        server.url_via(proxy.addr())
    ))
    .expect("store via proxy");
    let key = unique_key("ends");
    let mut events = store.watch(&key).await.expect("watch");
    proxy.set_mode(Mode::Reset);
    // Reset stays on: every attempt to resume fails, so the subscription
    // ends and the elector falls back to polling.
    assert_eq!(next(&mut events).await, None);
    proxy.set_mode(Mode::PassThrough);
    let mut again = store
        .watch(&key)
        .await
        .expect("subscribe again once etcd is reachable");
    let lease = acquired(&store, &key, &holder("a"), TTL).await;
    assert_eq!(next(&mut again).await, Some(acquired_event(&lease)));
}

#[tokio::test]
async fn watch_fails_cleanly_when_etcd_is_unreachable() {
    let port = support::free_port();
    let store = EtcdStore::from_url(&format!(
        "etcd://127.0.0.1:{port}?request_timeout=500ms&connect_timeout=200ms"
    ))
    .expect("lazy store");
    let err = store
        .watch(&unique_key("unreachable"))
        .await
        .expect_err("nothing listens");
    assert!(err.is_retryable(), "{err}");
}

#[tokio::test]
async fn a_silent_partition_ends_the_subscription_within_bounded_time() {
    let server = EtcdServer::start().await.expect("etcd");
    let proxy = FaultProxy::start(server.addr()).await.expect("proxy");
    let request_timeout = Duration::from_millis(500);
    let store = EtcdStore::from_url(&format!(
        "{}?request_timeout={}ms&connect_timeout=200ms",
        server.url_via(proxy.addr()),
        request_timeout.as_millis()
    ))
    .expect("store via proxy");
    let key = unique_key("partition");
    let mut events = store.watch(&key).await.expect("watch");
    // Nothing fails, nothing flows: only HTTP/2 pings (every request timeout,
    // answered within one) reveal the dead stream, then resuming fails for
    // one request timeout.
    proxy.set_mode(Mode::Blackhole);
    let started = tokio::time::Instant::now();
    assert_eq!(next(&mut events).await, None);
    let bound = request_timeout * 6 + support::SLACK;
    assert!(
        started.elapsed() <= bound,
        "the subscription ended after {:?}, expected within {bound:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_watch_that_would_resume_into_compacted_history_ends() {
    let server = EtcdServer::start().await.expect("etcd");
    let proxy = FaultProxy::start(server.addr()).await.expect("proxy");
    let watched = EtcdStore::from_url(&format!(
        "{}?request_timeout=5s&connect_timeout=500ms",
        server.url_via(proxy.addr())
    ))
    .expect("store via proxy");
    let direct = EtcdStore::from_url(server.url()).expect("direct store");
    let key = unique_key("compacted");
    let mut events = watched.watch(&key).await.expect("watch");

    proxy.set_mode(Mode::Reset);
    // Missed events, then their history is compacted away.
    let lease = acquired(&direct, &key, &holder("a"), TTL).await;
    assert!(direct.release(&lease).await.expect("release"));
    let mut raw = support::raw_client(&server).await;
    let revision = raw
        .put("bump", "x", None)
        .await
        .expect("raw put")
        .header()
        .expect("header")
        .revision();
    raw.compact(revision, None).await.expect("compact");
    proxy.set_mode(Mode::PassThrough);

    // Resuming would skip events: the subscription ends instead, and the
    // elector polls (which sees the current state).
    assert_eq!(next(&mut events).await, None);
}
