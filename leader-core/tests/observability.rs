//! Health statuses in the card's shape, and the metrics and log lines of
//! electors and named locks.

mod common;

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use leader_core::{
    Elector, ErrorKind, HealthStatus, LeaseStore, Locks, MemoryStore, NotificationSupport,
};
use leader_testkit::wrap::{Call, Fault, Faults, Hooks, Op, Reply, Wrapped};
use metrics_util::CompositeKey;
use metrics_util::debugging::{DebugValue, DebuggingRecorder};

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

/// Every metric an elector registers, without the prefix.
const ELECTION_METRICS: [&str; 11] = [
    "is_leader",
    "acquired_total",
    "lost_total",
    "renewal_failures_total",
    "store_errors_total",
    "leader_changes_observed_total",
    "last_transition_timestamp_seconds",
    "work_panics_total",
    "acquire_duration_seconds",
    "renew_duration_seconds",
    "lease_remaining_seconds",
];

/// Every metric a named lock registers, without the prefix.
const LOCK_METRICS: [&str; 4] = [
    "lock_held",
    "lock_acquired_total",
    "lock_busy_total",
    "lock_lost_total",
];

fn label<'a>(k: &'a CompositeKey, key: &str) -> Option<&'a str> {
    k.key().labels().find(|l| l.key() == key).map(|l| l.value())
}

/// The values of the series named `name` carrying all of `labels`: counter
/// increase since the previous snapshot (the debugging recorder reports
/// deltas), gauge value, or histogram sample count.
fn values(s: &Snapshot, name: &str, labels: &[(&str, &str)]) -> Vec<f64> {
    s.iter()
        .filter(|(k, ..)| {
            k.key().name() == name && labels.iter().all(|(lk, lv)| label(k, lk) == Some(*lv))
        })
        .map(|(_, _, _, v)| match v {
            DebugValue::Counter(n) => *n as f64,
            DebugValue::Gauge(g) => g.into_inner(),
            DebugValue::Histogram(samples) => samples.len() as f64,
        })
        .collect()
}

/// The value of the one series named `name` carrying `labels`.
fn value(s: &Snapshot, name: &str, labels: &[(&str, &str)]) -> f64 {
    match values(s, name, labels)[..] {
        [v] => v,
        ref other => {
            let names: Vec<String> = s.iter().map(|(k, ..)| format!("{:?}", k.key())).collect();
            panic!("expected one series {name}{labels:?}, found {other:?}; have {names:#?}")
        }
    }
}

fn names(s: &Snapshot) -> Vec<&str> {
    s.iter().map(|(k, ..)| k.key().name()).collect()
}

/// Polls `fut` with `recorder` as the local recorder, so that handles
/// registered inside (a lock's, at acquisition) bind to it.
async fn recorded<F: Future>(recorder: &DebuggingRecorder, fut: F) -> F::Output {
    let mut fut = std::pin::pin!(fut);
    std::future::poll_fn(|cx| metrics::with_local_recorder(recorder, || fut.as_mut().poll(cx)))
        .await
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
    let ours = [("resource", "metrics"), ("holder", "a")];
    let snap: Snapshot = snapshotter.snapshot().into_vec();
    assert_eq!(value(&snap, "honua_leader_election_is_leader", &ours), 1.0);
    assert_eq!(
        value(&snap, "honua_leader_election_acquired_total", &ours),
        1.0
    );
    assert!(
        value(
            &snap,
            "honua_leader_election_lease_remaining_seconds",
            &ours
        ) > 0.0
    );
    assert_eq!(
        value(&snap, "honua_leader_election_renew_duration_seconds", &ours),
        2.0,
        "one renew sample per interval"
    );

    store.set_all(Some(Fault::Fail(ErrorKind::Unavailable)));
    e.subscribe()
        .wait_for(|s| !s.is_leader)
        .await
        .expect("alive");
    let snap: Snapshot = snapshotter.snapshot().into_vec();
    assert_eq!(value(&snap, "honua_leader_election_is_leader", &ours), 0.0);
    assert!(value(&snap, "honua_leader_election_renewal_failures_total", &ours) >= 1.0);
    let renew_errors = [ours[0], ours[1], ("operation", "renew")];
    assert!(
        value(
            &snap,
            "honua_leader_election_store_errors_total",
            &renew_errors
        ) >= 1.0
    );
    let deadline = [ours[0], ours[1], ("reason", "renew_deadline")];
    assert_eq!(
        value(&snap, "honua_leader_election_lost_total", &deadline),
        1.0
    );
    e.abort();
}

