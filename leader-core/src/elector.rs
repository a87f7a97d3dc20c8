//! The elector: one background task per resource that competes for the lease,
//! keeps it while it leads, steps down safely, and competes again on its own.
//!
//! ```text
//!            acquire ok                      renew deadline passed / NotHolder
//! Follower ──────────────▶ Leader ──────────────────────────────────────────▶ Follower
//!    ▲  │ held / error: wait retry period      │ shutdown: stop loop, stop work,
//!    └──┘ (or a release notification)         ▼ then release
//!                                            Stopped
//! ```

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep_until, timeout};
use tokio_util::sync::CancellationToken;

use crate::config::ElectionConfig;
use crate::error::{Error, Result};
use crate::health::{self, HealthReport, Probe};
use crate::keeper::{self, KeepEnd};
use crate::metadata::Metadata;
use crate::names::{FencingToken, HolderId, LeaseKey};
use crate::observer::{self, LeaderInfo};
use crate::store::{Acquire, Lease, LeaseEvent, LeaseEvents, LeaseStore};
use crate::telemetry::{Kind as TelemetryKind, LossReason, Telemetry};
use crate::timing::{Pushed, Timing};
use crate::tracker::{ActiveTerm, LeaderState, LeaseTracker, StepDown, WorkSlot};

/// Runs an election for one resource in the background.
///
/// Cheap to clone; all clones control the same election. Dropping the last
/// clone stops the election and releases the lease in the background; call
/// [`Elector::shutdown`] to wait for that.
///
/// ```no_run
/// # async fn example() -> leader_core::Result<()> {
/// use std::sync::Arc;
/// use leader_core::{ElectionConfig, Elector, MemoryStore};
///
/// let store = Arc::new(MemoryStore::new());
/// let elector = Elector::start(store, ElectionConfig::new("build-queue"))?;
/// if elector.is_leader() {
///     // do one unit of the leader's work
/// }
/// elector.shutdown().await;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Elector {
    inner: Arc<Handle>,
}

#[derive(Debug)]
struct Handle {
    tracker: Arc<LeaseTracker>,
    /// The store, when election is enabled.
    store: Option<Arc<dyn LeaseStore>>,
    stop: CancellationToken,
    task: Mutex<Option<JoinHandle<()>>>,
    enabled: bool,
}

impl Drop for Handle {
    fn drop(&mut self) {
        // The task sees this, stops its work and releases the lease.
        self.stop.cancel();
    }
}

impl Elector {
    /// Validates `config` and starts competing for its resource on `store`.
    ///
    /// With `config.enabled == false` no store is used: this instance leads
    /// at once and forever, so code written against the elector works in
    /// single-instance mode (the card's Pattern 3).
    ///
    /// # Errors
    ///
    /// Invalid configuration (the message names the field), or no tokio runtime.
    pub fn start(store: Arc<dyn LeaseStore>, config: ElectionConfig) -> Result<Elector> {
        Self::start_inner(store, config, None)
    }

    /// [`Elector::start`], publishing `metadata` with every lease this
    /// instance acquires (etcd's `Proclaim` value, Curator's participant
    /// data): followers, [`Observer`](crate::Observer)s and `leaderctl
    /// status` read it with the holder and token. It is stored in the same
    /// atomic step as each acquisition (no extra store operation) and
    /// changed with [`Elector::proclaim`].
    ///
    /// # Errors
    ///
    /// As [`Elector::start`], and
    /// [`ErrorKind::Unsupported`](crate::ErrorKind::Unsupported) when
    /// election is enabled and the store does not declare
    /// [`Capabilities::metadata`](crate::Capabilities::metadata).
    pub fn start_with_metadata(
        store: Arc<dyn LeaseStore>,
        config: ElectionConfig,
        metadata: Metadata,
    ) -> Result<Elector> {
        if config.enabled && !store.capabilities().metadata {
            return Err(Error::unsupported(format!(
                "the {} store does not keep leader metadata yet",
                store.kind()
            ))
            .with_store(store.kind()));
        }
        Self::start_inner(store, config, Some(metadata))
    }

