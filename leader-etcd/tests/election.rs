//! The card's four scenarios with real electors on a private etcd:
//! normal operation, leader crash, store failure and store recovery. A
//! sampler checks throughout that no two electors ever believe they lead at
//! the same time and that fencing tokens only grow.

mod support;

use std::sync::Arc;
use std::time::Duration;

use leader_core::{ElectionConfig, Elector, LeaseStore};
use leader_etcd::EtcdStore;
use leader_testkit::history::{CheckOptions, History, RecordingStore};
use leader_testkit::servers::EtcdServer;
use support::eventually;
use support::history::Sampler;
use tokio::time::Instant;

/// Short timings so the scenarios run in seconds; etcd rounds the lease up
/// to whole seconds on the server, which only delays takeovers.
const LEASE: Duration = Duration::from_secs(2);
const RENEWAL: Duration = Duration::from_millis(400);
/// Slack for a loaded CI machine on top of bounds derived from the timings.
const SLACK: Duration = Duration::from_secs(5);

fn config(prefix: &str, i: usize) -> ElectionConfig {
    let mut c = ElectionConfig::new("scenario").with_timing(LEASE, RENEWAL);
    c.key_prefix = prefix.to_owned();
    c.instance_id = Some(format!("elector-{i}"));
    c
}

/// Electors whose store calls are recorded in `history`.
fn start_electors(
    url: &str,
    prefix: &str,
    ids: std::ops::Range<usize>,
    history: &History,
) -> Vec<Elector> {
    ids.map(|i| {
        let store = EtcdStore::from_url(&format!("{url}?request_timeout=1s&connect_timeout=300ms"))
            .expect("store");
        let recorded = RecordingStore::new(Arc::new(store), history.clone());
        Elector::start(Arc::new(recorded), config(prefix, i)).expect("elector")
    })
    .collect()
}

/// Checks the recorded history: believed terms (capped at the electors'
/// validity, `lease * (1 - clock_drift)`) never overlap; tokens only grow.
fn check(history: &History) {
    let validity = LEASE.mul_f64(1.0 - config("x", 0).clock_drift);
    let summary = history.assert_ok_with(&CheckOptions::with_validity(validity));
    assert!(summary.terms >= 1, "{summary:?}");
}

fn leaders(electors: &[Elector]) -> Vec<usize> {
    (0..electors.len())
        .filter(|i| electors[*i].is_leader())
        .collect()
}

