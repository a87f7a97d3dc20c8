//! Release notifications: LISTEN on the key's channel on a dedicated
//! connection, forwarded to a [`LeaseEvents`] by a task.
//!
//! The task ends (and the subscriber's `recv()` returns `None`) when the
//! listener's connection breaks or the subscriber is dropped; it never
//! reconnects by itself, so a subscriber always knows when it may have
//! missed a release and must poll (the elector then subscribes again).

use std::time::Duration;

use leader_core::{Error, LeaseEvent, LeaseEvents, Result};
use sqlx::postgres::{PgListener, PgPoolOptions};

use crate::conn::{Connector, classify};

/// Subscribes to `channel`.
pub(crate) async fn subscribe(
    conns: &Connector,
    request_timeout: Duration,
    channel: String,
) -> Result<LeaseEvents> {
    let connect_timeout = conns.connect_timeout();
    // PgListener needs a pool; this one is private to the subscription and
    // never reconnects on its own (eager_reconnect is off).
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .min_connections(0)
        .acquire_timeout(connect_timeout)
        .max_lifetime(None)
        .idle_timeout(None)
        .test_before_acquire(false)
        .connect_lazy_with(conns.options().clone());
    let listener = tokio::time::timeout(connect_timeout + request_timeout, async {
        let mut listener = PgListener::connect_with(&pool).await?;
        listener.eager_reconnect(false);
        listener.listen(&channel).await?;
        Ok::<_, sqlx::Error>(listener)
    })
    .await;
    let mut listener = match listener {
        Ok(Ok(listener)) => listener,
        Ok(Err(e)) => {
            pool.close().await;
            return Err(classify(e, true, "could not LISTEN for releases"));
        }
        Err(_) => {
            pool.close().await;
            return Err(Error::unavailable(format!(
                "could not LISTEN for releases within {:?}",
                connect_timeout + request_timeout
            )));
        }
    };
    let (tx, events) = LeaseEvents::channel(16);
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = tx.closed() => break,
                received = listener.try_recv() => match received {
                    Ok(Some(_)) => {
                        // A full queue already holds a Vacated for the
                        // subscriber; another one adds nothing.
                        if let Err(tokio::sync::mpsc::error::TrySendError::Closed(_)) =
                            tx.try_send(LeaseEvent::Vacated)
                        {
                            break;
                        }
                    }
                    Ok(None) | Err(_) => {
                        tracing::debug!(%channel, "postgres listener connection lost");
                        break;
                    }
                },
            }
        }
        drop(listener);
        pool.close().await;
    });
    Ok(events)
}
