//! [`Stall`]: a hook whose acquire answers arrive late, as after a stall of
//! the caller's process (a blocked runtime thread, a VM pause).

use std::time::Duration;

use async_trait::async_trait;
use leader_core::LeaseStore;

use super::{Call, Hooks, Reply};

/// Every `acquire` is performed on the inner store and its answer is then
/// held back for the stall, during which the calling task cannot run: the
/// thread is blocked (real time), or tokio's paused clock is advanced
/// (paused time). A caller's own timeout around the call therefore cannot
/// fire first: the answer arrives after the stall whatever the request
/// timeout, which is how a stalled process sees a late answer.
#[derive(Debug, Clone, Copy)]
pub struct Stall(pub Duration);

/// Whether tokio's clock is paused: it does not move while the thread
/// sleeps.
fn clock_paused() -> bool {
    let before = tokio::time::Instant::now();
    std::thread::sleep(Duration::from_millis(1));
    tokio::time::Instant::now() == before
}

#[async_trait]
impl Hooks for Stall {
    async fn around(&self, call: Call<'_>, inner: &dyn LeaseStore) -> Reply {
        let stalls = matches!(call, Call::Acquire { .. });
        let answer = call.run(inner).await;
        if stalls {
            if clock_paused() {
                // One poll of `advance` moves the clock; its trailing yield
                // is dropped, so the caller's timeout gets no turn in between.
                let _ = futures::FutureExt::now_or_never(tokio::time::advance(self.0));
            } else {
                // Deliberately blocking: the caller's timeout must not get a
                // chance to run before the answer is handed over.
                std::thread::sleep(self.0);
            }
        }
        answer
    }
}
