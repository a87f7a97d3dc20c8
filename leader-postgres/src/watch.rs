//! Release notifications: one LISTEN connection per store (the [`Hub`]),
//! shared by every watcher, each notification routed to the watchers of
//! its channel.
//!
//! Payloads: `vacated` (a release), `metadata <token> <holder>` (an
//! `update_metadata`) and `resign <token>` (a `request_resign`). Any other
//! payload, a malformed one of these included, wakes the follower as a
//! release would (it then polls), so an unknown sender costs one read,
//! never a missed release.
//!
//! When the shared connection breaks, every subscription ends at once (the
//! subscribers' `recv()` returns `None`): each of them may have missed a
//! release and must poll (the elector does, and subscribes again later).
//! The next subscription re-establishes the connection, once for all of
//! them: subscribers waiting while one attempt runs share its outcome.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use leader_core::{Error, FencingToken, HolderId, LeaseEvent, LeaseEvents, Result};
use sqlx::postgres::{PgListener, PgPoolOptions};
use tokio::sync::{mpsc, oneshot};

use crate::conn::{Connector, classify};

/// How often the shared listener stops listening on channels whose
/// subscribers have all gone.
const SWEEP_EVERY: Duration = Duration::from_secs(10);

/// The start of a metadata update's payload.
const METADATA: &str = "metadata ";

/// The NOTIFY payload of an `update_metadata` by `holder` in term `token`
/// (at most about 540 bytes: the limit is 8000).
pub(crate) fn metadata_payload(holder: &HolderId, token: FencingToken) -> String {
    format!("{METADATA}{} {holder}", token.0)
}

/// The start of a resign request's payload.
const RESIGN: &str = "resign ";

/// The NOTIFY payload of a `request_resign` for the term with `token`.
pub(crate) fn resign_payload(token: FencingToken) -> String {
    format!("{RESIGN}{}", token.0)
}

/// The event a payload announces (see the module docs).
fn decode(payload: &str) -> LeaseEvent {
    if let Some(token) = payload.strip_prefix(RESIGN).and_then(|t| t.parse().ok()) {
        return LeaseEvent::ResignRequested {
            token: FencingToken(token),
        };
    }
    let updated = payload.strip_prefix(METADATA).and_then(|rest| {
        let (token, holder) = rest.split_once(' ')?;
        Some(LeaseEvent::MetadataUpdated {
            holder: HolderId::new(holder).ok()?,
            token: FencingToken(token.parse().ok()?),
        })
    });
    updated.unwrap_or(LeaseEvent::Vacated)
}

/// The store's shared LISTEN connection, opened on the first subscription.
pub(crate) struct Hub {
    link: tokio::sync::Mutex<Link>,
    /// Counts connection attempts, so that callers that waited for one
    /// share its outcome instead of each trying again.
    attempts: AtomicU64,
}

#[derive(Default)]
struct Link {
    /// The running listener task's inbox; closed once its connection broke.
    commands: Option<mpsc::UnboundedSender<Listen>>,
    /// The last connection attempt's number and, if it failed, why.
    last_attempt: u64,
    last_failure: Option<String>,
}

/// A request to the listener task: forward `channel`'s notifications to
/// `events`; `done` says whether the LISTEN took effect.
struct Listen {
    channel: String,
    events: mpsc::Sender<LeaseEvent>,
    done: oneshot::Sender<std::result::Result<(), String>>,
}

impl Hub {
    pub(crate) fn new() -> Self {
        Hub {
            link: tokio::sync::Mutex::new(Link::default()),
            attempts: AtomicU64::new(0),
        }
    }