#[tokio::test(start_paused = true)]
async fn election_series_carry_resource_and_holder_and_are_described() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let e = metrics::with_local_recorder(&recorder, || {
        start(Arc::new(MemoryStore::new()), "described", "a")
    });
    wait_until("leads", LEASE, || e.is_leader()).await;
    let snap: Snapshot = snapshotter.snapshot().into_vec();
    let ours = [("resource", "described"), ("holder", "a")];
    for metric in ELECTION_METRICS {
        let name = format!("leader_election_{metric}");
        assert!(
            !values(&snap, &name, &ours).is_empty(),
            "{name} is registered up front with resource and holder; have {:?}",
            names(&snap)
        );
    }
    for (key, _, help, _) in &snap {
        assert!(
            label(key, "instance").is_none(),
            "`instance` collides with Prometheus's target label: {key:?}"
        );
        assert!(
            help.as_ref().is_some_and(|h| !h.is_empty()),
            "{} has no description (no # HELP line)",
            key.key().name()
        );
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs_f64();
    let at = value(
        &snap,
        "leader_election_last_transition_timestamp_seconds",
        &ours,
    );
    assert!(
        (now - 60.0..=now).contains(&at),
        "transition at {at}, now {now}"
    );
    e.abort();
}

#[tokio::test(start_paused = true)]
async fn without_an_instance_id_the_holder_label_is_the_host_name() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let store = Arc::new(MemoryStore::new());
    let mut config = config("hosts", "unused");
    config.instance_id = None;
    let (a, b) = metrics::with_local_recorder(&recorder, || {
        let a = Elector::start(store.clone(), config.clone()).expect("valid");
        let b = Elector::start(store.clone(), config).expect("valid");
        (a, b)
    });
    assert_ne!(a.instance_id(), b.instance_id(), "generated ids differ");
    let host = gethostname::gethostname().to_string_lossy().into_owned();
    let snap: Snapshot = snapshotter.snapshot().into_vec();
    let holders: std::collections::BTreeSet<&str> = snap
        .iter()
        .filter(|(k, ..)| k.key().name() == "leader_election_acquired_total")
        .filter_map(|(k, ..)| label(k, "holder"))
        .collect();
    assert_eq!(
        holders.into_iter().collect::<Vec<_>>(),
        [host.as_str()],
        "one stable series per host, not one per generated id"
    );
    a.abort();
    b.abort();
}

