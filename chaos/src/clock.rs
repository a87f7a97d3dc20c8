//! One clock for every process of a run.
//!
//! `CLOCK_MONOTONIC` is system-wide on Linux: every process reads the same
//! clock, so timestamps taken in elector processes can be compared with the
//! orchestrator's. Rust's `std::time::Instant` (and tokio's) read the same
//! clock, which is how [`Clock::instant`] converts.

use std::time::Duration;

use nix::time::{ClockId, clock_gettime};
use tokio::time::Instant;

/// Nanoseconds on `CLOCK_MONOTONIC`, now.
pub fn mono_ns() -> u64 {
    // clock_gettime(CLOCK_MONOTONIC) cannot fail on Linux; 0 keeps the
    // function total (and would show up as an absurd timestamp, not a panic).
    clock_gettime(ClockId::CLOCK_MONOTONIC)
        .map(|t| {
            u64::try_from(t.tv_sec())
                .unwrap_or(0)
                .saturating_mul(1_000_000_000)
                .saturating_add(u64::try_from(t.tv_nsec()).unwrap_or(0))
        })
        .unwrap_or(0)
}

/// Converts `CLOCK_MONOTONIC` nanoseconds to tokio instants (for the
/// testkit's history, which works on `tokio::time::Instant`).
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    base: Instant,
    base_ns: u64,
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock {
    /// Pairs an instant with the raw clock, now.
    pub fn new() -> Self {
        let base = Instant::now();
        Clock {
            base,
            base_ns: mono_ns(),
        }
    }

    /// The instant of a raw timestamp.
    pub fn instant(&self, ns: u64) -> Instant {
        if ns >= self.base_ns {
            self.base + Duration::from_nanos(ns - self.base_ns)
        } else {
            let back = Duration::from_nanos(self.base_ns - ns);
            self.base.checked_sub(back).unwrap_or(self.base)
        }
    }

    /// The raw timestamp of an instant.
    pub fn ns(&self, at: Instant) -> u64 {
        if at >= self.base {
            let ahead = u64::try_from(at.duration_since(self.base).as_nanos()).unwrap_or(u64::MAX);
            self.base_ns.saturating_add(ahead)
        } else {
            let back = u64::try_from(self.base.duration_since(at).as_nanos()).unwrap_or(u64::MAX);
            self.base_ns.saturating_sub(back)
        }
    }
}