    fn start_inner(
        store: Arc<dyn LeaseStore>,
        config: ElectionConfig,
        metadata: Option<Metadata>,
    ) -> Result<Elector> {
        config.validate()?;
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(Error::no_runtime("Elector::start"));
        }
        let key = config.lease_key()?;
        let holder = config.holder_id()?;
        let telemetry = Telemetry::new(TelemetryKind::Election, &config, key.resource(), &holder);
        let tracker = Arc::new(LeaseTracker::new(
            key,
            holder,
            if config.enabled {
                store.kind()
            } else {
                "disabled"
            },
            Timing::from_config(&config),
            telemetry,
            config.follower_health_status,
        ));
        if let Some(metadata) = metadata {
            tracker.set_metadata(metadata, None);
        }
        let stop = CancellationToken::new();
        let handle_store = config.enabled.then(|| store.clone());
        let task = if config.enabled {
            let task = run(store, tracker.clone(), stop.clone());
            tokio::spawn(tracker.telemetry.supervise(task))
        } else {
            // Leads at once: `is_leader()` is true when `start` returns.
            let first = tracker.begin_term(FencingToken(0), None);
            tokio::spawn(run_single(tracker.clone(), stop.clone(), first))
        };
        Ok(Elector {
            inner: Arc::new(Handle {
                tracker,
                store: handle_store,
                stop,
                task: Mutex::new(Some(task)),
                enabled: config.enabled,
            }),
        })
    }

    /// Whether this instance may act as leader right now.
    ///
    /// Cheap and synchronous. It turns false the moment the term's validity
    /// point passes (`last successful renewal sent + lease * (1 - drift)`),
    /// even if the background task is stuck or a renewal call hangs, and when
    /// the elector steps down, which normally happens earlier, at the renew
    /// deadline.
    pub fn is_leader(&self) -> bool {
        self.inner.tracker.is_valid()
    }

    /// This term's fencing token while [`Elector::is_leader`] is true.
    /// Election disabled: token 0.
    pub fn token(&self) -> Option<FencingToken> {
        self.inner.tracker.token()
    }

    /// This instance's holder id.
    pub fn instance_id(&self) -> &HolderId {
        &self.inner.tracker.holder
    }

    /// The store key of the election.
    pub fn key(&self) -> &LeaseKey {
        &self.inner.tracker.key
    }

    /// Whether election is enabled (false: single-instance mode).
    pub fn is_enabled(&self) -> bool {
        self.inner.enabled
    }

    /// A receiver of every change of leadership as this elector sees it.
    pub fn subscribe(&self) -> watch::Receiver<LeaderState> {
        self.inner.tracker.subscribe()
    }

    /// The health report in the card's shape; Unhealthy also when
    /// [`Elector::liveness`] fails.
    pub fn health(&self) -> HealthReport {
        health::with_liveness(self.inner.tracker.health(), &self.liveness())
    }

    /// The liveness probe (Kubernetes semantics: fail means restart the
    /// process): fails when the background task has ended without a
    /// shutdown, or has not been polled for longer than the bound derived
    /// from the timing. Passes for a follower, during a store outage, and
    /// after a shutdown. See [`Readiness`](crate::Readiness) for readiness.
    pub fn liveness(&self) -> Probe {
        let task_finished = self
            .inner
            .task
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(JoinHandle::is_finished);
        health::liveness(
            self.inner.enabled,
            self.inner.stop.is_cancelled(),
            task_finished,
            self.inner.tracker.telemetry.heartbeat(),
        )
    }

    /// Runs `work` whenever this instance becomes leader, handing it a
    /// [`LeaderContext`] with the term's fencing token and a cancellation
    /// signal that fires the moment leadership is lost, the elector shuts
    /// down or [`WorkHandle::stop`] is called. `work` runs at most once per
    /// term and is started again on the next win; work that returns by
    /// itself keeps the term (see [`Elector::run_while_leader_with`] to step
    /// down instead).
    ///
    /// `work` should return promptly once cancelled. If it is still running
    /// when its term's lease could expire in the store (the term's hard
    /// deadline), its task is aborted (at its next `.await`) and a warning is
    /// logged. The elector neither competes again nor releases (on shutdown)
    /// before the work has stopped or that deadline has passed.
    ///
    /// Work that panics ends the term: the panic is logged at error level and
    /// counted in `<prefix>_work_panics_total`, the lease is released so
    /// another replica takes over at once, and this instance competes again
    /// only after a back-off: the retry period, doubled for each further term
    /// in a row that ends by a panic, capped at 32 retry periods.
    pub fn run_while_leader<F, Fut>(&self, work: F) -> WorkHandle
    where
        F: FnMut(LeaderContext) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.run_while_leader_with(OnReturn::KeepLeading, work)
    }

    /// [`Elector::run_while_leader`], choosing with `on_return` what happens
    /// when `work` returns by itself (not cancelled, not panicking).
    pub fn run_while_leader_with<F, Fut>(&self, on_return: OnReturn, mut work: F) -> WorkHandle
    where
        F: FnMut(LeaderContext) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let tracker = self.inner.tracker.clone();
        let elector_stop = self.inner.stop.clone();
        let stop = CancellationToken::new();
        let work_stop = stop.clone();
        let mut terms = tracker.subscribe_terms();
        let handle = tokio::spawn(async move {
            // The term that last ran the work: it runs once per term.
            let mut last_run = None;
            loop {
                if elector_stop.is_cancelled() || work_stop.is_cancelled() {
                    return;
                }
                // Mark before checking: a term that begins after the check
                // wakes `changed()` below.
                terms.borrow_and_update();
                if let Some((term, slot)) = tracker.register_work(last_run) {
                    last_run = Some(term.seq);
                    supervise_term(&tracker, term, slot, &mut work, on_return, &work_stop).await;
                    continue;
                }
                tokio::select! {
                    _ = elector_stop.cancelled() => return,
                    _ = work_stop.cancelled() => return,
                    changed = terms.changed() => if changed.is_err() { return },
                }
            }
        });
        WorkHandle { handle, stop }
    }

    /// Replaces the metadata published with this instance's lease (etcd's
    /// `Proclaim`). While this instance leads, the store record is updated
    /// at once (one `update_metadata` call, bounded by the request timeout;
    /// it matches holder and token, so it can never touch another term);
    /// every later acquisition stores the new value too. Subscribers of
    /// [`Elector::subscribe`] see it once the store confirmed it. With
    /// election disabled it is only published locally.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Unsupported`](crate::ErrorKind::Unsupported) when the
    /// store keeps no metadata; when leading, the store's error:
    /// [`ErrorKind::NotHolder`](crate::ErrorKind::NotHolder) if the term
    /// ended meanwhile, unavailable or indeterminate (the record may hold
    /// either value; the next acquisition stores the new one).
    pub async fn proclaim(&self, metadata: Metadata) -> Result<()> {
        let tracker = &self.inner.tracker;
        let Some(store) = &self.inner.store else {
            tracker.set_metadata(metadata, tracker.token());
            return Ok(());
        };
        if !store.capabilities().metadata {
            return Err(Error::unsupported(format!(
                "the {} store does not keep leader metadata yet",
                store.kind()
            ))
            .with_store(store.kind()));
        }
        tracker.set_metadata(metadata.clone(), None);
        let Some(lease) = tracker.term_lease() else {
            return Ok(());
        };
        let limit = tracker.timing.request_timeout;
        timeout(limit, store.update_metadata(&lease, &metadata))
            .await
            .map_err(|_| {
                Error::indeterminate(format!("update_metadata did not answer within {limit:?}"))
                    .with_store(store.kind())
                    .with_operation("update_metadata")
                    .with_key(lease.key.as_str())
            })??;
        tracker.set_metadata(metadata, Some(lease.token));
        Ok(())
    }

    /// Ends the current term cleanly and stays a candidate (etcd's `Resign`,
    /// Curator's `interruptLeadership`): run-while-leader work is cancelled
    /// and waited for (up to its term's hard deadline), then the lease is
    /// released, which wakes followers on stores that notify, so one of them
    /// takes over within about one request (or one retry period where
    /// followers poll). This instance competes again after `hold_off`
    /// (measured from this call) or, without one, after the longest a
    /// polling follower needs to take the seat (the retry period with its
    /// jitter, plus one request timeout), so that another replica, not this
    /// one, wins the free seat when there is one. A hold-off also applies
    /// when this instance does not lead: it then only keeps it from
    /// competing (to drain a replica); `resign(None)` on a follower does
    /// nothing.
    ///
    /// Returns whether a term was ended, once its release is done (or the
    /// elector began shutting down). The resigned term's fencing token is
    /// dead: a later term, of this instance or another, has a higher one.
    ///
    /// Cost: one `release` call, as for [`Elector::shutdown`]; nothing when
    /// not leading. With election disabled the single term ends and a new
    /// one (token 0) begins after the same pause.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: dropping the future does not undo the resignation, which
    /// goes on in the background.
    pub async fn resign(&self, hold_off: Option<Duration>) -> bool {
        let Some(seq) = self.inner.tracker.resign(hold_off) else {
            return false;
        };
        tokio::select! {
            _ = self.inner.tracker.wait_closed(seq) => {}
            _ = self.inner.stop.cancelled() => {}
        }
        true
    }

    /// Stops competing, stops run-while-leader work, then releases the lease
    /// (bounded by the release timeout) so a follower can take over at once.
    /// No acquire is sent once this has begun, and none afterwards.
    /// Run-while-leader work is cancelled and waited for before the release,
    /// until its term's hard deadline (then aborted); with election disabled
    /// it is waited for up to the release timeout. Idempotent.
    pub async fn shutdown(&self) {
        self.inner.stop.cancel();
        let task = self
            .inner
            .task
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(task) = task
            && let Err(e) = task.await
            && e.is_panic()
        {
            tracing::error!(key = %self.key(), "elector task panicked");
        }
    }

    /// Stops at once WITHOUT releasing the lease, as if the process had died:
    /// the lease stays in the store until it expires. For tests and
    /// emergencies; use [`Elector::shutdown`] otherwise.
    pub fn abort(&self) {
        // Order matters: the task must not take `stop` for a graceful
        // shutdown and release. It checks the flag before every release.
        self.inner.tracker.mark_aborted();
        if let Some(task) = self
            .inner
            .task
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            task.abort();
        }
        self.inner.stop.cancel();
        self.inner.tracker.end_term(Some(LossReason::Aborted));
    }
}

