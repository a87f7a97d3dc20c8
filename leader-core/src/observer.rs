//! Watching who leads a resource without ever competing (etcd's `Observe`,
//! client-go's `OnNewLeader`, Curator's `getLeader`).
//!
//! An [`Observer`] reads the store's holder record ([`LeaseStore::current`])
//! and publishes a [`LeaderInfo`] (or `None` for an empty seat) whenever the
//! seat changes. On stores that notify it re-reads when an event arrives;
//! otherwise, and as a safety net, it polls. It never acquires, renews or
//! releases anything.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep_until, timeout};
use tokio_util::sync::CancellationToken;

use crate::config::ElectionConfig;
use crate::elector::next_event;
use crate::error::{Error, Result};
use crate::metadata::Metadata;
use crate::names::{FencingToken, HolderId, LeaseKey};
use crate::store::{LeaseEvents, LeaseInfo, LeaseStore};
use crate::timing::{Pushed, Timing};

/// Who leads a resource, as last read from the store.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct LeaderInfo {
    /// The leader's holder id.
    pub holder: HolderId,
    /// Its term's fencing token.
    pub token: FencingToken,
    /// The metadata it published with its lease, if any (read with the
    /// token: never another term's).
    pub metadata: Option<Metadata>,
    /// When its lease ends unless renewed, on this process's clock: the
    /// store's time left added to when it was read (`None` when the store
    /// keeps no TTL, as with session-bound locks). For the elector's own
    /// term, its validity point.
    pub expires: Option<Instant>,
}

impl LeaderInfo {
    /// A leader as read from the store at `read_at`.
    pub fn from_lease(info: LeaseInfo, read_at: Instant) -> Self {
        LeaderInfo {
            holder: info.holder,
            token: info.token,
            metadata: info.metadata,
            expires: info.remaining.map(|r| read_at + r),
        }
    }

    /// Time left on the lease as of now, if the store keeps a TTL.
    pub fn remaining(&self) -> Option<Duration> {
        self.expires
            .map(|at| at.saturating_duration_since(Instant::now()))
    }

    /// Whether `other` is the same term with the same metadata (the time
    /// left may differ): what counts as "no change" for subscribers.
    pub fn same_seat(&self, other: &LeaderInfo) -> bool {
        self.holder == other.holder && self.token == other.token && self.metadata == other.metadata
    }
}

/// Whether two optional leaders are the same seat (see [`LeaderInfo::same_seat`]).
pub(crate) fn same_seat(a: Option<&LeaderInfo>, b: Option<&LeaderInfo>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => a.same_seat(b),
        (None, None) => true,
        _ => false,
    }
}

/// Watches one resource's seat and publishes every change, never competing.
///
/// ```no_run
/// # async fn example() -> leader_core::Result<()> {
/// use std::sync::Arc;
/// use leader_core::{ElectionConfig, MemoryStore, Observer};
///
/// let store = Arc::new(MemoryStore::new());
/// let observer = Observer::start(store, &ElectionConfig::new("build-queue")).await?;
/// let mut changes = observer.subscribe();
/// loop {
///     match &*changes.borrow_and_update() {
///         Some(leader) => println!("{} leads with token {}", leader.holder, leader.token),
///         None => println!("nobody leads"),
///     }
///     if changes.changed().await.is_err() {
///         break;
///     }
/// }
/// # Ok(()) }
/// ```
///
/// # Guarantees and cost
///
/// * A published leader is what the store reported at that moment, read
///   atomically (holder, token, metadata, time left); it may have changed
///   since. Never use an observation as permission to act: only the holder's
///   own [`Elector::is_leader`](crate::Elector::is_leader) is.
/// * Every change of seat that lasts longer than the detection delay is
///   published, including empty seats. Changes shorter than that may be
///   coalesced (the channel holds the latest value, like any
///   `tokio::sync::watch`).
/// * Detection delay: on stores that push releases and expiries, about one
///   request after the event; on stores that push releases only, expiry is
///   seen just after the holder's lease ends; without notifications, within
///   the retry period (plus jitter).
/// * Store operations: one `current` read per change and per poll (every
///   retry period while the seat is empty or the store does not notify;
///   rarely otherwise), plus one `watch` subscription when the store
///   notifies. No writes.
///
/// Dropping the observer stops its task.
#[derive(Debug)]
pub struct Observer {
    key: LeaseKey,
    store: Arc<dyn LeaseStore>,
    timing: Timing,
    state: watch::Receiver<Option<LeaderInfo>>,
    errors: watch::Receiver<Option<String>>,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl Drop for Observer {
    fn drop(&mut self) {
        self.stop.cancel();
        self.task.abort();
    }
}

impl Observer {
    /// Reads the seat of `config`'s resource once, then keeps watching it in
    /// the background. Uses the config's key prefix, resource name, retry
    /// period and request timeout.
    ///
    /// # Errors
    ///
    /// Invalid configuration (the message names the field), election
    /// disabled (nothing to observe), no tokio runtime, or the first read
    /// failing or not answering within the request timeout.
    pub async fn start(store: Arc<dyn LeaseStore>, config: &ElectionConfig) -> Result<Observer> {
        config.validate()?;
        if !config.enabled {
            return Err(Error::invalid_config(
                "enabled: election is disabled, so there is no seat in a store to observe",
            ));
        }
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(Error::no_runtime("Observer::start"));
        }
        let key = config.lease_key()?;
        let timing = Timing::from_config(config);
        let watcher = Watcher {
            store: store.clone(),
            key: key.clone(),
            timing,
            events: None,
        };
        let first = watcher.read().await?;
        let (tx, state) = watch::channel(first);
        let (errors_tx, errors) = watch::channel(None);
        let stop = CancellationToken::new();
        let task = tokio::spawn(watcher.run(tx, errors_tx, stop.clone()));
        Ok(Observer {
            key,
            store,
            timing,
            state,
            errors,
            stop,
            task,
        })
    }

