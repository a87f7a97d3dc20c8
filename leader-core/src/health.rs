//! Health reports in the card's shape, and Kubernetes-style probes.
//!
//! A leader is `Healthy`; a follower is `Degraded` by default (the card's
//! convention: normal for followers, do not alert on it); `Unhealthy` means
//! the store has not answered for longer than the configured bound, the
//! elector believes it leads but has not renewed within the lease, or its
//! background task is dead or stuck (see liveness below). Alert only on
//! `Unhealthy`. Healthy and Degraded map to HTTP 200, Unhealthy to 503.
//!
//! # Liveness and readiness
//!
//! [`Elector::liveness`](crate::Elector::liveness) answers "should this
//! process be restarted?": it fails only when the elector's background task
//! has ended without a shutdown (it panicked) or has not been polled for
//! longer than a bound derived from the timing (retry period + request
//! timeout + 1 s), e.g. because a store client blocks the runtime thread.
//! Every wait in the election loop is bounded by a timeout or a wake-up
//! time, so a loop that makes no progress is a task that is not being
//! polled: the task is wrapped so that it is woken every retry period and
//! records each poll. A store outage never fails liveness: restarting
//! would not repair the store, and would restart every replica at once.
//!
//! Readiness ("should this pod receive traffic?") is the application's
//! choice, see [`Readiness`].

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::Poll;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::time::{Instant, MissedTickBehavior};

use crate::elector::Elector;
use crate::names::{FencingToken, HolderId};
use crate::timing::Timing;

/// The health status, spelled as the card spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum HealthStatus {
    /// The instance leads (or election is disabled).
    Healthy,
    /// A normal follower.
    Degraded,
    /// The store is unreachable, or leadership is in doubt.
    Unhealthy,
}

impl HealthStatus {
    /// The HTTP status a health endpoint should answer with.
    pub fn http_status(self) -> u16 {
        match self {
            HealthStatus::Healthy | HealthStatus::Degraded => 200,
            HealthStatus::Unhealthy => 503,
        }
    }

    /// `"Healthy"`, `"Degraded"` or `"Unhealthy"`.
    pub fn as_str(self) -> &'static str {
        match self {
            HealthStatus::Healthy => "Healthy",
            HealthStatus::Degraded => "Degraded",
            HealthStatus::Unhealthy => "Unhealthy",
        }
    }
}

/// The data part of a health report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct HealthData {
    /// Whether this instance may act as leader right now.
    pub is_leader: bool,
    /// This instance's holder id.
    pub instance_id: HolderId,
    /// The resource name.
    pub resource: String,
    /// The current leader, when known.
    pub leader_id: Option<HolderId>,
    /// This instance's fencing token while it leads.
    pub fencing_token: Option<FencingToken>,
    /// How long this instance's leadership stays valid without renewal.
    #[serde(serialize_with = "opt_millis", rename = "lease_remaining_ms")]
    pub lease_remaining: Option<Duration>,
    /// Time since the last successful renewal (or acquisition) of this
    /// instance's lease.
    #[serde(serialize_with = "opt_millis", rename = "since_last_renewal_ms")]
    pub since_last_renewal: Option<Duration>,
    /// Failed store calls in a row.
    pub consecutive_failures: u32,
    /// The store kind (`redis`, `etcd`, `postgres`, `memory`).
    pub store: &'static str,
    /// `"election"`, or `"single-instance"` when election is disabled and
    /// this instance leads without asking anyone: every replica so
    /// configured does the singleton work.
    pub mode: &'static str,
}

/// The health `mode` of an elector on `store` (`"disabled"`: no election).
pub(crate) fn mode_of(store: &str) -> &'static str {
    if store == "disabled" {
        "single-instance"
    } else {
        "election"
    }
}

/// One health report: the `leader_election` entry of a health document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct HealthReport {
    /// The status.
    pub status: HealthStatus,
    /// A human-readable reason.
    pub description: String,
    /// The details.
    pub data: HealthData,
    /// The last store error, when Unhealthy (already free of secrets).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exception: Option<String>,
}

impl HealthReport {
    /// The whole health document in the card's shape:
    /// `{"status": ..., "results": {"leader_election": {...}}}`, so that
    /// `jq '.results.leader_election.status'` and `.data.is_leader` work.
    pub fn to_document(&self) -> Value {
        json!({
            "status": self.status,
            "results": { "leader_election": self },
        })
    }
}

fn opt_millis<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        None => s.serialize_none(),
    }
}

/// The outcome of a liveness or readiness probe.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct Probe {
    /// Whether the probe passes.
    pub pass: bool,
    /// Why, for people reading the probe's output.
    pub reason: String,
}

impl Probe {
    /// A passing probe.
    pub fn pass(reason: impl Into<String>) -> Self {
        Probe {
            pass: true,
            reason: reason.into(),
        }
    }

    /// A failing probe.
    pub fn fail(reason: impl Into<String>) -> Self {
        Probe {
            pass: false,
            reason: reason.into(),
        }
    }

    /// 200 when the probe passes, 503 when it fails (what Kubernetes' HTTP
    /// probes expect).
    pub fn http_status(&self) -> u16 {
        if self.pass { 200 } else { 503 }
    }