/// What run-while-leader work receives for one term.
#[derive(Debug, Clone)]
pub struct LeaderContext {
    token: FencingToken,
    cancel: CancellationToken,
}

impl LeaderContext {
    /// The term's fencing token: pass it with every write to a protected resource.
    pub fn token(&self) -> FencingToken {
        self.token
    }

    /// Completes when leadership is lost or the elector shuts down.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe.
    pub async fn cancelled(&self) {
        self.cancel.cancelled().await;
    }

    /// Whether leadership has been lost.
    pub fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }

    /// The underlying cancellation token (to hand to other tasks or libraries).
    pub fn cancellation_token(&self) -> CancellationToken {
        self.cancel.clone()
    }
}

/// What happens when run-while-leader work returns by itself (neither
/// cancelled nor panicking).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum OnReturn {
    /// Keep the term (and the lease); the work is started again only in a
    /// later term. The default.
    #[default]
    KeepLeading,
    /// End the term as Curator's `LeaderSelector` does when
    /// `takeLeadership` returns: release the lease (another replica takes
    /// over at once) and compete again after one retry period.
    StepDown,
}

/// The supervisor started by [`Elector::run_while_leader`]. Dropping it
/// leaves the supervisor running (until the elector shuts down).
#[derive(Debug)]
pub struct WorkHandle {
    handle: JoinHandle<()>,
    stop: CancellationToken,
}

