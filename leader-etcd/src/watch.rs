//! Following one key with an etcd watch, resumed after reconnects.
//!
//! The watch starts at the current revision. Every event advances the last
//! seen revision; when the stream breaks (a member died, the connection was
//! reset) the watch is re-created with `start_revision = last + 1`, so no
//! event between the break and the new watch is lost or repeated. If it
//! cannot be re-created within one request timeout, or etcd compacted the
//! revisions we would resume from, the subscription ends (`recv()` returns
//! `None`): the elector then polls and subscribes again later.

use std::time::Duration;

use etcd_client::{Client, EventType, WatchOptions, WatchStream};
use leader_core::{Error, FencingToken, HolderId, LeaseEvent, LeaseEvents, LeaseKey, Result};
use tokio::sync::mpsc;

use crate::store::EtcdStore;

const OP: &str = "watch";
/// Events buffered for a slow subscriber before the store waits for it.
const CAPACITY: usize = 64;
/// The first pause between attempts to re-create a broken watch; it doubles
/// up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(20);
/// The longest pause between attempts.
const MAX_BACKOFF: Duration = Duration::from_millis(500);

/// Why a watch could not be (re-)created.
enum OpenError {
    /// The revision to resume from was compacted away: resuming is impossible.
    Compacted,
    /// Anything else; worth another attempt.
    Other(Error),
}

pub(crate) async fn subscribe(store: EtcdStore, key: LeaseKey) -> Result<LeaseEvents> {
    let k = key.as_str();
    let client = store.client(OP, k).await?;
    let (stream, revision) = match open(&store, &client, k, None).await {
        Ok(opened) => opened,
        Err(OpenError::Other(e)) => return Err(e),
        Err(OpenError::Compacted) => {
            return Err(Error::unavailable("etcd cancelled the new watch")
                .with_store("etcd")
                .with_operation(OP)
                .with_key(k));
        }
    };
    let (tx, events) = LeaseEvents::channel(CAPACITY);
    tokio::spawn(follow(store, client, key, stream, revision, tx));
    Ok(events)
}

/// Creates a watch on `k` from `start` (or from now) and waits for etcd to
/// confirm it. Returns the stream and the revision it is current at.
async fn open(
    store: &EtcdStore,
    client: &Client,
    k: &str,
    start: Option<i64>,
) -> std::result::Result<(WatchStream, i64), OpenError> {
    let mut options = WatchOptions::new();
    if let Some(start) = start {
        options = options.with_start_revision(start);
    }
    let mut stream = store
        .retrying(OP, k, client, |mut c| {
            let options = options.clone();
            async move { c.watch(k, Some(options)).await }
        })
        .await
        .map_err(OpenError::Other)?;
    let first = store
        .call(OP, k, stream.message())
        .await
        .map_err(OpenError::Other)?;
    match first {
        Some(resp) if resp.canceled() || resp.compact_revision() > 0 => {
            if resp.compact_revision() > 0 {
                Err(OpenError::Compacted)
            } else {
                Err(OpenError::Other(
                    Error::unavailable(format!(
                        "etcd cancelled the watch: {}",
                        resp.cancel_reason()
                    ))
                    .with_store("etcd")
                    .with_operation(OP)
                    .with_key(k),
                ))
            }
        }
        Some(resp) if resp.created() => {
            let revision = resp.header().map(|h| h.revision()).unwrap_or(0);
            // When resuming, everything before `start` was already seen.
            let seen = start.map_or(revision, |s| s - 1);
            Ok((stream, seen))
        }
        _ => Err(OpenError::Other(
            Error::indeterminate("the watch stream ended before etcd confirmed it")
                .with_store("etcd")
                .with_operation(OP)
                .with_key(k),
        )),
    }
}

/// Forwards events until the subscriber goes away or the watch cannot be
/// re-established. Dropping `tx` ends the subscription.
async fn follow(
    store: EtcdStore,
    client: Client,
    key: LeaseKey,
    mut stream: WatchStream,
    mut last: i64,
    tx: mpsc::Sender<LeaseEvent>,
) {
    let k = key.as_str();
    loop {
        let message = tokio::select! {
            _ = tx.closed() => return,
            m = stream.message() => m,
        };
        match message {
            Ok(Some(resp)) if !resp.canceled() => {
                for event in resp.events() {
                    let Some(kv) = event.kv() else { continue };
                    last = last.max(kv.mod_revision());
                    let lease_event = match event.event_type() {
                        EventType::Delete => LeaseEvent::Vacated,
                        EventType::Put => {
                            let holder = std::str::from_utf8(kv.value())
                                .ok()
                                .and_then(|v| HolderId::new(v).ok());
                            let token = u64::try_from(kv.mod_revision()).ok();
                            match (holder, token) {
                                (Some(holder), Some(token)) => LeaseEvent::Acquired {
                                    holder,
                                    token: FencingToken(token),
                                },
                                // Not a value this library writes: ignore.
                                _ => continue,
                            }
                        }
                    };
                    if tx.send(lease_event).await.is_err() {
                        return;
                    }
                }
            }
            Ok(Some(resp)) if resp.compact_revision() > 0 => {
                tracing::debug!(
                    key = k,
                    "etcd watch fell behind compaction; subscription ends"
                );
                return;
            }
            // Cancelled by the server (e.g. its member lost the leader),
            // ended, or broke: resume from the last seen revision.
            Ok(_) | Err(_) => match resume(&store, &client, k, last, &tx).await {
                Some(s) => stream = s,
                None => return,
            },
        }
    }
}

/// Re-creates the watch from `last + 1`, retrying with backoff for one
/// request timeout (at least a second), then gives up.
async fn resume(
    store: &EtcdStore,
    client: &Client,
    k: &str,
    last: i64,
    tx: &mpsc::Sender<LeaseEvent>,
) -> Option<WatchStream> {
    let window = store.config().request_timeout().max(Duration::from_secs(1));
    let give_up = tokio::time::Instant::now() + window;
    let mut pause = FIRST_BACKOFF;
    while tokio::time::Instant::now() < give_up {
        tokio::select! {
            _ = tx.closed() => return None,
            _ = tokio::time::sleep(pause) => {}
        }
        pause = (pause * 2).min(MAX_BACKOFF);
        match open(store, client, k, Some(last + 1)).await {
            Ok((stream, _)) => {
                tracing::debug!(key = k, from = last + 1, "etcd watch resumed");
                return Some(stream);
            }
            Err(OpenError::Compacted) => return None,
            Err(OpenError::Other(e)) => {
                tracing::debug!(key = k, error = %e, "etcd watch resume failed");
            }
        }
    }
    tracing::debug!(
        key = k,
        "etcd watch could not be resumed; subscription ends"
    );
    None
}
