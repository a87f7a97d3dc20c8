//! RedisStore through Sentinel (master + replica + 3 sentinels): master
//! resolution, WAIT with a real replica, following a manual failover, and an
//! election that recovers when the master is killed. The last test records
//! what happened to the lease (Sentinel failover can lose it).

mod support;

use std::sync::Arc;
use std::time::Duration;

use leader_core::{Acquire, ElectionConfig, Elector, HolderId, LeaseKey, LeaseStore};
use leader_redis::RedisStore;
use leader_testkit::wait::eventually;
use redis::AsyncCommands;
use support::{RedisProc, SentinelSet, free_port, raw};
use tokio::time::Instant;

const TTL: Duration = Duration::from_secs(30);

fn prefix() -> String {
    format!("sentinel:{:016x}:", rand::random::<u64>())
}

fn store(set: &SentinelSet) -> RedisStore {
    RedisStore::builder(&set.connection_string())
        .response_timeout(Duration::from_millis(500))
        .connect_timeout(Duration::from_secs(1))
        .build()
        .expect("store")
}

#[tokio::test]
async fn sentinel_store_resolves_the_master_waits_for_the_replica_and_follows_a_failover() {
    let set = SentinelSet::start().await;
    let store = RedisStore::builder(&set.connection_string())
        .wait_replicas(1, Duration::from_secs(1))
        .build()
        .expect("store");
    let k = LeaseKey::new(&prefix(), "svc").expect("key");
    let a = HolderId::new("a").expect("holder");
    let lease = match store
        .acquire(&k, &a, TTL)
        .await
        .expect("acquire via sentinel")
    {
        Acquire::Acquired(lease) => lease,
        other => panic!("{other:?}"),
    };
    // The write reached the master and (WAIT 1) the replica.
    for port in [set.master.port, set.replica.port] {
        let mut c = raw(&format!("redis://127.0.0.1:{port}")).await;
        let seen: Option<String> = c.get(k.as_str()).await.expect("GET");
        assert_eq!(seen.as_deref(), Some("a"), "on port {port}");
    }

    // A manual failover demotes the master while our connection stays open:
    // the store must notice (READONLY or a dropped connection) and ask the
    // sentinels again.
    let old = set.master.port;
    let mut s = raw(&format!("redis://127.0.0.1:{}", set.sentinels[0].port)).await;
    let _: () = redis::cmd("SENTINEL")
        .arg("FAILOVER")
        .arg("mymaster")
        .query_async(&mut s)
        .await
        .expect("SENTINEL FAILOVER");
    eventually(
        Duration::from_secs(30),
        "the sentinels to switch the master",
        || async { set.master_port().await.filter(|p| *p != old) },
    )
    .await;
    eventually(
        Duration::from_secs(30),
        "renew on the new master",
        || async { store.renew(&lease).await.ok() },
    )
    .await;
    let mut c = raw(&format!("redis://127.0.0.1:{}", set.replica.port)).await;
    let seen: Option<String> = c.get(k.as_str()).await.expect("GET on the new master");
    assert_eq!(seen.as_deref(), Some("a"));
    assert!(
        store
            .release(&lease)
            .await
            .expect("release on the new master")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_master_while_an_elector_leads_recovers_the_election() {
    let mut set = SentinelSet::start().await;
    let prefix = prefix();
    let config = |id: &str| {
        let mut c = ElectionConfig::new("svc");
        c.key_prefix = prefix.clone();
        c.instance_id = Some(id.to_owned());
        c.lease_duration = Duration::from_secs(3);
        c.renewal_interval = Duration::from_millis(500);
        c.retry_period = Some(Duration::from_millis(250));
        c
    };
    // Two instances, each with its own store (separate connections), as two
    // processes would have.
    let a = Elector::start(Arc::new(store(&set)), config("instance-a")).expect("elector a");
    let b = Elector::start(Arc::new(store(&set)), config("instance-b")).expect("elector b");
    let observer = store(&set);
    let key = LeaseKey::new(&prefix, "svc").expect("key");

    let (first, first_token) = eventually(Duration::from_secs(15), "a first leader", || async {
        match (a.is_leader(), b.is_leader()) {
            (true, false) => Some(("instance-a", a.token()?)),
            (false, true) => Some(("instance-b", b.token()?)),
            _ => None,
        }
    })
    .await;
    let before = observer
        .current(&key)
        .await
        .expect("current")
        .expect("held");
    assert!(
        before.holder.as_str().starts_with(&format!("{first}/")),
        "{} is not {first}'s holder id",
        before.holder
    );

    let mut replica = raw(&format!("redis://127.0.0.1:{}", set.replica.port)).await;
    let on_replica: Option<String> = replica.get(key.as_str()).await.expect("GET on replica");
    let old = set.master.port;
    let killed_at = Instant::now();
    set.master.kill();
    let mut on_new_master = None;
    // Sample who believes it leads until the election has recovered on the
    // new master: (both believed at once, the leader after recovery).
    let mut overlap_samples = 0u32;
    let mut leaderless_since_kill = Duration::ZERO;
    let mut last = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(40);
    let (after_holder, after_token) = loop {
        assert!(Instant::now() < deadline, "the election did not recover");
        let (la, lb) = (a.is_leader(), b.is_leader());
        if la && lb {
            overlap_samples += 1;
        }
        if !la && !lb {
            leaderless_since_kill += last.elapsed();
        }
        last = Instant::now();
        let moved = set.master_port().await.is_some_and(|p| p != old);
        if moved
            && on_new_master.is_none()
            && let Ok(seen) = observer.current(&key).await
        {
            on_new_master = Some(seen.map(|i| format!("{} token {}", i.holder, i.token)));
        }
        if moved && (la ^ lb) {
            let (id, tok) = if la {
                ("instance-a", a.token())
            } else {
                ("instance-b", b.token())
            };
            if let Ok(Some(info)) = observer.current(&key).await
                && info.holder.as_str().starts_with(&format!("{id}/"))
                && Some(info.token) == tok
            {
                break (id, info.token);
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let recovered_after = killed_at.elapsed();
    let kept = after_holder == first && after_token == first_token;
    // The record the issue asks for (run with --nocapture to see it).
    println!(
        "sentinel failover record: leader before = {first} (token {first_token}); \
         lease key on the replica at the kill = {on_replica:?}; first read on the \
         promoted master = {on_new_master:?}; leader after = {after_holder} (token \
         {after_token}, {}); recovered {recovered_after:?} after the kill; leaderless \
         for about {leaderless_since_kill:?}; samples with two believed leaders = \
         {overlap_samples}",
        if kept { "same term" } else { "new term" },
    );
    // Tokens minted after the failover come from the promoted replica's
    // counter; if the acquisition's INCR had not replicated they could
    // repeat (documented). Here the replica was in sync, so they increase.
    assert!(after_token >= first_token);
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn a_master_change_that_leaves_the_old_master_writable_is_followed() {
    // Two independent servers and a sentinel pointing at the first. Re-pointing
    // the sentinel at the second leaves the first fully writable: no error
    // tells the store, only asking the sentinels does.
    let x = RedisProc::start(free_port(), &[]).await;
    let y = RedisProc::start(free_port(), &[]).await;
    let sentinel = RedisProc::sentinel(free_port(), x.port).await;
    let store = RedisStore::builder(&format!("127.0.0.1:{},serviceName=mymaster", sentinel.port))
        .sentinel_check_interval(Duration::from_millis(100))
        .build()
        .expect("store");
    let k = LeaseKey::new(&prefix(), "svc").expect("key");
    let lease = match store
        .acquire(&k, &HolderId::new("a").expect("holder"), TTL)
        .await
    {
        Ok(Acquire::Acquired(lease)) => lease,
        other => panic!("{other:?}"),
    };
    let mut xc = raw(&format!("redis://127.0.0.1:{}", x.port)).await;
    let on_x: Option<String> = xc.get(k.as_str()).await.expect("GET on x");
    assert_eq!(on_x.as_deref(), Some("a"));

    let mut events = store.watch(&k).await.expect("watch on x");
    let mut s = raw(&format!("redis://127.0.0.1:{}", sentinel.port)).await;
    let _: () = redis::cmd("SENTINEL")
        .arg("REMOVE")
        .arg("mymaster")
        .query_async(&mut s)
        .await
        .expect("REMOVE");
    let _: () = redis::cmd("SENTINEL")
        .arg("MONITOR")
        .arg("mymaster")
        .arg("127.0.0.1")
        .arg(y.port)
        .arg(1)
        .query_async(&mut s)
        .await
        .expect("MONITOR");
    // y has no lease: once the store follows the sentinel, renew says so.
    let err = eventually(
        Duration::from_secs(10),
        "the store to follow the new master",
        || async {
            match store.renew(&lease).await {
                Err(e) if e.kind() == leader_core::ErrorKind::NotHolder => Some(e),
                _ => None,
            }
        },
    )
    .await;
    assert_eq!(err.kind(), leader_core::ErrorKind::NotHolder);
    // The subscription on x ended: releases are published on y now.
    let end = tokio::time::timeout(Duration::from_secs(10), events.recv()).await;
    assert_eq!(end.expect("the watch on the old master must end"), None);
    let b = HolderId::new("b").expect("holder");
    assert!(matches!(
        store.acquire(&k, &b, TTL).await,
        Ok(Acquire::Acquired(_))
    ));
    let mut yc = raw(&format!("redis://127.0.0.1:{}", y.port)).await;
    let on_y: Option<String> = yc.get(k.as_str()).await.expect("GET on y");
    assert_eq!(on_y.as_deref(), Some("b"));
}

#[tokio::test]
async fn the_cards_sentinel_string_with_a_password_works() {
    let set = SentinelSet::start_with_password(Some("s3cret")).await;
    let connection = format!("{},password=s3cret", set.connection_string());
    let store = RedisStore::new(&connection).expect("store");
    assert!(!format!("{store:?}").contains("s3cret"));
    let k = LeaseKey::new(&prefix(), "svc").expect("key");
    let a = HolderId::new("a").expect("holder");
    let lease = match store
        .acquire(&k, &a, TTL)
        .await
        .expect("acquire with a password")
    {
        Acquire::Acquired(lease) => lease,
        other => panic!("{other:?}"),
    };
    let mut events = store.watch(&k).await.expect("watch with a password");
    assert!(store.release(&lease).await.expect("release"));
    let event = tokio::time::timeout(Duration::from_secs(5), events.recv()).await;
    assert_eq!(
        event.expect("event in time"),
        Some(leader_core::LeaseEvent::Vacated)
    );

    let wrong =
        RedisStore::new(&format!("{},password=wrong", set.connection_string())).expect("store");
    let err = wrong
        .acquire(&k, &a, TTL)
        .await
        .expect_err("wrong password");
    assert_eq!(err.kind(), leader_core::ErrorKind::Auth, "{err}");
}