impl WorkHandle {
    /// Stops the work: no new work is started, and work running now is
    /// cancelled (its [`LeaderContext`] fires) but keeps its term. The
    /// elector still waits for it: no release and no new term while it runs.
    /// Work that ignores the cancellation is aborted at its term's hard
    /// deadline, once the term has ended. Does not wait; see
    /// [`WorkHandle::stop_and_wait`].
    pub fn stop(&self) {
        self.stop.cancel();
    }

    /// [`WorkHandle::stop`], then waits until the work has finished (or was
    /// aborted at its term's hard deadline).
    pub async fn stop_and_wait(self) {
        self.stop();
        self.join().await;
    }

    /// Waits until the supervisor ends: after [`WorkHandle::stop`] or the
    /// elector's shutdown, once the work it runs has finished.
    pub async fn join(self) {
        let _ = self.handle.await;
    }
}

/// Runs one term's work until it ends, the term ends or the work is
/// stopped; then cancels it and enforces the term's hard deadline. Reports a
/// panic, and asks for the term to end when the work panicked or returned
/// under [`OnReturn::StepDown`]. `slot` counts the work until it is gone.
async fn supervise_term<F, Fut>(
    tracker: &LeaseTracker,
    term: ActiveTerm,
    slot: WorkSlot,
    work: &mut F,
    on_return: OnReturn,
    stop: &CancellationToken,
) where
    F: FnMut(LeaderContext) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let ctx = LeaderContext {
        token: term.token,
        cancel: term.cancel.child_token(),
    };
    let mut task = tokio::spawn(work(ctx.clone()));
    let outcome = tokio::select! {
        ended = &mut task => Some(ended),
        _ = until_term_invalid(tracker, &term) => None,
        _ = stop.cancelled() => None,
    };
    let by_itself = outcome.is_some();
    let ended = match outcome {
        Some(ended) => ended,
        None => {
            ctx.cancel.cancel();
            // Stopped work may finish while its term lasts; once the term
            // has ended, its lease can expire in the store at the hard
            // deadline, and the work must be gone by then.
            let hard_deadline = async {
                until_term_invalid(tracker, &term).await;
                sleep_until(tracker.term_deadline(term.seq)).await;
            };
            tokio::select! {
                ended = &mut task => ended,
                _ = hard_deadline => {
                    task.abort();
                    tracing::warn!(key = %tracker.key, token = term.token.0,
                        "run-while-leader work did not stop before the lease could expire; aborted");
                    task.await
                }
            }
        }
    };
    drop(slot);
    match ended {
        Err(e) if e.is_panic() => {
            tracker
                .telemetry
                .work_panicked(term.token, &panic_message(e.into_panic()));
            tracker.request_step_down(term.seq, StepDown::Panicked);
        }
        Ok(()) if by_itself && on_return == OnReturn::StepDown => {
            tracker.request_step_down(term.seq, StepDown::Returned);
        }
        _ => {}
    }
}

