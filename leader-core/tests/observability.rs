//! Health statuses in the card's shape and the metrics an elector emits.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use leader_core::testing::Fault;
use leader_core::{Elector, ErrorKind, HealthStatus};
use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use metrics_util::{CompositeKey, MetricKind};

#[tokio::test(start_paused = true)]
async fn leader_is_healthy_follower_degraded_broken_store_unhealthy() {
    let (store, memory) = faulty();
    let a = start(store.clone(), "health", "a");
    wait_until("a leads", LEASE, || a.is_leader()).await;
    let b = start(Arc::new(memory), "health", "b");
    tokio::time::sleep(Duration::from_millis(10)).await;

    let h = a.health();
    assert_eq!(h.status, HealthStatus::Healthy);
    assert!(h.data.is_leader);
    assert_eq!(&h.data.instance_id, a.instance_id());
    assert!(h.data.instance_id.as_str().starts_with("a/"));
    assert_eq!(h.data.resource, "health");
    assert!(h.data.fencing_token.is_some());
    assert!(h.data.lease_remaining.is_some());
    let doc = h.to_document();
    assert_eq!(doc["results"]["leader_election"]["status"], "Healthy");
    assert_eq!(doc["results"]["leader_election"]["data"]["is_leader"], true);
    assert_eq!(doc["status"], "Healthy");

    let h = b.health();
    assert_eq!(
        h.status,
        HealthStatus::Degraded,
        "followers are Degraded (normal)"
    );
    assert_eq!(h.data.leader_id.as_ref(), Some(a.instance_id()));
    assert_eq!(h.status.http_status(), 200);

    // a's store goes away: a steps down and, past the bound, is Unhealthy.
    store.set_all(Some(Fault::Fail(ErrorKind::Unavailable)));
    let mut state = a.subscribe();
    state.wait_for(|s| !s.is_leader).await.expect("alive");
    let h = a.health();
    assert_eq!(h.status, HealthStatus::Unhealthy, "{h:?}");
    assert_eq!(h.status.http_status(), 503);
    assert!(
        h.exception.as_deref().unwrap_or("").contains("unavailable"),
        "{h:?}"
    );
    assert!(h.data.consecutive_failures > 0);
    let doc = h.to_document();
    assert_eq!(doc["results"]["leader_election"]["status"], "Unhealthy");
    assert_eq!(
        doc["results"]["leader_election"]["data"]["is_leader"],
        false
    );
}

type Snapshot = Vec<(
    CompositeKey,
    Option<metrics::Unit>,
    Option<metrics::SharedString>,
    DebugValue,
)>;

/// A number read off the metric `name` of `kind` for resource "metrics"
/// (and `label` when given): counter increase since the previous snapshot
/// (the debugging recorder reports deltas), gauge value, or histogram count.
fn read(s: &Snapshot, kind: MetricKind, name: &str, label: Option<(&str, &str)>) -> Option<f64> {
    let has = |k: &CompositeKey, key: &str, value: &str| {
        k.key()
            .labels()
            .any(|l| l.key() == key && l.value() == value)
    };
    s.iter().find_map(|(k, _, _, v)| {
        let matches = k.kind() == kind
            && k.key().name() == name
            && has(k, "resource", "metrics")
            && label.is_none_or(|(lk, lv)| has(k, lk, lv));
        if !matches {
            return None;
        }
        Some(match v {
            DebugValue::Counter(n) => *n as f64,
            DebugValue::Gauge(g) => g.into_inner(),
            DebugValue::Histogram(samples) => samples.len() as f64,
        })
    })
}

fn counter(s: &Snapshot, name: &str, label: Option<(&str, &str)>) -> f64 {
    read(s, MetricKind::Counter, name, label).unwrap_or_else(|| panic!("counter {name} missing"))
}

fn gauge(s: &Snapshot, name: &str) -> f64 {
    read(s, MetricKind::Gauge, name, None).unwrap_or_else(|| panic!("gauge {name} missing"))
}

#[tokio::test(start_paused = true)]
async fn metrics_follow_leadership_under_the_configured_prefix() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let (store, _) = faulty();
    let mut config = config("metrics", "a");
    config.metrics_prefix = "honua_leader_election".into();
    // Handles are registered at start, so they bind to this recorder.
    let e = metrics::with_local_recorder(&recorder, || {
        Elector::start(store.clone(), config).expect("valid")
    });
    wait_until("leads", LEASE, || e.is_leader()).await;
    tokio::time::sleep(RENEW * 2 + Duration::from_millis(10)).await;
    let snap: Snapshot = snapshotter.snapshot().into_vec();
    assert_eq!(gauge(&snap, "honua_leader_election_is_leader"), 1.0);
    assert_eq!(
        counter(&snap, "honua_leader_election_acquired_total", None),
        1.0
    );
    assert!(gauge(&snap, "honua_leader_election_lease_remaining_seconds") > 0.0);
    let renews = read(
        &snap,
        MetricKind::Histogram,
        "honua_leader_election_renew_duration_seconds",
        None,
    );
    assert_eq!(renews, Some(2.0), "one renew sample per interval");

    store.set_all(Some(Fault::Fail(ErrorKind::Unavailable)));
    e.subscribe()
        .wait_for(|s| !s.is_leader)
        .await
        .expect("alive");
    let snap: Snapshot = snapshotter.snapshot().into_vec();
    assert_eq!(gauge(&snap, "honua_leader_election_is_leader"), 0.0);
    assert!(counter(&snap, "honua_leader_election_renewal_failures_total", None) >= 1.0);
    assert_eq!(
        counter(
            &snap,
            "honua_leader_election_lost_total",
            Some(("reason", "renew_deadline"))
        ),
        1.0
    );
    e.abort();
}
