//! One etcd watch stream per store, shared by every elector and lock on it.
//!
//! etcd multiplexes watches on one gRPC stream: each key gets a watch id of
//! its own on it, and every response names the watch it belongs to. The
//! [`WatchHub`] opens that stream on the first subscription, creates one
//! watch per key (however many subscribers follow the key) and routes each
//! event to the subscribers of its key only. A key's watch is cancelled when
//! its last subscriber goes away. The watch covers a range: the key and its
//! request key (see `store::resign`), whose `PUT` is a resign request; every
//! event is told apart by the exact key it names, so the request key's
//! `DELETE` (it dies with the term) is no `Vacated`.
//!
//! When the stream breaks (a reset connection, a dead member, HTTP/2 pings
//! unanswered for a silent partition) every subscription ends at once:
//! `recv()` returns `None` and each elector polls until it subscribes again
//! (the core does this after one retry period). The stream is re-opened by
//! the first subscription that comes after the break; subscriptions that
//! arrive while it is being opened wait for that one attempt, and after a
//! failed attempt new subscriptions fail at once until a short back-off has
//! passed, so a thousand electors re-establish it once, not a thousand times.
//! A new subscription needs no replay of what happened while it was down:
//! the elector's next acquire reads the key's current state.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use etcd_client::{
    EventType, WatchOptions, WatchRequestSender, WatchResponse, WatchResponseStream,
};
use leader_core::{Error, LeaseEvent, LeaseEvents, LeaseKey, Result};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use crate::store::{EtcdStore, Term, request_key, requested_token, watch_range_end};

const OP: &str = "watch";
/// Events buffered for a slow subscriber; further events are dropped (one
/// pending wake-up is as good as many, and the last slot is kept for one).
const CAPACITY: usize = 16;
/// The first pause after a failed attempt to open the shared stream; it
/// doubles up to [`MAX_BACKOFF`] while attempts keep failing.
const FIRST_BACKOFF: Duration = Duration::from_millis(20);
/// The longest pause between attempts to open the shared stream.
const MAX_BACKOFF: Duration = Duration::from_millis(500);

/// The shared watch stream of one [`EtcdStore`], opened on first use.
#[derive(Default)]
pub(crate) struct WatchHub {
    state: Mutex<HubState>,
    /// Held while the stream is being opened: concurrent subscribers wait
    /// for that one attempt instead of opening streams of their own.
    opening: tokio::sync::Mutex<()>,
}

#[derive(Default)]
struct HubState {
    /// The live stream; `None` before the first subscription and after a break.
    live: Option<Live>,
    /// After a failed open: no new attempt before this instant.
    retry_at: Option<Instant>,
    backoff: Option<Duration>,
}

/// A live stream, and the signal that ends its reader when the hub (the
/// store) is dropped.
struct Live {
    stream: Arc<Stream>,
    _stop: oneshot::Sender<()>,
}

/// One open gRPC watch stream and the keys watched on it.
struct Stream {
    requests: tokio::sync::Mutex<WatchRequestSender>,
    routes: Mutex<Routes>,
    /// Turns true once when the stream is gone.
    down: watch::Sender<bool>,
}

#[derive(Default)]
struct Routes {
    last_id: i64,
    by_key: HashMap<String, i64>,
    by_id: HashMap<i64, Route>,
    /// Subscribers are numbered so that one can leave without the others.
    last_subscriber: u64,
}

struct Route {
    key: String,
    /// `Some(true)` once etcd confirmed the watch, `Some(false)` if it
    /// refused it; `None` while the creation is pending.
    created: watch::Sender<Option<bool>>,
    subscribers: Vec<(u64, mpsc::Sender<LeaseEvent>)>,
}

impl WatchHub {
    fn state(&self) -> MutexGuard<'_, HubState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn live(&self) -> Option<Arc<Stream>> {
        let mut state = self.state();
        match &state.live {
            Some(live) if !*live.stream.down.borrow() => Some(live.stream.clone()),
            Some(_) => {
                state.live = None;
                None
            }
            None => None,
        }
    }
}

/// Subscribes to `key`'s events on the store's shared watch stream.
pub(crate) async fn subscribe(store: EtcdStore, key: LeaseKey) -> Result<LeaseEvents> {
    let k = key.as_str();
    let deadline = Instant::now() + store.config().request_timeout();
    let stream = shared_stream(&store, k).await?;
    let (tx, events) = LeaseEvents::channel(CAPACITY);
    let (id, subscriber, mut created) = stream.join(k, tx.clone()).await?;
    let confirmed = tokio::time::timeout_at(deadline, async {
        created.wait_for(Option::is_some).await.map(|state| *state)
    })
    .await;
    match confirmed {
        Ok(Ok(Some(true))) => {}
        Ok(Ok(_)) => {
            return Err(unavailable(k, "etcd refused or cancelled the watch"));
        }
        // The stream broke before etcd answered.
        Ok(Err(_)) => return Err(unavailable(k, "the shared watch stream broke")),
        Err(_) => {
            stream.leave(id, subscriber).await;
            return Err(Error::indeterminate(format!(
                "etcd did not confirm the watch within {:?}",
                store.config().request_timeout()
            ))
            .with_store("etcd")
            .with_operation(OP)
            .with_key(k));
        }
    }
    // Leaves the route when the subscriber drops its `LeaseEvents`; ends
    // (dropping this clone of the sender, so the subscriber sees the end)
    // when etcd cancels the key's watch or the stream breaks.
    tokio::spawn(async move {
        tokio::select! {
            _ = tx.closed() => stream.leave(id, subscriber).await,
            _ = ended(&mut created) => {}
        }
    });
    Ok(events)
}