/// The text of a panic payload (`panic!` with a message gives a `&str` or a
/// `String`).
fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic payload that is not a string".to_owned()
    }
}

/// Completes when the term is cancelled or its validity point passes, whichever
/// comes first: two independent paths, so work is signalled even if the
/// elector task is stuck.
async fn until_term_invalid(tracker: &LeaseTracker, term: &ActiveTerm) {
    loop {
        let Some(until) = tracker.valid_until() else {
            return;
        };
        tokio::select! {
            _ = term.cancel.cancelled() => return,
            _ = sleep_until(until) => {
                if !tracker.is_valid() {
                    return;
                }
            }
        }
    }
}

/// The election loop: subscribe, acquire, then lead or follow, until
/// shutdown (the steps of client-go's `LeaderElector`, as named methods).
async fn run(store: Arc<dyn LeaseStore>, tracker: Arc<LeaseTracker>, stop: CancellationToken) {
    let mut campaign = Campaign {
        notifies: store.capabilities().notifies(),
        store,
        tracker,
        stop,
        events: None,
        next_subscribe: Instant::now(),
        panics_in_a_row: 0,
    };
    campaign.run().await;
}

/// The state of one enabled elector's loop.
struct Campaign {
    store: Arc<dyn LeaseStore>,
    tracker: Arc<LeaseTracker>,
    stop: CancellationToken,
    /// Whether the store pushes any events.
    notifies: bool,
    /// The live subscription, if any.
    events: Option<LeaseEvents>,
    /// Not before this instant may a subscription be attempted again.
    next_subscribe: Instant,
    /// Terms in a row that ended because run-while-leader work panicked.
    panics_in_a_row: u32,
}

/// The outcome of one acquire attempt.
enum Attempt {
    /// A lease won by a request sent at `sent`.
    Won { lease: Lease, sent: Instant },
    /// Someone else holds it, for `remaining` if the store says.
    Held { remaining: Option<Duration> },
    /// The store failed or did not answer.
    Failed,
}

/// What the loop does next.
enum Next {
    /// Acquire again at once.
    Acquire,
    /// Wait like a follower; `held_by_other` when the store said so.
    Follow {
        holder_remaining: Option<Duration>,
        held_by_other: bool,
    },
    /// Wait this long, deaf to notifications (after a step-down).
    Pause(Duration),
    /// Shutdown began.
    Stop,
}

