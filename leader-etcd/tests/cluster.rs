//! A three-member etcd cluster: SIGKILL the etcd leader while an elector
//! leads; the election recovers and no two electors ever lead at once.

mod support;

use std::time::Duration;

use leader_core::{Acquire, ElectionConfig, HolderId, LeaseStore};
use leader_etcd::EtcdStore;
use leader_testkit::history::{CheckOptions, History, Op, Outcome};
use leader_testkit::servers::EtcdCluster;
use leader_testkit::wait::eventually;
use support::history::start_recorded;
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
    let cluster = EtcdCluster::start().await.expect("etcd cluster");
    let store = store(&cluster);
    let key = unique_key("cluster-ops");
    let me = HolderId::new("me").expect("holder");
    let Acquire::Acquired(lease) = store.acquire(&key, &me, LEASE).await.expect("acquire") else {
        panic!("a fresh key is free");
    };
    store.renew(&lease).await.expect("renew before the failure");
    let mut events = store.watch(&key).await.expect("watch");

    cluster
        .kill_leader(PATIENCE)
        .await
        .expect("kill the etcd leader");
    cluster
        .wait_for_leader(PATIENCE)
        .await
        .expect("a new etcd leader");
    // The lease survives an etcd leader change; renewals go through a
    // surviving member (retried: the first may hit the dead one).
    eventually(
        PATIENCE,
        "renew works through the new etcd leader",
        || async { store.renew(&lease).await.is_ok() },
    )
    .await;
    assert!(store.release(&lease).await.expect("release"));
    // The shared watch stream saw the release if its member survived; if it
    // was on the killed member it ended (electors poll, then subscribe
    // again), and a new subscription works through a surviving member.
    let event = tokio::time::timeout(PATIENCE, events.recv())
        .await
        .expect("an event or the end of the subscription");
    match event {
        Some(leader_core::LeaseEvent::Vacated) => {}
        None => {
            let mut again = eventually(
                PATIENCE,
                "a new subscription through a surviving member",
                || async { store.watch(&key).await.ok() },
            )
            .await;
            let Acquire::Acquired(next) = store.acquire(&key, &me, LEASE).await.expect("acquire")
            else {
                panic!("the released key is free");
            };
            let event = tokio::time::timeout(PATIENCE, again.recv())
                .await
                .expect("an event");
            assert_eq!(
                event,
                Some(leader_core::LeaseEvent::Acquired {
                    holder: me.clone(),
                    token: next.token
                })
            );
        }
        other => panic!("unexpected event {other:?}"),
    }
}

#[tokio::test]
async fn killing_the_etcd_leader_while_an_elector_leads_recovers_safely() {
    let cluster = EtcdCluster::start().await.expect("etcd cluster");
    let prefix = format!("leader-etcd-cluster:{}:", std::process::id());
    let history = History::new();
    let configs: Vec<ElectionConfig> = (0..3)
        .map(|i| {
            let mut config = ElectionConfig::new("failover").with_timing(LEASE, RENEWAL);
            config.key_prefix = prefix.clone();
            config.instance_id = Some(format!("elector-{i}"));
            config
        })
        .collect();
    let validity = LEASE.mul_f64(1.0 - configs[0].clock_drift);
    let (electors, sampler) = start_recorded(configs, &history, || store(&cluster)).await;

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
    let victim = cluster
        .kill_leader(PATIENCE)
        .await
        .expect("kill the etcd leader");
    let killed = Instant::now();
    cluster
        .wait_for_leader(PATIENCE)
        .await
        .expect("a new etcd leader");

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