/// The live shared stream, opening it (once for all concurrent callers) if
/// there is none; `key` is the first key watched on a new stream.
async fn shared_stream(store: &EtcdStore, key: &str) -> Result<Arc<Stream>> {
    let hub = store.watch_hub();
    if let Some(stream) = hub.live() {
        return Ok(stream);
    }
    let _opening = hub.opening.lock().await;
    if let Some(stream) = hub.live() {
        return Ok(stream);
    }
    if let Some(at) = hub.state().retry_at
        && Instant::now() < at
    {
        return Err(unavailable(
            key,
            "the shared etcd watch stream is down; the last attempt to re-open it failed",
        ));
    }
    match open(store, key).await {
        Ok(live) => {
            let stream = live.stream.clone();
            let mut state = hub.state();
            state.live = Some(live);
            state.retry_at = None;
            state.backoff = None;
            Ok(stream)
        }
        Err(e) => {
            let mut state = hub.state();
            let backoff = state
                .backoff
                .map_or(FIRST_BACKOFF, |b| (b * 2).min(MAX_BACKOFF));
            state.backoff = Some(backoff);
            state.retry_at = Some(Instant::now() + backoff);
            Err(e)
        }
    }
}

/// Opens a new stream whose first watch is on `key`, and starts its reader.
async fn open(store: &EtcdStore, key: &str) -> Result<Live> {
    let client = store.client(OP, key).await?;
    let mut routes = Routes::default();
    let id = routes.add_route(key);
    let options = watch_options(key, id);
    let opened = store
        .retrying(OP, key, &client, |mut c| {
            let options = options.clone();
            async move { c.watch(key, Some(options)).await }
        })
        .await?;
    let (requests, responses) = opened.split();
    let (down, _) = watch::channel(false);
    let stream = Arc::new(Stream {
        requests: tokio::sync::Mutex::new(requests),
        routes: Mutex::new(routes),
        down,
    });
    let (stop, stopped) = oneshot::channel();
    tokio::spawn(read(stream.clone(), responses, stopped));
    Ok(Live {
        stream,
        _stop: stop,
    })
}

/// Routes every response of the stream until it breaks or the store is
/// dropped, then ends every subscription.
async fn read(
    stream: Arc<Stream>,
    mut responses: WatchResponseStream,
    mut stopped: oneshot::Receiver<()>,
) {
    loop {
        let message = tokio::select! {
            _ = &mut stopped => break,
            m = responses.message() => m,
        };
        match message {
            Ok(Some(resp)) => stream.dispatch(resp),
            Ok(None) => {
                tracing::debug!("the shared etcd watch stream ended");
                break;
            }
            Err(e) => {
                tracing::debug!(error = %e, "the shared etcd watch stream broke");
                break;
            }
        }
    }
    stream.close();
}

impl Routes {
    fn add_route(&mut self, key: &str) -> i64 {
        // Client-chosen ids (etcd 3.4+), so the stream's first watch needs
        // no answer to be known. They start at 1: 0 asks etcd to choose.
        self.last_id += 1;
        let id = self.last_id;
        let (created, _) = watch::channel(None);
        self.by_key.insert(key.to_owned(), id);
        self.by_id.insert(
            id,
            Route {
                key: key.to_owned(),
                created,
                subscribers: Vec::new(),
            },
        );
        id
    }

    fn remove_route(&mut self, id: i64) -> Option<Route> {
        let route = self.by_id.remove(&id)?;
        if self.by_key.get(&route.key) == Some(&id) {
            self.by_key.remove(&route.key);
        }
        Some(route)
    }
}