    /// The leader as last published (no store call).
    pub fn leader(&self) -> Option<LeaderInfo> {
        self.state.borrow().clone()
    }

    /// A receiver of every change of seat: `changed()` completes when the
    /// seat changes (a new term, new metadata, or an empty seat); `borrow()`
    /// shows the latest observation, including its time left.
    pub fn subscribe(&self) -> watch::Receiver<Option<LeaderInfo>> {
        self.state.clone()
    }

    /// A receiver of the observer's store trouble: the message of the last
    /// failed read while reads fail, `None` once one succeeds again. While
    /// reads fail, the published leader is the last one read.
    pub fn errors(&self) -> watch::Receiver<Option<String>> {
        self.errors.clone()
    }

    /// Reads the seat from the store now: one `current` call, bounded by
    /// the request timeout.
    ///
    /// # Errors
    ///
    /// The store failing or not answering in time.
    pub async fn current(&self) -> Result<Option<LeaderInfo>> {
        read(&*self.store, &self.key, self.timing.request_timeout).await
    }

    /// The key observed.
    pub fn key(&self) -> &LeaseKey {
        &self.key
    }
}

/// One bounded `current` read, as a [`LeaderInfo`].
pub(crate) async fn read(
    store: &dyn LeaseStore,
    key: &LeaseKey,
    limit: Duration,
) -> Result<Option<LeaderInfo>> {
    let read = timeout(limit, store.current(key)).await.map_err(|_| {
        Error::indeterminate(format!("current did not answer within {limit:?}"))
            .with_store(store.kind())
            .with_operation("current")
            .with_key(key.as_str())
    })??;
    Ok(read.map(|info| LeaderInfo::from_lease(info, Instant::now())))
}

/// The observer's background loop.
struct Watcher {
    store: Arc<dyn LeaseStore>,
    key: LeaseKey,
    timing: Timing,
    events: Option<LeaseEvents>,
}

impl Watcher {
    async fn read(&self) -> Result<Option<LeaderInfo>> {
        read(&*self.store, &self.key, self.timing.request_timeout).await
    }

    async fn run(
        mut self,
        tx: watch::Sender<Option<LeaderInfo>>,
        errors: watch::Sender<Option<String>>,
        stop: CancellationToken,
    ) {
        let notifies = self.store.capabilities().notifies();
        let mut next_subscribe = Instant::now();
        loop {
            // Subscribe before reading, so no change after the read is missed.
            if notifies && self.events.is_none() && Instant::now() >= next_subscribe {
                let limit = self.timing.request_timeout;
                match timeout(limit, self.store.watch(&self.key)).await {
                    Ok(Ok(events)) => self.events = Some(events),
                    _ => next_subscribe = Instant::now() + self.timing.retry_period,
                }
            }
            let wait = match self.read().await {
                Ok(leader) => {
                    errors.send_if_modified(|e| e.take().is_some());
                    let wait = self.wait_after(leader.as_ref());
                    tx.send_if_modified(|seen| {
                        let changed = !same_seat(seen.as_ref(), leader.as_ref());
                        *seen = leader;
                        changed
                    });
                    wait
                }
                Err(e) => {
                    tracing::debug!(key = %self.key, error = %e, "observer: reading the seat failed");
                    errors.send_replace(Some(e.to_string()));
                    self.timing.retry_period
                }
            };
            let wake = Instant::now() + wait;
            tokio::select! {
                biased;
                _ = stop.cancelled() => return,
                _ = sleep_until(wake) => {}
                event = next_event(&mut self.events) => {
                    if event.is_none() {
                        // Subscription down: poll until it is back.
                        self.events = None;
                        next_subscribe = Instant::now() + self.timing.retry_period;
                    }
                }
            }
        }
    }

    /// How long to wait before reading again, given the seat just read.
    /// An empty seat is polled every retry period even with a subscription
    /// (stores may omit acquisition events).
    fn wait_after(&self, leader: Option<&LeaderInfo>) -> Duration {
        let pushed = match (&self.events, leader) {
            (Some(_), Some(_)) => Pushed::by(self.store.capabilities()),
            _ => Pushed::Nothing,
        };
        self.timing
            .follower_wait(leader.and_then(LeaderInfo::remaining), pushed)
    }
}
