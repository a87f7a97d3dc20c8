//! EtcdStore::watch: events for acquisitions, releases and expiry, one
//! shared stream routing each key's events to its own subscribers, and every
//! subscription ending when that stream breaks (the electors then poll).

mod support;

use std::sync::Arc;
use std::time::Duration;

use leader_core::{ElectionConfig, Elector, ErrorKind, Lease, LeaseEvent, LeaseKey, LeaseStore};
use leader_etcd::EtcdStore;
use leader_testkit::metrics::Metrics;
use leader_testkit::proxy::{FaultProxy, Mode};
use leader_testkit::servers::EtcdServer;
use leader_testkit::wrap::{Fault, Faults, Op, Wrapped};
use support::{PATIENCE, SLACK, acquired, holder, next, unique_key};

const TTL: Duration = Duration::from_secs(5);

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

/// etcd's live watch streams and watchers, as the server counts them.
async fn server_watches(server: &EtcdServer) -> (f64, f64) {
    let m = Metrics::scrape(server.addr()).await.expect("etcd metrics");
    (
        m.sum("etcd_debugging_mvcc_watch_stream_total", &[]),
        m.sum("etcd_debugging_mvcc_watcher_total", &[]),
    )
}

/// Watch streams etcd has seen opened so far.
async fn watch_streams_started(server: &EtcdServer) -> f64 {
    Metrics::scrape(server.addr())
        .await
        .expect("etcd metrics")
        .sum(
            "grpc_server_started_total",
            &[
                ("grpc_method", "Watch"),
                ("grpc_service", "etcdserverpb.Watch"),
            ],
        )
}

#[tokio::test]
async fn subscriptions_share_one_stream_and_each_sees_only_its_own_key() {
    let server = EtcdServer::start().await.expect("etcd");
    let store = EtcdStore::from_url(server.url()).expect("store");
    let (a, b) = (unique_key("route-a"), unique_key("route-b"));
    let mut on_a = store.watch(&a).await.expect("watch a");
    let mut on_b = store.watch(&b).await.expect("watch b");
    let mut on_a_too = store.watch(&a).await.expect("watch a again");
    // One gRPC stream, one etcd watcher per key however many subscribers.
    assert_eq!(server_watches(&server).await, (1.0, 2.0));

    let la = acquired(&store, &a, &holder("a"), TTL).await;
    let lb = acquired(&store, &b, &holder("b"), TTL).await;
    // Events arrive in etcd's order on each key: had b's subscription been
    // given a's event, it would come first.
    assert_eq!(next(&mut on_b).await, Some(acquired_event(&lb)));
    assert_eq!(next(&mut on_a).await, Some(acquired_event(&la)));
    assert_eq!(next(&mut on_a_too).await, Some(acquired_event(&la)));
    assert!(store.release(&lb).await.expect("release b"));
    assert_eq!(next(&mut on_b).await, Some(LeaseEvent::Vacated));
    assert!(store.release(&la).await.expect("release a"));
    assert_eq!(next(&mut on_a).await, Some(LeaseEvent::Vacated));
    assert_eq!(next(&mut on_a_too).await, Some(LeaseEvent::Vacated));

    // The last subscriber of a key gone, its etcd watcher is cancelled; the
    // stream stays for the others.
    drop(on_b);
    leader_testkit::wait::eventually(support::PATIENCE, "b's watcher is cancelled", || async {
        server_watches(&server).await == (1.0, 1.0)
    })
    .await;
    drop(on_a);
    let again = acquired(&store, &a, &holder("c"), TTL).await;
    assert_eq!(next(&mut on_a_too).await, Some(acquired_event(&again)));
}

