//! The shared subscription: every watch of one store client goes over one
//! pub/sub connection, each watcher hears only its own lease's events, a
//! broken connection ends every watch (electors poll meanwhile) and is
//! opened again once for all of them; and expired-key notifications, used
//! only where the server publishes them.
//!
//! Every test starts a private redis-server: they count the server's
//! pub/sub connections and change its configuration.

mod support;

use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use leader_core::{
    Acquire, ElectionConfig, Elector, HolderId, LeaseEvent, LeaseEvents, LeaseKey, LeaseStore,
    NotificationSupport,
};
use leader_redis::{ExpiryNotifications, KeyLayout, RedisConfig, RedisStore};
use leader_testkit::proxy::{FaultProxy, Mode};
use leader_testkit::servers::{RedisCluster, RedisServer};
use leader_testkit::wait::eventually;
use leader_testkit::wrap::{Faults, Op, Wrapped};
use support::raw;
use tokio::time::Instant;

/// Generous bound for anything that should happen at once on a loaded
/// 2-core machine.
const SOON: Duration = Duration::from_secs(10);

fn key(prefix: &str, resource: &str) -> LeaseKey {
    LeaseKey::new(prefix, resource).expect("valid key")
}

fn prefix() -> String {
    format!("subs:{:016x}:", rand::random::<u64>())
}

fn holder(name: &str) -> HolderId {
    HolderId::new(name).expect("valid holder")
}

async fn private_server() -> RedisServer {
    RedisServer::start().await.expect("a private redis-server")
}

/// Takes and releases `key` with `store` (a release notification).
async fn release_cycle(store: &RedisStore, key: &LeaseKey) {
    match store
        .acquire(key, &holder("cycler"), Duration::from_secs(30))
        .await
        .expect("acquire")
    {
        Acquire::Acquired(lease) => assert!(store.release(&lease).await.expect("release")),
        Acquire::Held(info) => panic!("{key:?} held by {info:?}"),
    }
}

/// The server's pub/sub connections (`CLIENT LIST TYPE pubsub`).
async fn pubsub_connections(url: &str) -> usize {
    let mut c = raw(url).await;
    let list: String = redis::cmd("CLIENT")
        .arg("LIST")
        .arg("TYPE")
        .arg("pubsub")
        .query_async(&mut c)
        .await
        .expect("CLIENT LIST");
    list.lines().count()
}

/// Subscribers of `channel` on the server.
async fn subscribers(url: &str, channel: &str) -> u64 {
    let mut c = raw(url).await;
    let (_, n): (String, u64) = redis::cmd("PUBSUB")
        .arg("NUMSUB")
        .arg(channel)
        .query_async(&mut c)
        .await
        .expect("PUBSUB NUMSUB");
    n
}

/// `Some` when every channel has exactly `n` subscribers.
async fn subscribed(url: &str, channels: &[String], n: u64) -> Option<()> {
    for channel in channels {
        if subscribers(url, channel).await != n {
            return None;
        }
    }
    Some(())
}

async fn vacated(events: &mut LeaseEvents, what: &str) {
    let event = tokio::time::timeout(SOON, events.recv()).await;
    assert_eq!(
        event.unwrap_or_else(|_| panic!("no event for {what} within {SOON:?}")),
        Some(LeaseEvent::Vacated),
        "{what}"
    );
}

/// Nothing is queued for `events` now.
fn nothing_pending(events: &mut LeaseEvents) -> bool {
    events.recv().now_or_never().is_none()
}

