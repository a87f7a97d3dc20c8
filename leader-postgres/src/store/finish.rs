//! [`Finish`]: runs a future in the caller's task, and in a task of its own
//! only if the caller stops waiting.
//!
//! A statement on a shared pinned session must never be cut off halfway (a
//! cancelled future): that would leave the connection unusable and end
//! every lease on it. Spawning every operation guarantees that but costs
//! two hand-overs between threads per call (to the task and back), which is
//! most of what a renewal adds to its one round trip. `Finish` keeps the
//! guarantee at the price of one allocation: it polls the operation in
//! place, and hands whatever is left of it to the runtime when dropped
//! before it completed.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures::future::BoxFuture;

/// An operation that finishes even when its caller drops it.
pub(super) struct Finish<T: Send + 'static> {
    /// `None` once it completed.
    op: Option<BoxFuture<'static, T>>,
}

impl<T: Send + 'static> Finish<T> {
    /// Wraps `op`; it starts when first polled, like any future.
    pub(super) fn new<F>(op: F) -> Self
    where
        F: Future<Output = T> + Send + 'static,
    {
        Finish {
            op: Some(Box::pin(op)),
        }
    }
}

impl<T: Send + 'static> Future for Finish<T> {
    type Output = T;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        let Some(op) = self.op.as_mut() else {
            // Polled after completion: a caller's bug; never resolve again.
            return Poll::Pending;
        };
        let out = op.as_mut().poll(cx);
        if out.is_ready() {
            self.op = None;
        }
        out
    }
}

impl<T: Send + 'static> Drop for Finish<T> {
    fn drop(&mut self) {
        let Some(op) = self.op.take() else { return };
        // The operation bounds itself (its timeouts), so the task ends. Off
        // a runtime (only while the runtime itself shuts down) there is
        // nothing to run it on, as with any task the runtime drops then.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let _ = op.await;
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn completes_in_place() {
        assert_eq!(Finish::new(async { 7 }).await, 7);
    }

    #[tokio::test]
    async fn a_dropped_operation_still_runs_to_its_end() {
        let (go, wait) = tokio::sync::oneshot::channel::<()>();
        let (done_tx, done) = tokio::sync::oneshot::channel::<()>();
        let started = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&started);
        let op = Finish::new(async move {
            flag.store(true, Ordering::SeqCst);
            let _ = wait.await;
            let _ = done_tx.send(());
        });
        // The caller gives up while the operation waits halfway.
        let gave_up = tokio::time::timeout(Duration::from_millis(10), op).await;
        assert!(gave_up.is_err(), "the operation cannot finish before `go`");
        assert!(
            started.load(Ordering::SeqCst),
            "it ran in the caller's task"
        );
        go.send(())
            .expect("the operation is still alive after the drop");
        tokio::time::timeout(Duration::from_secs(30), done)
            .await
            .expect("the rest ran in a task of its own")
            .expect("and reached its end");
    }
}