#[tokio::test(start_paused = true)]
async fn follower_store_errors_and_leader_changes_are_counted() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let memory = MemoryStore::new();
    let a = start(Arc::new(memory.clone()), "changes", "a");
    wait_until("a leads", LEASE, || a.is_leader()).await;
    // b polls every retry period (no notifications), so its errors show soon.
    let polling = memory
        .capabilities()
        .with_notifications(NotificationSupport::None);
    let b_store = Arc::new(Wrapped::new(
        Arc::new(memory.clone()),
        Faults::new().with_capabilities(polling),
    ));
    let (b, c) = metrics::with_local_recorder(&recorder, || {
        (
            start(b_store.clone(), "changes", "b"),
            start(Arc::new(memory.clone()), "changes", "c"),
        )
    });
    // Leader ids are holder ids: the instance name plus the library's
    // random part.
    let knows_a = |e: &Elector| e.subscribe().borrow().leader_id.as_ref() == Some(a.instance_id());
    wait_until("b and c know a", LEASE, || knows_a(&b) && knows_a(&c)).await;
    let _ = snapshotter.snapshot(); // counters report deltas from here

    b_store.set(Op::Acquire, Some(Fault::Fail(ErrorKind::Unavailable)));
    tokio::time::sleep(Duration::from_secs(5)).await;
    let snap: Snapshot = snapshotter.snapshot().into_vec();
    let b_acquire = [("holder", "b"), ("operation", "acquire")];
    let failed = value(&snap, "leader_election_store_errors_total", &b_acquire);
    // One attempt per retry period (500 ms, plus jitter) for 5 s.
    assert!(failed >= 5.0, "a follower's store errors count: {failed}");
    let c_acquire = [("holder", "c"), ("operation", "acquire")];
    assert_eq!(
        value(&snap, "leader_election_store_errors_total", &c_acquire),
        0.0
    );
    for holder in ["b", "c"] {
        let labels = [("holder", holder)];
        assert_eq!(
            value(
                &snap,
                "leader_election_leader_changes_observed_total",
                &labels
            ),
            0.0,
            "learning who leads at start is not a change"
        );
    }

    b_store.clear();
    a.shutdown().await;
    wait_until("a new leader", LEASE, || b.is_leader() || c.is_leader()).await;
    let (new_leader, new_id) = if b.is_leader() {
        ("b", b.instance_id().clone())
    } else {
        ("c", c.instance_id().clone())
    };
    let knows_new = |e: &Elector| e.subscribe().borrow().leader_id.as_ref() == Some(&new_id);
    wait_until("both know the new leader", LEASE, || {
        knows_new(&b) && knows_new(&c)
    })
    .await;
    let snap: Snapshot = snapshotter.snapshot().into_vec();
    for holder in ["b", "c"] {
        let labels = [("holder", holder)];
        assert_eq!(
            value(
                &snap,
                "leader_election_leader_changes_observed_total",
                &labels
            ),
            1.0,
            "{holder} saw a hand over to {new_leader}"
        );
    }
    b.abort();
    c.abort();
}

#[tokio::test(start_paused = true)]
async fn named_locks_have_their_own_metric_family_and_log_messages() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let logs = Captured::global();
    let (store, _) = faulty();
    let locks = metrics::with_local_recorder(&recorder, || {
        Locks::new(store.clone(), config("unused", "proc")).expect("valid")
    });
    let guard = recorded(&recorder, locks.try_acquire("nightly-report"))
        .await
        .expect("store ok")
        .expect("free");
    let busy = recorded(&recorder, locks.try_acquire("nightly-report"))
        .await
        .expect("store ok");
    assert!(busy.is_none());
    let ours = [("lock", "nightly-report"), ("holder", "proc")];
    let snap: Snapshot = snapshotter.snapshot().into_vec();
    assert_eq!(value(&snap, "leader_election_lock_held", &ours), 1.0);
    assert_eq!(
        value(&snap, "leader_election_lock_acquired_total", &ours),
        1.0
    );
    assert_eq!(value(&snap, "leader_election_lock_busy_total", &ours), 1.0);
    for metric in LOCK_METRICS {
        let name = format!("leader_election_{metric}");
        assert!(!values(&snap, &name, &ours).is_empty(), "{name} missing");
    }
    for (key, _, help, _) in &snap {
        assert!(
            help.as_ref().is_some_and(|h| !h.is_empty()),
            "{} has no description",
            key.key().name()
        );
    }

    assert!(recorded(&recorder, guard.release()).await.expect("release"));
    let snap: Snapshot = snapshotter.snapshot().into_vec();
    assert_eq!(value(&snap, "leader_election_lock_held", &ours), 0.0);
    for metric in ELECTION_METRICS {
        let name = format!("leader_election_{metric}");
        assert!(
            values(&snap, &name, &[]).is_empty(),
            "a lock must not touch the election's {name} (NoLeader would page after every release)"
        );
    }

    // A lock whose renewals fail is lost, and counted as such.
    let guard = recorded(&recorder, locks.try_acquire("nightly-report"))
        .await
        .expect("store ok")
        .expect("free");
    store.set(Op::Renew, Some(Fault::Fail(ErrorKind::Unavailable)));
    guard.lost().await;
    let snap: Snapshot = snapshotter.snapshot().into_vec();
    let lost = [ours[0], ours[1], ("reason", "renew_deadline")];
    assert_eq!(value(&snap, "leader_election_lock_lost_total", &lost), 1.0);
    drop(guard);

    let text = logs.lines_with("lock=nightly-report");
    for message in ["Lock acquired", "Lock released", "Lock lost"] {
        assert!(text.contains(message), "{message:?} missing in:\n{text}");
    }
    assert!(
        !text.contains("Leadership"),
        "locks log their own messages:\n{text}"
    );
}

