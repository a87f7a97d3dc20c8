//! Leader metadata on Redis: where it is stored (the term record's `meta`
//! field), that it lives and dies with its term, that only the term's
//! holder and token can replace it, and that a replacement is pushed to
//! watchers, followers and observers.

mod support;

use std::sync::Arc;
use std::time::Duration;

use leader_core::{
    Acquire, ElectionConfig, Elector, ErrorKind, HolderId, Lease, LeaseEvent, LeaseKey, LeaseStore,
    MAX_METADATA_LEN, Metadata, Observer,
};
use leader_redis::RedisStore;
use leader_testkit::servers::RedisServer;
use leader_testkit::wait::eventually;
use redis::AsyncCommands;
use support::raw;

const TTL: Duration = Duration::from_secs(30);

fn key(resource: &str) -> LeaseKey {
    LeaseKey::new(&format!("meta:{:016x}:", rand::random::<u64>()), resource).expect("valid key")
}

fn holder(name: &str) -> HolderId {
    HolderId::new(name).expect("valid holder")
}

fn meta(value: impl Into<Vec<u8>>) -> Metadata {
    Metadata::new(value).expect("small enough")
}

async fn redis() -> RedisServer {
    RedisServer::from_env_or_start()
        .await
        .expect("redis server")
}

async fn acquired(
    store: &RedisStore,
    key: &LeaseKey,
    who: &HolderId,
    metadata: Option<&Metadata>,
) -> Lease {
    let reply = match metadata {
        Some(m) => store.acquire_with_metadata(key, who, TTL, m).await,
        None => store.acquire(key, who, TTL).await,
    };
    match reply.expect("acquire") {
        Acquire::Acquired(lease) => lease,
        Acquire::Held(info) => panic!("expected to acquire, held by {info:?}"),
    }
}

async fn metadata_of(store: &RedisStore, key: &LeaseKey) -> Option<Metadata> {
    store
        .current(key)
        .await
        .expect("current")
        .expect("held")
        .metadata
}

/// Every byte value, and 1024 of them: what an application may publish.
fn arbitrary_bytes() -> Metadata {
    let bytes: Vec<u8> = (0..MAX_METADATA_LEN).map(|i| (i * 7 % 256) as u8).collect();
    assert!(std::str::from_utf8(&bytes).is_err(), "not UTF-8");
    meta(bytes)
}

#[tokio::test]
async fn arbitrary_metadata_is_kept_in_the_term_record_through_renewals() {
    let redis = redis().await;
    let store = RedisStore::from_url(redis.url()).expect("store");
    let mut c = raw(redis.url()).await;
    let k = key("bytes");
    let layout = store.layout(&k);
    let value = arbitrary_bytes();
    let lease = acquired(&store, &k, &holder("a"), Some(&value)).await;

    // Beside holder and token, behind its `=` marker, with the lease's TTL.
    let field: Vec<u8> = c.hget(&layout.term, "meta").await.expect("HGET meta");
    assert_eq!(field, [b"=".as_slice(), value.as_bytes()].concat());
    let holder_field: String = c.hget(&layout.term, "holder").await.expect("HGET");
    assert_eq!(holder_field, "a");

    for _ in 0..3 {
        store.renew(&lease).await.expect("renew");
    }
    let info = store.current(&k).await.expect("current").expect("held");
    assert_eq!(
        (info.token, info.metadata.as_ref()),
        (lease.token, Some(&value))
    );
    match store
        .acquire(&k, &holder("b"), TTL)
        .await
        .expect("acquire b")
    {
        Acquire::Held(info) => assert_eq!(info.metadata.as_ref(), Some(&value)),
        other => panic!("b must not acquire: {other:?}"),
    }
    // Empty metadata is a value, not its absence.
    let empty = meta(Vec::new());
    store.update_metadata(&lease, &empty).await.expect("update");
    assert_eq!(metadata_of(&store, &k).await, Some(empty.clone()));
    let removed = store
        .force_release(&k)
        .await
        .expect("force release")
        .expect("was held");
    assert_eq!(
        (removed.token, removed.metadata),
        (lease.token, Some(empty))
    );
}