impl Campaign {
    async fn run(&mut self) {
        while !self.stop.is_cancelled() {
            if !self.subscribe().await {
                break;
            }
            // No acquire is sent once shutdown began.
            if self.stop.is_cancelled() {
                break;
            }
            if let Some(until) = self.tracker.held_off_until() {
                self.pause_until(until).await;
                continue;
            }
            let next = match self.try_acquire().await {
                Attempt::Won { lease, sent } => self.lead(lease, sent).await,
                Attempt::Held { remaining } => Next::Follow {
                    holder_remaining: remaining,
                    held_by_other: true,
                },
                Attempt::Failed => Next::Follow {
                    holder_remaining: None,
                    held_by_other: false,
                },
            };
            match next {
                Next::Acquire => {}
                Next::Follow {
                    holder_remaining,
                    held_by_other,
                } => self.follow(holder_remaining, held_by_other).await,
                Next::Pause(pause) => self.pause(pause).await,
                Next::Stop => break,
            }
        }
    }

    /// Subscribes to the key's events when the store pushes any and no
    /// subscription is live. Returns false when shutdown began meanwhile
    /// (raced against `stop`: a subscription can wait, an acquire must not
    /// follow shutdown).
    async fn subscribe(&mut self) -> bool {
        if !self.notifies || self.events.is_some() || Instant::now() < self.next_subscribe {
            return true;
        }
        let timing = self.tracker.timing;
        let watched = tokio::select! {
            biased;
            _ = self.stop.cancelled() => return false,
            w = timeout(timing.request_timeout, self.store.watch(&self.tracker.key)) => w,
        };
        match watched {
            Ok(Ok(events)) => self.events = Some(events),
            Ok(Err(e)) => {
                self.tracker.telemetry.store_error("watch", &e);
                self.next_subscribe = Instant::now() + timing.retry_period;
            }
            Err(_) => self.next_subscribe = Instant::now() + timing.retry_period,
        }
        true
    }

    /// Sends one acquire, bounded by the request timeout. Not raced against
    /// `stop`: dropping an acquisition in flight could leave our key in the
    /// store for a whole TTL after shutdown.
    async fn try_acquire(&self) -> Attempt {
        let timing = self.tracker.timing;
        let tracker = &self.tracker;
        let metadata = tracker.metadata();
        let sent = Instant::now();
        let outcome = timeout(timing.request_timeout, async {
            match &metadata {
                Some(m) => {
                    self.store
                        .acquire_with_metadata(&tracker.key, &tracker.holder, timing.lease, m)
                        .await
                }
                None => {
                    self.store
                        .acquire(&tracker.key, &tracker.holder, timing.lease)
                        .await
                }
            }
        })
        .await;
        tracker.telemetry.acquire_took(sent.elapsed());
        match outcome {
            Ok(Ok(Acquire::Acquired(lease))) => Attempt::Won { lease, sent },
            Ok(Ok(Acquire::Held(info))) => {
                let remaining = info.remaining;
                tracker.contact_ok(Some(LeaderInfo::from_lease(info, Instant::now())));
                Attempt::Held { remaining }
            }
            Ok(Err(e)) => {
                tracker.contact_failed("acquire", &e);
                Attempt::Failed
            }
            Err(_) => {
                let e = self.error(format!(
                    "acquire did not answer within {:?}",
                    timing.request_timeout
                ));
                tracker.contact_failed("acquire", &e);
                Attempt::Failed
            }
        }
    }

