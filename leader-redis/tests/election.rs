//! Electors on real Redis: a graceful handover is pushed to the follower by
//! the release notification instead of waiting for its retry period, and a
//! crashed leader is replaced once its lease expires. Times are printed
//! (run with `--nocapture`) so they can be recorded.

mod support;

use std::sync::Arc;
use std::time::Duration;

use leader_core::{ElectionConfig, Elector, LeaseStore};
use leader_redis::RedisStore;
use leader_testkit::servers::RedisServer;
use leader_testkit::wait::eventually;
use tokio::time::Instant;

fn config(prefix: &str, id: &str, lease: Duration, retry: Duration) -> ElectionConfig {
    let mut c = ElectionConfig::new("honua-server");
    c.key_prefix = prefix.to_owned();
    c.instance_id = Some(id.to_owned());
    c.lease_duration = lease;
    c.renewal_interval = lease / 4;
    c.retry_period = Some(retry);
    c
}

fn store(url: &str) -> Arc<dyn LeaseStore> {
    Arc::new(RedisStore::from_url(url).expect("store"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_handover_is_pushed_not_polled() {
    let redis = RedisServer::from_env_or_start()
        .await
        .expect("redis server");
    let prefix = format!("election:{:016x}:", rand::random::<u64>());
    // A retry period far longer than a pushed handover takes: a follower that
    // only polled would wait up to 10 s.
    let (lease, retry) = (Duration::from_secs(30), Duration::from_secs(10));
    let a = Elector::start(store(redis.url()), config(&prefix, "a", lease, retry)).expect("a");
    eventually(Duration::from_secs(10), "a to lead", || async {
        a.is_leader().then_some(())
    })
    .await;
    let b = Elector::start(store(redis.url()), config(&prefix, "b", lease, retry)).expect("b");
    // Wait until b has seen a as leader and subscribed to the channel.
    eventually(Duration::from_secs(10), "b to follow", || async {
        let leader = b.health().data.leader_id;
        (leader.as_ref() == Some(a.instance_id())).then_some(())
    })
    .await;
    let channel = RedisStore::from_url(redis.url())
        .expect("store")
        .layout(a.key())
        .channel;
    let raw = support::raw(redis.url()).await;
    eventually(Duration::from_secs(10), "b's subscription", || {
        let mut cmd = redis::cmd("PUBSUB");
        cmd.arg("NUMSUB").arg(&channel);
        let mut raw = raw.clone();
        async move {
            let (_, n): (String, u64) = cmd.query_async(&mut raw).await.ok()?;
            (n >= 1).then_some(())
        }
    })
    .await;

    let mut b_state = b.subscribe();
    let started = Instant::now();
    a.shutdown().await;
    let released = started.elapsed();
    tokio::time::timeout(retry / 2, b_state.wait_for(|s| s.is_leader))
        .await
        .expect("b must take over well before its retry period")
        .expect("b's elector is running");
    let handover = started.elapsed();
    assert!(b.is_leader());
    println!(
        "graceful handover on redis: shutdown+release {released:?}, follower leads after {handover:?} \
         (retry period {retry:?})"
    );
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_leader_is_replaced_after_its_lease_expires() {
    let redis = RedisServer::from_env_or_start()
        .await
        .expect("redis server");
    let prefix = format!("election:{:016x}:", rand::random::<u64>());
    let (lease, retry) = (Duration::from_secs(2), Duration::from_millis(250));
    let a = Elector::start(store(redis.url()), config(&prefix, "a", lease, retry)).expect("a");
    eventually(Duration::from_secs(10), "a to lead", || async {
        a.is_leader().then_some(())
    })
    .await;
    let b = Elector::start(store(redis.url()), config(&prefix, "b", lease, retry)).expect("b");
    let token_a = a.token().expect("a's token");
    let started = Instant::now();
    a.abort();
    eventually(
        lease + retry + Duration::from_secs(5),
        "b to take over",
        || async { b.is_leader().then_some(()) },
    )
    .await;
    let took = started.elapsed();
    assert!(b.token().expect("b's token") > token_a);
    // No earlier than the lease could expire: a's last renewal was sent at
    // most one renewal interval (lease / 4) before the crash.
    assert!(
        took >= lease - lease / 4,
        "b led {took:?} after the crash, before a's lease ({lease:?}) could expire"
    );
    println!("crash failover on redis: follower leads {took:?} after the crash (lease {lease:?})");
    b.shutdown().await;
}