#[tokio::test]
async fn watches_share_one_connection_and_hear_only_their_own_lease() {
    let redis = private_server().await;
    let store = RedisStore::from_url(redis.url()).expect("store");
    let other = RedisStore::from_url(redis.url()).expect("store");
    let p = prefix();
    let (k1, k2, k3) = (key(&p, "one"), key(&p, "two"), key(&p, "three"));
    let mut one = store.watch(&k1).await.expect("watch one");
    let mut one_again = store.clone().watch(&k1).await.expect("watch one again");
    let mut two = store.watch(&k2).await.expect("watch two");
    let mut three = store.watch(&k3).await.expect("watch three");
    assert_eq!(
        pubsub_connections(redis.url()).await,
        1,
        "four watches of one client (and its clone) need one pub/sub connection"
    );
    for k in [&k1, &k2, &k3] {
        assert_eq!(subscribers(redis.url(), &store.layout(k).channel).await, 1);
    }

    release_cycle(&other, &k1).await;
    vacated(&mut one, "the release of one").await;
    vacated(&mut one_again, "the release of one (second watcher)").await;
    // Messages arrive in order on the one connection and are routed in
    // order: once three's event is here, a misrouted copy of one's would be.
    release_cycle(&other, &k3).await;
    vacated(&mut three, "the release of three").await;
    assert!(
        nothing_pending(&mut two),
        "two heard of one's or three's release"
    );
    assert!(nothing_pending(&mut three), "three heard of one's release");
    release_cycle(&other, &k2).await;
    vacated(&mut two, "the release of two").await;
}

#[tokio::test]
async fn a_lease_nobody_watches_any_more_is_unsubscribed() {
    let redis = private_server().await;
    let store = RedisStore::new(
        RedisConfig::from_url(redis.url())
            .expect("valid URL")
            .with_watch_heartbeat(Duration::from_millis(100)),
    )
    .expect("store");
    let p = prefix();
    let (k1, k2) = (key(&p, "dropped"), key(&p, "kept"));
    let channel = store.layout(&k1).channel;
    let one = store.watch(&k1).await.expect("watch");
    let _two = store.watch(&k2).await.expect("watch");
    assert_eq!(subscribers(redis.url(), &channel).await, 1);
    drop(one);
    eventually(
        SOON,
        "the dropped watch's channel to be unsubscribed",
        || async { (subscribers(redis.url(), &channel).await == 0).then_some(()) },
    )
    .await;
    assert_eq!(
        subscribers(redis.url(), &store.layout(&k2).channel).await,
        1
    );
    // Watching it again subscribes it again.
    let mut again = store.watch(&k1).await.expect("watch again");
    release_cycle(&store, &k1).await;
    vacated(&mut again, "the release after re-watching").await;
}

#[tokio::test]
async fn a_broken_shared_connection_ends_every_watch_and_reopens_once_for_all() {
    let redis = private_server().await;
    let proxy = FaultProxy::start(redis.addr()).await.expect("proxy");
    let store = RedisStore::new(
        RedisConfig::from_url(&redis.url_via(proxy.addr()))
            .expect("valid URL")
            .with_watch_heartbeat(Duration::from_millis(200))
            .with_request_timeout(Duration::from_millis(500))
            .with_connect_timeout(Duration::from_millis(500)),
    )
    .expect("store");
    let direct = RedisStore::from_url(redis.url()).expect("store");
    let p = prefix();
    let keys: Vec<LeaseKey> = (0..20).map(|i| key(&p, &format!("k{i}"))).collect();
    let mut first = store.watch(&keys[0]).await.expect("watch");
    let mut second = store.watch(&keys[1]).await.expect("watch");
    assert_eq!(pubsub_connections(redis.url()).await, 1);

    // The connection breaks: every watch ends (their electors poll).
    proxy.set_mode(Mode::Reset);
    for (events, what) in [(&mut first, "first"), (&mut second, "second")] {
        let end = tokio::time::timeout(SOON, events.recv()).await;
        assert_eq!(end.expect("the watch must end"), None, "{what}");
    }
    // While it cannot be opened again, a watch fails at once rather than
    // waiting for an event that cannot come.
    proxy.set_mode(Mode::Refuse);
    let addr = proxy.addr();
    eventually(SOON, "the proxy to refuse connections", || async move {
        tokio::net::TcpStream::connect(addr)
            .await
            .is_err()
            .then_some(())
    })
    .await;
    let err = store.watch(&keys[0]).await.expect_err("no connection");
    assert_eq!(err.kind(), leader_core::ErrorKind::Unavailable, "{err}");

    // Back: twenty electors subscribing at once share one new connection.
    proxy.set_mode(Mode::PassThrough);
    eventually(SOON, "the old connection to be gone", || async {
        (pubsub_connections(redis.url()).await == 0).then_some(())
    })
    .await;
    let watches = futures::future::join_all(keys.iter().map(|k| store.watch(k))).await;
    let mut watches: Vec<LeaseEvents> = watches
        .into_iter()
        .map(|w| w.expect("watch after recovery"))
        .collect();
    assert_eq!(
        pubsub_connections(redis.url()).await,
        1,
        "one pub/sub connection for all the watches opened again"
    );
    // The command connection and the one pub/sub connection.
    assert_eq!(proxy.open_connections(), 2);
    for (k, events) in keys.iter().zip(&mut watches) {
        release_cycle(&direct, k).await;
        vacated(events, "a release after recovery").await;
    }
}

