//! Keeping a held lease alive: the renewal loop shared by the elector and by
//! named-lock guards.
//!
//! Rules (see `docs/design.md`):
//! * a renewal is due `renewal_interval` after the last successful one was sent;
//! * a failed renewal (error or timeout: an unknown outcome never counts as
//!   success) is retried every quarter interval;
//! * no request may run past the renew deadline (`last_ok_sent + renew_deadline`);
//!   when the deadline passes without success the holder steps down, which is
//!   before the lease could expire in the store;
//! * a `NotHolder` answer ends the term at once.

use tokio::time::{Instant, sleep_until, timeout};
use tokio_util::sync::CancellationToken;

use crate::ErrorKind;
use crate::store::{Lease, LeaseStore};
use crate::telemetry::LossReason;
use crate::tracker::LeaseTracker;

/// How a kept lease ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeepEnd {
    /// `stop` was cancelled: the holder is shutting down or releasing.
    Stopped,
    /// The lease was lost.
    Lost(LossReason),
}

/// Renews `lease` (acquired by a request sent at `acquired_sent`) until it is
/// lost or `stop` is cancelled. Does not end the term: the caller does.
pub(crate) async fn keep(
    store: &dyn LeaseStore,
    lease: &Lease,
    acquired_sent: Instant,
    tracker: &LeaseTracker,
    stop: &CancellationToken,
) -> KeepEnd {
    let timing = tracker.timing;
    let mut last_ok_sent = acquired_sent;
    let mut next_attempt = acquired_sent + timing.renewal_interval;
    loop {
        let deadline = timing.deadline(last_ok_sent);
        tokio::select! {
            biased;
            _ = stop.cancelled() => return KeepEnd::Stopped,
            _ = sleep_until(next_attempt.min(deadline)) => {}
        }
        let sent = Instant::now();
        if sent >= deadline {
            return KeepEnd::Lost(LossReason::RenewDeadline);
        }
        let budget = (deadline - sent).min(timing.request_timeout);
        let outcome = tokio::select! {
            biased;
            // Dropping an in-flight renewal is harmless: it can only extend a
            // lease that the caller is about to release or abandon.
            _ = stop.cancelled() => return KeepEnd::Stopped,
            r = timeout(budget, store.renew(lease)) => r,
        };
        let elapsed = sent.elapsed();
        match outcome {
            Ok(Ok(())) => {
                last_ok_sent = sent;
                tracker.renewed(lease.token, sent, elapsed);
                next_attempt = sent + timing.renewal_interval;
            }
            Ok(Err(e)) if e.kind() == ErrorKind::NotHolder => {
                tracker.renew_failed(lease.token, elapsed, &e);
                return KeepEnd::Lost(LossReason::NotHolder);
            }
            Ok(Err(e)) => {
                tracker.renew_failed(lease.token, elapsed, &e);
                next_attempt = Instant::now() + timing.renew_retry();
            }
            Err(_) => {
                let e =
                    crate::Error::indeterminate(format!("renew did not answer within {budget:?}"))
                        .with_store(store.kind())
                        .with_operation("renew")
                        .with_key(lease.key.as_str());
                tracker.renew_failed(lease.token, elapsed, &e);
                next_attempt = Instant::now() + timing.renew_retry();
            }
        }
    }
}

/// Releases `lease` within the release timeout. Returns whether the store
/// confirmed the release; failures are logged, never propagated (the lease
/// then expires on its own).
pub(crate) async fn release(store: &dyn LeaseStore, lease: &Lease, tracker: &LeaseTracker) -> bool {
    let limit = tracker.timing.release_timeout;
    match timeout(limit, store.release(lease)).await {
        Ok(Ok(released)) => released,
        Ok(Err(e)) => {
            tracker.contact_failed("release", &e);
            false
        }
        Err(_) => {
            let e = crate::Error::indeterminate(format!("release did not answer within {limit:?}"))
                .with_store(store.kind())
                .with_operation("release");
            tracker.contact_failed("release", &e);
            false
        }
    }
}
