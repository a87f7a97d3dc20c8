//! One pub/sub session per store client, opened on demand and shared by
//! every watch of the store and its clones.
//!
//! [`Subscriptions::watch`] hands the lease to the live [`Session`] (see
//! [`crate::watch`]), opening one first if there is none. Opening is
//! serialized: while one caller connects, the others wait for it and then
//! use its session, and if its attempt fails they get its error instead of
//! each trying again, so a thousand electors re-subscribing after an outage
//! open one connection, not a thousand.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use leader_core::{Error, ErrorKind, LeaseEvents, Result};
use tokio::sync::{mpsc, oneshot};

use crate::conn::Connector;
use crate::expiry::{ExpiryNotifications, pushes_expired_events};
use crate::keys::KeyLayout;
use crate::watch::{Request, Session, SessionSettings, bounded};

/// Watch requests that may queue for the session before callers wait.
const QUEUED_REQUESTS: usize = 1024;

/// The handle on the live session.
#[derive(Clone)]
struct Live {
    requests: mpsc::Sender<Request>,
    /// Whether this session hears of expiries too.
    expiries: bool,
}

impl Live {
    fn is_open(&self) -> bool {
        !self.requests.is_closed()
    }
}

/// The store's shared subscription.
pub(crate) struct Subscriptions {
    connector: Arc<Connector>,
    request_timeout: Duration,
    heartbeat: Duration,
    expiry: ExpiryNotifications,
    /// The database whose keyevent channel carries the expiries.
    db: i64,
    live: Mutex<Option<Live>>,
    /// Held while a session is being opened.
    opening: tokio::sync::Mutex<()>,
    /// Failed opening attempts so far, and the last one's error.
    failures: AtomicU64,
    last_failure: Mutex<Option<(ErrorKind, String)>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Single assignments: the values stay consistent across a panic.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn watch_error(kind: ErrorKind, message: impl Into<String>) -> Error {
    Error::new(kind, message)
        .with_store("redis")
        .with_operation("watch")
}

impl Subscriptions {
    /// Subscriptions through `connector`; nothing connects yet.
    pub(crate) fn new(
        connector: Arc<Connector>,
        request_timeout: Duration,
        heartbeat: Duration,
        expiry: ExpiryNotifications,
        db: i64,
    ) -> Self {
        Subscriptions {
            connector,
            request_timeout,
            heartbeat,
            expiry,
            db,
            live: Mutex::new(None),
            opening: tokio::sync::Mutex::new(()),
            failures: AtomicU64::new(0),
            last_failure: Mutex::new(None),
        }
    }

    /// Whether the live session hears of expiries (false while there is
    /// none: until the first watch, and after the connection broke).
    pub(crate) fn pushes_expiries(&self) -> bool {
        lock(&self.live)
            .as_ref()
            .is_some_and(|l| l.expiries && l.is_open())
    }

    /// Release (and, if pushed, expiry) events of the lease `layout`.
    pub(crate) async fn watch(&self, layout: &KeyLayout) -> Result<LeaseEvents> {
        let live = self.live_or_open().await?;
        let ended = || {
            watch_error(
                ErrorKind::Unavailable,
                "the shared pub/sub connection closed",
            )
        };
        let (reply, answer) = oneshot::channel();
        let request = Request {
            lease_key: layout.lease.clone(),
            channel: layout.channel.clone(),
            reply,
        };
        live.requests.send(request).await.map_err(|_| ended())?;
        // The session may be busy with its heartbeat (an unsubscribe and a
        // ping, each bounded by the response timeout) before it subscribes.
        let limit = self.request_timeout * 3;
        match tokio::time::timeout(limit, answer).await {
            Ok(Ok(subscribed)) => subscribed,
            Ok(Err(_)) => Err(ended()),
            Err(_) => Err(watch_error(
                ErrorKind::Unavailable,
                format!("the shared pub/sub connection did not subscribe within {limit:?}"),
            )),
        }
    }

    fn current(&self) -> Option<Live> {
        lock(&self.live).as_ref().filter(|l| l.is_open()).cloned()
    }

