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

use tokio::task::JoinHandle;
use tokio::time::{Instant, timeout};
use tokio_util::sync::CancellationToken;

use crate::config::ElectionConfig;
use crate::error::{Error, Result};
use crate::keeper::{self, KeepEnd};
use crate::names::{FencingToken, HolderId, LeaseKey};
use crate::store::{Acquire, Lease, LeaseStore};
use crate::telemetry::{Kind as TelemetryKind, Telemetry};
use crate::timing::Timing;
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
    /// holds it: skip the job.
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
    /// Not cancel safe: dropping the future mid-request may leave the lock
    /// taken until it expires.
    pub async fn try_acquire(&self, name: &str) -> Result<Option<LockGuard>> {
        let key = LeaseKey::new(&self.config.key_prefix, name)?;
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let holder = HolderId::new(format!("{}/lock-{n}", self.instance))?;
        let timing = Timing::from_config(&self.config);
        let telemetry = Telemetry::new(TelemetryKind::Lock, &self.config, name, &holder);
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
            Acquire::Held(_) => {
                telemetry.busy();
                return Ok(None);
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
        )));
        let lost = term.cancel.clone();
        Ok(Some(LockGuard {
            store: self.store.clone(),
            lease,
            tracker,
            stop,
            keeper: Some(keeper),
            lost,
            released: false,
        }))
    }
}

async fn keep_lock(
    store: Arc<dyn LeaseStore>,
    lease: Lease,
    sent: Instant,
    tracker: Arc<LeaseTracker>,
    stop: CancellationToken,
) {
    if let KeepEnd::Lost(reason) = keeper::keep(&*store, &lease, sent, &tracker, &stop).await {
        tracker.end_term(Some(reason));
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

    /// Releases the lock now. Returns `true` if the store confirmed the
    /// release, `false` if the lock had already been lost.
    ///
    /// # Errors
    ///
    /// Never for store failures (the lock then expires by itself; a warning
    /// is logged); the `Result` is kept for future use.
    pub async fn release(mut self) -> Result<bool> {
        self.released = true;
        self.stop.cancel();
        if let Some(keeper) = self.keeper.take() {
            let _ = keeper.await;
        }
        let held = self.tracker.end_term(None).is_some();
        let released = held && keeper::release(&*self.store, &self.lease, &self.tracker).await;
        self.tracker.telemetry.released(self.lease.token, released);
        Ok(released)
    }
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
        self.stop.cancel();
        if let Some(keeper) = self.keeper.take() {
            keeper.abort();
        }
        // Release on drop must not block the runtime: hand it to a task.
        let held = self.tracker.end_term(None).is_some();
        if held && let Ok(rt) = tokio::runtime::Handle::try_current() {
            let store = self.store.clone();
            let lease = self.lease.clone();
            let tracker = self.tracker.clone();
            rt.spawn(async move {
                let released = keeper::release(&*store, &lease, &tracker).await;
                tracker.telemetry.released(lease.token, released);
            });
        }
    }
}