async fn wait_for_one_leader(electors: &[Elector], within: Duration) -> usize {
    let start = Instant::now();
    loop {
        let now = leaders(electors);
        if now.len() == 1 {
            return now[0];
        }
        assert!(
            start.elapsed() < within,
            "no single leader within {within:?} (leaders now: {now:?})"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn prefix(what: &str) -> String {
    format!("leader-etcd-election:{what}-{}:", std::process::id())
}

#[tokio::test]
async fn normal_operation_one_leader_two_followers() {
    let server = EtcdServer::start().await.expect("etcd");
    let prefix = prefix("normal");
    let history = History::new();
    let electors = start_electors(server.url(), &prefix, 0..3, &history);
    let sampler = Sampler::start(electors.clone());
    let leader = wait_for_one_leader(&electors, LEASE + SLACK).await;

    // The store shows the leader's id and token.
    let store = EtcdStore::from_url(server.url()).expect("store");
    let info = store
        .current(electors[leader].key())
        .await
        .expect("current")
        .expect("held");
    assert_eq!(&info.holder, electors[leader].instance_id());
    assert_eq!(Some(info.token), electors[leader].token());

    // Leadership is stable over several renewals.
    let token = electors[leader].token();
    let until = Instant::now() + RENEWAL * 5;
    while Instant::now() < until {
        assert_eq!(leaders(&electors), [leader]);
        assert_eq!(electors[leader].token(), token);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for e in &electors {
        e.shutdown().await;
    }
    sampler.finish().await.assert_safe();
    check(&history);
    assert!(
        store
            .current(electors[0].key())
            .await
            .expect("current")
            .is_none()
    );
}

#[tokio::test]
async fn leader_crash_a_follower_takes_over_within_the_lease() {
    let server = EtcdServer::start().await.expect("etcd");
    let prefix = prefix("crash");
    let history = History::new();
    let electors = start_electors(server.url(), &prefix, 0..3, &history);
    let sampler = Sampler::start(electors.clone());
    let old = wait_for_one_leader(&electors, LEASE + SLACK).await;
    let old_token = electors[old].token().expect("leader token");

    electors[old].abort(); // a crash: no release
    let crashed = Instant::now();
    let rest: Vec<Elector> = electors
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != old)
        .map(|(_, e)| e.clone())
        .collect();
    // The lease (rounded up to whole seconds by etcd) must run out first;
    // the watch then wakes the followers at once.
    let new = wait_for_one_leader(&rest, LEASE + RENEWAL + SLACK).await;
    let took = crashed.elapsed();
    assert!(rest[new].token().expect("new token") > old_token);
    // No earlier than the lease could run out: the last renewal was sent at
    // most one renewal interval before the crash.
    assert!(
        took >= LEASE - RENEWAL,
        "takeover {took:?} after the crash: before the lease ({LEASE:?}) could expire"
    );
    for e in &electors {
        e.shutdown().await;
    }
    sampler.finish().await.assert_safe();
    check(&history);
}

#[tokio::test]
async fn etcd_failure_everyone_steps_down_then_recovery_elects_one_leader() {
    let server = EtcdServer::start().await.expect("etcd");
    let prefix = prefix("outage");
    let history = History::new();
    let electors = start_electors(server.url(), &prefix, 0..3, &history);
    let sampler = Sampler::start(electors.clone());
    let leader = wait_for_one_leader(&electors, LEASE + SLACK).await;
    let token = electors[leader].token().expect("token");

    // Scenario 3: etcd dies. The leader cannot renew and must stop by its
    // validity point, at most one lease after its last successful renewal.
    server.kill().await.expect("kill etcd");
    let killed = Instant::now();
    eventually("every elector is a follower", || async {
        leaders(&electors).is_empty()
    })
    .await;
    assert!(
        killed.elapsed() <= LEASE + SLACK,
        "stepped down after {:?}",
        killed.elapsed()
    );
    assert!(electors.iter().all(|e| e.token().is_none()));

    // Scenario 4: etcd comes back (same data). One leader again, once the
    // old lease (restored by etcd with its TTL) is gone or re-acquired by
    // its own holder.
    server.restart().await.expect("restart etcd");
    let new = wait_for_one_leader(&electors, LEASE * 2 + RENEWAL + SLACK).await;
    assert!(electors[new].token().expect("token") > token);
    for e in &electors {
        e.shutdown().await;
    }
    sampler.finish().await.assert_safe();
    check(&history);
}

#[tokio::test]
async fn a_partitioned_leader_steps_down_before_anyone_else_takes_over() {
    use leader_testkit::proxy::{FaultProxy, Mode};

    let server = EtcdServer::start().await.expect("etcd");
    let proxy = FaultProxy::start(server.addr()).await.expect("proxy");
    let prefix = prefix("partition");
    let history = History::new();
    // The first elector reaches etcd through the proxy and leads alone.
    let cut_off = start_electors(&server.url_via(proxy.addr()), &prefix, 0..1, &history)
        .pop()
        .expect("one elector");
    eventually("the proxied elector leads", || async {
        cut_off.is_leader()
    })
    .await;
    let mut electors = vec![cut_off.clone()];
    electors.extend(start_electors(server.url(), &prefix, 1..3, &history));
    let sampler = Sampler::start(electors.clone());
    let token = cut_off.token().expect("token");

    // A silent partition: the leader's renewals hang. It must stop believing
    // it leads by its own deadline, and the lease must run out in etcd
    // before a follower can take over.
    proxy.set_mode(Mode::Blackhole);
    let cut = Instant::now();
    eventually("the partitioned leader steps down", || async {
        !cut_off.is_leader()
    })
    .await;
    assert!(
        cut.elapsed() <= LEASE + SLACK,
        "stepped down after {:?}",
        cut.elapsed()
    );
    let new = wait_for_one_leader(&electors[1..], LEASE * 2 + RENEWAL + SLACK).await;
    assert!(electors[1 + new].token().expect("token") > token);

    // Healed: the old leader stays a follower.
    proxy.set_mode(Mode::PassThrough);
    let until = Instant::now() + RENEWAL * 4;
    while Instant::now() < until {
        assert!(!cut_off.is_leader(), "the healed old leader must not lead");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for e in &electors {
        e.shutdown().await;
    }
    sampler.finish().await.assert_safe();
    check(&history);
}
