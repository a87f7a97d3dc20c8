//! Named one-shot locks (the card's Pattern 2): try to take a named resource,
//! do the job, release.
//!
//! Each acquisition gets its own holder id (`<holder>/lock-<n>`, where
//! `<holder>` is the factory's own unique id such as `pod-a/3f9c1a2b4d5e`),
//! so no two callers, in one process or in two processes given the same
//! `InstanceId`, can take, renew or release each other's lock. While held,
//! the lock is renewed in the background with the same rules as an elector
//! ([`LockGuard::lost`] fires when it cannot be kept), and it is released
//! explicitly with [`LockGuard::release`] or, without blocking, on drop.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use std::time::Duration;

use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep_until, timeout};
use tokio_util::sync::CancellationToken;

use crate::config::ElectionConfig;
use crate::elector::next_event;
use crate::error::{Error, Result};
use crate::keeper::{self, KeepEnd};
use crate::names::{FencingToken, HolderId, LeaseKey};
use crate::store::{Acquire, Lease, LeaseEvent, LeaseEvents, LeaseStore};
use crate::telemetry::LossReason;
use crate::telemetry::{Kind as TelemetryKind, Telemetry};
use crate::timing::{Pushed, Timing};
use crate::tracker::LeaseTracker;

/// A factory of named locks on one store.
///
/// Uses the config's key prefix, timing, instance id and metrics prefix; its
/// resource name is ignored and need not be set (each lock names its own).
#[derive(Clone)]
pub struct Locks {
    store: Arc<dyn LeaseStore>,
    config: Arc<ElectionConfig>,
    instance: HolderId,
    next: Arc<AtomicU64>,
}

impl fmt::Debug for Locks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Locks")
            .field("store", &self.store.kind())
            .field("instance", &self.instance)
            .finish_non_exhaustive()
    }
}

impl Locks {
    /// Validates `config` and prepares locks on `store`.
    ///
    /// # Errors
    ///
    /// Invalid configuration, naming the field.
    pub fn new(store: Arc<dyn LeaseStore>, config: ElectionConfig) -> Result<Locks> {
        config.validate_for_locks()?;
        let instance = config.holder_id()?;
        Ok(Locks {
            store,
            config: Arc::new(config),
            instance,
            next: Arc::new(AtomicU64::new(1)),
        })
    }

    /// Tries once to take the lock `name`. `Ok(None)` means someone else
    /// holds it: skip the job. The same as [`Locks::acquire_with`] with
    /// default [`LockOptions`]; one `acquire` call.
    ///
    /// # Errors
    ///
    /// An invalid name, or a store that failed or did not answer within the
    /// request timeout (in that case the lock may have been taken and will
    /// expire after the lease duration). An answer that arrives after the
    /// lease it grants stopped being trustworthy (`sent + lease * (1 -
    /// drift)`, e.g. after a stall of this process) is also
    /// [`ErrorKind::Indeterminate`](crate::ErrorKind::Indeterminate): no
    /// guard is handed out and the lock is released at once.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: the attempt runs in its own task, and a lock it takes
    /// after the future was dropped is released at once.
    pub async fn try_acquire(&self, name: &str) -> Result<Option<LockGuard>> {
        self.acquire_with(name, &LockOptions::new()).await
    }

    /// Takes the lock `name`, waiting up to `timeout` while someone else
    /// holds it (DistributedLock's `Acquire(timeout)`). `Ok(None)` when the
    /// timeout passed first. See [`Locks::acquire_with`].
    ///
    /// # Errors
    ///
    /// As [`Locks::acquire_with`].
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: a dropped wait leaves nothing held.
    pub async fn acquire(&self, name: &str, timeout: Duration) -> Result<Option<LockGuard>> {
        self.acquire_with(name, &LockOptions::new().wait(timeout))
            .await
    }

