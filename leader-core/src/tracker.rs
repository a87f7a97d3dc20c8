//! The state one lease holder shares between its background task and its
//! handles: the validity point behind `is_leader()`, the published
//! [`LeaderState`], the current term's cancellation, and what health needs.
//!
//! The elector and named-lock guards both use it, so the timing rules live in
//! one place.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::health::{HealthData, HealthReport, HealthStatus};
use crate::names::{FencingToken, HolderId, LeaseKey};
use crate::telemetry::{LossReason, Telemetry};
use crate::timing::Timing;

/// What an elector publishes to subscribers on every change.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct LeaderState {
    /// Whether this instance holds leadership (as its task last decided; for
    /// a safety check before acting use [`Elector::is_leader`](crate::Elector::is_leader),
    /// which also honours the validity deadline).
    pub is_leader: bool,
    /// The current leader when known (this instance while it leads).
    pub leader_id: Option<HolderId>,
    /// This instance's fencing token while it leads.
    pub token: Option<FencingToken>,
}

/// A term as seen by run-while-leader supervisors.
#[derive(Debug, Clone)]
pub(crate) struct ActiveTerm {
    pub(crate) token: FencingToken,
    /// Cancelled the moment the term ends.
    pub(crate) cancel: CancellationToken,
}

#[derive(Debug, Default)]
struct Inner {
    term: Option<ActiveTerm>,
    last_renewal_ok: Option<Instant>,
    last_contact_ok: Option<Instant>,
    consecutive_failures: u32,
    last_error: Option<String>,
    leader_id: Option<HolderId>,
    /// The token and validity point of the last term that ended.
    last_ended: Option<(FencingToken, Instant)>,
}

/// Shared state of one lease holder.
#[derive(Debug)]
pub(crate) struct LeaseTracker {
    pub(crate) key: LeaseKey,
    pub(crate) holder: HolderId,
    pub(crate) store_kind: &'static str,
    pub(crate) timing: Timing,
    pub(crate) telemetry: Telemetry,
    follower_status: HealthStatus,
    created: Instant,
    /// Nanoseconds after `created` until which the lease may be trusted, plus
    /// one; 0 means not leading. Read without locking by `is_valid`.
    valid_until: AtomicU64,
    inner: Mutex<Inner>,
    state_tx: watch::Sender<LeaderState>,
    term_tx: watch::Sender<Option<ActiveTerm>>,
    /// How many run-while-leader futures are running.
    pub(crate) work_active: watch::Sender<usize>,
    /// Set by `Elector::abort`: never release (a simulated crash).
    aborted: std::sync::atomic::AtomicBool,
}

const FOREVER: u64 = u64::MAX;

