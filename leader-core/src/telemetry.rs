//! Metrics (through the `metrics` crate), the `tracing` span and events
//! operators grep for, and the heartbeat behind the liveness probe.
//!
//! Electors and named locks share this code but not their names: a
//! [`Kind`] picks the metric family, the subject label (`resource` or
//! `lock`) and the log messages, so a lock's release never moves an
//! election's `is_leader` gauge. The tables are in the crate README.
//!
//! Handles are registered once, when the elector starts (or the lock is
//! tried), so install your recorder before that.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use metrics::{Counter, Gauge, Histogram, Unit};
use tokio::time::Instant;
use tracing::{Instrument, Level, Span};

use crate::ErrorKind;
use crate::config::ElectionConfig;
use crate::health::Heartbeat;
use crate::names::{FencingToken, HolderId};
use crate::timing::Timing;

/// Why a term ended without the instance choosing to end it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LossReason {
    /// The store says someone else holds the lease (or nobody).
    NotHolder = 0,
    /// No renewal succeeded before the renew deadline.
    RenewDeadline = 1,
    /// The elector was aborted (simulated crash).
    Aborted = 2,
    /// A named lock reached its `hold_at_most` bound and was given up.
    HoldLimit = 3,
}

impl LossReason {
    const ALL: [LossReason; 4] = [
        LossReason::NotHolder,
        LossReason::RenewDeadline,
        LossReason::Aborted,
        LossReason::HoldLimit,
    ];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            LossReason::NotHolder => "not_holder",
            LossReason::RenewDeadline => "renew_deadline",
            LossReason::Aborted => "aborted",
            LossReason::HoldLimit => "hold_at_most",
        }
    }
}

/// What is being held: an elected role or a named one-shot lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// An [`Elector`](crate::Elector)'s resource.
    Election,
    /// A [`Locks`](crate::Locks) lock.
    Lock,
}

/// The store operations counted up front in `store_errors_total` (others are
/// registered on first use).
const STORE_OPERATIONS: [&str; 4] = ["acquire", "renew", "release", "watch"];

/// A follower's store errors are warned about at most this often; the ones
/// in between are logged at debug and counted in the next warning.
pub(crate) const STORE_ERROR_WARN_EVERY: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Metric {
    Held,
    Acquired,
    Lost,
    Busy,
    RenewalFailures,
    StoreErrors,
    LeaderChanges,
    LastTransition,
    WorkPanics,
    AcquireDuration,
    RenewDuration,
    LeaseRemaining,
}

#[derive(Debug, Clone, Copy)]
enum Shape {
    Counter,
    Gauge,
    Histogram,
}

/// One metric of a family: what it is called after the prefix, and its HELP.
#[derive(Debug)]
struct Def {
    metric: Metric,
    suffix: &'static str,
    shape: Shape,
    unit: Option<Unit>,
    help: &'static str,
}

const fn def(
    metric: Metric,
    suffix: &'static str,
    shape: Shape,
    unit: Option<Unit>,
    help: &'static str,
) -> Def {
    Def {
        metric,
        suffix,
        shape,
        unit,
        help,
    }
}

