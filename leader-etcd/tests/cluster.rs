//! A three-member etcd cluster: SIGKILL the etcd leader while an elector
//! leads; the election recovers and no two electors ever lead at once.

mod support;

use std::sync::Arc;
use std::time::Duration;

use leader_core::{Acquire, ElectionConfig, Elector, HolderId, LeaseStore};
use leader_etcd::EtcdStore;
use leader_testkit::history::{CheckOptions, History, Op, Outcome, Recording};
use leader_testkit::wait::eventually;
use leader_testkit::wrap::Wrapped;
use support::cluster::EtcdCluster;
use support::history::Sampler;
use support::{PATIENCE, unique_key};
use tokio::time::Instant;

const LEASE: Duration = Duration::from_secs(3);
const RENEWAL: Duration = Duration::from_millis(500);

fn store(cluster: &EtcdCluster) -> EtcdStore {
    EtcdStore::from_url(&format!(
        "{}?request_timeout=1s&connect_timeout=300ms",
        cluster.url()
    ))
    .expect("cluster store")
}

#[tokio::test]
async fn store_operations_survive_losing_the_etcd_leader() {
    let cluster = EtcdCluster::start().await;
    let store = store(&cluster);
    let key = unique_key("cluster-ops");
    let me = HolderId::new("me").expect("holder");
    let Acquire::Acquired(lease) = store.acquire(&key, &me, LEASE).await.expect("acquire") else {
        panic!("a fresh key is free");
    };
    store.renew(&lease).await.expect("renew before the failure");
    let mut events = store.watch(&key).await.expect("watch");

    cluster.kill_leader().await;
    cluster.wait_for_leader().await;
    // The lease survives an etcd leader change; renewals go through a
    // surviving member (retried: the first may hit the dead one).
    eventually(
        PATIENCE,
        "renew works through the new etcd leader",
        || async { store.renew(&lease).await.is_ok() },
    )
    .await;
    assert!(store.release(&lease).await.expect("release"));
    // The watch resumed on a surviving member and saw the release.
    let event = tokio::time::timeout(support::PATIENCE, events.recv())
        .await
        .expect("an event");
    assert_eq!(event, Some(leader_core::LeaseEvent::Vacated));
}

#[tokio::test]
async fn killing_the_etcd_leader_while_an_elector_leads_recovers_safely() {
    let cluster = EtcdCluster::start().await;
    let prefix = format!("leader-etcd-cluster:{}:", std::process::id());
    let history = History::new();
    let mut validity = LEASE;
    let electors: Vec<Elector> = (0..3)
        .map(|i| {
            let mut config = ElectionConfig::new("failover").with_timing(LEASE, RENEWAL);
            config.key_prefix = prefix.clone();
            config.instance_id = Some(format!("elector-{i}"));
            validity = LEASE.mul_f64(1.0 - config.clock_drift);
            let recorded = Wrapped::new(Arc::new(store(&cluster)), Recording::new(history.clone()));
            Elector::start(Arc::new(recorded), config).expect("elector")
        })
        .collect();
    let sampler = Sampler::start(electors.clone());
    eventually(PATIENCE, "one elector leads", || async {
        electors.iter().filter(|e| e.is_leader()).count() == 1
    })
    .await;

    // Kill the etcd leader once the elected leader is in its steady renewal
    // rhythm (two successful renewals).
    eventually(PATIENCE, "the leader renews twice", || async {
        history
            .events()
            .iter()
            .filter(|e| e.op == Op::Renew && e.outcome == Outcome::Ok)
            .count()
            >= 2
    })
    .await;
    let victim = cluster.kill_leader().await;
    let killed = Instant::now();
    cluster.wait_for_leader().await;

    // A leader after one full lease since the kill must have renewed (or
    // acquired) through the surviving members: its validity cannot outlast
    // a lease without a successful store call.
    tokio::time::sleep_until(killed + LEASE).await;
    let observer = store(&cluster);
    let key = electors[0].key().clone();
    eventually(PATIENCE, "an elector leads and etcd agrees", || async {
        let Some(leader) = electors.iter().find(|e| e.is_leader()) else {
            return false;
        };
        let current = observer.current(&key).await.ok().flatten();
        current
            .is_some_and(|c| Some(c.token) == leader.token() && &c.holder == leader.instance_id())
    })
    .await;

    for e in &electors {
        e.shutdown().await;
    }
    let report = sampler.finish().await;
    report.assert_safe();
    // Every acquire, renew and release as the store saw it: believed terms
    // (capped at the elector's validity) never overlap, tokens only grow.
    let summary = history.assert_ok_with(&CheckOptions::with_validity(validity));
    eprintln!("history: {summary:?}");
    if std::env::var_os("LEADER_ETCD_DUMP").is_some() {
        let origin = history.origin();
        for e in history.events() {
            eprintln!(
                "{:>8?} {:>8?} {} {:?} {:?} {:?}",
                e.invoked - origin,
                e.completed.map(|c| c - origin),
                e.process,
                e.op,
                e.outcome,
                e.token
            );
        }
        eprintln!("killed at {:?}", killed - origin);
    }
    eprintln!(
        "killed etcd member {} ({}); sampler: {} rounds, terms {:?}",
        victim,
        cluster.name(victim),
        report.samples,
        report.tokens
    );
}
