//! RedisStore through Sentinel (master + replica + 3 sentinels): master
//! resolution, WAIT with a real replica, following a manual failover, an
//! election that recovers when the master is killed, and what a failover to
//! a replica that missed the acquisition does with and without WAIT (what
//! leader-redis/README.md documents under "Replication and failover"),
//! checked by the testkit's history checker.

mod support;

use std::sync::Arc;
use std::time::Duration;

use leader_core::{Acquire, ElectionConfig, ErrorKind, HolderId, LeaseKey, LeaseStore};
use leader_redis::{RedisConfig, RedisStore};
use leader_testkit::history::{CheckOptions, History, Recording, Violation};
use leader_testkit::servers::{RedisSentinelSet, RedisServer};
use leader_testkit::wait::eventually;
use leader_testkit::wrap::Wrapped;
use redis::AsyncCommands;
use support::election::{RecordedElection, failover_config};
use support::raw;
use tokio::time::Instant;

const TTL: Duration = Duration::from_secs(30);

fn prefix() -> String {
    format!("sentinel:{:016x}:", rand::random::<u64>())
}

fn store(set: &RedisSentinelSet) -> RedisStore {
    RedisStore::new(
        RedisConfig::from_url(&set.connection_string())
            .expect("valid URL")
            .with_request_timeout(Duration::from_millis(500))
            .with_connect_timeout(Duration::from_secs(1)),
    )
    .expect("store")
}

