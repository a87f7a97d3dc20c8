//! A three-member etcd cluster loses its majority while an elector leads:
//! the leader steps down before its validity ends, every store error is a
//! typed `ErrorKind`, and exactly one leader follows once the members are
//! back.

mod support;

use std::time::Duration;

use leader_core::{
    Acquire, ElectionConfig, Elector, ErrorKind, FencingToken, HolderId, LeaseStore,
};
use leader_etcd::EtcdStore;
use leader_testkit::history::{CheckOptions, History, Op, Outcome};
use leader_testkit::servers::EtcdCluster;
use leader_testkit::wait::eventually;
use support::history::start_recorded;
use support::{PATIENCE, SLACK};
use tokio::time::Instant;

const LEASE: Duration = Duration::from_secs(3);
const RENEWAL: Duration = Duration::from_millis(500);
/// The store's own bound on each call (`request_timeout` in its URL).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(1);

fn store(cluster: &EtcdCluster) -> EtcdStore {
    EtcdStore::from_url(&format!(
        "{}?request_timeout={}ms&connect_timeout=300ms",
        cluster.url(),
        REQUEST_TIMEOUT.as_millis()
    ))
    .expect("cluster store")
}

fn config(prefix: &str, i: usize) -> ElectionConfig {
    let mut config = ElectionConfig::new("majority").with_timing(LEASE, RENEWAL);
    config.key_prefix = prefix.to_owned();
    config.instance_id = Some(format!("elector-{i}"));
    config
}

/// When the last acquire or renew of `holder`'s term `token` that succeeded
/// was sent (invoked: the recorder times the call from just before it is
/// sent, so this is no earlier than the elector's own send instant).
fn last_ok_sent(history: &History, holder: &HolderId, token: FencingToken) -> Instant {
    history
        .events()
        .iter()
        .filter(|e| {
            e.process == holder.as_str()
                && e.token == Some(token)
                && e.outcome == Outcome::Ok
                && matches!(e.op, Op::Acquire | Op::Renew)
        })
        .map(|e| e.invoked)
        .max()
        .expect("the leader's term began with a successful acquire")
}