    /// The live session, opening one if there is none (one attempt shared
    /// by every concurrent caller).
    async fn live_or_open(&self) -> Result<Live> {
        if let Some(live) = self.current() {
            return Ok(live);
        }
        let failures_before = self.failures.load(Ordering::SeqCst);
        let _opening = self.opening.lock().await;
        if let Some(live) = self.current() {
            return Ok(live);
        }
        if self.failures.load(Ordering::SeqCst) != failures_before
            && let Some((kind, message)) = lock(&self.last_failure).clone()
        {
            // An attempt made while we waited failed just now: share its
            // outcome instead of stampeding a server that is down.
            return Err(watch_error(kind, message));
        }
        match self.open().await {
            Ok(live) => {
                *lock(&self.live) = Some(live.clone());
                Ok(live)
            }
            Err(e) => {
                *lock(&self.last_failure) = Some((e.kind(), e.message().to_owned()));
                self.failures.fetch_add(1, Ordering::SeqCst);
                Err(e)
            }
        }
    }

    /// Connects, finds out whether expiries are pushed, and starts a session.
    async fn open(&self) -> Result<Live> {
        // Taken before connecting: a master change while we connect ends the
        // new session at once rather than leaving it on the old master.
        let mut master_changes = self.connector.master_changes();
        master_changes.mark_unchanged();
        let pubsub = self.connector.pubsub().await?;
        let (mut sink, stream) = pubsub.split();
        let expired_channel = if self.expiries_enabled().await {
            let channel = format!("__keyevent@{}__:expired", self.db);
            bounded(self.request_timeout, "SUBSCRIBE", sink.subscribe(&channel)).await?;
            Some(channel)
        } else {
            None
        };
        let (requests, queue) = mpsc::channel(QUEUED_REQUESTS);
        let expiries = expired_channel.is_some();
        let settings = SessionSettings {
            request_timeout: self.request_timeout,
            heartbeat: self.heartbeat,
            expired_channel,
        };
        tracing::debug!(
            target: "leader_redis",
            target_desc = %self.connector.description(),
            expiries,
            "shared pub/sub connection opened"
        );
        tokio::spawn(Session::new((sink, stream), queue, master_changes, settings).run());
        Ok(Live { requests, expiries })
    }

    /// Whether the server publishes expired-key events we can use: as the
    /// user configured, or as `CONFIG GET notify-keyspace-events` says.
    async fn expiries_enabled(&self) -> bool {
        // On a cluster each node publishes the expiries of its own keys
        // only, on its own connection: one connection cannot hear them all.
        if self.connector.is_cluster() {
            return false;
        }
        match self.expiry {
            ExpiryNotifications::Off => false,
            ExpiryNotifications::Assume => true,
            ExpiryNotifications::Detect => {
                let mut reply = self.read_keyspace_events().await;
                if reply.as_ref().is_err_and(leader_core::Error::is_retryable) {
                    // The command connection broke with the old pub/sub one
                    // and was only found broken now (and replaced): ask again.
                    reply = self.read_keyspace_events().await;
                }
                match reply {
                    Ok(config) => config
                        .get("notify-keyspace-events")
                        .is_some_and(|flags| pushes_expired_events(flags)),
                    Err(e) => {
                        // CONFIG is often denied (ACLs, managed services):
                        // then we cannot know, and keep polling.
                        tracing::debug!(
                            target: "leader_redis",
                            error = %e,
                            "cannot read notify-keyspace-events; expiries will be polled"
                        );
                        false
                    }
                }
            }
        }
    }

    /// `CONFIG GET notify-keyspace-events` on the command connection.
    async fn read_keyspace_events(&self) -> Result<HashMap<String, String>> {
        self.connector
            .run("watch", self.request_timeout, |mut conn| async move {
                redis::cmd("CONFIG")
                    .arg("GET")
                    .arg("notify-keyspace-events")
                    .query_async(&mut conn)
                    .await
            })
            .await
    }
}