    /// Takes the lock `name` with `options`: tries at once and, with
    /// [`LockOptions::wait`], again whenever the lock may have come free,
    /// until the wait ends. `Ok(None)` when it is still held by someone else
    /// then.
    ///
    /// While waiting, the waiter is woken by the store's release
    /// notifications where it pushes them (one `watch` subscription for the
    /// whole wait, then one `acquire` per release); where the store does
    /// not notify, or pushes only releases, it polls: every retry period
    /// (with jitter), or just after the holder's lease would expire when the
    /// store says so. No busy polling.
    ///
    /// # Errors
    ///
    /// Invalid options or name (naming what is wrong), and the errors of
    /// [`Locks::try_acquire`]. While waiting, retryable store errors
    /// (unavailable, indeterminate) are retried after a retry period until
    /// the wait ends; the last one is returned then.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: each attempt runs in its own task, and a lock an
    /// attempt takes after the wait was dropped is released at once (one
    /// `release` call), so a dropped wait leaves nothing held.
    pub async fn acquire_with(
        &self,
        name: &str,
        options: &LockOptions,
    ) -> Result<Option<LockGuard>> {
        options.validate()?;
        let key = LeaseKey::new(&self.config.key_prefix, name)?;
        let timing = Timing::from_config(&self.config);
        let deadline =
            Instant::now() + options.wait.unwrap_or_default().min(crate::timing::LONGEST);
        let mut events = self.subscribe(&key, options, &timing).await;
        loop {
            let holder_remaining = match self.attempt(&key, options).await {
                Ok(Attempt::Acquired(guard)) => return Ok(Some(guard)),
                Ok(Attempt::Held(remaining)) if Instant::now() < deadline => remaining,
                Ok(Attempt::Held(_)) => return Ok(None),
                Err(e) if e.is_retryable() && Instant::now() < deadline => None,
                Err(e) => return Err(e),
            };
            let pushed = match events {
                Some(_) => Pushed::by(self.store.capabilities()),
                None => Pushed::Nothing,
            };
            let wake =
                deadline.min(Instant::now() + timing.follower_wait(holder_remaining, pushed));
            wait_for_release(&mut events, wake).await;
        }
    }

    /// A subscription to `key`'s events for a wait, when the store pushes
    /// any (none for a single attempt, or when it cannot be set up now).
    async fn subscribe(
        &self,
        key: &LeaseKey,
        options: &LockOptions,
        timing: &Timing,
    ) -> Option<LeaseEvents> {
        if options.wait.is_none_or(|w| w.is_zero()) || !self.store.capabilities().notifies() {
            return None;
        }
        match timeout(timing.request_timeout, self.store.watch(key)).await {
            Ok(Ok(events)) => Some(events),
            _ => None,
        }
    }

