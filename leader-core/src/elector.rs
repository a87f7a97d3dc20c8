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

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep_until, timeout};
use tokio_util::sync::CancellationToken;

use crate::config::ElectionConfig;
use crate::error::{Error, Result};
use crate::health::{self, HealthReport, Probe};
use crate::keeper::{self, KeepEnd};
use crate::names::{FencingToken, HolderId, LeaseKey};
use crate::store::{Acquire, LeaseEvent, LeaseEvents, LeaseStore};
use crate::telemetry::{Kind as TelemetryKind, LossReason, Telemetry};
use crate::timing::{Pushed, Timing};
use crate::tracker::{ActiveTerm, LeaderState, LeaseTracker};

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
        let stop = CancellationToken::new();
        let task = if config.enabled {
            let task = run(store, tracker.clone(), stop.clone());
            Some(tokio::spawn(tracker.telemetry.supervise(task)))
        } else {
            tracker.begin_term(FencingToken(0), None);
            None
        };
        Ok(Elector {
            inner: Arc::new(Handle {
                tracker,
                stop,
                task: Mutex::new(task),
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
    /// signal that fires the moment leadership is lost or the elector shuts
    /// down. After a loss, `work` is started again on the next win; work that
    /// returns by itself is not restarted within the same term.
    ///
    /// `work` should return promptly once cancelled. If it is still running
    /// when the lost term's lease could expire in the store, its task is
    /// aborted (at its next `.await`) and a warning is logged. The elector
    /// does not compete again, nor release on shutdown, before the work has
    /// stopped or that point has passed.
    pub fn run_while_leader<F, Fut>(&self, mut work: F) -> WorkHandle
    where
        F: FnMut(LeaderContext) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let tracker = self.inner.tracker.clone();
        let stop = self.inner.stop.clone();
        let mut terms = tracker.subscribe_terms();
        let handle = tokio::spawn(async move {
            // Work that returns by itself is started again only in a new term.
            let mut last_run = None;
            loop {
                let fresh = |t: &Option<ActiveTerm>| {
                    t.as_ref()
                        .is_some_and(|t| !t.cancel.is_cancelled() && Some(t.token) != last_run)
                };
                let term = tokio::select! {
                    _ = stop.cancelled() => return,
                    t = terms.wait_for(fresh) => match t {
                        Ok(t) => t.clone(),
                        Err(_) => return,
                    },
                };
                let Some(term) = term else { continue };
                last_run = Some(term.token);
                supervise_term(&tracker, term, &mut work).await;
            }
        });
        WorkHandle { handle }
    }

    /// Stops competing, stops run-while-leader work, then releases the lease
    /// (bounded by the release timeout) so a follower can take over at once.
    /// Never re-acquires afterwards. Idempotent.
    pub async fn shutdown(&self) {
        self.inner.stop.cancel();
        let task = self
            .inner
            .task
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        match task {
            Some(task) => {
                if let Err(e) = task.await
                    && e.is_panic()
                {
                    tracing::error!(key = %self.key(), "elector task panicked");
                }
            }
            None if !self.inner.enabled => {
                if let Some((_, _)) = self.inner.tracker.end_term(None) {
                    let deadline = Instant::now() + self.inner.tracker.timing.release_timeout;
                    self.inner.tracker.wait_work_stopped(deadline).await;
                }
            }
            None => {}
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

/// The supervisor started by [`Elector::run_while_leader`].
#[derive(Debug)]
pub struct WorkHandle {
    handle: JoinHandle<()>,
}

impl WorkHandle {
    /// Stops starting new work (work already running is not interrupted by
    /// this; it ends with the term).
    pub fn stop(&self) {
        self.handle.abort();
    }

    /// Waits until the supervisor ends (after the elector shuts down).
    pub async fn join(self) {
        let _ = self.handle.await;
    }
}

/// Runs one term's work until it ends or the term ends, then enforces the
/// hard deadline.
async fn supervise_term<F, Fut>(tracker: &Arc<LeaseTracker>, term: ActiveTerm, work: &mut F)
where
    F: FnMut(LeaderContext) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let ctx = LeaderContext {
        token: term.token,
        cancel: term.cancel.child_token(),
    };
    tracker.work_active.send_modify(|n| *n += 1);
    let active = ActiveGuard(tracker.clone());
    let mut task = tokio::spawn(work(ctx.clone()));
    let finished = tokio::select! {
        _ = &mut task => true,
        _ = until_term_invalid(tracker, &term) => false,
    };
    if !finished {
        ctx.cancel.cancel();
        // The lost term's lease can expire in the store at its validity
        // point; the work must be gone by then.
        let hard_deadline = tracker.term_deadline(term.token);
        if tokio::time::timeout_at(hard_deadline, &mut task)
            .await
            .is_err()
        {
            task.abort();
            let _ = task.await;
            tracing::warn!(key = %tracker.key, token = term.token.0,
                "run-while-leader work did not stop before the lease could expire; aborted");
        }
    }
    drop(active);
}

/// Decrements the running-work count when dropped (also on abort).
struct ActiveGuard(Arc<LeaseTracker>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.work_active.send_modify(|n| *n = n.saturating_sub(1));
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

/// The election loop.
async fn run(store: Arc<dyn LeaseStore>, tracker: Arc<LeaseTracker>, stop: CancellationToken) {
    let timing = tracker.timing;
    let support = store.capabilities().notifications;
    let notifies = store.capabilities().notifies();
    let mut events: Option<LeaseEvents> = None;
    let mut next_subscribe = Instant::now();
    while !stop.is_cancelled() {
        if notifies && events.is_none() && Instant::now() >= next_subscribe {
            match timeout(timing.request_timeout, store.watch(&tracker.key)).await {
                Ok(Ok(ev)) => events = Some(ev),
                Ok(Err(e)) => {
                    tracker.telemetry.store_error("watch", &e);
                    next_subscribe = Instant::now() + timing.retry_period;
                }
                Err(_) => next_subscribe = Instant::now() + timing.retry_period,
            }
        }

        // Not raced against `stop`: dropping an acquisition in flight could
        // leave our key in the store for a whole TTL after shutdown.
        let sent = Instant::now();
        let outcome = timeout(
            timing.request_timeout,
            store.acquire(&tracker.key, &tracker.holder, timing.lease),
        )
        .await;
        tracker.telemetry.acquire_took(sent.elapsed());
        // (the holder's remaining TTL, whether someone else surely holds it)
        let (holder_remaining, held_by_other) = match outcome {
            Ok(Ok(Acquire::Acquired(lease))) => {
                if stop.is_cancelled() {
                    if !tracker.is_aborted() {
                        keeper::release(&*store, &lease, &tracker).await;
                    }
                    break;
                }
                tracker.begin_term(lease.token, Some(sent));
                let end = keeper::keep(&*store, &lease, sent, &tracker, &stop).await;
                let reason = match end {
                    KeepEnd::Stopped => None,
                    KeepEnd::Lost(reason) => Some(reason),
                };
                if let Some((token, valid_until)) = tracker.end_term(reason) {
                    // No new term, and no release, while the old term's work
                    // runs (its supervisor aborts it at `valid_until`).
                    tracker.wait_work_stopped(valid_until).await;
                    if end == KeepEnd::Stopped && !tracker.is_aborted() {
                        let released = keeper::release(&*store, &lease, &tracker).await;
                        tracker.telemetry.released(token, released);
                    }
                }
                match reason {
                    // The store said someone else holds it: wait like a follower.
                    Some(LossReason::NotHolder) => (None, false),
                    // Renewals failed until the deadline: try again at once;
                    // if our key survived we get it back with a new token.
                    _ => continue,
                }
            }
            Ok(Ok(Acquire::Held(info))) => {
                tracker.contact_ok(Some(info.holder));
                (info.remaining, true)
            }
            Ok(Err(e)) => {
                tracker.contact_failed("acquire", &e);
                (None, false)
            }
            Err(_) => {
                let e = Error::indeterminate(format!(
                    "acquire did not answer within {:?}",
                    timing.request_timeout
                ))
                .with_store(store.kind())
                .with_operation("acquire")
                .with_key(tracker.key.as_str());
                tracker.contact_failed("acquire", &e);
                (None, false)
            }
        };

        // Follower: wait for the retry period, or less if the store says
        // the lease is about to end or was released.
        // Pushed events only stand in for polling when the store definitely
        // said someone else holds the seat; after an error, retry as usual.
        let pushed = match events {
            Some(_) if held_by_other => Pushed::by(support),
            _ => Pushed::Nothing,
        };
        let mut wake = Instant::now() + timing.follower_wait(holder_remaining, pushed);
        loop {
            let event = tokio::select! {
                biased;
                _ = stop.cancelled() => break,
                _ = sleep_until(wake) => break,
                ev = next_event(&mut events) => ev,
            };
            match event {
                Some(LeaseEvent::Vacated) => break,
                Some(LeaseEvent::Acquired { holder, .. }) => {
                    if holder != tracker.holder {
                        tracker.observed_leader(Some(holder));
                    }
                }
                None => {
                    // Subscription down: poll until it is back.
                    events = None;
                    next_subscribe = Instant::now() + timing.retry_period;
                    let poll = timing.follower_wait(holder_remaining, Pushed::Nothing);
                    wake = wake.min(Instant::now() + poll);
                }
            }
        }
    }
}

/// The next notification, or pending forever when not subscribed.
async fn next_event(events: &mut Option<LeaseEvents>) -> Option<LeaseEvent> {
    match events {
        Some(ev) => ev.recv().await,
        None => std::future::pending().await,
    }
}
