//! The shared pub/sub session: one connection, every watcher of a store.
//!
//! A [`Session`] is a task that owns the store's one pub/sub connection. It
//! subscribes each watched lease's channel once, however many watchers the
//! lease has (requests queued together share one `SUBSCRIBE`), and hands
//! each message to the watchers of that lease only: releases as
//! [`LeaseEvent::Vacated`], metadata updates as
//! [`LeaseEvent::MetadataUpdated`], resign requests as
//! [`LeaseEvent::ResignRequested`]. With expiry
//! notifications (see [`crate::ExpiryNotifications`]) it also listens on the
//! database's `__keyevent@<db>__:expired` channel, whose messages name the
//! expired key, and wakes that key's watchers.
//!
//! Every heartbeat it forgets the watchers that went away, unsubscribes the
//! channels nobody watches any more, and pings the server. The session ends
//! when the connection drops, a ping or subscribe goes unanswered, or
//! (Sentinel) the sentinels name another master; ending drops every
//! watcher's sender, so every `recv()` returns `None`, which tells each
//! elector to poll and subscribe again (the next `watch` opens one new
//! session for all of them: see [`crate::subscriptions`]).

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use futures::StreamExt;
use leader_core::{Error, FencingToken, HolderId, LeaseEvent, LeaseEvents, Result};
use redis::aio::{PubSubSink, PubSubStream};
use redis::{Msg, RedisResult};
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, oneshot, watch};

/// At most this many queued watch requests are subscribed with one command.
const BATCH: usize = 256;

/// Queued events per watcher: one pending `Vacated` is as good as many.
const QUEUE: usize = 16;

/// A watch of one lease, sent to the session.
pub(crate) struct Request {
    /// The lease key (what an expiry notification names).
    pub(crate) lease_key: String,
    /// The lease's release channel.
    pub(crate) channel: String,
    /// Where the subscription (or the reason there is none) goes.
    pub(crate) reply: oneshot::Sender<Result<LeaseEvents>>,
}

/// The event a message on a lease's channel reports: `released <token>` and
/// `force-released <token>` free the seat; `metadata <token> <holder>` is a
/// holder's new metadata; `resign <token>` asks that term's holder to
/// resign. Anything else is ignored.
fn event_of(msg: &Msg) -> Option<LeaseEvent> {
    event_of_payload(&msg.get_payload::<String>().ok()?)
}

/// [`event_of`] on the message's text.
fn event_of_payload(payload: &str) -> Option<LeaseEvent> {
    let mut parts = payload.splitn(3, ' ');
    match parts.next()? {
        "released" | "force-released" => Some(LeaseEvent::Vacated),
        "metadata" => {
            let token = FencingToken(parts.next()?.parse().ok()?);
            let holder = HolderId::new(parts.next()?).ok()?;
            Some(LeaseEvent::MetadataUpdated { holder, token })
        }
        "resign" => {
            let token = FencingToken(parts.next()?.parse().ok()?);
            // Exactly `resign <token>`: nothing this library sends has more.
            parts
                .next()
                .is_none()
                .then_some(LeaseEvent::ResignRequested { token })
        }
        _ => None,
    }
}

/// Who watches what, on one connection.
#[derive(Default)]
struct Routes {
    /// Release channel → the watchers of the lease(s) behind it.
    watchers: HashMap<String, Vec<mpsc::Sender<LeaseEvent>>>,
    /// Lease key → its release channel (to route expiry notifications).
    channels: HashMap<String, String>,
}

impl Routes {
    /// Adds a watcher; `true` when its channel still has to be subscribed.
    fn add(&mut self, lease_key: String, channel: &str, tx: mpsc::Sender<LeaseEvent>) -> bool {
        self.channels.insert(lease_key, channel.to_owned());
        match self.watchers.get_mut(channel) {
            Some(senders) => {
                senders.push(tx);
                false
            }
            None => {
                self.watchers.insert(channel.to_owned(), vec![tx]);
                true
            }
        }
    }

    /// Wakes the watchers of `channel` with `Vacated`.
    fn wake(&mut self, channel: &str) {
        self.send(channel, &LeaseEvent::Vacated);
    }

    /// Hands `event` to the watchers of `channel`, dropping those that went
    /// away.
    fn send(&mut self, channel: &str, event: &LeaseEvent) {
        let vacated = matches!(event, LeaseEvent::Vacated);
        if let Some(senders) = self.watchers.get_mut(channel) {
            senders.retain(|tx| {
                // Informational events leave a queue's last slot to
                // `Vacated`, so a full queue always holds a Vacated the
                // watcher has not read: dropping another one loses nothing.
                if !vacated && tx.capacity() < 2 {
                    return !tx.is_closed();
                }
                !matches!(tx.try_send(event.clone()), Err(TrySendError::Closed(_)))
            });
        }
    }