    /// Subscribes to `channel` on the shared connection, connecting it
    /// first if needed.
    pub(crate) async fn subscribe(
        &self,
        conns: &Connector,
        request_timeout: Duration,
        channel: String,
    ) -> Result<LeaseEvents> {
        let seen = self.attempts.load(Ordering::Acquire);
        let commands = {
            let mut link = self.link.lock().await;
            match &link.commands {
                Some(commands) if !commands.is_closed() => commands.clone(),
                _ => {
                    if link.last_attempt > seen
                        && let Some(why) = &link.last_failure
                    {
                        // An attempt began while we waited, and failed.
                        return Err(Error::unavailable(why.clone()));
                    }
                    link.last_attempt = self.attempts.fetch_add(1, Ordering::AcqRel) + 1;
                    match connect(conns, request_timeout).await {
                        Ok(listener) => {
                            let (tx, rx) = mpsc::unbounded_channel();
                            tokio::spawn(run(listener, rx));
                            link.commands = Some(tx.clone());
                            link.last_failure = None;
                            tx
                        }
                        Err(e) => {
                            link.last_failure = Some(e.to_string());
                            return Err(e);
                        }
                    }
                }
            }
        };
        let (events, subscription) = LeaseEvents::channel(16);
        let (done, answer) = oneshot::channel();
        let lost = || Error::unavailable("the shared LISTEN connection broke");
        commands
            .send(Listen {
                channel,
                events,
                done,
            })
            .map_err(|_| lost())?;
        match tokio::time::timeout(request_timeout, answer).await {
            Ok(Ok(Ok(()))) => Ok(subscription),
            Ok(Ok(Err(why))) => Err(Error::unavailable(why)),
            Ok(Err(_)) => Err(lost()),
            Err(_) => Err(Error::indeterminate(format!(
                "LISTEN got no answer within {request_timeout:?}"
            ))),
        }
    }
}

/// Opens the listener connection (a private one-connection pool, as
/// `PgListener` needs one; it never reconnects by itself).
async fn connect(
    conns: &Connector,
    request_timeout: Duration,
) -> Result<(PgListener, sqlx::PgPool)> {
    let connect_timeout = conns.connect_timeout();
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .min_connections(0)
        .acquire_timeout(connect_timeout)
        .max_lifetime(None)
        .idle_timeout(None)
        .test_before_acquire(false)
        .connect_lazy_with(conns.options().clone());
    let limit = connect_timeout + request_timeout;
    let listener = tokio::time::timeout(limit, async {
        let mut listener = PgListener::connect_with(&pool).await?;
        listener.eager_reconnect(false);
        Ok::<_, sqlx::Error>(listener)
    })
    .await;
    match listener {
        Ok(Ok(listener)) => Ok((listener, pool)),
        Ok(Err(e)) => {
            pool.close().await;
            Err(classify(e, true, "could not open the LISTEN connection"))
        }
        Err(_) => {
            pool.close().await;
            Err(Error::unavailable(format!(
                "could not open the LISTEN connection within {limit:?}"
            )))
        }
    }
}

/// The listener task: LISTENs on request, routes notifications by channel,
/// and ends (dropping every subscriber's sender) when the connection breaks.
async fn run(
    (mut listener, pool): (PgListener, sqlx::PgPool),
    mut inbox: mpsc::UnboundedReceiver<Listen>,
) {
    let mut routes: HashMap<String, Vec<mpsc::Sender<LeaseEvent>>> = HashMap::new();
    let mut sweep = tokio::time::interval(SWEEP_EVERY);
    sweep.tick().await;
    let why = loop {
        tokio::select! {
            request = inbox.recv() => {
                let Some(Listen { channel, events, done }) = request else {
                    break "the store was dropped".to_owned();
                };
                if !routes.contains_key(&channel)
                    && let Err(e) = listener.listen(&channel).await
                {
                    let why = format!("LISTEN failed: {e}");
                    let _ = done.send(Err(why.clone()));
                    break why;
                }
                routes.entry(channel).or_default().push(events);
                let _ = done.send(Ok(()));
            }
            received = listener.try_recv() => match received {
                Ok(Some(notification)) => {
                    let channel = notification.channel();
                    if let Some(subscribers) = routes.get_mut(channel) {
                        let event = decode(notification.payload());
                        subscribers.retain(|tx| forward(tx, &event));
                    }
                }
                Ok(None) => break "the LISTEN connection was lost".to_owned(),
                Err(e) => break format!("the LISTEN connection failed: {e}"),
            },
            _ = sweep.tick() => {
                if let Err(e) = unlisten_unused(&mut listener, &mut routes).await {
                    break format!("UNLISTEN failed: {e}");
                }
            }
        }
    };
    tracing::debug!(
        subscribers = routes.values().map(Vec::len).sum::<usize>(),
        "postgres listener ended: {why}"
    );
    // Ends every subscription (their recv() returns None): they poll.
    drop(routes);
    drop(listener);
    pool.close().await;
}