#[tokio::test]
async fn sentinel_store_resolves_the_master_waits_for_the_replica_and_follows_a_failover() {
    let set = RedisSentinelSet::start(None).await.expect("sentinel set");
    let store = RedisStore::new(
        RedisConfig::from_url(&set.connection_string())
            .expect("valid URL")
            .with_wait_replicas(1, Duration::from_secs(1)),
    )
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
    for node in [&set.master, &set.replica] {
        let mut c = raw(node.url()).await;
        let seen: Option<String> = c.get(k.as_str()).await.expect("GET");
        assert_eq!(seen.as_deref(), Some("a"), "on {}", node.url());
    }

    // A manual failover demotes the master while our connection stays open:
    // the store must notice (READONLY or a dropped connection) and ask the
    // sentinels again.
    let old = set.master.addr().port();
    let mut s = raw(set.sentinels[0].url()).await;
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
    let mut c = raw(set.replica.url()).await;
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
async fn killing_the_master_while_an_elector_leads_keeps_one_leader_and_increasing_tokens() {
    let set = RedisSentinelSet::start(None).await.expect("sentinel set");
    let prefix = prefix();
    // Two instances, each with its own store (separate connections), as two
    // processes would have.
    let election = RecordedElection::start(vec![
        (
            failover_config(&prefix, "instance-a"),
            Arc::new(store(&set)),
        ),
        (
            failover_config(&prefix, "instance-b"),
            Arc::new(store(&set)),
        ),
    ]);
    let observer = store(&set);
    let key = LeaseKey::new(&prefix, "svc").expect("key");
    let (first, first_token) = eventually(Duration::from_secs(15), "a first leader", || async {
        election.sole_leader()
    })
    .await;
    // README: the lease survives a failover when the replica had received
    // it. Make that the case, then check what it promises.
    let holder = election.electors[first].instance_id().clone();
    let mut replica = raw(set.replica.url()).await;
    eventually(Duration::from_secs(10), "the lease on the replica", || {
        let mut replica = replica.clone();
        let (key, holder) = (key.as_str().to_owned(), holder.as_str().to_owned());
        async move {
            let seen: Option<String> = replica.get(&key).await.ok()?;
            (seen.as_deref() == Some(holder.as_str())).then_some(())
        }
    })
    .await;
    let _: Option<String> = replica.get(key.as_str()).await.expect("replica answers");

    let old = set.master.addr().port();
    let killed_at = Instant::now();
    set.master.kill().await.expect("kill the master");
    let (after, _) = eventually(
        Duration::from_secs(40),
        "the election to recover on the promoted replica",
        || async {
            set.master_port().await.filter(|p| *p != old)?;
            election.agreed_leader(&observer, &key, None).await
        },
    )
    .await;
    let recovered_after = killed_at.elapsed();
    // With the lease replicated, the README promises no overlap.
    let tokens = election
        .hand_over_and_check(&observer, &key, after, first_token)
        .await;
    eprintln!(
        "sentinel failover: election recovered {recovered_after:?} after the master's kill; tokens {tokens:?}"
    );
}

/// The lease TTL of the lagging-replica scenario: far longer than a
/// failover takes on a loaded machine, so the first holder's belief
/// (`is_leader()` until its acquisition was sent + TTL less drift) is still
/// on when the second one acquires.
const LAG_TTL: Duration = Duration::from_secs(30);

/// What happened when instance `a` acquired while the replica could not
/// replicate, the master died and the replica was promoted.
struct LagOutcome {
    history: History,
    /// `a`'s acquire result (an error only with WAIT).
    first: leader_core::Result<Acquire>,
    /// The token `b` got from the promoted replica.
    second_token: leader_core::FencingToken,
}

/// `a` acquires while the replica's link to the master is down (it no
/// longer knows the master's password, so it cannot resync), then the
/// master is SIGKILLed, the sentinels promote the replica (which never saw
/// the lease) and `b` acquires on it. `wait` configures `wait_replicas(1)`
/// on `a`'s store.
async fn acquire_then_fail_over_to_a_lagging_replica(wait: bool) -> LagOutcome {
    let password = "lag-pass";
    let set = RedisSentinelSet::start(Some(password))
        .await
        .expect("sentinel set with a password");
    let mut master = raw(&set.data_url(&set.master)).await;
    let mut replica = raw(&set.data_url(&set.replica)).await;
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("masterauth")
        .arg("not-the-password")
        .query_async(&mut replica)
        .await
        .expect("CONFIG SET masterauth on the replica");
    let _: () = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("replica")
        .query_async(&mut master)
        .await
        .expect("drop the replication link");
    eventually(Duration::from_secs(10), "the replica's link down", || {
        let mut replica = replica.clone();
        async move {
            let info: String = redis::cmd("INFO")
                .arg("replication")
                .query_async(&mut replica)
                .await
                .ok()?;
            info.contains("master_link_status:down").then_some(())
        }
    })
    .await;

    let history = History::new();
    let recorded =
        |store: RedisStore| Wrapped::new(Arc::new(store), Recording::new(history.clone()));
    let connection = format!("{},password={password}", set.connection_string());
    let config = || {
        RedisConfig::from_url(&connection)
            .expect("valid URL")
            .with_request_timeout(Duration::from_millis(500))
            .with_connect_timeout(Duration::from_secs(1))
    };
    let a_config = if wait {
        config().with_wait_replicas(1, Duration::from_millis(300))
    } else {
        config()
    };
    let a = recorded(RedisStore::new(a_config).expect("store a"));
    let b = recorded(RedisStore::new(config()).expect("store b"));
    let key = LeaseKey::new(&prefix(), "svc").expect("key");
    let first = a.acquire(&key, &HolderId::generate(), LAG_TTL).await;
    let on_replica: Option<String> = replica.get(key.as_str()).await.expect("GET on the replica");
    assert_eq!(on_replica, None, "the replica must not have the lease");

    let old = set.master.addr().port();
    set.master.kill().await.expect("kill the master");
    eventually(
        Duration::from_secs(40),
        "the sentinels to promote the replica",
        || async { set.master_port().await.filter(|p| *p != old) },
    )
    .await;
    let b_holder = HolderId::generate();
    let second = eventually(
        Duration::from_secs(20),
        "b to acquire on the promoted replica",
        || async {
            match b.acquire(&key, &b_holder, LAG_TTL).await {
                Ok(Acquire::Acquired(lease)) => Some(lease),
                _ => None,
            }
        },
    )
    .await;
    LagOutcome {
        history,
        first,
        second_token: second.token,
    }
}

fn validity() -> CheckOptions {
    let drift = ElectionConfig::default().clock_drift;
    CheckOptions::with_validity(LAG_TTL.mul_f64(1.0 - drift))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_wait_a_failover_to_a_replica_that_missed_the_acquisition_overlaps_two_holders() {
    let outcome = acquire_then_fail_over_to_a_lagging_replica(false).await;
    let Ok(Acquire::Acquired(first)) = outcome.first else {
        panic!(
            "without WAIT the acquire succeeds on the master alone: {:?}",
            outcome.first
        );
    };
    // README: the lease is lost with the master, a second candidate
    // acquires while the first still believes it leads, and the clock floor
    // keeps the new token above the lost one.
    let violations = outcome
        .history
        .check_with(&validity())
        .expect_err("the history checker must report the two believed holders");
    assert!(
        !violations.list.is_empty()
            && violations
                .list
                .iter()
                .all(|v| matches!(v, Violation::Overlap { .. })),
        "expected only an overlap: {violations}"
    );
    assert!(
        outcome.second_token > first.token,
        "the promoted replica minted {} after {}",
        outcome.second_token,
        first.token
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_wait_an_acquisition_the_replica_missed_fails_so_no_two_holders_overlap() {
    let outcome = acquire_then_fail_over_to_a_lagging_replica(true).await;
    // README: WAIT finds too few replicas, the lease is released and the
    // acquire fails Unavailable: nobody believes it leads on the lost lease.
    let err = outcome.first.expect_err("WAIT 1 with no replica in sync");
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
    outcome
        .history
        .check_with(&validity())
        .expect("only the second holder ever believed it led");
}

#[tokio::test]
async fn a_master_change_that_leaves_the_old_master_writable_is_followed() {
    // Two independent servers and a sentinel pointing at the first. Re-pointing
    // the sentinel at the second leaves the first fully writable: no error
    // tells the store, only asking the sentinels does.
    let x = RedisServer::start().await.expect("redis x");
    let y = RedisServer::start().await.expect("redis y");
    let sentinel = RedisSentinelSet::start_sentinel(x.addr().port(), None)
        .await
        .expect("sentinel");
    let store = RedisStore::new(
        RedisConfig::from_url(&format!("{},serviceName=mymaster", sentinel.addr()))
            .expect("valid URL")
            .with_sentinel_check_interval(Duration::from_millis(100)),
    )
    .expect("store");
    let k = LeaseKey::new(&prefix(), "svc").expect("key");
    let lease = match store
        .acquire(&k, &HolderId::new("a").expect("holder"), TTL)
        .await
    {
        Ok(Acquire::Acquired(lease)) => lease,
        other => panic!("{other:?}"),
    };
    let mut xc = raw(x.url()).await;
    let on_x: Option<String> = xc.get(k.as_str()).await.expect("GET on x");
    assert_eq!(on_x.as_deref(), Some("a"));

    let mut events = store.watch(&k).await.expect("watch on x");
    let mut s = raw(sentinel.url()).await;
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
        .arg(y.addr().port())
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
    let mut yc = raw(y.url()).await;
    let on_y: Option<String> = yc.get(k.as_str()).await.expect("GET on y");
    assert_eq!(on_y.as_deref(), Some("b"));
}

#[tokio::test]
async fn the_cards_sentinel_string_with_a_password_works() {
    let set = RedisSentinelSet::start(Some("s3cret"))
        .await
        .expect("sentinel set with a password");
    let connection = format!("{},password=s3cret", set.connection_string());
    let store = RedisStore::from_url(&connection).expect("store");
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

    let wrong = RedisStore::from_url(&format!("{},password=wrong", set.connection_string()))
        .expect("store");
    let err = wrong
        .acquire(&k, &a, TTL)
        .await
        .expect_err("wrong password");
    assert_eq!(err.kind(), leader_core::ErrorKind::Auth, "{err}");
}
