//! The state one lease holder shares between its background task and its
//! handles: the validity point behind `is_leader()`, the published
//! [`LeaderState`], the current term's cancellation, and what health needs.
//!
//! The elector and named-lock guards both use it, so the timing rules live in
//! one place.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::health::{HealthData, HealthReport, HealthStatus};
use crate::metadata::Metadata;
use crate::names::{FencingToken, HolderId, LeaseKey};
use crate::observer::{LeaderInfo, same_seat};
use crate::store::Lease;
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
    /// The current leader when known, with its token, metadata and when its
    /// lease ends, the same information an [`Observer`](crate::Observer)
    /// gives: this instance's own term while it leads, otherwise the last
    /// holder the store reported to this follower (its acquire attempts and
    /// notifications). Subscribers are woken when the seat changes, not
    /// when only the time left moves.
    pub leader: Option<LeaderInfo>,
}

/// A term as seen by run-while-leader supervisors.
#[derive(Debug, Clone)]
pub(crate) struct ActiveTerm {
    pub(crate) token: FencingToken,
    /// Numbers the terms of one tracker (tokens do not: with election
    /// disabled every term has token 0).
    pub(crate) seq: u64,
    /// Cancelled the moment the term ends.
    pub(crate) cancel: CancellationToken,
    /// Cancelled when run-while-leader work asks the holder to end the term
    /// (see [`LeaseTracker::request_step_down`]).
    pub(crate) step_down: CancellationToken,
}

/// Why run-while-leader work asked the holder to end its term.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StepDown {
    /// The work panicked.
    Panicked,
    /// The work returned and was started with `OnReturn::StepDown`.
    Returned,
    /// `Elector::resign` was called.
    Resigned,
}

#[derive(Debug, Default)]
struct Inner {
    term: Option<ActiveTerm>,
    last_renewal_ok: Option<Instant>,
    last_contact_ok: Option<Instant>,
    consecutive_failures: u32,
    last_error: Option<String>,
    /// Who leads, when known (this holder while its term lasts).
    leader: Option<LeaderInfo>,
    /// The metadata this holder publishes with its lease.
    metadata: Option<Metadata>,
    /// The sequence number and hard deadline of the last term that ended.
    last_ended: Option<(u64, Instant)>,
    /// Terms begun so far.
    terms: u64,
    /// The first step-down request of the current term.
    step_down: Option<StepDown>,
    /// Set by `Elector::resign` with a hold-off: no acquire before then.
    hold_off_until: Option<Instant>,
    /// The lease of the current term, for `Elector::proclaim`.
    lease: Option<Lease>,
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
    /// How many run-while-leader futures are running. Only incremented under
    /// `inner`'s lock, by [`LeaseTracker::register_work`].
    work_active: watch::Sender<usize>,
    /// Set by `Elector::abort`: never release (a simulated crash).
    aborted: std::sync::atomic::AtomicBool,
    /// The sequence number of the last term whose end is complete: its
    /// work stopped and its lease released (or left to expire).
    closed: watch::Sender<u64>,
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
            closed: watch::channel(0).0,
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

    /// Publishes the state; subscribers are woken only when the seat
    /// changed (not when only the leader's time left moved).
    fn publish(&self, inner: &Inner) {
        let state = LeaderState {
            is_leader: inner.term.is_some(),
            leader_id: inner.leader.as_ref().map(|l| l.holder.clone()),
            token: inner.term.as_ref().map(|t| t.token),
            leader: inner.leader.clone(),
        };
        self.telemetry.leader_seen(state.leader_id.as_ref());
        self.state_tx.send_if_modified(|s| {
            let changed = s.is_leader != state.is_leader
                || s.token != state.token
                || s.leader_id != state.leader_id
                || !same_seat(s.leader.as_ref(), state.leader.as_ref());
            *s = state;
            changed
        });
    }

    /// This holder's own term as a [`LeaderInfo`].
    fn own_info(&self, inner: &Inner, token: FencingToken) -> LeaderInfo {
        LeaderInfo {
            holder: self.holder.clone(),
            token,
            metadata: inner.metadata.clone(),
            expires: self.valid_until(),
        }
    }

