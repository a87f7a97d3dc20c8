//! Counts the store operations an elector or lock makes, so idle and scale
//! costs can be given in operations per minute: the store is wrapped in the
//! testkit's pass-through [`Wrapped`] store, which counts every call.

use std::sync::Arc;

use leader_core::LeaseStore;
use leader_testkit::wrap::{Op, Wrapped};

/// Wraps `inner` in a counting store; returns the store and its counter.
pub fn wrap(inner: Arc<dyn LeaseStore>) -> (Arc<dyn LeaseStore>, Counter) {
    let counted = Arc::new(Wrapped::new(inner, ()));
    (counted.clone(), Counter(counted))
}

/// The live counts of a store made by [`wrap`].
#[derive(Debug, Clone)]
pub struct Counter(Arc<Wrapped<()>>);

impl Counter {
    /// The counts now.
    pub fn snapshot(&self) -> Counts {
        let calls = |op| self.0.calls(op);
        Counts {
            acquire: calls(Op::Acquire),
            renew: calls(Op::Renew),
            release: calls(Op::Release),
            current: calls(Op::Current),
            force_release: calls(Op::ForceRelease),
            watch: calls(Op::Watch),
            watch_ok: self.0.successes(Op::Watch),
        }
    }
}

/// A snapshot of a [`Counter`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// `acquire` calls.
    pub acquire: u64,
    /// `renew` calls.
    pub renew: u64,
    /// `release` calls.
    pub release: u64,
    /// `current` calls.
    pub current: u64,
    /// `force_release` calls.
    pub force_release: u64,
    /// `watch` calls (subscriptions asked for).
    pub watch: u64,
    /// `watch` calls that succeeded (subscriptions set up).
    pub watch_ok: u64,
}

impl Counts {
    /// Every operation except subscriptions.
    pub fn requests(&self) -> u64 {
        self.acquire + self.renew + self.release + self.current + self.force_release
    }

    /// The operations made between `earlier` and `self`.
    pub fn since(&self, earlier: &Counts) -> Counts {
        Counts {
            acquire: self.acquire - earlier.acquire,
            renew: self.renew - earlier.renew,
            release: self.release - earlier.release,
            current: self.current - earlier.current,
            force_release: self.force_release - earlier.force_release,
            watch: self.watch - earlier.watch,
            watch_ok: self.watch_ok - earlier.watch_ok,
        }
    }

    /// `acquire=1 renew=6 release=0 watch=0` (zero fields other than the
    /// main three left out).
    pub fn describe(&self) -> String {
        let mut s = format!(
            "acquire={} renew={} release={}",
            self.acquire, self.renew, self.release
        );
        for (name, n) in [
            ("current", self.current),
            ("force_release", self.force_release),
            ("watch", self.watch),
        ] {
            if n > 0 {
                s.push_str(&format!(" {name}={n}"));
            }
        }
        s
    }
}