/// Queues `event` for one subscriber; `false` once it has gone.
///
/// The last free place of a queue is kept for a `Vacated` (informational
/// events, metadata updates and resign requests, are dropped when only one
/// is left), so a full queue always already holds a `Vacated` and dropping
/// another one loses nothing.
fn forward(tx: &mpsc::Sender<LeaseEvent>, event: &LeaseEvent) -> bool {
    if tx.is_closed() {
        return false;
    }
    if *event != LeaseEvent::Vacated && tx.capacity() < 2 {
        return true;
    }
    !matches!(
        tx.try_send(event.clone()),
        Err(mpsc::error::TrySendError::Closed(_))
    )
}

/// Stops listening on channels nobody subscribes to any more.
async fn unlisten_unused(
    listener: &mut PgListener,
    routes: &mut HashMap<String, Vec<mpsc::Sender<LeaseEvent>>>,
) -> std::result::Result<(), sqlx::Error> {
    let mut unused = Vec::new();
    for (channel, subscribers) in routes.iter_mut() {
        subscribers.retain(|tx| !tx.is_closed());
        if subscribers.is_empty() {
            unused.push(channel.clone());
        }
    }
    for channel in unused {
        routes.remove(&channel);
        listener.unlisten(&channel).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_decode_to_events_and_unknown_ones_wake_followers() {
        let holder = HolderId::new("pod a/3f9c").expect("valid holder");
        let payload = metadata_payload(&holder, FencingToken(42));
        assert_eq!(
            decode(&payload),
            LeaseEvent::MetadataUpdated {
                holder,
                token: FencingToken(42)
            }
        );
        for other in [
            "vacated",
            "",
            "metadata",
            "metadata x h",
            "metadata 7 ",
            "hello",
            "resign",
            "resign ",
            "resign x",
            "resign -1",
            "resign 7 h",
        ] {
            assert_eq!(decode(other), LeaseEvent::Vacated, "{other:?}");
        }
    }

    #[test]
    fn a_resign_payload_is_a_request_not_a_release() {
        for token in [1, 42, u64::MAX] {
            let token = FencingToken(token);
            assert_eq!(
                decode(&resign_payload(token)),
                LeaseEvent::ResignRequested { token },
                "{token}"
            );
        }
        assert_eq!(resign_payload(FencingToken(42)), "resign 42");
    }

    #[tokio::test]
    async fn the_last_place_of_a_queue_is_kept_for_a_release() {
        let (tx, mut events) = LeaseEvents::channel(2);
        let updated = LeaseEvent::MetadataUpdated {
            holder: HolderId::new("h").expect("valid holder"),
            token: FencingToken(1),
        };
        let resign = LeaseEvent::ResignRequested {
            token: FencingToken(1),
        };
        assert!(forward(&tx, &updated));
        assert!(forward(&tx, &updated), "dropped, subscriber kept");
        assert!(forward(&tx, &resign), "dropped, subscriber kept");
        assert!(forward(&tx, &LeaseEvent::Vacated));
        assert_eq!(events.recv().await, Some(updated));
        assert_eq!(events.recv().await, Some(LeaseEvent::Vacated));
        drop(events);
        assert!(
            !forward(&tx, &LeaseEvent::Vacated),
            "a closed subscriber goes"
        );
    }
}
