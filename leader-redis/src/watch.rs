//! Release notifications over a dedicated pub/sub connection.
//!
//! Each [`watch`](leader_core::LeaseStore::watch) opens its own connection,
//! subscribes to the lease's channel and forwards `released` /
//! `force-released` messages as [`LeaseEvent::Vacated`]. The forwarding task
//! pings the server every heartbeat; when the connection drops or a ping goes
//! unanswered, or (Sentinel) the sentinels name another master, the task
//! ends, the sender is dropped and the caller's `recv()` returns `None`,
//! which tells the elector to poll and subscribe again.

use std::time::Duration;

use futures::StreamExt;
use leader_core::{Error, LeaseEvent, LeaseEvents, Result};
use redis::Msg;

use crate::conn::Connector;
use crate::error::{Phase, classify, to_error};

/// What a message on a lease channel means.
fn event_of(msg: &Msg) -> Option<LeaseEvent> {
    let payload: String = msg.get_payload().ok()?;
    let kind = payload.split(' ').next()?;
    matches!(kind, "released" | "force-released").then_some(LeaseEvent::Vacated)
}

/// Subscribes to `channel` and spawns the forwarding task.
pub(crate) async fn subscribe(
    connector: &Connector,
    channel: String,
    response_timeout: Duration,
    heartbeat: Duration,
) -> Result<LeaseEvents> {
    let mut pubsub = connector.pubsub().await?;
    match tokio::time::timeout(response_timeout, pubsub.subscribe(&channel)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            let (kind, _) = classify(&e, Phase::Connect);
            return Err(to_error(e, kind, "watch"));
        }
        Err(_) => {
            return Err(Error::unavailable(format!(
                "SUBSCRIBE got no reply within {response_timeout:?}"
            ))
            .with_store("redis")
            .with_operation("watch"));
        }
    }
    let mut master_changes = connector.master_changes();
    master_changes.mark_unchanged();
    let (tx, events) = LeaseEvents::channel(16);
    let (mut sink, mut stream) = pubsub.split();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(heartbeat);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tokio::select! {
                () = tx.closed() => break,
                // The Sentinel master moved: releases are published there now.
                _ = master_changes.changed() => break,
                msg = stream.next() => {
                    let Some(msg) = msg else {
                        tracing::debug!(target: "leader_redis", %channel, "pub/sub connection closed");
                        break;
                    };
                    if let Some(event) = event_of(&msg) {
                        // A full queue already holds a Vacated the elector
                        // has not read; dropping this one loses nothing.
                        if let Err(tokio::sync::mpsc::error::TrySendError::Closed(_)) = tx.try_send(event) {
                            break;
                        }
                    }
                }
                _ = tick.tick() => {
                    let ping = tokio::time::timeout(response_timeout, sink.ping::<redis::Value>()).await;
                    if !matches!(ping, Ok(Ok(_))) {
                        tracing::debug!(target: "leader_redis", %channel, "pub/sub ping failed");
                        break;
                    }
                }
            }
        }
    });
    Ok(events)
}