impl Stream {
    fn routes(&self) -> MutexGuard<'_, Routes> {
        self.routes.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds `tx` to `key`'s route, creating the route's watch if the key is
    /// not watched yet. Returns the route id, the subscriber's number and
    /// the route's creation state.
    async fn join(
        &self,
        key: &str,
        tx: mpsc::Sender<LeaseEvent>,
    ) -> Result<(i64, u64, watch::Receiver<Option<bool>>)> {
        let (id, subscriber, created, new) = {
            let mut routes = self.routes();
            // `close` marks the stream down before it empties the routes:
            // checked under the lock, no route is added to a dead stream.
            if *self.down.borrow() {
                return Err(unavailable(key, "the shared watch stream just broke"));
            }
            let (id, new) = match routes.by_key.get(key) {
                Some(id) => (*id, false),
                None => (routes.add_route(key), true),
            };
            routes.last_subscriber += 1;
            let subscriber = routes.last_subscriber;
            let route = routes.by_id.get_mut(&id).ok_or_else(|| {
                Error::protocol("a watch route vanished while being joined")
                    .with_store("etcd")
                    .with_key(key)
            })?;
            route.subscribers.push((subscriber, tx));
            (id, subscriber, route.created.subscribe(), new)
        };
        if new {
            let options = watch_options(key, id);
            let sent = self.requests.lock().await.watch(key, Some(options)).await;
            if let Err(e) = sent {
                self.routes().remove_route(id);
                return Err(unavailable(key, "could not send the watch request").with_source(e));
            }
        }
        Ok((id, subscriber, created))
    }

    /// Removes one subscriber; cancels the key's watch when it was the last.
    async fn leave(&self, id: i64, subscriber: u64) {
        let emptied = {
            let mut routes = self.routes();
            let Some(route) = routes.by_id.get_mut(&id) else {
                return;
            };
            route.subscribers.retain(|(n, _)| *n != subscriber);
            route.subscribers.is_empty() && routes.remove_route(id).is_some()
        };
        if emptied && !*self.down.borrow() {
            // Best effort: a stream too broken to take the cancel is
            // about to end anyway.
            let _ = self.requests.lock().await.cancel(id).await;
        }
    }

    /// Handles one response: a watch confirmed or cancelled, or events.
    fn dispatch(&self, resp: WatchResponse) {
        let id = resp.watch_id();
        if resp.canceled() {
            let route = self.routes().remove_route(id);
            if let Some(route) = route {
                tracing::debug!(
                    key = route.key,
                    reason = resp.cancel_reason(),
                    "etcd cancelled a watch; its subscriptions end"
                );
                route.created.send_replace(Some(false));
            }
            return;
        }
        let routes = self.routes();
        let Some(route) = routes.by_id.get(&id) else {
            // A watch cancelled by us whose answers were still in flight.
            return;
        };
        if resp.created() {
            route.created.send_replace(Some(true));
        }
        for event in resp.events() {
            let Some(lease_event) = lease_event(&route.key, event) else {
                continue;
            };
            let vacated = lease_event == LeaseEvent::Vacated;
            for (_, tx) in &route.subscribers {
                // The last slot is kept for a vacancy, so a full channel
                // always holds an unread `Vacated` (the store promises
                // complete notifications: followers do not poll); other
                // events are informational. A closed channel is removed by
                // its subscription's task.
                if vacated || tx.capacity() > 1 {
                    let _ = tx.try_send(lease_event.clone());
                }
            }
        }
    }

    /// Marks the stream down and ends every subscription on it.
    fn close(&self) {
        self.down.send_replace(true);
        let routes = std::mem::take(&mut *self.routes());
        for (_, route) in routes.by_id {
            route.created.send_replace(Some(false));
        }
    }
}

/// Completes when the route is cancelled or gone with its stream.
async fn ended(created: &mut watch::Receiver<Option<bool>>) {
    // The guard `wait_for` returns is not `Send`: drop it here.
    let _ = created.wait_for(|c| *c == Some(false)).await.map(|_| ());
}

/// The watch of `key` on the shared stream, with the client-chosen `id`: the
/// key and its request key, no other key this library writes.
fn watch_options(key: &str, id: i64) -> WatchOptions {
    WatchOptions::new()
        .with_watch_id(id)
        .with_range(watch_range_end(key))
}

/// The [`LeaseEvent`] of an etcd event on the watch of `key`, if it is one
/// this library writes.
fn lease_event(key: &str, event: &etcd_client::Event) -> Option<LeaseEvent> {
    let kv = event.kv()?;
    if kv.key() != key.as_bytes() {
        // The request key: its `PUT` asks the holder to resign; its `DELETE`
        // comes with the end of the term, which the key's own says.
        return match event.event_type() {
            EventType::Put if kv.key() == request_key(key).as_slice() => {
                Some(LeaseEvent::ResignRequested {
                    token: requested_token(kv.value())?,
                })
            }
            _ => None,
        };
    }
    match event.event_type() {
        EventType::Delete => Some(LeaseEvent::Vacated),
        EventType::Put => {
            let Term {
                holder,
                token,
                updated,
                ..
            } = Term::decode(kv.value(), kv.mod_revision()).ok()?;
            // A put that keeps the term (update_metadata) versus one that
            // starts a term (acquire).
            Some(if updated {
                LeaseEvent::MetadataUpdated { holder, token }
            } else {
                LeaseEvent::Acquired { holder, token }
            })
        }
    }
}

fn unavailable(key: &str, message: &str) -> Error {
    Error::unavailable(message)
        .with_store("etcd")
        .with_operation(OP)
        .with_key(key)
}