#[tokio::test]
async fn a_plain_acquire_starts_a_term_without_the_last_terms_metadata() {
    let redis = redis().await;
    let store = RedisStore::from_url(redis.url()).expect("store");
    let k = key("plain");
    let (a, b) = (holder("a"), holder("b"));
    let first = acquired(&store, &k, &a, Some(&meta("10.0.0.1:80"))).await;

    // The same holder again: the term record is overwritten, not deleted.
    let second = acquired(&store, &k, &a, None).await;
    assert!(second.token > first.token);
    assert_eq!(metadata_of(&store, &k).await, None, "re-acquired plainly");
    let third = acquired(&store, &k, &a, Some(&meta("10.0.0.3:80"))).await;
    assert_eq!(metadata_of(&store, &k).await, Some(meta("10.0.0.3:80")));

    // Another holder after a release.
    assert!(store.release(&third).await.expect("release"));
    acquired(&store, &k, &b, None).await;
    let info = store.current(&k).await.expect("current").expect("held");
    assert_eq!((info.holder, info.metadata), (b, None));
}

#[tokio::test]
async fn only_the_current_term_replaces_metadata_and_never_extends_it() {
    let redis = redis().await;
    let store = RedisStore::from_url(redis.url()).expect("store");
    let mut c = raw(redis.url()).await;
    let k = key("stale");
    let a = holder("a");
    let old = acquired(&store, &k, &a, Some(&meta("old"))).await;
    let current = acquired(&store, &k, &a, Some(&meta("current"))).await;

    let e = store
        .update_metadata(&old, &meta("from the old term"))
        .await
        .expect_err("stale token");
    assert_eq!(e.kind(), ErrorKind::NotHolder, "{e}");
    let mut impostor = current.clone();
    impostor.holder = holder("b");
    let e = store
        .update_metadata(&impostor, &meta("from b"))
        .await
        .expect_err("other holder, same token");
    assert_eq!(e.kind(), ErrorKind::NotHolder, "{e}");
    assert_eq!(metadata_of(&store, &k).await, Some(meta("current")));

    // Shorten the lease behind the library's back: an update leaves the
    // TTL alone (renewals extend; metadata does not).
    let short_ms = 10_000;
    let _: bool = c.pexpire(k.as_str(), short_ms).await.expect("PEXPIRE");
    let layout = store.layout(&k);
    let _: bool = c.pexpire(&layout.term, short_ms).await.expect("PEXPIRE");
    store
        .update_metadata(&current, &meta("new"))
        .await
        .expect("update by the holder");
    for key in [k.as_str(), layout.term.as_str()] {
        let pttl: i64 = c.pttl(key).await.expect("PTTL");
        assert!(
            pttl > 0 && pttl <= short_ms,
            "{key}: {pttl} ms after update"
        );
    }
    assert_eq!(metadata_of(&store, &k).await, Some(meta("new")));

    // A term that ended cannot write into the free seat or the next term.
    assert!(store.release(&current).await.expect("release"));
    let e = store
        .update_metadata(&current, &meta("late"))
        .await
        .expect_err("released");
    assert_eq!(e.kind(), ErrorKind::NotHolder, "{e}");
    assert_eq!(store.current(&k).await.expect("current"), None);
    let exists: bool = c.exists(&layout.term).await.expect("EXISTS");
    assert!(!exists, "a refused update left a term record behind");
}

#[tokio::test]
async fn a_foreign_meta_field_is_a_protocol_error() {
    let redis = redis().await;
    let store = RedisStore::from_url(redis.url()).expect("store");
    let mut c = raw(redis.url()).await;
    let k = key("foreign");
    acquired(&store, &k, &holder("a"), None).await;
    let _: () = c
        .hset(&store.layout(&k).term, "meta", "no marker")
        .await
        .expect("HSET");
    let e = store.current(&k).await.expect_err("not ours");
    assert_eq!(e.kind(), ErrorKind::Protocol, "{e}");
}