    /// Leads with `lease` (won by a request sent at `sent`) until the term
    /// ends, waits for its work, releases when the end was voluntary, and
    /// says what to do next.
    async fn lead(&mut self, lease: Lease, sent: Instant) -> Next {
        let tracker = self.tracker.clone();
        if self.stop.is_cancelled() {
            self.release(&lease).await;
            return Next::Stop;
        }
        let term = tracker.begin_term(lease.token, Some(sent));
        if term.is_some() {
            tracker.attach_lease(&lease);
        }
        let Some(term) = term else {
            // Answered after its own validity point: not a term.
            let e = self.error(format!(
                "acquire answered {:?} after it was sent, past the lease's validity point",
                sent.elapsed()
            ));
            tracker.contact_failed("acquire", &e);
            self.release(&lease).await;
            // Our own release notification must not wake us at once: a
            // store that keeps answering late would be hammered in a loop.
            // Poll after the retry period instead, and subscribe again then.
            self.events = None;
            self.next_subscribe = Instant::now() + tracker.timing.retry_period;
            return Next::Follow {
                holder_remaining: None,
                held_by_other: false,
            };
        };
        let end = tokio::select! {
            biased;
            end = keeper::keep(&*self.store, &lease, sent, &tracker, &self.stop) => end,
            // The work asked to end the term: like a release.
            _ = term.step_down.cancelled() => KeepEnd::Stopped,
            // Someone asked through the store (`leaderctl resign`): as if
            // `Elector::resign(None)` had been called here.
            _ = resign_requested(
                &*self.store,
                &tracker,
                self.notifies && self.store.capabilities().resign_requests,
                &mut self.events,
                lease.token,
            ) => {
                tracing::info!(
                    key = %tracker.key,
                    token = lease.token.get(),
                    "resign requested through the store; ending the term"
                );
                tracker.resign(None);
                KeepEnd::Stopped
            }
        };
        let reason = match end {
            KeepEnd::Stopped => None,
            KeepEnd::Lost(reason) => Some(reason),
        };
        if let Some((token, hard_deadline)) = tracker.end_term(reason) {
            // No new term, and no release, while the old term's work runs
            // (its supervisor aborts it at the hard deadline).
            tracker.wait_work_stopped(hard_deadline).await;
            if end == KeepEnd::Stopped && !tracker.is_aborted() {
                let released = keeper::release(&*self.store, &lease, &tracker).await;
                tracker.telemetry.released(token, released);
            }
        }
        tracker.term_closed(term.seq);
        if end == KeepEnd::Stopped && !self.stop.is_cancelled() {
            // Stepped down at the work's request. Our own release
            // notification must not wake us: drop the subscription.
            self.events = None;
            let pause = step_down_pause(&tracker, &mut self.panics_in_a_row);
            self.next_subscribe = Instant::now() + pause;
            return Next::Pause(pause);
        }
        self.panics_in_a_row = 0;
        match reason {
            // The store said someone else holds it: wait like a follower.
            Some(LossReason::NotHolder) => Next::Follow {
                holder_remaining: None,
                held_by_other: false,
            },
            // Renewals failed until the deadline: try again at once; if our
            // key survived we get it back with a new token.
            _ => Next::Acquire,
        }
    }

    /// Waits for the retry period, or less if the store says the lease is
    /// about to end or was released. Pushed events only stand in for polling
    /// when the store definitely said someone else holds the seat; after an
    /// error, retry as usual.
    async fn follow(&mut self, holder_remaining: Option<Duration>, held_by_other: bool) {
        let timing = self.tracker.timing;
        let pushed = match self.events {
            Some(_) if held_by_other => Pushed::by(self.store.capabilities()),
            _ => Pushed::Nothing,
        };
        let mut wake = Instant::now() + timing.follower_wait(holder_remaining, pushed);
        loop {
            let event = tokio::select! {
                biased;
                _ = self.stop.cancelled() => return,
                _ = sleep_until(wake) => return,
                ev = next_event(&mut self.events) => ev,
            };
            match event {
                Some(LeaseEvent::Vacated) => return,
                Some(
                    LeaseEvent::Acquired { holder, token }
                    | LeaseEvent::MetadataUpdated { holder, token },
                ) => {
                    if holder != self.tracker.holder {
                        self.observe_new_leader(holder, token).await;
                    }
                }
                // Addressed to the holder, not to followers.
                Some(LeaseEvent::ResignRequested { .. }) => {}
                None => {
                    // Subscription down: poll until it is back.
                    self.events = None;
                    self.next_subscribe = Instant::now() + timing.retry_period;
                    let poll = timing.follower_wait(holder_remaining, Pushed::Nothing);
                    wake = wake.min(Instant::now() + poll);
                }
            }
        }
    }

    /// Publishes a leader announced by a notification. Events carry no
    /// metadata: on a store that keeps it, one `current` read fills it in
    /// (and the time left); if that read fails, the event's holder and token
    /// are published without it.
    async fn observe_new_leader(&self, holder: HolderId, token: FencingToken) {
        let announced = LeaderInfo {
            holder,
            token,
            metadata: None,
            expires: None,
        };
        let read = if self.store.capabilities().metadata {
            observer::read(
                &*self.store,
                &self.tracker.key,
                self.tracker.timing.request_timeout,
            )
            .await
            .ok()
            .flatten()
            .filter(|l| l.token == token)
        } else {
            None
        };
        self.tracker
            .observed_leader(Some(read.unwrap_or(announced)));
    }