    /// Wakes the watchers of the lease `lease_key`.
    fn wake_lease(&mut self, lease_key: &str) {
        if let Some(channel) = self.channels.get(lease_key).cloned() {
            self.wake(&channel);
        }
    }

    /// Forgets the watchers that went away; returns the channels nobody
    /// watches any more (no longer routed, to be unsubscribed).
    fn sweep(&mut self) -> Vec<String> {
        let Routes { watchers, channels } = self;
        let mut unwatched = Vec::new();
        watchers.retain(|channel, senders| {
            senders.retain(|tx| !tx.is_closed());
            if senders.is_empty() {
                unwatched.push(channel.clone());
            }
            !senders.is_empty()
        });
        channels.retain(|_, channel| watchers.contains_key(channel));
        unwatched
    }
}

/// Settings of a session.
#[derive(Debug, Clone)]
pub(crate) struct SessionSettings {
    /// Bound on every command's reply (subscribe, unsubscribe, ping).
    pub(crate) request_timeout: Duration,
    /// Interval of the sweep and liveness ping.
    pub(crate) heartbeat: Duration,
    /// The keyevent channel of expired keys, when expiries are pushed.
    pub(crate) expired_channel: Option<String>,
}

/// The task behind one shared pub/sub connection.
pub(crate) struct Session {
    sink: PubSubSink,
    stream: PubSubStream,
    requests: mpsc::Receiver<Request>,
    master_changes: watch::Receiver<u64>,
    settings: SessionSettings,
    routes: Routes,
}

impl Session {
    /// A session on an open, split pub/sub connection (already subscribed
    /// to the expired channel, if any), serving `requests`.
    pub(crate) fn new(
        (sink, stream): (PubSubSink, PubSubStream),
        requests: mpsc::Receiver<Request>,
        master_changes: watch::Receiver<u64>,
        settings: SessionSettings,
    ) -> Self {
        Session {
            sink,
            stream,
            requests,
            master_changes,
            settings,
            routes: Routes::default(),
        }
    }

    /// Serves until the connection fails or the store is dropped; then
    /// every watcher's `recv()` returns `None`.
    pub(crate) async fn run(mut self) {
        let why = self.serve().await;
        tracing::debug!(
            target: "leader_redis",
            watched = self.routes.watchers.len(),
            "shared pub/sub session ended: {why}"
        );
    }

    async fn serve(&mut self) -> &'static str {
        let mut tick = tokio::time::interval(self.settings.heartbeat);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tokio::select! {
                // The Sentinel master moved: releases are published there now.
                _ = self.master_changes.changed() => return "the master changed",
                request = self.requests.recv() => {
                    let Some(request) = request else {
                        return "the store was dropped";
                    };
                    if let Err(why) = self.admit(request).await {
                        return why;
                    }
                }
                msg = self.stream.next() => {
                    let Some(msg) = msg else {
                        return "the connection closed";
                    };
                    self.route(&msg);
                }
                _ = tick.tick() => {
                    if let Err(why) = self.heartbeat().await {
                        return why;
                    }
                }
            }
        }
    }

    /// Registers `first` and every request queued behind it, subscribes the
    /// channels that are new with one command, and answers them all.
    async fn admit(&mut self, first: Request) -> std::result::Result<(), &'static str> {
        let mut batch = vec![first];
        while batch.len() < BATCH {
            match self.requests.try_recv() {
                Ok(request) => batch.push(request),
                Err(_) => break,
            }
        }
        let mut new_channels = Vec::new();
        let mut answers = Vec::with_capacity(batch.len());
        for request in batch {
            let (tx, events) = LeaseEvents::channel(QUEUE);
            if self.routes.add(request.lease_key, &request.channel, tx) {
                new_channels.push(request.channel);
            }
            answers.push((request.reply, events));
        }
        if !new_channels.is_empty() {
            let limit = self.settings.request_timeout;
            if let Err(e) = bounded(limit, "SUBSCRIBE", self.sink.subscribe(&new_channels)).await {
                for (reply, _) in answers {
                    let _ = reply.send(Err(Error::new(e.kind(), e.message())
                        .with_store("redis")
                        .with_operation("watch")));
                }
                return Err("a subscribe failed");
            }
        }
        for (reply, events) in answers {
            // A watcher that gave up waiting dropped its end: its sender is
            // swept at the next heartbeat.
            let _ = reply.send(Ok(events));
        }
        Ok(())
    }

    /// Hands a message to the watchers it concerns.
    fn route(&mut self, msg: &Msg) {
        let channel = msg.get_channel_name();
        if self.settings.expired_channel.as_deref() == Some(channel) {
            if let Ok(key) = msg.get_payload::<String>() {
                self.routes.wake_lease(&key);
            }
        } else if let Some(event) = event_of(msg) {
            self.routes.send(channel, &event);
        }
    }

    /// Unsubscribes what nobody watches any more, then pings.
    async fn heartbeat(&mut self) -> std::result::Result<(), &'static str> {
        let limit = self.settings.request_timeout;
        let unwatched = self.routes.sweep();
        if !unwatched.is_empty() {
            bounded(limit, "UNSUBSCRIBE", self.sink.unsubscribe(&unwatched))
                .await
                .map_err(|_| "an unsubscribe failed")?;
        }
        bounded(limit, "PING", self.sink.ping::<redis::Value>())
            .await
            .map(drop)
            .map_err(|_| "a ping failed")
    }
}