#[tokio::test]
async fn a_broken_shared_stream_ends_every_subscription_and_is_reopened_once_for_all() {
    let server = EtcdServer::start().await.expect("etcd");
    let proxy = FaultProxy::start(server.addr()).await.expect("proxy");
    let watched = EtcdStore::from_url(&format!(
        "{}?request_timeout=2s&connect_timeout=500ms",
        server.url_via(proxy.addr())
    ))
    .expect("store via proxy");
    let direct = EtcdStore::from_url(server.url()).expect("direct store");
    let keys: Vec<LeaseKey> = (0..3).map(|i| unique_key(&format!("break-{i}"))).collect();
    let mut subs = Vec::new();
    for key in keys.iter().chain(&keys) {
        subs.push(watched.watch(key).await.expect("watch"));
    }
    assert_eq!(server_watches(&server).await, (1.0, 3.0));

    proxy.set_mode(Mode::Reset);
    // Every subscription ends: the electors fall back to polling.
    for sub in &mut subs {
        assert_eq!(next(sub).await, None);
    }
    let refused = watched
        .watch(&keys[0])
        .await
        .expect_err("no stream while the connection is reset");
    assert!(refused.is_retryable(), "{refused}");
    let started = watch_streams_started(&server).await;
    proxy.set_mode(Mode::PassThrough);

    // Everyone subscribes again at once: one new stream serves them all.
    let again = futures::future::join_all(keys.iter().chain(&keys).map(|k| {
        let watched = watched.clone();
        async move {
            // Resubscribing follows the elector's rule: retry later.
            let deadline = tokio::time::Instant::now() + PATIENCE;
            loop {
                match watched.watch(k).await {
                    Ok(events) => return events,
                    Err(e) if tokio::time::Instant::now() < deadline => {
                        assert!(e.is_retryable(), "{e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    Err(e) => panic!("could not subscribe again: {e}"),
                }
            }
        }
    }))
    .await;
    assert_eq!(watch_streams_started(&server).await - started, 1.0);
    assert_eq!(server_watches(&server).await, (1.0, 3.0));
    let mut again = again;
    let lease = acquired(&direct, &keys[1], &holder("a"), TTL).await;
    assert_eq!(next(&mut again[1]).await, Some(acquired_event(&lease)));
    assert_eq!(next(&mut again[4]).await, Some(acquired_event(&lease)));
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
    // answered within one) reveal the dead stream.
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

/// Two electors on one store, each following its own key held by someone
/// else: a release wakes only the elector of that key, at once; with the
/// shared stream broken (and kept from coming back), they poll.
#[tokio::test]
async fn electors_on_one_store_are_woken_by_their_own_key_and_poll_while_the_stream_is_down() {
    let server = EtcdServer::start().await.expect("etcd");
    let proxy = FaultProxy::start(server.addr()).await.expect("proxy");
    let shared = EtcdStore::from_url(&format!(
        "{}?request_timeout=1s&connect_timeout=300ms",
        server.url_via(proxy.addr())
    ))
    .expect("store via proxy");
    let faulty = Arc::new(Wrapped::new(Arc::new(shared), Faults::new()));
    let direct = EtcdStore::from_url(server.url()).expect("direct store");
    let prefix = format!("leader-etcd-test:electors-{}:", std::process::id());
    let lease = Duration::from_secs(5);
    let config = |resource: &str| {
        let mut c = ElectionConfig::new(resource).with_timing(lease, Duration::from_secs(1));
        c.key_prefix = prefix.clone();
        c.retry_period = Some(Duration::from_secs(2));
        c
    };
    let (c1, c2) = (config("one"), config("two"));
    let (k1, k2) = (c1.lease_key().expect("key"), c2.lease_key().expect("key"));
    let outside = holder("outside");
    let h1 = acquired(&direct, &k1, &outside, Duration::from_secs(60)).await;
    let h2 = acquired(&direct, &k2, &outside, Duration::from_secs(60)).await;
    let e1 = Elector::start(faulty.clone(), c1).expect("elector one");
    let e2 = Elector::start(faulty.clone(), c2).expect("elector two");
    leader_testkit::wait::eventually(
        support::PATIENCE,
        "both electors subscribed on one stream",
        || async { server_watches(&server).await == (1.0, 2.0) },
    )
    .await;
    // Notified followers do not poll (etcd's notifications are complete);
    // a bound well below four leases shows the wake-up came from the event.
    let notified = RETRY_WITH_JITTER + SLACK;
    assert!(notified < lease * 4);

    let polls = faulty.calls(Op::Acquire);
    assert!(direct.release(&h1).await.expect("release one"));
    wait_leading(&e1, notified).await;
    // Only elector one was woken: one acquire call, its own.
    assert_eq!(faulty.calls(Op::Acquire) - polls, 1);
    assert!(!e2.is_leader());

    // Break the shared stream and keep it from being re-established.
    faulty.set(Op::Watch, Some(Fault::Fail(ErrorKind::Unavailable)));
    proxy.set_mode(Mode::Reset);
    leader_testkit::wait::eventually(
        support::PATIENCE,
        "the broken stream is gone on the server",
        || async { server_watches(&server).await.0 == 0.0 },
    )
    .await;
    proxy.set_mode(Mode::PassThrough);
    assert!(direct.release(&h2).await.expect("release two"));
    // Without a subscription the follower polls every retry period.
    wait_leading(&e2, notified).await;
    e1.shutdown().await;
    e2.shutdown().await;
}

/// The longest a follower of that test waits between polls: the retry
/// period (2 s) plus up to 20 % jitter.
const RETRY_WITH_JITTER: Duration = Duration::from_millis(2400);

async fn wait_leading(elector: &Elector, within: Duration) {
    let started = tokio::time::Instant::now();
    while !elector.is_leader() {
        assert!(
            started.elapsed() < within,
            "{} did not lead within {within:?}",
            elector.key()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