    /// Waits `pause` (or until shutdown) without competing.
    async fn pause(&self, pause: Duration) {
        self.pause_until(Instant::now() + pause).await;
    }

    /// Waits until `until` (or shutdown) without competing.
    async fn pause_until(&self, until: Instant) {
        tokio::select! {
            biased;
            _ = self.stop.cancelled() => {}
            _ = sleep_until(until) => {}
        }
    }

    /// Releases a lease this loop holds, unless aborted (a simulated crash).
    async fn release(&self, lease: &Lease) {
        if !self.tracker.is_aborted() {
            keeper::release(&*self.store, lease, &self.tracker).await;
        }
    }

    /// An indeterminate acquire error carrying the store, operation and key.
    fn error(&self, message: String) -> Error {
        Error::indeterminate(message)
            .with_store(self.store.kind())
            .with_operation("acquire")
            .with_key(self.tracker.key.as_str())
    }
}

/// The election with election disabled: one term with token 0 that lasts
/// until shutdown, except that a step-down requested by run-while-leader work
/// ends it and a new one begins after the same pause as with a store.
async fn run_single(
    tracker: Arc<LeaseTracker>,
    stop: CancellationToken,
    first: Option<ActiveTerm>,
) {
    let mut panics_in_a_row = 0;
    let mut term = first;
    while let Some(current) = term.take() {
        tokio::select! {
            biased;
            _ = stop.cancelled() => {}
            _ = current.step_down.cancelled() => {}
        }
        if let Some((_, deadline)) = tracker.end_term(None) {
            tracker.wait_work_stopped(deadline).await;
        }
        tracker.term_closed(current.seq);
        let pause = step_down_pause(&tracker, &mut panics_in_a_row);
        let until =
            (Instant::now() + pause).max(tracker.held_off_until().unwrap_or_else(Instant::now));
        tokio::select! {
            biased;
            _ = stop.cancelled() => return,
            _ = sleep_until(until) => {}
        }
        term = tracker.begin_term(FencingToken(0), None);
    }
}

/// The pause before competing again after run-while-leader work asked to end
/// the term: a growing back-off after panics (counted in `panics_in_a_row`),
/// one retry period after work that returned.
fn step_down_pause(tracker: &LeaseTracker, panics_in_a_row: &mut u32) -> Duration {
    match tracker.step_down_reason() {
        Some(StepDown::Panicked) => {
            *panics_in_a_row += 1;
            tracker.timing.panic_back_off(*panics_in_a_row)
        }
        _ => {
            *panics_in_a_row = 0;
            tracker.timing.retry_period
        }
    }
}

/// Completes when the subscription delivers a resign request for the term
/// with `token`; other events are of no use to a leader and are dropped.
/// Without a subscription (the watch before the term failed or timed out,
/// or it broke during the term) it watches again every retry period, so
/// that a long term stays reachable; pending forever on a store that
/// carries no resign requests (`carried` false: no watch is worth it).
async fn resign_requested(
    store: &dyn LeaseStore,
    tracker: &LeaseTracker,
    carried: bool,
    events: &mut Option<LeaseEvents>,
    token: FencingToken,
) {
    let timing = tracker.timing;
    loop {
        if events.is_none() {
            if !carried {
                return std::future::pending().await;
            }
            tokio::time::sleep(timing.retry_period).await;
            match timeout(timing.request_timeout, store.watch(&tracker.key)).await {
                Ok(Ok(subscribed)) => *events = Some(subscribed),
                Ok(Err(e)) => {
                    tracker.telemetry.store_error("watch", &e);
                    continue;
                }
                Err(_) => continue,
            }
        }
        match next_event(events).await {
            Some(LeaseEvent::ResignRequested { token: asked }) if asked == token => return,
            Some(_) => {}
            None => *events = None,
        }
    }
}

/// The next notification, or pending forever when not subscribed.
pub(crate) async fn next_event(events: &mut Option<LeaseEvents>) -> Option<LeaseEvent> {
    match events {
        Some(ev) => ev.recv().await,
        None => std::future::pending().await,
    }
}
