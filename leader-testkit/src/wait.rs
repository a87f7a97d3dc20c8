//! Waiting for a condition in a test: [`eventually`] (fails the test with
//! the caller's description) and [`poll`] (answers `None`), both on tokio's
//! clock so they work under paused time too.
//!
//! The deadline is always the caller's: derive it from the durations the
//! test configured (a lease, a renewal interval) plus a slack for a loaded
//! machine, so the bound says what the test expects.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! use std::time::Duration;
//! use leader_testkit::wait::eventually;
//!
//! let mut polls = 0;
//! eventually(Duration::from_secs(1), "the third poll", || {
//!     polls += 1;
//!     async move { polls == 3 }
//! })
//! .await;
//! let value = eventually(Duration::from_secs(1), "a value", || async { Some(7) }).await;
//! assert_eq!(value, 7);
//! # }
//! ```

use std::future::Future;
use std::time::Duration;

use tokio::time::{Instant, sleep};

/// How often [`eventually`] checks its condition.
pub const STEP: Duration = Duration::from_millis(10);

/// What a condition answers: `bool` (it holds or not), or `Option<T>` (the
/// value, once there is one).
pub trait Settled {
    /// What the wait returns once the condition holds.
    type Value;

    /// The value when the condition holds, `None` while it does not.
    fn settled(self) -> Option<Self::Value>;
}

impl Settled for bool {
    type Value = ();

    fn settled(self) -> Option<()> {
        self.then_some(())
    }
}

impl<T> Settled for Option<T> {
    type Value = T;

    fn settled(self) -> Option<T> {
        self
    }
}

/// Checks `check` every `step` until it holds, for at most `within`; the
/// last check is made once `within` has passed. `None` when it never held.
///
/// `check` is a closure returning a future (`|| async { .. }`), so the wait
/// is `Send` whenever the check's future is (conformance cases need that).
pub async fn poll<C, F, Fut>(within: Duration, step: Duration, mut check: F) -> Option<C::Value>
where
    C: Settled,
    F: FnMut() -> Fut,
    Fut: Future<Output = C>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(value) = check().await.settled() {
            return Some(value);
        }
        if Instant::now() >= deadline {
            return None;
        }
        sleep(step).await;
    }
}

/// Checks `check` every [`STEP`] until it holds and returns its value;
/// panics with "timed out after `within` waiting for `what`" when it still
/// does not hold once `within` has passed.
///
/// # Panics
///
/// When the condition does not hold within `within`: the test fails.
pub async fn eventually<C, F, Fut>(within: Duration, what: &str, check: F) -> C::Value
where
    C: Settled,
    F: FnMut() -> Fut,
    Fut: Future<Output = C>,
{
    match poll(within, STEP, check).await {
        Some(value) => value,
        None => panic!("timed out after {within:?} waiting for {what}"),
    }
}