const ELECTION: [Def; 11] = [
    def(
        Metric::Held,
        "is_leader",
        Shape::Gauge,
        None,
        "1 while this holder leads the resource, else 0",
    ),
    def(
        Metric::Acquired,
        "acquired_total",
        Shape::Counter,
        None,
        "Leadership terms won by this holder",
    ),
    def(
        Metric::Lost,
        "lost_total",
        Shape::Counter,
        None,
        "Leadership terms that ended without this holder choosing to end them, by reason",
    ),
    def(
        Metric::RenewalFailures,
        "renewal_failures_total",
        Shape::Counter,
        None,
        "Failed or unanswered lease renewals by the leader",
    ),
    def(
        Metric::StoreErrors,
        "store_errors_total",
        Shape::Counter,
        None,
        "Failed or unanswered store calls (leaders and followers), by operation",
    ),
    def(
        Metric::LeaderChanges,
        "leader_changes_observed_total",
        Shape::Counter,
        None,
        "Changes of the leader's identity seen by this holder (followers included)",
    ),
    def(
        Metric::LastTransition,
        "last_transition_timestamp_seconds",
        Shape::Gauge,
        Some(Unit::Seconds),
        "Unix time of this holder's last leadership transition (won, lost or released)",
    ),
    def(
        Metric::WorkPanics,
        "work_panics_total",
        Shape::Counter,
        None,
        "Panics of run-while-leader work",
    ),
    def(
        Metric::AcquireDuration,
        "acquire_duration_seconds",
        Shape::Histogram,
        Some(Unit::Seconds),
        "Duration of acquire calls to the store",
    ),
    def(
        Metric::RenewDuration,
        "renew_duration_seconds",
        Shape::Histogram,
        Some(Unit::Seconds),
        "Duration of renew calls to the store",
    ),
    def(
        Metric::LeaseRemaining,
        "lease_remaining_seconds",
        Shape::Gauge,
        Some(Unit::Seconds),
        "How long the leadership stays valid without another renewal",
    ),
];

const LOCK: [Def; 4] = [
    def(
        Metric::Held,
        "lock_held",
        Shape::Gauge,
        None,
        "1 while this holder holds the named lock, else 0",
    ),
    def(
        Metric::Acquired,
        "lock_acquired_total",
        Shape::Counter,
        None,
        "Acquisitions of the named lock by this holder",
    ),
    def(
        Metric::Busy,
        "lock_busy_total",
        Shape::Counter,
        None,
        "Tries that found the named lock held by someone else",
    ),
    def(
        Metric::Lost,
        "lock_lost_total",
        Shape::Counter,
        None,
        "Named locks lost before release, by reason",
    ),
];

