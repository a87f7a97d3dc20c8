//! What a follower costs etcd: its polls read the key instead of granting
//! and revoking a lease, followers woken together share one read, and a
//! holder whose lease etcd reports as 0 s left
//! (it rounds down to whole seconds) does not make it poll in a loop.

mod support;

use std::sync::Arc;
use std::time::Duration;

use leader_core::{Acquire, Capabilities, ElectionConfig, Elector, FencingSource, LeaseStore};
use leader_etcd::EtcdStore;
use leader_testkit::metrics::Metrics;
use leader_testkit::servers::EtcdServer;
use leader_testkit::wrap::{Faults, Op, Wrapped};
use support::{holder, unique_key};

/// Lease grants and revokes etcd has received so far.
async fn grants_and_revokes(server: &EtcdServer) -> (f64, f64) {
    let m = Metrics::scrape(server.addr()).await.expect("etcd metrics");
    let count = |method| m.sum("grpc_server_msg_received_total", &[("grpc_method", method)]);
    (count("LeaseGrant"), count("LeaseRevoke"))
}

/// Key reads (`Range` requests) etcd has received so far.
async fn reads(server: &EtcdServer) -> f64 {
    let m = Metrics::scrape(server.addr()).await.expect("etcd metrics");
    m.sum(
        "grpc_server_msg_received_total",
        &[("grpc_method", "Range")],
    )
}

/// Asserts that etcd received at most one grant and one revoke since `before`.
async fn at_most_one_grant_and_revoke(server: &EtcdServer, before: (f64, f64), what: &str) {
    let (grants, revokes) = grants_and_revokes(server).await;
    assert!(
        grants - before.0 <= 1.0 && revokes - before.1 <= 1.0,
        "{what} cost {} grants and {} revokes",
        grants - before.0,
        revokes - before.1
    );
}

#[tokio::test]
async fn a_follower_polls_by_reading_not_by_granting_and_revoking() {
    let server = EtcdServer::start().await.expect("etcd");
    let leader = EtcdStore::from_url(server.url()).expect("leader store");
    let follower = EtcdStore::from_url(server.url()).expect("follower store");
    let key = unique_key("poll");
    let held = match leader
        .acquire(&key, &holder("leader"), Duration::from_secs(30))
        .await
        .expect("acquire")
    {
        Acquire::Acquired(lease) => lease,
        Acquire::Held(info) => panic!("free key held by {info:?}"),
    };
    let before = grants_and_revokes(&server).await;
    const POLLS: usize = 5;
    for _ in 0..POLLS {
        match follower
            .acquire(&key, &holder("follower"), Duration::from_secs(30))
            .await
            .expect("poll")
        {
            Acquire::Held(info) => {
                assert_eq!(info.holder, held.holder);
                assert_eq!(info.token, held.token);
            }
            Acquire::Acquired(lease) => panic!("took a held seat: {lease:?}"),
        }
    }
    // The first poll does not know the seat is taken yet: one grant and its
    // revoke at most; every later poll is a read.
    at_most_one_grant_and_revoke(&server, before, &format!("{POLLS} polls")).await;

    // Once the seat is free, the follower's next attempt wins it.
    assert!(leader.release(&held).await.expect("release"));
    match follower
        .acquire(&key, &holder("follower"), Duration::from_secs(30))
        .await
        .expect("acquire")
    {
        Acquire::Acquired(lease) => assert!(lease.token > held.token),
        Acquire::Held(info) => panic!("free seat reported held by {info:?}"),
    }
}