    /// Records the store lease of the current term (ignored when `lease` is
    /// not the current term's).
    pub(crate) fn attach_lease(&self, lease: &Lease) {
        let mut inner = self.lock();
        if inner.term.as_ref().map(|t| t.token) == Some(lease.token) {
            inner.lease = Some(lease.clone());
        }
    }

    /// The store lease of the current term, while it is valid.
    pub(crate) fn term_lease(&self) -> Option<Lease> {
        if !self.is_valid() {
            return None;
        }
        self.lock().lease.clone()
    }

    /// The metadata this holder publishes with its lease.
    pub(crate) fn metadata(&self) -> Option<Metadata> {
        self.lock().metadata.clone()
    }

    /// Sets the metadata for later acquisitions; when `token`'s term is the
    /// current one (its store record was just updated), publishes it too.
    pub(crate) fn set_metadata(&self, metadata: Metadata, token: Option<FencingToken>) {
        let mut inner = self.lock();
        inner.metadata = Some(metadata);
        if let Some(term) = inner.term.as_ref().filter(|t| Some(t.token) == token) {
            let own = self.own_info(&inner, term.token);
            inner.leader = Some(own);
            self.publish(&inner);
        }
    }

    /// Begins a term won by a request sent at `sent`; `None` means forever
    /// (election disabled).
    ///
    /// Returns `None`, and changes and publishes nothing, when the term's
    /// validity point has already passed (the answer came too late to be
    /// trusted for even an instant): the caller must not act as its holder
    /// and should release the lease.
    pub(crate) fn begin_term(
        &self,
        token: FencingToken,
        sent: Option<Instant>,
    ) -> Option<ActiveTerm> {
        let valid = match sent {
            Some(sent) => {
                let until = self.timing.valid_until(sent);
                if Instant::now() >= until {
                    return None;
                }
                self.encode(until)
            }
            None => FOREVER,
        };
        let term = {
            let mut inner = self.lock();
            inner.terms += 1;
            let term = ActiveTerm {
                token,
                seq: inner.terms,
                cancel: CancellationToken::new(),
                step_down: CancellationToken::new(),
            };
            let now = Instant::now();
            inner.term = Some(term.clone());
            inner.step_down = None;
            inner.last_renewal_ok = Some(now);
            inner.last_contact_ok = Some(now);
            inner.consecutive_failures = 0;
            inner.last_error = None;
            self.valid_until.store(valid, Ordering::Release);
            inner.leader = Some(self.own_info(&inner, token));
            self.publish(&inner);
            term
        };
        let remaining = self
            .valid_until()
            .map(|v| v.saturating_duration_since(Instant::now()))
            .unwrap_or_default();
        self.telemetry.acquired(token, remaining);
        self.term_tx.send_replace(Some(term.clone()));
        Some(term)
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
            inner.leader = Some(self.own_info(&inner, token));
            self.publish(&inner);
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

    /// The store answered (an acquire attempt, even one that found the
    /// lease held by `leader`).
    pub(crate) fn contact_ok(&self, leader: Option<LeaderInfo>) {
        let mut inner = self.lock();
        inner.last_contact_ok = Some(Instant::now());
        inner.consecutive_failures = 0;
        inner.last_error = None;
        if inner.term.is_none() {
            inner.leader = leader;
        }
        self.publish(&inner);
    }

    /// A store call other than renew failed.
    pub(crate) fn contact_failed(&self, operation: &'static str, error: &crate::Error) {
        self.record_failure(error);
        self.telemetry.store_error(operation, error);
    }

    /// A follower learned who leads from a notification or a read.
    pub(crate) fn observed_leader(&self, leader: Option<LeaderInfo>) {
        let mut inner = self.lock();
        if inner.term.is_none() {
            inner.leader = leader;
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
    /// voluntary release. Returns the term's token and its hard deadline: the
    /// last validity point (the lease can expire in the store then), or, for
    /// a term without a lease (election disabled), the release timeout from
    /// now. Work registered for the term must be gone by then.
    pub(crate) fn end_term(&self, lost: Option<LossReason>) -> Option<(FencingToken, Instant)> {
        let until = match self.valid_until.load(Ordering::Acquire) {
            FOREVER => Instant::now() + self.timing.release_timeout,
            _ => self.valid_until().unwrap_or_else(Instant::now),
        };
        let term = {
            let mut inner = self.lock();
            let term = inner.term.take()?;
            inner.lease = None;
            inner.last_ended = Some((term.seq, until));
            self.valid_until.store(0, Ordering::Release);
            if inner.leader.as_ref().map(|l| &l.holder) == Some(&self.holder) {
                inner.leader = None;
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

    /// The hard deadline of the term numbered `seq`: when its lease can
    /// expire in the store, so by then its work must have stopped. Already
    /// past for a term whose validity ran out.
    pub(crate) fn term_deadline(&self, seq: u64) -> Instant {
        let inner = self.lock();
        match (&inner.term, inner.last_ended) {
            (Some(t), _) if t.seq == seq => self.valid_until().unwrap_or_else(Instant::now),
            (_, Some((s, until))) if s == seq => until,
            _ => Instant::now(),
        }
    }

    /// Counts one run-while-leader work as running in the current term,
    /// unless there is no valid term, it is already ending, or it is the
    /// term numbered `after` (work runs once per term). Returns the term and
    /// a slot that uncounts the work when dropped.
    ///
    /// The check and the count are one step under the lock `end_term` takes:
    /// either the work is counted before the term ends (and the holder's
    /// [`LeaseTracker::wait_work_stopped`] waits for it), or it never starts.
    pub(crate) fn register_work(
        self: &Arc<Self>,
        after: Option<u64>,
    ) -> Option<(ActiveTerm, WorkSlot)> {
        let inner = self.lock();
        let term = inner.term.as_ref()?;
        if Some(term.seq) == after || term.cancel.is_cancelled() || !self.is_valid() {
            return None;
        }
        self.work_active.send_modify(|n| *n += 1);
        Some((term.clone(), WorkSlot(self.clone())))
    }

    /// Asks the holder of the term numbered `seq` to end it (ignored when
    /// that term is over). The first request's reason is kept.
    pub(crate) fn request_step_down(&self, seq: u64, why: StepDown) {
        let mut inner = self.lock();
        let Some(term) = inner.term.as_ref().filter(|t| t.seq == seq) else {
            return;
        };
        let step_down = term.step_down.clone();
        inner.step_down.get_or_insert(why);
        drop(inner);
        step_down.cancel();
    }

    /// Resigns: asks the current term (if any) to end as a voluntary
    /// step-down, and keeps the holder from acquiring until `hold_off` has
    /// passed (a later hold-off never shortens an earlier one). Returns the
    /// sequence number of the term asked to end.
    ///
    /// A term ended without a hold-off is still held off for
    /// [`Timing::follower_reaction`], so that a polling follower, not this
    /// holder, wins the free seat.
    pub(crate) fn resign(&self, hold_off: Option<Duration>) -> Option<u64> {
        let mut inner = self.lock();
        let leading = inner.term.is_some();
        let hold_off = hold_off.or(leading.then(|| self.timing.follower_reaction()));
        if let Some(hold_off) = hold_off {
            let until = Instant::now() + hold_off.min(crate::timing::LONGEST);
            inner.hold_off_until = Some(inner.hold_off_until.map_or(until, |u| u.max(until)));
        }
        let term = inner.term.as_ref()?;
        let (seq, step_down) = (term.seq, term.step_down.clone());
        inner.step_down.get_or_insert(StepDown::Resigned);
        drop(inner);
        step_down.cancel();
        Some(seq)
    }

    /// Until when a resign's hold-off keeps the holder from acquiring, if
    /// that is still ahead.
    pub(crate) fn held_off_until(&self) -> Option<Instant> {
        self.lock().hold_off_until.filter(|u| *u > Instant::now())
    }

    /// Records that the term numbered `seq` is completely over (work
    /// stopped, lease released or left to expire).
    pub(crate) fn term_closed(&self, seq: u64) {
        self.closed.send_if_modified(|c| {
            let later = seq > *c;
            *c = (*c).max(seq);
            later
        });
    }

    /// Waits until the term numbered `seq` is completely over.
    pub(crate) async fn wait_closed(&self, seq: u64) {
        let mut rx = self.closed.subscribe();
        let _ = rx.wait_for(|c| *c >= seq).await;
    }

    /// Why the current (or just ended) term was asked to step down, if it was.
    pub(crate) fn step_down_reason(&self) -> Option<StepDown> {
        self.lock().step_down
    }

    /// Waits until no run-while-leader work is running, or until `deadline`.
    /// Returns whether all work stopped.
    pub(crate) async fn wait_work_stopped(&self, deadline: Instant) -> bool {
        let mut rx = self.work_active.subscribe();
        tokio::time::timeout_at(deadline, rx.wait_for(|n| *n == 0))
            .await
            .is_ok()
    }

    /// How many run-while-leader futures are running now.
    #[cfg(test)]
    fn work_running(&self) -> usize {
        *self.work_active.borrow()
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
            leader_id: inner.leader.as_ref().map(|l| l.holder.clone()),
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

/// One running run-while-leader work, counted until this is dropped (also
/// when its supervisor is aborted).
#[derive(Debug)]
pub(crate) struct WorkSlot(Arc<LeaseTracker>);

impl Drop for WorkSlot {
    fn drop(&mut self) {
        self.0.work_active.send_modify(|n| *n = n.saturating_sub(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ElectionConfig;

    fn tracker() -> Arc<LeaseTracker> {
        let config = ElectionConfig::new("unit");
        let key = config.lease_key().expect("key");
        let holder = HolderId::new("a").expect("holder");
        let telemetry = Telemetry::new(
            crate::telemetry::Kind::Election,
            &config,
            key.resource(),
            &holder,
        );
        Arc::new(LeaseTracker::new(
            key,
            holder,
            "memory",
            Timing::from_config(&config),
            telemetry,
            HealthStatus::Degraded,
        ))
    }

    /// The race of a supervisor that saw a term just as it ended: work for
    /// an ended term is refused, so nothing runs unseen by `end_term`'s waiter.
    #[tokio::test(start_paused = true)]
    async fn work_for_a_term_that_ended_is_refused() {
        let t = tracker();
        let term = t
            .begin_term(FencingToken(1), Some(Instant::now()))
            .expect("valid");
        t.end_term(None);
        assert!(t.register_work(None).is_none());
        assert_eq!(t.work_running(), 0);
        // Nor once a new term began, for the old term's supervisor.
        let next = t
            .begin_term(FencingToken(2), Some(Instant::now()))
            .expect("valid");
        assert!(next.seq > term.seq);
        assert!(t.register_work(Some(next.seq)).is_none());
    }

    /// Work counted before the term ends holds the holder back until it is gone.
    #[tokio::test(start_paused = true)]
    async fn work_counted_before_the_end_is_waited_for() {
        let t = tracker();
        t.begin_term(FencingToken(1), Some(Instant::now()))
            .expect("valid");
        let (_, slot) = t.register_work(None).expect("a valid term");
        assert_eq!(t.work_running(), 1);
        let (_, deadline) = t.end_term(None).expect("a term");
        assert!(
            !t.wait_work_stopped(Instant::now() + Duration::from_millis(5))
                .await
        );
        drop(slot);
        assert!(t.wait_work_stopped(deadline).await);
    }

    /// A term answered after its validity point never begins.
    #[tokio::test(start_paused = true)]
    async fn a_term_past_its_validity_point_does_not_begin() {
        let t = tracker();
        let sent = Instant::now();
        tokio::time::advance(t.timing.lease).await;
        assert!(t.begin_term(FencingToken(1), Some(sent)).is_none());
        assert!(!t.subscribe().borrow().is_leader);
        assert!(t.register_work(None).is_none());
    }
}