    /// One attempt in its own task, so that dropping the caller's future
    /// cannot drop an acquisition in flight: a guard nobody receives is
    /// dropped, which releases the lock.
    async fn attempt(&self, key: &LeaseKey, options: &LockOptions) -> Result<Attempt> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let holder = HolderId::new(format!("{}/lock-{n}", self.instance))?;
        // Metric handles bind to the caller's recorder: made here, not in
        // the task.
        let telemetry = Telemetry::new(TelemetryKind::Lock, &self.config, key.resource(), &holder);
        let (tx, rx) = oneshot::channel();
        let (locks, key, options) = (self.clone(), key.clone(), options.clone());
        tokio::spawn(async move {
            // A send error hands the value back; dropping it releases.
            let _ = tx.send(locks.attempt_here(key, holder, telemetry, &options).await);
        });
        rx.await
            .map_err(|_| Error::indeterminate("the lock attempt's task ended without an answer"))?
    }

    /// One acquire call and, on success, a guard with its keeper.
    async fn attempt_here(
        &self,
        key: LeaseKey,
        holder: HolderId,
        telemetry: Telemetry,
        options: &LockOptions,
    ) -> Result<Attempt> {
        let timing = Timing::from_config(&self.config);
        let sent = Instant::now();
        let outcome = timeout(
            timing.request_timeout,
            self.store.acquire(&key, &holder, timing.lease),
        )
        .await
        .map_err(|_| {
            Error::indeterminate(format!(
                "acquire did not answer within {:?}",
                timing.request_timeout
            ))
            .with_store(self.store.kind())
            .with_operation("acquire")
            .with_key(key.as_str())
        })??;
        let lease = match outcome {
            Acquire::Acquired(lease) => lease,
            Acquire::Held(info) => {
                telemetry.busy();
                return Ok(Attempt::Held(info.remaining));
            }
        };
        let tracker = Arc::new(LeaseTracker::new(
            key,
            holder,
            self.store.kind(),
            timing,
            telemetry,
            self.config.follower_health_status,
        ));
        // `begin_term` refuses a term whose validity point has passed: the
        // answer arrived after the lease stopped being trustworthy (the
        // process or runtime stalled after the store answered). No guard,
        // and the seat goes back now instead of at expiry.
        let Some(term) = tracker.begin_term(lease.token, Some(sent)) else {
            let released = keeper::release(&*self.store, &lease, &tracker).await;
            return Err(Error::indeterminate(format!(
                "acquire answered {:?} after it was sent, past the {:?} its lease can be \
                 trusted; {}",
                sent.elapsed(),
                timing.valid_until(sent) - sent,
                if released {
                    "released it"
                } else {
                    "it expires by itself"
                }
            ))
            .with_store(self.store.kind())
            .with_operation("acquire")
            .with_key(lease.key.as_str()));
        };
        let stop = CancellationToken::new();
        let keeper = tokio::spawn(tracker.telemetry.supervise(keep_lock(
            self.store.clone(),
            lease.clone(),
            sent,
            tracker.clone(),
            stop.clone(),
            options.hold_at_most.map(|d| sent + d),
        )));
        let lost = term.cancel.clone();
        Ok(Attempt::Acquired(LockGuard {
            store: self.store.clone(),
            lease,
            tracker,
            stop,
            keeper: Some(keeper),
            lost,
            released: false,
            hold_until: options.hold_at_least.map(|d| sent + d),
        }))
    }
}

/// The outcome of one lock attempt.
enum Attempt {
    Acquired(LockGuard),
    /// Held by someone else, for this long if the store says.
    Held(Option<Duration>),
}

/// Waits until `wake`, or until `events` says the lock came free (or the
/// subscription broke: it is then dropped and the waiter polls).
async fn wait_for_release(events: &mut Option<LeaseEvents>, wake: Instant) {
    loop {
        tokio::select! {
            _ = sleep_until(wake) => return,
            event = next_event(events) => match event {
                Some(LeaseEvent::Vacated) => return,
                Some(_) => {}
                None => {
                    *events = None;
                    return;
                }
            },
        }
    }
}

/// How one lock acquisition waits and how long it holds.
///
/// ```
/// use std::time::Duration;
/// use leader_core::LockOptions;
///
/// // Wait up to 5 s; keep the lock at least 2 s (a cron job that ends
/// // early is not run again by a replica whose clock fires later) and at
/// // most 10 min (a stuck job does not block everyone forever).
/// let options = LockOptions::new()
///     .wait(Duration::from_secs(5))
///     .hold_at_least(Duration::from_secs(2))
///     .hold_at_most(Duration::from_secs(600));
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct LockOptions {
    /// How long to wait while someone else holds the lock (`None`: one
    /// attempt).
    pub wait: Option<Duration>,
    /// ShedLock's `lockAtLeastFor`: a release (or drop) before this much
    /// time after the acquire was sent keeps the lock until then.
    pub hold_at_least: Option<Duration>,
    /// ShedLock's `lockAtMostFor`: the lock is given up this long after the
    /// acquire was sent, even if the holder is stuck.
    pub hold_at_most: Option<Duration>,
}

impl LockOptions {
    /// One attempt, no hold bounds.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets [`LockOptions::wait`].
    pub fn wait(mut self, timeout: Duration) -> Self {
        self.wait = Some(timeout);
        self
    }