/// Runs `command` under `limit`; an error or silence is `Unavailable` (a
/// subscription changes nothing in the store, so nothing is indeterminate).
pub(crate) async fn bounded<T>(
    limit: Duration,
    what: &str,
    command: impl Future<Output = RedisResult<T>>,
) -> Result<T> {
    match tokio::time::timeout(limit, command).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(
            Error::unavailable(format!("{what} on the pub/sub connection failed"))
                .with_store("redis")
                .with_operation("watch")
                .with_source(e),
        ),
        Err(_) => Err(
            Error::unavailable(format!("{what} got no reply within {limit:?}"))
                .with_store("redis")
                .with_operation("watch"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn routes_wake_only_the_watchers_of_their_channel_and_sweep_the_gone() {
        let mut routes = Routes::default();
        let (a, mut a_rx) = LeaseEvents::channel(QUEUE);
        let (b, mut b_rx) = LeaseEvents::channel(QUEUE);
        let (a2, a2_rx) = LeaseEvents::channel(QUEUE);
        assert!(routes.add("a".into(), "{a}:events", a));
        assert!(routes.add("b".into(), "{b}:events", b));
        assert!(
            !routes.add("a".into(), "{a}:events", a2),
            "one subscription per channel"
        );
        routes.wake("{a}:events");
        routes.wake_lease("b");
        assert_eq!(a_rx.recv().await, Some(LeaseEvent::Vacated));
        assert_eq!(b_rx.recv().await, Some(LeaseEvent::Vacated));
        routes.wake("{a}:events");
        assert_eq!(a_rx.recv().await, Some(LeaseEvent::Vacated));
        assert!(
            futures::FutureExt::now_or_never(b_rx.recv()).is_none(),
            "b got a's event"
        );
        drop((a_rx, a2_rx));
        assert_eq!(routes.sweep(), vec!["{a}:events".to_owned()]);
        routes.wake_lease("a");
        assert!(
            routes.add("a".into(), "{a}:events", LeaseEvents::channel(1).0),
            "resubscribed"
        );
    }

    #[test]
    fn payloads_map_to_events() {
        assert_eq!(event_of_payload("released 42"), Some(LeaseEvent::Vacated));
        assert_eq!(
            event_of_payload("force-released "),
            Some(LeaseEvent::Vacated)
        );
        assert_eq!(
            event_of_payload("metadata 42 pod a/3f9c"),
            Some(LeaseEvent::MetadataUpdated {
                holder: HolderId::new("pod a/3f9c").expect("valid"),
                token: FencingToken(42),
            }),
            "the holder is the rest, spaces included"
        );
        assert_eq!(
            event_of_payload("resign 1796000000000001"),
            Some(LeaseEvent::ResignRequested {
                token: FencingToken(1_796_000_000_000_001),
            })
        );
        for ignored in [
            "",
            "acquired 1 x",
            "metadata x h",
            "metadata 42",
            "metadata 42  ",
            "resign",
            "resign ",
            "resign x",
            "resign -1",
            "resign 42 x",
        ] {
            assert_eq!(event_of_payload(ignored), None, "{ignored:?}");
        }
    }

    #[tokio::test]
    async fn informational_events_never_take_the_last_slot_from_vacated() {
        let update = LeaseEvent::MetadataUpdated {
            holder: HolderId::new("h").expect("valid"),
            token: FencingToken(1),
        };
        let resign = LeaseEvent::ResignRequested {
            token: FencingToken(1),
        };
        for event in [update, resign] {
            let mut routes = Routes::default();
            let (tx, mut rx) = LeaseEvents::channel(QUEUE);
            routes.add("a".into(), "{a}:events", tx);
            for _ in 0..QUEUE * 2 {
                routes.send("{a}:events", &event);
            }
            routes.wake("{a}:events");
            for _ in 0..QUEUE - 1 {
                assert_eq!(rx.recv().await, Some(event.clone()));
            }
            assert_eq!(rx.recv().await, Some(LeaseEvent::Vacated), "{event:?}");
        }
    }
}
