//! Durations derived from a validated [`ElectionConfig`], and the rules that
//! make them safe.
//!
//! All instants are on tokio's monotonic clock (paused-time tests control it).
//! A term is trusted until `sent + lease * (1 - drift)`, where `sent` is when
//! the last successful acquire or renew was *sent*: the store started its TTL
//! no earlier than that, so the lease cannot expire in the store before this
//! point unless the clocks run more than `drift` apart in rate.

use std::time::Duration;

use tokio::time::Instant;

use crate::config::ElectionConfig;

/// The longest duration a config may set (the longest lease a store
/// accepts, [`MAX_TTL`](crate::MAX_TTL)): every deadline is an `Instant` plus
/// a few of these, which stays far from overflowing.
pub(crate) const LONGEST: Duration = crate::store::MAX_TTL;

/// The timing rules of one election or lock.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timing {
    pub(crate) lease: Duration,
    pub(crate) renewal_interval: Duration,
    pub(crate) renew_deadline: Duration,
    pub(crate) retry_period: Duration,
    pub(crate) retry_jitter: f64,
    pub(crate) clock_drift: f64,
    pub(crate) request_timeout: Duration,
    pub(crate) release_timeout: Duration,
    pub(crate) unhealthy_after: Duration,
}

impl Timing {
    /// Timing of a config that has passed [`ElectionConfig::validate`].
    pub(crate) fn from_config(config: &ElectionConfig) -> Self {
        Timing {
            lease: config.lease_duration,
            renewal_interval: config.renewal_interval,
            renew_deadline: config.renew_deadline(),
            retry_period: config.retry_period(),
            retry_jitter: config.retry_jitter,
            clock_drift: config.clock_drift,
            request_timeout: config.request_timeout(),
            release_timeout: config.release_timeout,
            unhealthy_after: config.unhealthy_after(),
        }
    }

    /// Until when a lease acquired or renewed by a request sent at `sent` may
    /// be trusted.
    pub(crate) fn valid_until(&self, sent: Instant) -> Instant {
        sent + self.lease.mul_f64(1.0 - self.clock_drift)
    }

    /// When the leader gives up if no renewal sent after `last_ok_sent` succeeds.
    pub(crate) fn deadline(&self, last_ok_sent: Instant) -> Instant {
        last_ok_sent + self.renew_deadline
    }

    /// The pause before retrying a failed renewal: a quarter of the interval,
    /// so several attempts fit before the deadline.
    pub(crate) fn renew_retry(&self) -> Duration {
        (self.renewal_interval / 4).max(Duration::from_millis(1))
    }

    /// The pause before competing again after `n` terms in a row ended
    /// because run-while-leader work panicked: the retry period, doubled for
    /// each further such term, capped at 32 retry periods (5 min 20 s with
    /// the default 10 s). No jitter: the other replicas are not waiting on
    /// this one, they took over when it released.
    pub(crate) fn panic_back_off(&self, n: u32) -> Duration {
        let doublings = n.saturating_sub(1).min(5);
        self.retry_period.saturating_mul(1 << doublings)
    }

    /// The longest a polling follower takes to notice a free seat and take
    /// it: the retry period with its full jitter, plus one request.
    pub(crate) fn follower_reaction(&self) -> Duration {
        self.retry_period.mul_f64(1.0 + self.retry_jitter) + self.request_timeout
    }

    /// A follower's pause before its next attempt, given what its live
    /// subscription pushes and how long the store says the holder's lease has
    /// left. Jitter (up to `retry_jitter` of the retry period) keeps followers
    /// from arriving together.
    ///
    /// * Nothing pushed: the retry period, or less when the holder's lease
    ///   ends sooner.
    /// * Releases pushed: the seat can only free silently by expiry, so wait
    ///   until just after the holder's lease would end (the retry period when
    ///   the store reports no TTL).
    /// * Releases and expiries pushed: only a rare safety poll, every four
    ///   lease durations, for vacancies a subscription may miss without
    ///   ending (a server that stops publishing expiries, a key deleted by
    ///   hand).
    /// * Every vacancy pushed, and the subscription ended when one may have
    ///   been missed: no poll ([`LONGEST`]); losing the subscription makes
    ///   the caller poll.
    pub(crate) fn follower_wait(
        &self,
        holder_remaining: Option<Duration>,
        pushed: Pushed,
    ) -> Duration {
        let spread = self
            .retry_period
            .mul_f64(self.retry_jitter * rand::random::<f64>());
        let after_expiry = holder_remaining.map(|rem| rem + Duration::from_millis(1) + spread / 4);
        let poll = self.retry_period + spread;
        match (pushed, after_expiry) {
            (Pushed::Nothing, Some(expiry)) => poll.min(expiry),
            (Pushed::Nothing | Pushed::Releases, None) => poll,
            (Pushed::Releases, Some(expiry)) => expiry,
            (Pushed::ReleasesAndExpiries, _) => self.lease.max(self.retry_period) * 4 + spread,
            (Pushed::Everything, _) => LONGEST,
        }
    }
}

/// What a follower's live subscription pushes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pushed {
    /// No subscription (or the store has no notifications).
    Nothing,
    /// Releases only.
    Releases,
    /// Releases and expiries.
    ReleasesAndExpiries,
    /// Every vacancy, or the subscription ends
    /// ([`Capabilities::complete_notifications`](crate::Capabilities::complete_notifications)).
    Everything,
}

impl Pushed {
    /// What a live subscription to a store that can do `caps` pushes.
    pub(crate) fn by(caps: crate::Capabilities) -> Self {
        match caps.notifications {
            crate::NotificationSupport::Release => Pushed::Releases,
            crate::NotificationSupport::ReleaseAndExpiry if caps.complete_notifications => {
                Pushed::Everything
            }
            crate::NotificationSupport::ReleaseAndExpiry => Pushed::ReleasesAndExpiries,
            _ => Pushed::Nothing,
        }
    }
}