    /// Sets [`LockOptions::hold_at_least`].
    ///
    /// An early [`LockGuard::release`] or drop returns at once; the lock
    /// keeps being renewed in the background (one `renew` per renewal
    /// interval) and is released at the bound (one `release`). Through the
    /// `LeaseStore` trait a lease's TTL cannot be shortened, so this is how
    /// the bound is kept without holding the lease for a longer TTL, which
    /// a crashed holder would then block for. The cost: the process must
    /// live until the bound for it to be exact; if it exits or crashes
    /// earlier, the lock stays held until its last renewal's TTL runs out
    /// (at least a lease duration less a renewal interval after the
    /// crash, but possibly before the bound when the bound is longer).
    pub fn hold_at_least(mut self, at_least: Duration) -> Self {
        self.hold_at_least = Some(at_least);
        self
    }

    /// Sets [`LockOptions::hold_at_most`].
    ///
    /// At the bound the guard's [`LockGuard::lost`] fires and
    /// [`LockGuard::is_held`] turns false first; then the lock is released
    /// in the store (one `release`), whether or not the job has stopped.
    /// No extra store operation before the bound.
    pub fn hold_at_most(mut self, at_most: Duration) -> Self {
        self.hold_at_most = Some(at_most);
        self
    }

    fn validate(&self) -> Result<()> {
        let limit = crate::timing::LONGEST;
        for (field, value) in [
            ("wait", self.wait),
            ("hold_at_least", self.hold_at_least),
            ("hold_at_most", self.hold_at_most),
        ] {
            if value.is_some_and(|v| v > limit) {
                return Err(Error::invalid_argument(format!(
                    "lock option {field} is longer than the limit of {limit:?}"
                )));
            }
        }
        if self.hold_at_most.is_some_and(|d| d.is_zero()) {
            return Err(Error::invalid_argument(
                "lock option hold_at_most must be above zero",
            ));
        }
        if let (Some(least), Some(most)) = (self.hold_at_least, self.hold_at_most)
            && least > most
        {
            return Err(Error::invalid_argument(format!(
                "lock option hold_at_least ({least:?}) is longer than hold_at_most ({most:?})"
            )));
        }
        Ok(())
    }
}

/// Renews a lock until it is lost, stopped, or its `hold_at_most` point
/// passes; then it is given up: the term ends first (`lost()` fires), then
/// the lease is released.
async fn keep_lock(
    store: Arc<dyn LeaseStore>,
    lease: Lease,
    sent: Instant,
    tracker: Arc<LeaseTracker>,
    stop: CancellationToken,
    give_up_at: Option<Instant>,
) {
    let limit = async {
        match give_up_at {
            Some(at) => sleep_until(at).await,
            None => std::future::pending().await,
        }
    };
    let end = tokio::select! {
        end = keeper::keep(&*store, &lease, sent, &tracker, &stop) => end,
        _ = limit => KeepEnd::Lost(LossReason::HoldLimit),
    };
    match end {
        KeepEnd::Lost(LossReason::HoldLimit) => {
            if let Some((token, _)) = tracker.end_term(Some(LossReason::HoldLimit)) {
                let released = keeper::release(&*store, &lease, &tracker).await;
                tracker.telemetry.released(token, released);
            }
        }
        KeepEnd::Lost(reason) => {
            tracker.end_term(Some(reason));
        }
        KeepEnd::Stopped => {}
    }
}

/// A held named lock. Release it with [`LockGuard::release`]; dropping it
/// releases in the background.
pub struct LockGuard {
    store: Arc<dyn LeaseStore>,
    lease: Lease,
    tracker: Arc<LeaseTracker>,
    stop: CancellationToken,
    keeper: Option<JoinHandle<()>>,
    lost: CancellationToken,
    released: bool,
    /// The `hold_at_least` point: no release before it.
    hold_until: Option<Instant>,
}

impl fmt::Debug for LockGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LockGuard")
            .field("lease", &self.lease)
            .field("held", &self.is_held())
            .finish()
    }
}