#[tokio::test]
async fn updates_are_published_to_watchers_and_stale_ones_are_not() {
    let redis = redis().await;
    let store = RedisStore::from_url(redis.url()).expect("store");
    let k = key("watched");
    let a = holder("pod a/with spaces");
    let mut events = store.watch(&k).await.expect("watch");
    let old = acquired(&store, &k, &a, Some(&meta("one"))).await;
    let lease = acquired(&store, &k, &a, Some(&meta("two"))).await;
    store
        .update_metadata(&lease, &meta("three"))
        .await
        .expect("update");
    let next = tokio::time::timeout(Duration::from_secs(10), events.recv()).await;
    assert_eq!(
        next.expect("event in time"),
        Some(LeaseEvent::MetadataUpdated {
            holder: a.clone(),
            token: lease.token,
        })
    );
    // A refused update publishes nothing: the next event is the release.
    store
        .update_metadata(&old, &meta("stale"))
        .await
        .expect_err("stale");
    assert!(store.release(&lease).await.expect("release"));
    let next = tokio::time::timeout(Duration::from_secs(10), events.recv()).await;
    assert_eq!(next.expect("event in time"), Some(LeaseEvent::Vacated));
}

fn config(prefix: &str, id: &str, retry: Duration) -> ElectionConfig {
    let mut c = ElectionConfig::new("api-primary");
    c.key_prefix = prefix.to_owned();
    c.instance_id = Some(id.to_owned());
    c.lease_duration = TTL;
    c.renewal_interval = TTL / 4;
    c.retry_period = Some(retry);
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proclaim_reaches_followers_and_observers_pushed_not_polled() {
    let redis = redis().await;
    let prefix = format!("meta:{:016x}:", rand::random::<u64>());
    let store =
        || Arc::new(RedisStore::from_url(redis.url()).expect("store")) as Arc<dyn LeaseStore>;
    // With a 30 s lease and a 10 s retry period, a follower or observer that
    // polled would read the seat again only when the lease could end.
    let retry = Duration::from_secs(10);
    let leader =
        Elector::start_with_metadata(store(), config(&prefix, "a", retry), meta("10.0.0.1:8080"))
            .expect("a");
    eventually(Duration::from_secs(10), "a to lead", || async {
        leader.is_leader().then_some(())
    })
    .await;
    let follower = Elector::start(store(), config(&prefix, "b", retry)).expect("b");
    let observer = Observer::start(store(), &config(&prefix, "watcher", retry))
        .await
        .expect("observer");
    let published = |m: &str| Some(meta(m));
    let (mut followed, mut observed) = (follower.subscribe(), observer.subscribe());
    tokio::time::timeout(
        Duration::from_secs(10),
        followed.wait_for(|s| {
            s.leader.as_ref().and_then(|l| l.metadata.clone()) == published("10.0.0.1:8080")
        }),
    )
    .await
    .expect("the follower reads the leader's metadata")
    .expect("follower running");
    assert_eq!(
        observer.leader().and_then(|l| l.metadata),
        published("10.0.0.1:8080")
    );

    // The leader (it subscribed before its first acquire), the follower and
    // the observer, each on its own store's connection, are subscribed
    // before the update is published.
    let channel = RedisStore::from_url(redis.url())
        .expect("store")
        .layout(leader.key())
        .channel;
    let c = raw(redis.url()).await;
    eventually(Duration::from_secs(10), "three subscriptions", || {
        let mut cmd = redis::cmd("PUBSUB");
        cmd.arg("NUMSUB").arg(&channel);
        let mut c = c.clone();
        async move {
            let (_, n): (String, u64) = cmd.query_async(&mut c).await.ok()?;
            (n >= 3).then_some(())
        }
    })
    .await;

    leader
        .proclaim(meta("10.0.0.9:8080"))
        .await
        .expect("proclaim");
    let pushed = retry / 2;
    tokio::time::timeout(
        pushed,
        followed.wait_for(|s| {
            s.leader.as_ref().and_then(|l| l.metadata.clone()) == published("10.0.0.9:8080")
        }),
    )
    .await
    .expect("the follower must hear of the new metadata well before it polls")
    .expect("follower running");
    tokio::time::timeout(
        pushed,
        observed.wait_for(|l| {
            l.as_ref().and_then(|l| l.metadata.clone()) == published("10.0.0.9:8080")
        }),
    )
    .await
    .expect("the observer must hear of the new metadata well before it polls")
    .expect("observer running");
    follower.shutdown().await;
    leader.shutdown().await;
}