#[tokio::test]
async fn a_follower_does_not_spin_on_a_holder_etcd_reports_at_0_s_left() {
    let server = EtcdServer::start().await.expect("etcd");
    let prefix = format!("leader-etcd-test:zero-{}:", std::process::id());
    let mut config = ElectionConfig::new("zero");
    config.key_prefix = prefix;
    // Long polls, no jitter: the follower's only reason to come back early
    // is the holder's remaining TTL.
    config.retry_period = Some(Duration::from_secs(30));
    config.retry_jitter = 0.0;
    let key = config.lease_key().expect("key");

    // A holder outside the library with a 1 s lease kept alive every 200 ms:
    // etcd reports 0 s left almost all the time, and the seat stays taken.
    let mut raw = support::raw_client(&server).await;
    let id = raw.lease_grant(1, None).await.expect("grant").id();
    raw.put(
        key.as_str(),
        "outside-holder",
        Some(etcd_client::PutOptions::new().with_lease(id)),
    )
    .await
    .expect("put");
    let (mut keeper, mut acks) = raw.lease_keep_alive(id).await.expect("keep-alive");
    let keep = tokio::spawn(async move {
        loop {
            if keeper.keep_alive().await.is_err() || acks.message().await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    let etcd = EtcdStore::from_url(server.url()).expect("store");
    let zero = etcd.current(&key).await.expect("current").expect("held");
    assert!(zero.remaining >= Some(Duration::from_secs(1)), "{zero:?}");

    // No notifications: the follower waits only as the holder's TTL says.
    let store = Arc::new(Wrapped::new(
        Arc::new(etcd),
        Faults::new().with_capabilities(Capabilities::new(FencingSource::Revision)),
    ));
    let follower = Elector::start(store.clone(), config).expect("elector");
    let window = Duration::from_secs(3);
    tokio::time::sleep(window).await;
    let polls = store.calls(Op::Acquire);
    follower.shutdown().await;
    keep.abort();
    // Etcd's TTLs are whole seconds: one poll per second of the window, and
    // one for the start, is what waiting out each reported TTL costs.
    let bound = window.as_secs() + 2;
    assert!(
        (1..=bound).contains(&polls),
        "{polls} acquire calls in {window:?} on a holder reported at 0 s (bound {bound})"
    );
    assert!(!follower.is_leader());
}

#[tokio::test]
async fn followers_on_one_store_woken_by_a_release_grant_one_lease_between_them() {
    let server = EtcdServer::start().await.expect("etcd");
    let outside = EtcdStore::from_url(server.url()).expect("holder store");
    let shared = Arc::new(Wrapped::new(
        Arc::new(EtcdStore::from_url(server.url()).expect("followers' store")),
        Faults::new(),
    ));
    let mut config = ElectionConfig::new("herd");
    config.key_prefix = format!("leader-etcd-test:herd-{}:", std::process::id());
    let key = config.lease_key().expect("key");
    let held = match outside
        .acquire(&key, &holder("outside"), Duration::from_secs(60))
        .await
        .expect("acquire")
    {
        Acquire::Acquired(lease) => lease,
        Acquire::Held(info) => panic!("free key held by {info:?}"),
    };
    const FOLLOWERS: usize = 20;
    let electors: Vec<Elector> = (0..FOLLOWERS)
        .map(|_| Elector::start(shared.clone(), config.clone()).expect("elector"))
        .collect();
    for e in &electors {
        let mut state = e.subscribe();
        tokio::time::timeout(support::PATIENCE, state.wait_for(|s| s.leader_id.is_some()))
            .await
            .expect("every follower saw the holder")
            .expect("elector running");
    }
    let before = grants_and_revokes(&server).await;
    let reads_before = reads(&server).await;
    let calls = shared.calls(Op::Acquire);
    let answered = shared.successes(Op::Acquire);
    let seat_reads = shared.successes(Op::Current);

    assert!(outside.release(&held).await.expect("release"));
    leader_testkit::wait::eventually(
        support::PATIENCE,
        "a follower leads and every follower tried",
        || async {
            electors.iter().filter(|e| e.is_leader()).count() == 1
                && shared.calls(Op::Acquire) - calls >= FOLLOWERS as u64
                && electors
                    .iter()
                    .all(|e| e.is_leader() || e.subscribe().borrow().leader_id.is_some())
        },
    )
    .await;
    // The winner's grant, and the revoke of the released lease.
    let what = format!("{FOLLOWERS} woken followers");
    at_most_one_grant_and_revoke(&server, before, &what).await;
    // The winner's read, one read that finds the seat taken, and the others
    // share that answer (a few more when followers arrive late).
    leader_testkit::wait::eventually(
        support::PATIENCE,
        "every follower's acquire answered",
        || async { shared.successes(Op::Acquire) - answered >= FOLLOWERS as u64 },
    )
    .await;
    let read = reads(&server).await - reads_before;
    println!("{what} read the key {read} times");
    assert!(
        read <= (FOLLOWERS / 4) as f64,
        "{what} read the key {read} times (each asked instead of sharing the answer in flight)"
    );
    // Then each of the others hears the new term's `Acquired` event and
    // reads the seat for the leader's metadata (`current`): one event wakes
    // them all, and they share those reads the same way.
    leader_testkit::wait::eventually(
        support::PATIENCE,
        "every other follower read the new leader's seat",
        || async { shared.successes(Op::Current) - seat_reads >= FOLLOWERS as u64 - 1 },
    )
    .await;
    let read = reads(&server).await - reads_before;
    println!("{what} read the key {read} times, with the seat reads after the event");
    assert!(
        read <= (FOLLOWERS / 2) as f64,
        "{what} read the key {read} times with their seat reads (each read the new leader's seat \
         itself instead of sharing the read in flight)"
    );
    futures::future::join_all(electors.iter().map(Elector::shutdown)).await;
}
