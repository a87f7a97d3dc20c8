//! Metrics (through the `metrics` crate) and the `tracing` events operators
//! grep for.
//!
//! Metric names, under a configurable prefix (default `leader_election`; the
//! card used `honua_leader_election`), all labelled with `resource` and
//! `instance`:
//!
//! | name | kind | meaning |
//! |---|---|---|
//! | `<prefix>_is_leader` | gauge | 1 while this instance leads |
//! | `<prefix>_acquired_total` | counter | leadership terms won |
//! | `<prefix>_lost_total` | counter | terms ended involuntarily, label `reason` |
//! | `<prefix>_renewal_failures_total` | counter | failed renewal attempts |
//! | `<prefix>_acquire_duration_seconds` | histogram | acquire round trips |
//! | `<prefix>_renew_duration_seconds` | histogram | renew round trips |
//! | `<prefix>_lease_remaining_seconds` | gauge | validity left after the last renewal |
//! | `<prefix>_work_panics_total` | counter | run-while-leader work that panicked |
//!
//! Handles are registered once, when the elector starts, so install your
//! recorder (e.g. the Prometheus exporter) before starting electors.
//!
//! Log messages are stable: `Leadership acquired`, `Leadership lost`,
//! `Leadership released`, with `resource`, `instance` and `token` fields.

use std::time::Duration;

use metrics::{Counter, Gauge, Histogram};

use crate::names::{FencingToken, HolderId, LeaseKey};

/// Why a term ended without the instance choosing to end it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LossReason {
    /// The store says someone else holds the lease (or nobody).
    NotHolder = 0,
    /// No renewal succeeded before the renew deadline.
    RenewDeadline = 1,
    /// The elector was aborted (simulated crash).
    Aborted = 2,
}

impl LossReason {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            LossReason::NotHolder => "not_holder",
            LossReason::RenewDeadline => "renew_deadline",
            LossReason::Aborted => "aborted",
        }
    }
}

/// The metric handles and log fields of one elector or lock.
#[derive(Debug, Clone)]
pub(crate) struct Telemetry {
    resource: String,
    instance: String,
    detailed: bool,
    is_leader: Gauge,
    acquired: Counter,
    renewal_failures: Counter,
    acquire_duration: Histogram,
    renew_duration: Histogram,
    lease_remaining: Gauge,
    work_panics: Counter,
    /// One counter per [`LossReason`], registered up front like the others.
    lost: [Counter; 3],
}

impl Telemetry {
    /// Handles labelled with the key's resource and `instance` (the instance
    /// id, not a per-lock holder id: labels must stay few).
    pub(crate) fn new(prefix: &str, key: &LeaseKey, instance: &HolderId, detailed: bool) -> Self {
        let resource = key.resource().to_owned();
        let instance = instance.as_str().to_owned();
        let labels = [
            ("resource", resource.clone()),
            ("instance", instance.clone()),
        ];
        let name = |suffix: &str| format!("{prefix}_{suffix}");
        Telemetry {
            is_leader: metrics::gauge!(name("is_leader"), &labels),
            acquired: metrics::counter!(name("acquired_total"), &labels),
            renewal_failures: metrics::counter!(name("renewal_failures_total"), &labels),
            acquire_duration: metrics::histogram!(name("acquire_duration_seconds"), &labels),
            renew_duration: metrics::histogram!(name("renew_duration_seconds"), &labels),
            lease_remaining: metrics::gauge!(name("lease_remaining_seconds"), &labels),
            work_panics: metrics::counter!(name("work_panics_total"), &labels),
            lost: [
                LossReason::NotHolder,
                LossReason::RenewDeadline,
                LossReason::Aborted,
            ]
            .map(|reason| {
                let mut labels = labels.to_vec();
                labels.push(("reason", reason.as_str().to_owned()));
                metrics::counter!(name("lost_total"), &labels)
            }),
            resource,
            instance,
            detailed,
        }
    }

    pub(crate) fn acquire_took(&self, elapsed: Duration) {
        self.acquire_duration.record(elapsed.as_secs_f64());
    }

    pub(crate) fn acquired(&self, token: FencingToken, remaining: Duration) {
        self.acquired.increment(1);
        self.is_leader.set(1.0);
        self.lease_remaining.set(remaining.as_secs_f64());
        tracing::info!(
            resource = %self.resource,
            instance = %self.instance,
            token = token.0,
            "Leadership acquired"
        );
    }

    pub(crate) fn renewed(&self, token: FencingToken, elapsed: Duration, remaining: Duration) {
        self.renew_duration.record(elapsed.as_secs_f64());
        self.lease_remaining.set(remaining.as_secs_f64());
        if self.detailed {
            tracing::info!(resource = %self.resource, instance = %self.instance, token = token.0,
                elapsed_ms = elapsed.as_millis() as u64, "Leadership renewed");
        } else {
            tracing::debug!(resource = %self.resource, instance = %self.instance, token = token.0,
                elapsed_ms = elapsed.as_millis() as u64, "Leadership renewed");
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
        tracing::warn!(resource = %self.resource, instance = %self.instance, token = token.0,
            error = %error, "Leadership renewal failed");
    }

    pub(crate) fn lost(&self, token: FencingToken, reason: LossReason) {
        self.is_leader.set(0.0);
        self.lease_remaining.set(0.0);
        self.lost[reason as usize].increment(1);
        tracing::warn!(resource = %self.resource, instance = %self.instance, token = token.0,
            reason = reason.as_str(), "Leadership lost");
    }

    pub(crate) fn released(&self, token: FencingToken, released_in_store: bool) {
        self.is_leader.set(0.0);
        self.lease_remaining.set(0.0);
        tracing::info!(resource = %self.resource, instance = %self.instance, token = token.0,
            released_in_store, "Leadership released");
    }

    /// Run-while-leader work of the term with `token` panicked with `message`.
    pub(crate) fn work_panicked(&self, token: FencingToken, message: &str) {
        self.work_panics.increment(1);
        tracing::error!(resource = %self.resource, instance = %self.instance, token = token.0,
            panic = message, "Run-while-leader work panicked; stepping down");
    }

    pub(crate) fn store_error(&self, operation: &'static str, error: &crate::Error) {
        if self.detailed {
            tracing::info!(resource = %self.resource, instance = %self.instance, operation,
                error = %error, "Store call failed");
        } else {
            tracing::debug!(resource = %self.resource, instance = %self.instance, operation,
                error = %error, "Store call failed");
        }
    }
}