fn election(
    prefix: &str,
    resource: &str,
    id: &str,
    lease: Duration,
    retry: Duration,
) -> ElectionConfig {
    let mut c = ElectionConfig::new(resource);
    c.key_prefix = prefix.to_owned();
    c.instance_id = Some(id.to_owned());
    c.lease_duration = lease;
    c.renewal_interval = lease / 4;
    c.retry_period = Some(retry);
    c
}

async fn leading(elector: &Elector) {
    eventually(SOON, "the elector to lead", || async {
        elector.is_leader().then_some(())
    })
    .await;
}

/// Leaders of "one" and "two" on a client of their own, then a follower
/// of each on `followers` (views of one shared client); returns once both
/// followers are subscribed, checking that each client has one pub/sub
/// connection.
async fn leaders_and_subscribed_followers(
    url: &str,
    followers: [Arc<Wrapped<Faults>>; 2],
    lease: Duration,
    retry: Duration,
) -> ([Elector; 2], [Elector; 2]) {
    let p = prefix();
    let leaders_store: Arc<dyn LeaseStore> = Arc::new(RedisStore::from_url(url).expect("store"));
    let l1 = Elector::start(
        leaders_store.clone(),
        election(&p, "one", "l1", lease, retry),
    )
    .expect("l1");
    let l2 = Elector::start(leaders_store, election(&p, "two", "l2", lease, retry)).expect("l2");
    leading(&l1).await;
    leading(&l2).await;
    let [s1, s2] = followers;
    let f1 = Elector::start(s1, election(&p, "one", "f1", lease, retry)).expect("f1");
    let f2 = Elector::start(s2, election(&p, "two", "f2", lease, retry)).expect("f2");
    let channels = [l1.key(), l2.key()].map(|k| KeyLayout::new(k.as_str()).channel);
    // Each channel: the leaders' client and the followers' client.
    eventually(SOON, "both followers to subscribe", || {
        subscribed(url, &channels, 2)
    })
    .await;
    assert_eq!(
        pubsub_connections(url).await,
        2,
        "one connection per client (two electors on each)"
    );
    ([l1, l2], [f1, f2])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_electors_on_one_client_share_its_subscription_and_each_wakes_for_its_own_key() {
    let redis = private_server().await;
    let (lease, retry) = (Duration::from_secs(30), Duration::from_secs(10));
    let shared = RedisStore::from_url(redis.url()).expect("store");
    let f1_store = Arc::new(Wrapped::new(Arc::new(shared.clone()), Faults::new()));
    let f2_store = Arc::new(Wrapped::new(Arc::new(shared.clone()), Faults::new()));
    let ([l1, l2], [f1, f2]) = leaders_and_subscribed_followers(
        redis.url(),
        [f1_store.clone(), f2_store.clone()],
        lease,
        retry,
    )
    .await;
    let f2_polls = f2_store.calls(Op::Acquire);

    let mut f1_state = f1.subscribe();
    l1.shutdown().await;
    tokio::time::timeout(retry / 2, f1_state.wait_for(|s| s.is_leader))
        .await
        .expect("f1 must take over on the release notification, well before its retry period")
        .expect("f1 runs");
    let mut f2_state = f2.subscribe();
    l2.shutdown().await;
    tokio::time::timeout(retry / 2, f2_state.wait_for(|s| s.is_leader))
        .await
        .expect("f2 must take over on the release notification")
        .expect("f2 runs");
    // Woken once, by its own leader's release: l1's release did not make it
    // try (a second acquire, answered Held).
    assert_eq!(
        f2_store.calls(Op::Acquire),
        f2_polls + 1,
        "f2 woke for l1's release"
    );
    f1.shutdown().await;
    f2.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn electors_poll_while_the_shared_subscription_is_down_and_resubscribe_together() {
    let redis = private_server().await;
    let proxy = FaultProxy::start(redis.addr()).await.expect("proxy");
    let (lease, retry) = (Duration::from_secs(30), Duration::from_secs(2));
    let shared = RedisStore::new(
        RedisConfig::from_url(&redis.url_via(proxy.addr()))
            .expect("valid URL")
            .with_watch_heartbeat(Duration::from_millis(200))
            .with_request_timeout(Duration::from_millis(500)),
    )
    .expect("store");
    let counted = Arc::new(Wrapped::new(Arc::new(shared.clone()), Faults::new()));
    let ([l1, l2], [f1, f2]) = leaders_and_subscribed_followers(
        redis.url(),
        [counted.clone(), counted.clone()],
        lease,
        retry,
    )
    .await;
    let channels = [
        shared.layout(l1.key()).channel,
        shared.layout(l2.key()).channel,
    ];
    let polls = counted.calls(Op::Acquire);

    // The shared connection breaks (and the command connection with it).
    proxy.set_mode(Mode::Reset);
    eventually(SOON, "the followers' subscriptions to end", || {
        subscribed(redis.url(), &channels, 1)
    })
    .await;
    proxy.set_mode(Mode::PassThrough);
    // Each follower polls, then subscribes again after its retry period:
    // over one new connection for both.
    eventually(
        retry * 3 + SOON,
        "both followers to subscribe again",
        || subscribed(redis.url(), &channels, 2),
    )
    .await;
    assert!(
        counted.calls(Op::Acquire) >= polls + 2,
        "the followers did not poll while unsubscribed ({} acquire calls before, {} after)",
        polls,
        counted.calls(Op::Acquire)
    );
    assert_eq!(
        pubsub_connections(redis.url()).await,
        2,
        "one connection per client again"
    );

    // Handovers are pushed again.
    let mut f1_state = f1.subscribe();
    l1.shutdown().await;
    tokio::time::timeout(retry / 2, f1_state.wait_for(|s| s.is_leader))
        .await
        .expect("f1 must take over on the notification")
        .expect("f1 runs");
    l2.shutdown().await;
    f1.shutdown().await;
    f2.shutdown().await;
}

/// A store on `url` with its expiry-notification setting.
fn store_with(url: &str, expiry: ExpiryNotifications) -> RedisStore {
    RedisStore::new(
        RedisConfig::from_url(url)
            .expect("valid URL")
            .with_expiry_notifications(expiry),
    )
    .expect("store")
}

async fn set_keyspace_events(url: &str, flags: &str) {
    let mut c = raw(url).await;
    redis::cmd("CONFIG")
        .arg("SET")
        .arg("notify-keyspace-events")
        .arg(flags)
        .query_async::<()>(&mut c)
        .await
        .expect("CONFIG SET");
}

#[tokio::test]
async fn expiries_are_pushed_where_the_server_publishes_them() {
    let redis = private_server().await;
    set_keyspace_events(redis.url(), "Ex").await;
    let store = store_with(redis.url(), ExpiryNotifications::Detect);
    let other = RedisStore::from_url(redis.url()).expect("store");
    let p = prefix();
    let k = key(&p, "expiring");
    assert_eq!(
        store.capabilities().notifications,
        NotificationSupport::Release,
        "nothing is known before the subscription connects"
    );
    let mut events = store.watch(&k).await.expect("watch");
    assert_eq!(
        store.capabilities().notifications,
        NotificationSupport::ReleaseAndExpiry
    );
    let ttl = Duration::from_millis(500);
    let started = Instant::now();
    match other
        .acquire(&k, &holder("crashed"), ttl)
        .await
        .expect("acquire")
    {
        Acquire::Acquired(_) => {}
        Acquire::Held(info) => panic!("held by {info:?}"),
    }
    vacated(&mut events, "the expiry").await;
    assert!(
        started.elapsed() >= ttl,
        "Vacated after {:?}, before the TTL {ttl:?}",
        started.elapsed()
    );

    // Opted out: the same server's events are not used.
    let off = store_with(redis.url(), ExpiryNotifications::Off);
    let _watch = off.watch(&k).await.expect("watch");
    assert_eq!(
        off.capabilities().notifications,
        NotificationSupport::Release
    );
}

#[tokio::test]
async fn without_server_events_expiries_are_not_pushed_and_the_config_is_left_alone() {
    let redis = private_server().await;
    let store = store_with(redis.url(), ExpiryNotifications::Detect);
    let p = prefix();
    let (k, barrier) = (key(&p, "expiring"), key(&p, "barrier"));
    let mut events = store.watch(&k).await.expect("watch");
    let mut barrier_events = store.watch(&barrier).await.expect("watch");
    assert_eq!(
        store.capabilities().notifications,
        NotificationSupport::Release
    );
    match store
        .acquire(&k, &holder("crashed"), Duration::from_millis(100))
        .await
        .expect("acquire")
    {
        Acquire::Acquired(_) => {}
        Acquire::Held(info) => panic!("held by {info:?}"),
    }
    // Reading the key after its TTL deletes it (the moment Redis would
    // publish the expiry); a release published after that is routed after it.
    eventually(SOON, "the lease to expire", || async {
        store
            .current(&k)
            .await
            .expect("current")
            .is_none()
            .then_some(())
    })
    .await;
    release_cycle(&store, &barrier).await;
    vacated(&mut barrier_events, "the barrier release").await;
    assert!(
        nothing_pending(&mut events),
        "an expiry was pushed without server events"
    );
    let mut c = raw(redis.url()).await;
    let flags: Vec<String> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("notify-keyspace-events")
        .query_async(&mut c)
        .await
        .expect("CONFIG GET");
    assert_eq!(
        flags[1], "",
        "the library changed the server's configuration"
    );
}

/// Runs a leader and one idle follower on separate clients for `window`
/// and returns the follower's acquire calls in it.
async fn idle_follower_acquires(url: &str, lease: Duration, window: Duration) -> u64 {
    let p = prefix();
    let retry = lease / 4;
    let leader = Elector::start(
        Arc::new(RedisStore::from_url(url).expect("store")),
        election(&p, "idle", "leader", lease, retry),
    )
    .expect("leader");
    leading(&leader).await;
    let counted = Arc::new(Wrapped::new(
        Arc::new(RedisStore::from_url(url).expect("store")),
        Faults::new(),
    ));
    let follower = Elector::start(
        counted.clone(),
        election(&p, "idle", "follower", lease, retry),
    )
    .expect("follower");
    eventually(SOON, "the follower to see the leader", || async {
        (follower.health().data.leader_id.as_ref() == Some(leader.instance_id())).then_some(())
    })
    .await;
    let before = counted.calls(Op::Acquire);
    tokio::time::sleep(window).await;
    let during = counted.calls(Op::Acquire) - before;
    assert!(leader.is_leader() && !follower.is_leader());
    println!(
        "idle follower on redis: {during} acquire calls in {window:?} ({:.1}/min), lease {lease:?}",
        during as f64 * 60.0 / window.as_secs_f64()
    );
    follower.shutdown().await;
    leader.shutdown().await;
    during
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_follower_stops_polling_only_where_expiries_are_pushed() {
    // The window (three leases) is shorter than the elector's safety poll
    // with expiry events (four leases).
    let lease = Duration::from_secs(3);
    let window = lease * 3;
    let redis = private_server().await;
    let polling = idle_follower_acquires(redis.url(), lease, window).await;
    // Without events the follower asks once per lease the leader renews.
    assert!(
        polling >= 2,
        "{polling} acquire calls in {window:?} without expiry events"
    );
    set_keyspace_events(redis.url(), "Ex").await;
    let pushed = idle_follower_acquires(redis.url(), lease, window).await;
    assert_eq!(pushed, 0, "an idle follower polled with expiry events");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_leader_is_replaced_on_the_expiry_event() {
    let redis = private_server().await;
    set_keyspace_events(redis.url(), "Ex").await;
    let p = prefix();
    let (lease, retry) = (Duration::from_secs(2), Duration::from_millis(500));
    let a = Elector::start(
        Arc::new(RedisStore::from_url(redis.url()).expect("store")),
        election(&p, "crash", "a", lease, retry),
    )
    .expect("a");
    leading(&a).await;
    let b_store = RedisStore::from_url(redis.url()).expect("store");
    let b = Elector::start(
        Arc::new(b_store.clone()),
        election(&p, "crash", "b", lease, retry),
    )
    .expect("b");
    let channel = [b_store.layout(a.key()).channel];
    // a's client and b's.
    eventually(SOON, "b to subscribe", || {
        subscribed(redis.url(), &channel, 2)
    })
    .await;
    assert_eq!(
        b_store.capabilities().notifications,
        NotificationSupport::ReleaseAndExpiry
    );
    let started = Instant::now();
    a.abort();
    // With expiry events b does not poll; without them it would wait for its
    // safety poll (four leases).
    eventually(
        lease * 3,
        "b to take over after a's lease expired",
        || async { b.is_leader().then_some(()) },
    )
    .await;
    let took = started.elapsed();
    assert!(
        took >= lease - lease / 4,
        "b led {took:?} after the crash, before a's lease could expire"
    );
    println!("crash failover on the expiry event: {took:?} (lease {lease:?})");
    b.shutdown().await;
}

/// Pub/sub connections on every node of `cluster`.
async fn cluster_pubsub_connections(cluster: &RedisCluster) -> usize {
    let mut total = 0;
    for node in &cluster.nodes {
        total += pubsub_connections(&format!("redis://127.0.0.1:{}", node.addr().port())).await;
    }
    total
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_cluster_one_connection_hears_the_leases_of_every_node_and_expiries_are_not_used() {
    let cluster = RedisCluster::start(0, None).await.expect("redis cluster");
    for node in &cluster.nodes {
        set_keyspace_events(&format!("redis://127.0.0.1:{}", node.addr().port()), "Ex").await;
    }
    let store = RedisStore::from_url(&cluster.connection_string()).expect("store");
    let p = prefix();
    // Sixteen keys hash to slots all over the three masters.
    let keys: Vec<LeaseKey> = (0..16).map(|i| key(&p, &format!("svc-{i}"))).collect();
    let mut watches = Vec::new();
    for k in &keys {
        watches.push(store.watch(k).await.expect("watch"));
    }
    assert_eq!(
        cluster_pubsub_connections(&cluster).await,
        1,
        "one pub/sub connection for the whole cluster"
    );
    // Each node publishes only its own keys' expiries: not used.
    assert_eq!(
        store.capabilities().notifications,
        NotificationSupport::Release
    );
    // Classic PUBLISH reaches every node, so every release is heard.
    for (k, events) in keys.iter().zip(&mut watches) {
        release_cycle(&store, k).await;
        vacated(events, "a release on some node").await;
    }
}