impl Kind {
    fn defs(self) -> &'static [Def] {
        match self {
            Kind::Election => &ELECTION,
            Kind::Lock => &LOCK,
        }
    }

    /// The label naming what is held.
    fn subject_label(self) -> &'static str {
        match self {
            Kind::Election => "resource",
            Kind::Lock => "lock",
        }
    }

    fn messages(self) -> Messages {
        match self {
            Kind::Election => Messages {
                acquired: "Leadership acquired",
                renewed: "Leadership renewed",
                renew_failed: "Leadership renewal failed",
                lost: "Leadership lost",
                released: "Leadership released",
            },
            Kind::Lock => Messages {
                acquired: "Lock acquired",
                renewed: "Lock renewed",
                renew_failed: "Lock renewal failed",
                lost: "Lock lost",
                released: "Lock released",
            },
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Messages {
    acquired: &'static str,
    renewed: &'static str,
    renew_failed: &'static str,
    lost: &'static str,
    released: &'static str,
}

/// Describes every metric of electors and named locks under `prefix` to the
/// installed recorder, so that exporters print a `# HELP` line (and unit)
/// for each. Electors and locks call it when they register their handles;
/// call it yourself to describe the metrics before any exist.
pub fn describe_metrics(prefix: &str) {
    for d in ELECTION.iter().chain(LOCK.iter()) {
        let name = format!("{prefix}_{}", d.suffix);
        metrics::with_recorder(|r| {
            let key = metrics::KeyName::from(name);
            match d.shape {
                Shape::Counter => r.describe_counter(key, d.unit, d.help.into()),
                Shape::Gauge => r.describe_gauge(key, d.unit, d.help.into()),
                Shape::Histogram => r.describe_histogram(key, d.unit, d.help.into()),
            }
        });
    }
}

/// The `holder` label: the configured instance id, else the host name (the
/// pod name on Kubernetes). Never the generated holder id, whose random part
/// would make a new series on every restart.
pub(crate) fn holder_label(config: &ElectionConfig) -> String {
    if let Some(id) = &config.instance_id {
        return id.clone();
    }
    let host = gethostname::gethostname().to_string_lossy().into_owned();
    let host: String = host.chars().filter(|c| !c.is_control()).collect();
    if host.trim().is_empty() {
        "unknown".to_owned()
    } else {
        host
    }
}

/// Rate limiting of store-error warnings.
#[derive(Debug, Default)]
struct ErrorLog {
    last_warned: Option<Instant>,
    suppressed: u64,
}

/// Emits an event with the subject field named after the kind (`resource`
/// or `lock`) and the holder's `instance`, so every line is attributable
/// even where the span is filtered out.
macro_rules! event {
    ($t:expr, $level:expr, $($rest:tt)*) => {
        match $t.kind {
            Kind::Election => tracing::event!($level, resource = %$t.subject,
                instance = %$t.instance, $($rest)*),
            Kind::Lock => tracing::event!($level, lock = %$t.subject,
                instance = %$t.instance, $($rest)*),
        }
    };
}

/// The metric handles, span and log fields of one elector or lock.
#[derive(Debug)]
pub(crate) struct Telemetry {
    kind: Kind,
    prefix: String,
    /// The resource or lock name.
    subject: String,
    holder_label: String,
    /// The full holder id, for logs only (never a label).
    instance: String,
    detailed: bool,
    span: Span,
    heartbeat: Arc<Heartbeat>,
    held: Gauge,
    acquired: Counter,
    busy: Counter,
    renewal_failures: Counter,
    /// `(operation, counter)` for [`STORE_OPERATIONS`].
    store_errors: Vec<(&'static str, Counter)>,
    leader_changes: Counter,
    last_transition: Gauge,
    work_panics: Counter,
    acquire_duration: Histogram,
    renew_duration: Histogram,
    lease_remaining: Gauge,
    /// One counter per [`LossReason`], registered up front like the others.
    lost: [Counter; LossReason::ALL.len()],
    error_log: Mutex<ErrorLog>,
    last_leader: Mutex<Option<HolderId>>,
}

impl Telemetry {
    /// Handles for `subject` (the resource or lock name) held as `instance`,
    /// labelled with the subject and [`holder_label`], and describes the
    /// metrics. `config` must have passed validation.
    pub(crate) fn new(
        kind: Kind,
        config: &ElectionConfig,
        subject: &str,
        instance: &HolderId,
    ) -> Self {
        describe_metrics(&config.metrics_prefix);
        let holder_label = holder_label(config);
        let span = match kind {
            Kind::Election => {
                tracing::info_span!("election", resource = %subject, instance = %instance)
            }
            Kind::Lock => tracing::info_span!("lock", lock = %subject, instance = %instance),
        };
        let mut telemetry = Telemetry {
            kind,
            prefix: config.metrics_prefix.clone(),
            subject: subject.to_owned(),
            holder_label,
            instance: instance.as_str().to_owned(),
            detailed: config.enable_detailed_logging,
            span,
            heartbeat: Arc::new(Heartbeat::new(&Timing::from_config(config))),
            held: Gauge::noop(),
            acquired: Counter::noop(),
            busy: Counter::noop(),
            renewal_failures: Counter::noop(),
            store_errors: Vec::new(),
            leader_changes: Counter::noop(),
            last_transition: Gauge::noop(),
            work_panics: Counter::noop(),
            acquire_duration: Histogram::noop(),
            renew_duration: Histogram::noop(),
            lease_remaining: Gauge::noop(),
            lost: LossReason::ALL.map(|_| Counter::noop()),
            error_log: Mutex::new(ErrorLog::default()),
            last_leader: Mutex::new(None),
        };
        telemetry.register();
        telemetry
    }

    /// Registers the handles of the kind's family; the rest stay no-ops.
    fn register(&mut self) {
        for d in self.kind.defs() {
            match d.metric {
                Metric::Held => self.held = self.gauge(d),
                Metric::Acquired => self.acquired = self.counter(d, None),
                Metric::Busy => self.busy = self.counter(d, None),
                Metric::RenewalFailures => self.renewal_failures = self.counter(d, None),
                Metric::LeaderChanges => self.leader_changes = self.counter(d, None),
                Metric::LastTransition => self.last_transition = self.gauge(d),
                Metric::WorkPanics => self.work_panics = self.counter(d, None),
                Metric::AcquireDuration => self.acquire_duration = self.histogram(d),
                Metric::RenewDuration => self.renew_duration = self.histogram(d),
                Metric::LeaseRemaining => self.lease_remaining = self.gauge(d),
                Metric::Lost => {
                    self.lost = LossReason::ALL
                        .map(|reason| self.counter(d, Some(("reason", reason.as_str()))));
                }
                Metric::StoreErrors => {
                    self.store_errors = STORE_OPERATIONS
                        .iter()
                        .map(|op| (*op, self.counter(d, Some(("operation", op)))))
                        .collect();
                }
            }
        }
    }

    fn labels(&self, extra: Option<(&'static str, &str)>) -> Vec<(&'static str, String)> {
        let mut labels = vec![
            (self.kind.subject_label(), self.subject.clone()),
            ("holder", self.holder_label.clone()),
        ];
        if let Some((key, value)) = extra {
            labels.push((key, value.to_owned()));
        }
        labels
    }

    fn name(&self, d: &Def) -> String {
        format!("{}_{}", self.prefix, d.suffix)
    }

    fn counter(&self, d: &Def, extra: Option<(&'static str, &str)>) -> Counter {
        metrics::counter!(self.name(d), &self.labels(extra))
    }

    fn gauge(&self, d: &Def) -> Gauge {
        metrics::gauge!(self.name(d), &self.labels(None))
    }

    fn histogram(&self, d: &Def) -> Histogram {
        metrics::histogram!(self.name(d), &self.labels(None))
    }

    /// Runs a holder's background task inside its span (so events of the
    /// store calls it makes carry the resource and instance), beating the
    /// heartbeat the liveness probe reads.
    pub(crate) fn supervise<F>(&self, task: F) -> impl Future<Output = F::Output> + use<F>
    where
        F: Future,
    {
        self.heartbeat
            .clone()
            .keep_beating(task)
            .instrument(self.span.clone())
    }

    /// The heartbeat of the task started with [`Telemetry::supervise`].
    pub(crate) fn heartbeat(&self) -> &Heartbeat {
        &self.heartbeat
    }

    fn transition_now(&self) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        self.last_transition.set(now.as_secs_f64());
    }

    pub(crate) fn acquire_took(&self, elapsed: Duration) {
        self.acquire_duration.record(elapsed.as_secs_f64());
    }

    pub(crate) fn acquired(&self, token: FencingToken, remaining: Duration) {
        self.acquired.increment(1);
        self.held.set(1.0);
        self.lease_remaining.set(remaining.as_secs_f64());
        self.transition_now();
        event!(
            self,
            Level::INFO,
            token = token.0,
            "{}",
            self.kind.messages().acquired
        );
    }

    /// A try found the lock held by someone else.
    pub(crate) fn busy(&self) {
        self.busy.increment(1);
        event!(self, Level::DEBUG, "Lock busy");
    }

    pub(crate) fn renewed(&self, token: FencingToken, elapsed: Duration, remaining: Duration) {
        self.renew_duration.record(elapsed.as_secs_f64());
        self.lease_remaining.set(remaining.as_secs_f64());
        let message = self.kind.messages().renewed;
        let elapsed_ms = elapsed.as_millis() as u64;
        if self.detailed {
            event!(self, Level::INFO, token = token.0, elapsed_ms, "{message}");
        } else {
            event!(self, Level::DEBUG, token = token.0, elapsed_ms, "{message}");
        }
    }

    pub(crate) fn renew_failed(
        &self,
        token: FencingToken,
        elapsed: Duration,
        error: &crate::Error,
    ) {
        self.renew_duration.record(elapsed.as_secs_f64());
        self.renewal_failures.increment(1);
        // NotHolder is an answer, not a failing store: it is counted as a loss.
        if error.kind() != ErrorKind::NotHolder {
            self.count_store_error("renew");
        }
        event!(self, Level::WARN, token = token.0, error = %error,
            "{}", self.kind.messages().renew_failed);
    }

    pub(crate) fn lost(&self, token: FencingToken, reason: LossReason) {
        self.held.set(0.0);
        self.lease_remaining.set(0.0);
        self.lost[reason as usize].increment(1);
        self.transition_now();
        event!(
            self,
            Level::WARN,
            token = token.0,
            reason = reason.as_str(),
            "{}",
            self.kind.messages().lost
        );
    }

    pub(crate) fn released(&self, token: FencingToken, released_in_store: bool) {
        self.held.set(0.0);
        self.lease_remaining.set(0.0);
        self.transition_now();
        event!(
            self,
            Level::INFO,
            token = token.0,
            released_in_store,
            "{}",
            self.kind.messages().released
        );
    }

    /// Run-while-leader work of the term with `token` panicked with `message`.
    pub(crate) fn work_panicked(&self, token: FencingToken, message: &str) {
        self.work_panics.increment(1);
        event!(
            self,
            Level::ERROR,
            token = token.0,
            panic = message,
            "Run-while-leader work panicked; stepping down"
        );
    }

    /// The leader as this holder now knows it (`None`: unknown or vacant).
    /// Counts a change whenever a known leader differs from the previous
    /// known one; learning the first leader after start is not a change.
    pub(crate) fn leader_seen(&self, leader: Option<&HolderId>) {
        if self.kind != Kind::Election {
            return;
        }
        let Some(leader) = leader else { return };
        let previous = {
            let mut last = self.last_leader.lock().unwrap_or_else(|e| e.into_inner());
            if last.as_ref() == Some(leader) {
                return;
            }
            last.replace(leader.clone())
        };
        if let Some(previous) = previous {
            self.leader_changes.increment(1);
            event!(self, Level::INFO, from = %previous, to = %leader, "Leader changed");
        }
    }

    fn count_store_error(&self, operation: &'static str) {
        if self.kind != Kind::Election {
            return;
        }
        match self.store_errors.iter().find(|(op, _)| *op == operation) {
            Some((_, counter)) => counter.increment(1),
            // An operation not registered up front: register it now.
            None => {
                if let Some(d) = ELECTION.iter().find(|d| d.metric == Metric::StoreErrors) {
                    self.counter(d, Some(("operation", operation))).increment(1);
                }
            }
        }
    }

    /// A store call other than renew failed. Counted every time; warned
    /// about at most once per [`STORE_ERROR_WARN_EVERY`] with the number of
    /// errors suppressed since the last warning (those go to debug).
    pub(crate) fn store_error(&self, operation: &'static str, error: &crate::Error) {
        self.count_store_error(operation);
        let now = Instant::now();
        let suppressed = {
            let mut log = self.error_log.lock().unwrap_or_else(|e| e.into_inner());
            match log.last_warned {
                Some(at) if now.saturating_duration_since(at) < STORE_ERROR_WARN_EVERY => {
                    log.suppressed += 1;
                    None
                }
                _ => {
                    log.last_warned = Some(now);
                    Some(std::mem::take(&mut log.suppressed))
                }
            }
        };
        match suppressed {
            Some(suppressed) => event!(self, Level::WARN, operation, error = %error,
                suppressed, "Store call failed"),
            None => event!(self, Level::DEBUG, operation, error = %error, "Store call failed"),
        }
    }
}