/// A store error during the outage must say what happened as a kind: the
/// store could not be reached or did not answer, nothing else (a
/// `Protocol` or `NotHolder` here would make callers act wrongly).
fn assert_outage_kind(what: &str, kind: Option<ErrorKind>) {
    assert!(
        matches!(
            kind,
            Some(ErrorKind::Unavailable | ErrorKind::Indeterminate)
        ),
        "{what} without a majority: expected an Unavailable or Indeterminate error, got {kind:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_the_majority_steps_the_leader_down_in_time_and_one_leader_follows() {
    let cluster = EtcdCluster::start().await.expect("etcd cluster");
    let prefix = format!("leader-etcd-majority:{}:", std::process::id());
    let history = History::new();
    let configs: Vec<ElectionConfig> = (0..3).map(|i| config(&prefix, i)).collect();
    let validity = LEASE.mul_f64(1.0 - configs[0].clock_drift);
    let renew_deadline = configs[0].renew_deadline();
    let (electors, sampler) = start_recorded(configs, &history, || store(&cluster)).await;
    let leader = electors
        .iter()
        .find(|e| e.is_leader())
        .expect("a leader")
        .clone();
    let token = leader.token().expect("the leader's token");
    let holder = leader.instance_id().clone();
    let mut state = leader.subscribe();
    // Kill once the leader is in its steady renewal rhythm.
    eventually(PATIENCE, "the leader renews twice", || async {
        history
            .events()
            .iter()
            .filter(|e| e.op == Op::Renew && e.outcome == Outcome::Ok && e.token == Some(token))
            .count()
            >= 2
    })
    .await;

    // Two of three members die at once: the survivor has no quorum.
    let etcd_leader = cluster
        .wait_for_leader(PATIENCE)
        .await
        .expect("an etcd leader");
    let victims = [etcd_leader, (etcd_leader + 1) % EtcdCluster::SIZE];
    let (first, second) = tokio::join!(
        cluster.member(victims[0]).kill(),
        cluster.member(victims[1]).kill()
    );
    first.and(second).expect("kill two etcd members");
    let killed = Instant::now();

    // The leader's task steps down on its own (its published state turns
    // false), before the validity of its last successful renewal ends.
    tokio::time::timeout(PATIENCE, state.wait_for(|s| !s.is_leader))
        .await
        .expect("the leader never stepped down")
        .expect("the elector is alive");
    let stepped_down = Instant::now();
    history.instant(holder.as_str(), Op::StepDown, Outcome::Ok, Some(token));
    let sent = last_ok_sent(&history, &holder, token);
    assert!(
        stepped_down < sent + validity,
        "stepped down {:?} after the last successful renewal was sent; its validity \
         (lease {LEASE:?} less clock drift) is {validity:?}\n{}",
        stepped_down - sent,
        history.timeline(40)
    );
    assert!(!leader.is_leader(), "is_leader() after the step-down");

    // Without a majority every call fails within the store's own timeout,
    // with a typed error.
    let observer = store(&cluster);
    let key = leader.key().clone();
    let other = HolderId::new("observer").expect("holder");
    let call_bound = REQUEST_TIMEOUT + SLACK;
    let began = Instant::now();
    let acquired = observer.acquire(&key, &other, LEASE).await;
    assert!(
        !matches!(acquired, Ok(Acquire::Acquired(_))),
        "acquired without a majority: {acquired:?}"
    );
    assert_outage_kind("acquire", acquired.err().map(|e| e.kind()));
    let current = observer.current(&key).await;
    assert_outage_kind("current", current.err().map(|e| e.kind()));
    assert!(
        began.elapsed() < 2 * call_bound,
        "two calls took {:?}: the store must time out its own calls ({REQUEST_TIMEOUT:?} each)",
        began.elapsed()
    );
    // The electors' own calls sent during the outage: none took effect.
    let outage_ok = history
        .events()
        .iter()
        .filter(|e| e.invoked > killed && e.outcome == Outcome::Ok && e.op != Op::StepDown)
        .count();
    assert_eq!(
        outage_ok,
        0,
        "store calls succeeded without a majority:\n{}",
        history.timeline(40)
    );
    assert!(
        electors.iter().all(|e| !e.is_leader()),
        "an elector leads without a majority"
    );

    // Restore: the restarted members rejoin with their data.
    for i in victims {
        cluster.member(i).restart().await.expect("restart a member");
    }
    let restored = Instant::now();
    // The old lease may live on for one TTL (a new etcd leader renews
    // every lease), then a follower acquires within a retry period and a
    // request timeout.
    let recovery_bound = LEASE + renew_deadline + RENEWAL * 2 + REQUEST_TIMEOUT + SLACK;
    eventually(PATIENCE, "an elector leads and etcd agrees", || async {
        let Some(leader) = electors.iter().find(|e| e.is_leader()) else {
            return false;
        };
        observer
            .current(&key)
            .await
            .ok()
            .flatten()
            .is_some_and(|c| Some(c.token) == leader.token() && &c.holder == leader.instance_id())
    })
    .await;
    assert!(
        restored.elapsed() < recovery_bound,
        "a leader followed {:?} after the restore; expected within {recovery_bound:?}",
        restored.elapsed()
    );
    // At one instant: exactly one leader, in a new term.
    let leading: Vec<&Elector> = electors.iter().filter(|e| e.is_leader()).collect();
    assert_eq!(leading.len(), 1, "leaders after the restore");
    let new_token = leading[0].token().expect("token");
    assert!(
        new_token > token,
        "the term after the restore has token {new_token}, not above {token}"
    );

    for e in &electors {
        e.shutdown().await;
    }
    sampler.finish().await.assert_safe();
    // Believed terms (capped at the validity) never overlapped and tokens
    // only grew, as the store saw every call.
    history.assert_ok_with(&CheckOptions::with_validity(validity));
}