impl LockGuard {
    /// The fencing token of this acquisition.
    pub fn token(&self) -> FencingToken {
        self.lease.token
    }

    /// The lock's name.
    pub fn name(&self) -> &str {
        self.lease.key.resource()
    }

    /// This acquisition's holder id.
    pub fn holder(&self) -> &HolderId {
        &self.lease.holder
    }

    /// Whether the lock may still be trusted (same rule as `Elector::is_leader`).
    pub fn is_held(&self) -> bool {
        self.tracker.is_valid()
    }

    /// Completes when the lock is lost (renewals failed until the deadline or
    /// the store says someone else holds it). Stop the job when it fires.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe.
    pub async fn lost(&self) {
        tokio::select! {
            _ = self.lost.cancelled() => {}
            _ = until_invalid(&self.tracker) => {}
        }
    }

    /// A token cancelled when the lock is lost.
    pub fn cancellation_token(&self) -> CancellationToken {
        self.lost.clone()
    }

    /// Releases the lock now, or with [`LockOptions::hold_at_least`]
    /// before its bound, hands the release to the background (renewing
    /// until the bound) and returns at once. Returns `true` if the lock was
    /// still held and the store confirmed the release (or the release was
    /// scheduled), `false` if it had already been lost.
    ///
    /// # Errors
    ///
    /// Never for store failures (the lock then expires by itself; a warning
    /// is logged); the `Result` is kept for future use.
    ///
    /// # Cancel safety
    ///
    /// If the future is dropped, the release continues in the background.
    pub async fn release(mut self) -> Result<bool> {
        if self.hold_until.is_some_and(|at| at > Instant::now()) {
            let held = self.is_held();
            // Drop hands the release to the background at the bound.
            return Ok(held);
        }
        self.released = true;
        let finish = finish(
            self.store.clone(),
            self.lease.clone(),
            self.tracker.clone(),
            self.stop.clone(),
            self.keeper.take(),
            None,
        );
        // Not awaited in place: a dropped `release()` must still release.
        match tokio::spawn(finish).await {
            Ok(released) => Ok(released),
            Err(_) => Ok(false),
        }
    }
}

/// Ends a lock: waits until `hold_until` (renewing meanwhile), stops the
/// keeper, ends the term and releases. Returns whether the store confirmed
/// the release.
async fn finish(
    store: Arc<dyn LeaseStore>,
    lease: Lease,
    tracker: Arc<LeaseTracker>,
    stop: CancellationToken,
    keeper: Option<JoinHandle<()>>,
    hold_until: Option<Instant>,
) -> bool {
    if let Some(at) = hold_until {
        // Lost meanwhile (hold_at_most, a takeover): nothing to wait for.
        tokio::select! {
            _ = sleep_until(at) => {}
            _ = until_invalid(&tracker) => {}
        }
    }
    stop.cancel();
    if let Some(keeper) = keeper {
        let _ = keeper.await;
    }
    let held = tracker.end_term(None).is_some();
    let released = held && keeper::release(&*store, &lease, &tracker).await;
    if held {
        tracker.telemetry.released(lease.token, released);
    }
    released
}

async fn until_invalid(tracker: &LeaseTracker) {
    while let Some(until) = tracker.valid_until() {
        tokio::time::sleep_until(until).await;
        if !tracker.is_valid() {
            return;
        }
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        if self.released {
            return;
        }
        self.released = true;
        // Release on drop must not block the runtime: hand it to a task
        // (at the hold_at_least point when one is set).
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(finish(
                    self.store.clone(),
                    self.lease.clone(),
                    self.tracker.clone(),
                    self.stop.clone(),
                    self.keeper.take(),
                    self.hold_until.filter(|at| *at > Instant::now()),
                ));
            }
            Err(_) => {
                // No runtime left: stop renewing; the lease expires.
                self.stop.cancel();
                if let Some(keeper) = self.keeper.take() {
                    keeper.abort();
                }
                self.tracker.end_term(None);
            }
        }
    }
}
