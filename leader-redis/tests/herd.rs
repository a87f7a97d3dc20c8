//! The herd after a release: followers of one key on one store client, all
//! woken by the same release, ask the server a few times between them (the
//! winner's acquire, then one that finds the seat taken, whose answer the
//! others waiting behind it share), not once each.
//!
//! Starts a private redis-server: the test resets and reads its command
//! statistics.

mod support;

use std::time::Duration;

use leader_core::{Acquire, HolderId, LeaseEvent, LeaseKey, LeaseStore};
use leader_redis::RedisStore;
use leader_testkit::servers::RedisServer;
use support::raw;

/// Followers on the one store client.
const FOLLOWERS: usize = 200;

/// Generous bound for anything that should happen at once on a loaded
/// 2-core machine.
const SOON: Duration = Duration::from_secs(30);

fn holder(name: &str) -> HolderId {
    HolderId::new(name).expect("valid holder")
}

/// Script calls (`EVALSHA` and `EVAL`) the server ran since its statistics
/// were reset, from `INFO commandstats`.
async fn script_calls(url: &str) -> u64 {
    let mut c = raw(url).await;
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut c)
        .await
        .expect("INFO commandstats");
    info.lines()
        .filter(|l| l.starts_with("cmdstat_evalsha:") || l.starts_with("cmdstat_eval:"))
        .filter_map(|l| {
            l.split([':', ','])
                .find_map(|f| f.strip_prefix("calls="))
                .and_then(|n| n.parse::<u64>().ok())
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn followers_woken_by_one_release_ask_the_server_a_few_times_not_once_each() {
    let server = RedisServer::start().await.expect("a private redis-server");
    let url = server.url().to_owned();
    let leader_store = RedisStore::from_url(&url).expect("store");
    let shared = RedisStore::from_url(&url).expect("store");
    let key = LeaseKey::new("herd:", "seat").expect("valid key");
    let ttl = Duration::from_secs(60);
    let Acquire::Acquired(lease) = leader_store
        .acquire(&key, &holder("leader"), ttl)
        .await
        .expect("acquire")
    else {
        panic!("a fresh key was held");
    };

    // Every follower subscribes, finds the seat held, and once told it is
    // free asks again.
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel(FOLLOWERS);
    let followers: Vec<_> = (0..FOLLOWERS)
        .map(|i| {
            let (store, key, ready) = (shared.clone(), key.clone(), ready_tx.clone());
            tokio::spawn(async move {
                let me = holder(&format!("follower-{i}"));
                let mut events = store.watch(&key).await.expect("watch");
                let first = store.acquire(&key, &me, ttl).await.expect("acquire");
                assert!(matches!(first, Acquire::Held(_)), "{first:?}");
                ready.send(()).await.expect("test waits");
                loop {
                    match tokio::time::timeout(SOON, events.recv()).await {
                        Ok(Some(LeaseEvent::Vacated)) => break,
                        Ok(Some(_)) => {}
                        Ok(None) => panic!("the subscription ended"),
                        Err(_) => panic!("no release event within {SOON:?}"),
                    }
                }
                store.acquire(&key, &me, ttl).await.expect("acquire")
            })
        })
        .collect();
    drop(ready_tx);
    for _ in 0..FOLLOWERS {
        ready_rx.recv().await.expect("every follower gets ready");
    }

    let mut c = raw(&url).await;
    let () = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query_async(&mut c)
        .await
        .expect("CONFIG RESETSTAT");
    assert!(leader_store.release(&lease).await.expect("release"));
    let mut winners = Vec::new();
    let mut held_by = Vec::new();
    for f in followers {
        match f.await.expect("follower task") {
            Acquire::Acquired(l) => winners.push(l.holder),
            Acquire::Held(info) => held_by.push(info.holder),
        }
    }
    assert_eq!(winners.len(), 1, "winners: {winners:?}");
    assert!(
        held_by.iter().all(|h| *h == winners[0]),
        "a follower was told someone other than the winner {:?} holds the seat",
        winners[0]
    );
    // One of the scripts run was the leader's release.
    let asked = script_calls(&url).await - 1;
    println!("{FOLLOWERS} woken followers ran the acquire script {asked} times");
    assert!(
        asked <= (FOLLOWERS / 4) as u64,
        "{FOLLOWERS} followers woken by one release ran the acquire script {asked} times \
         (each asked the server instead of sharing the answer of the request in flight)"
    );
}