impl LeaseTracker {
    pub(crate) fn new(
        key: LeaseKey,
        holder: HolderId,
        store_kind: &'static str,
        timing: Timing,
        telemetry: Telemetry,
        follower_status: HealthStatus,
    ) -> Self {
        LeaseTracker {
            key,
            holder,
            store_kind,
            timing,
            telemetry,
            follower_status,
            created: Instant::now(),
            valid_until: AtomicU64::new(0),
            inner: Mutex::new(Inner::default()),
            state_tx: watch::channel(LeaderState::default()).0,
            term_tx: watch::channel(None).0,
            work_active: watch::channel(0).0,
            aborted: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Marks the holder as crashed on purpose: no release may follow.
    pub(crate) fn mark_aborted(&self) {
        self.aborted.store(true, Ordering::SeqCst);
    }

    /// Whether [`LeaseTracker::mark_aborted`] was called.
    pub(crate) fn is_aborted(&self) -> bool {
        self.aborted.load(Ordering::SeqCst)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // Every update under this lock is a plain assignment: a panic cannot
        // leave it inconsistent, so poisoning is ignored.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn encode(&self, at: Instant) -> u64 {
        let nanos = at.saturating_duration_since(self.created).as_nanos();
        u64::try_from(nanos)
            .unwrap_or(FOREVER - 1)
            .saturating_add(1)
            .min(FOREVER - 1)
    }

    /// Whether the current term may be trusted right now: the cheap check
    /// behind `is_leader()`. False once the validity point has passed, even if
    /// the background task is stuck.
    pub(crate) fn is_valid(&self) -> bool {
        match self.valid_until.load(Ordering::Acquire) {
            0 => false,
            FOREVER => true,
            v => Instant::now() < self.created + Duration::from_nanos(v - 1),
        }
    }

    /// The validity point of the current term, if any.
    pub(crate) fn valid_until(&self) -> Option<Instant> {
        match self.valid_until.load(Ordering::Acquire) {
            0 => None,
            FOREVER => Some(Instant::now() + Duration::from_secs(86_400 * 365)),
            v => Some(self.created + Duration::from_nanos(v - 1)),
        }
    }

    /// The token of the current term, only while it is valid.
    pub(crate) fn token(&self) -> Option<FencingToken> {
        if !self.is_valid() {
            return None;
        }
        self.lock().term.as_ref().map(|t| t.token)
    }

    pub(crate) fn subscribe(&self) -> watch::Receiver<LeaderState> {
        self.state_tx.subscribe()
    }

    pub(crate) fn subscribe_terms(&self) -> watch::Receiver<Option<ActiveTerm>> {
        self.term_tx.subscribe()
    }

    fn publish(&self, inner: &Inner) {
        let state = LeaderState {
            is_leader: inner.term.is_some(),
            leader_id: inner.leader_id.clone(),
            token: inner.term.as_ref().map(|t| t.token),
        };
        self.state_tx.send_if_modified(|s| {
            let changed = *s != state;
            *s = state;
            changed
        });
    }

    /// A term started by a request sent at `sent`; `None` means forever
    /// (election disabled).
    pub(crate) fn begin_term(&self, token: FencingToken, sent: Option<Instant>) {
        let valid = match sent {
            Some(sent) => self.encode(self.timing.valid_until(sent)),
            None => FOREVER,
        };
        let term = ActiveTerm {
            token,
            cancel: CancellationToken::new(),
        };
        {
            let mut inner = self.lock();
            let now = Instant::now();
            inner.term = Some(term.clone());
            inner.last_renewal_ok = Some(now);
            inner.last_contact_ok = Some(now);
            inner.consecutive_failures = 0;
            inner.last_error = None;
            inner.leader_id = Some(self.holder.clone());
            self.valid_until.store(valid, Ordering::Release);
            self.publish(&inner);
        }
        let remaining = self
            .valid_until()
            .map(|v| v.saturating_duration_since(Instant::now()))
            .unwrap_or_default();
        self.telemetry.acquired(token, remaining);
        self.term_tx.send_replace(Some(term));
    }

    /// A renewal sent at `sent` succeeded after `elapsed`.
    pub(crate) fn renewed(&self, token: FencingToken, sent: Instant, elapsed: Duration) {
        let until = self.timing.valid_until(sent);
        {
            let mut inner = self.lock();
            if inner.term.as_ref().map(|t| t.token) != Some(token) {
                return;
            }
            let now = Instant::now();
            inner.last_renewal_ok = Some(now);
            inner.last_contact_ok = Some(now);
            inner.consecutive_failures = 0;
            inner.last_error = None;
            self.valid_until
                .store(self.encode(until), Ordering::Release);
        }
        self.telemetry.renewed(
            token,
            elapsed,
            until.saturating_duration_since(Instant::now()),
        );
    }

    /// A renewal attempt failed (including timeouts with unknown outcome,
    /// which never count as success).
    pub(crate) fn renew_failed(
        &self,
        token: FencingToken,
        elapsed: Duration,
        error: &crate::Error,
    ) {
        self.record_failure(error);
        self.telemetry.renew_failed(token, elapsed, error);
    }

    /// The store answered (an acquire attempt, even one that found the lease held).
    pub(crate) fn contact_ok(&self, leader: Option<HolderId>) {
        let mut inner = self.lock();
        inner.last_contact_ok = Some(Instant::now());
        inner.consecutive_failures = 0;
        inner.last_error = None;
        if inner.term.is_none() {
            inner.leader_id = leader;
        }
        self.publish(&inner);
    }

    /// A store call other than renew failed.
    pub(crate) fn contact_failed(&self, operation: &'static str, error: &crate::Error) {
        self.record_failure(error);
        self.telemetry.store_error(operation, error);
    }

    /// A follower learned who leads from a notification.
    pub(crate) fn observed_leader(&self, leader: Option<HolderId>) {
        let mut inner = self.lock();
        if inner.term.is_none() {
            inner.leader_id = leader;
            self.publish(&inner);
        }
    }

    fn record_failure(&self, error: &crate::Error) {
        let mut inner = self.lock();
        inner.consecutive_failures = inner.consecutive_failures.saturating_add(1);
        inner.last_error = Some(error.to_string());
    }

    /// Ends the current term: `is_leader()` turns false at once, running work
    /// is cancelled, subscribers hear of it. `lost` says why, or `None` for a
    /// voluntary release. Returns the term's token and its last validity point
    /// (the hard deadline for work to stop).
    pub(crate) fn end_term(&self, lost: Option<LossReason>) -> Option<(FencingToken, Instant)> {
        let until = self.valid_until().unwrap_or_else(Instant::now);
        let term = {
            let mut inner = self.lock();
            let term = inner.term.take()?;
            inner.last_ended = Some((term.token, until));
            self.valid_until.store(0, Ordering::Release);
            if inner.leader_id.as_ref() == Some(&self.holder) {
                inner.leader_id = None;
            }
            self.publish(&inner);
            term
        };
        term.cancel.cancel();
        self.term_tx.send_replace(None);
        if let Some(reason) = lost {
            self.telemetry.lost(term.token, reason);
        }
        Some((term.token, until))
    }

    /// When the term with `token` can expire in the store: by then its work
    /// must have stopped. Already past for a term whose validity ran out.
    pub(crate) fn term_deadline(&self, token: FencingToken) -> Instant {
        let inner = self.lock();
        match (&inner.term, inner.last_ended) {
            (Some(t), _) if t.token == token => self.valid_until().unwrap_or_else(Instant::now),
            (_, Some((t, until))) if t == token => until,
            _ => Instant::now(),
        }
    }

    /// Waits until no run-while-leader work is running, or until `deadline`.
    /// Returns whether all work stopped.
    pub(crate) async fn wait_work_stopped(&self, deadline: Instant) -> bool {
        let mut rx = self.work_active.subscribe();
        tokio::time::timeout_at(deadline, rx.wait_for(|n| *n == 0))
            .await
            .is_ok()
    }

    /// The health report as of now.
    pub(crate) fn health(&self) -> HealthReport {
        let now = Instant::now();
        let valid = self.is_valid();
        let inner = self.lock();
        let believes = inner.term.is_some();
        let store_silent_for = inner
            .last_contact_ok
            .map(|t| now.saturating_duration_since(t))
            .unwrap_or_else(|| now.saturating_duration_since(self.created));
        let store_down =
            inner.consecutive_failures > 0 && store_silent_for >= self.timing.unhealthy_after;
        let (status, description) = if believes && !valid {
            (
                HealthStatus::Unhealthy,
                "believes it leads but has not renewed within the lease".to_owned(),
            )
        } else if store_down {
            (
                HealthStatus::Unhealthy,
                format!(
                    "store unreachable for {:?} ({} failures in a row)",
                    store_silent_for, inner.consecutive_failures
                ),
            )
        } else if valid {
            (HealthStatus::Healthy, "leader".to_owned())
        } else {
            (self.follower_status, "follower".to_owned())
        };
        let data = HealthData {
            is_leader: valid,
            instance_id: self.holder.clone(),
            resource: self.key.resource().to_owned(),
            leader_id: inner.leader_id.clone(),
            fencing_token: inner.term.as_ref().filter(|_| valid).map(|t| t.token),
            lease_remaining: self
                .valid_until()
                .filter(|_| valid)
                .map(|v| v.saturating_duration_since(now)),
            since_last_renewal: inner
                .last_renewal_ok
                .filter(|_| believes)
                .map(|t| now.saturating_duration_since(t)),
            consecutive_failures: inner.consecutive_failures,
            store: self.store_kind,
            mode: crate::health::mode_of(self.store_kind),
        };
        let exception = (status == HealthStatus::Unhealthy)
            .then(|| inner.last_error.clone())
            .flatten();
        HealthReport {
            status,
            description,
            data,
            exception,
        }
    }
}