/// Log lines written by a `tracing` fmt subscriber, kept for assertions.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Captured {
    /// A plain-text subscriber at INFO writing here.
    fn subscriber(&self) -> impl tracing::Subscriber + Send + Sync + 'static {
        tracing_subscriber::fmt()
            .with_writer(self.clone())
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
            .finish()
    }

    /// The capture behind this test binary's global subscriber. Global, not
    /// a thread's default: tests run on parallel threads, and a callsite first
    /// hit on a thread without a subscriber can keep its "not interested"
    /// verdict from a scoped subscriber, so events went missing at random.
    /// Each test reads only the lines of its own resource or lock.
    fn global() -> Captured {
        static GLOBAL: std::sync::OnceLock<Captured> = std::sync::OnceLock::new();
        GLOBAL
            .get_or_init(|| {
                let logs = Captured::default();
                tracing::subscriber::set_global_default(logs.subscriber())
                    .expect("no other global subscriber in this test binary");
                logs
            })
            .clone()
    }

    /// The captured lines that contain `needle`, joined by newlines.
    fn lines_with(&self, needle: &str) -> String {
        let all = String::from_utf8_lossy(&self.0.lock().expect("not poisoned")).into_owned();
        all.lines()
            .filter(|l| l.contains(needle))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("not poisoned").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

/// Logs every acquire: a store-level event whose context must come from the
/// elector's span.
#[derive(Debug)]
struct LogsAcquires;

#[async_trait::async_trait]
impl Hooks for LogsAcquires {
    async fn around(&self, call: Call<'_>, inner: &dyn LeaseStore) -> Reply {
        if call.op() == Op::Acquire {
            tracing::info!("store acquire called");
        }
        call.run(inner).await
    }
}

#[tokio::test(start_paused = true)]
async fn follower_store_errors_are_warned_rate_limited_within_the_elector_span() {
    let logs = Captured::global();
    let memory = MemoryStore::new();
    let a = start(Arc::new(memory.clone()), "logs", "a");
    wait_until("a leads", LEASE, || a.is_leader()).await;
    let faulty = Arc::new(Wrapped::new(Arc::new(memory), Faults::new()));
    faulty.set(Op::Acquire, Some(Fault::Fail(ErrorKind::Unavailable)));
    let config = config("logs", "b");
    let b = Elector::start(
        Arc::new(Wrapped::new(faulty.clone(), LogsAcquires)),
        config.clone(),
    )
    .expect("valid");
    // 95 s of failures, one per retry period: warnings at about 0, 30, 60
    // and 90 s, each later one counting the errors it stood for.
    tokio::time::sleep(Duration::from_secs(95)).await;
    let text = logs.lines_with("resource=logs");
    let warnings: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("Store call failed"))
        .collect();
    assert_eq!(warnings.len(), 4, "first error, then one per 30 s:\n{text}");
    assert!(warnings[0].contains("resource=logs") && warnings[0].contains("instance=b"));
    let slowest_retry = config.retry_period().mul_f64(1.0 + config.retry_jitter);
    let at_least = (30.0 / slowest_retry.as_secs_f64()).floor() as u64 - 1;
    for later in &warnings[1..] {
        let suppressed: u64 = later
            .split("suppressed=")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no suppressed count in {later}"));
        assert!(
            suppressed >= at_least,
            "{suppressed} < {at_least} in {later}"
        );
    }
    assert!(faulty.calls(Op::Acquire) > 100, "errors kept happening");
    let store_event = text
        .lines()
        .find(|l| l.contains("store acquire called"))
        .expect("the store logged");
    assert!(
        store_event.contains("election{") && store_event.contains("resource=logs"),
        "store-level events carry the elector's span: {store_event}"
    );
    a.abort();
    b.abort();
}