    /// `{"status": "pass"|"fail", "reason": ...}`.
    pub fn to_document(&self) -> Value {
        json!({
            "status": if self.pass { "pass" } else { "fail" },
            "reason": self.reason,
        })
    }
}

/// When a pod should receive traffic: the application's choice.
///
/// * [`Readiness::Always`] (the default): ready while the process runs.
///   Right for a service that every replica can serve, leader or not.
/// * [`Readiness::WhenLeader`]: ready only while this instance leads. Right
///   for a Service that must reach the leader alone (e.g. a singleton
///   webhook). During a failover no pod is ready, and a Deployment rollout
///   waits for readiness: pair it with `maxUnavailable` so rollouts proceed.
/// * [`Readiness::WhenStoreHealthy`]: ready unless health is `Unhealthy`.
///   Beware: a store outage makes *every* replica unready at the same
///   moment, so Kubernetes removes them all from the Service's endpoints and
///   the Service answers nothing, even requests that never needed the
///   store. Use it only when serving without the store is worse than not
///   serving at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Readiness {
    /// Always ready.
    #[default]
    Always,
    /// Ready while this instance leads.
    WhenLeader,
    /// Ready unless health is [`HealthStatus::Unhealthy`].
    WhenStoreHealthy,
}

impl Readiness {
    /// Probes `elector` under this policy.
    pub fn check(self, elector: &Elector) -> Probe {
        match self {
            Readiness::Always => Probe::pass("always ready"),
            Readiness::WhenLeader if elector.is_leader() => Probe::pass("leader"),
            Readiness::WhenLeader => Probe::fail("not the leader"),
            Readiness::WhenStoreHealthy => {
                let report = elector.health();
                if report.status == HealthStatus::Unhealthy {
                    Probe::fail(report.description)
                } else {
                    Probe::pass(report.description)
                }
            }
        }
    }
}

/// Records that a background task is being polled, for the liveness probe.
#[derive(Debug)]
pub(crate) struct Heartbeat {
    origin: Instant,
    /// Nanoseconds after `origin` of the last poll.
    last: AtomicU64,
    /// The task is woken at least this often.
    period: Duration,
    /// No poll for longer than this means stuck.
    stuck_after: Duration,
}

/// Slack for a busy runtime on top of the timing-derived bound.
const SCHEDULING_MARGIN: Duration = Duration::from_secs(1);

impl Heartbeat {
    /// Woken every retry period; stuck after a retry period plus a request
    /// timeout (a store call that blocks the thread for less than one
    /// request may take is tolerated) plus [`SCHEDULING_MARGIN`].
    pub(crate) fn new(timing: &Timing) -> Self {
        let period = timing.retry_period.max(Duration::from_millis(1));
        Heartbeat {
            origin: Instant::now(),
            last: AtomicU64::new(0),
            period,
            stuck_after: period + timing.request_timeout + SCHEDULING_MARGIN,
        }
    }

    fn beat(&self) {
        let nanos = Instant::now()
            .saturating_duration_since(self.origin)
            .as_nanos();
        self.last
            .store(u64::try_from(nanos).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    /// Time since the task was last polled (since creation before that).
    pub(crate) fn silent_for(&self) -> Duration {
        let last = self.origin + Duration::from_nanos(self.last.load(Ordering::Relaxed));
        Instant::now().saturating_duration_since(last)
    }

    /// Polls `task`, beating after every poll that returns, and keeps a
    /// wake-up pending every period so an idle task is still polled.
    pub(crate) async fn keep_beating<F: Future>(self: Arc<Self>, task: F) -> F::Output {
        let mut task = std::pin::pin!(task);
        let mut tick = tokio::time::interval(self.period);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        self.beat();
        std::future::poll_fn(|cx| {
            if let Poll::Ready(out) = task.as_mut().poll(cx) {
                return Poll::Ready(out);
            }
            self.beat();
            while tick.poll_tick(cx).is_ready() {}
            Poll::Pending
        })
        .await
    }
}

/// The liveness of an elector: `enabled` (false: single-instance mode, no
/// task), `stopped` (shut down or aborted on purpose), `task_finished`
/// (`None` once the handle was taken by a shutdown).
pub(crate) fn liveness(
    enabled: bool,
    stopped: bool,
    task_finished: Option<bool>,
    heartbeat: &Heartbeat,
) -> Probe {
    if !enabled {
        return Probe::pass("election disabled");
    }
    if stopped {
        return Probe::pass("shut down");
    }
    match task_finished {
        Some(true) => Probe::fail("the elector task has ended without a shutdown (it panicked)"),
        Some(false) | None => {
            let silent = heartbeat.silent_for();
            if silent > heartbeat.stuck_after {
                Probe::fail(format!(
                    "the elector task has not run for {silent:?} (bound {:?}): the runtime thread is blocked or starved",
                    heartbeat.stuck_after
                ))
            } else {
                Probe::pass("running")
            }
        }
    }
}

/// `report`, made Unhealthy with the probe's reason when liveness fails.
pub(crate) fn with_liveness(mut report: HealthReport, liveness: &Probe) -> HealthReport {
    if !liveness.pass {
        report.status = HealthStatus::Unhealthy;
        report.description = liveness.reason.clone();
    }
    report
}
