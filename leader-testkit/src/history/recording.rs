//! [`Recording`]: a store hook that records every lease operation.

use async_trait::async_trait;
use leader_core::{ErrorKind, LeaseStore};

use super::{History, Op, Outcome};
use crate::wrap::{self, Call, Hooks, Reply};

/// Records each `acquire`, `renew` and `release` of a
/// [`Wrapped`](crate::wrap::Wrapped) store in a [`History`], under the
/// holder id as the process name, timed inside the call (so the recorded
/// interval contains the store's real one):
/// `Wrapped::new(store, Recording::new(history))`.
///
/// An error of kind `Indeterminate` (or a call dropped before it returned)
/// is recorded as [`Outcome::Indeterminate`]; other errors as
/// [`Outcome::Fail`]; `acquire` answering `Held` and `release` answering
/// `false` as `Fail`.
#[derive(Debug, Clone)]
pub struct Recording {
    history: History,
}

impl Recording {
    /// Records into `history`.
    pub fn new(history: History) -> Self {
        Recording { history }
    }

    /// The history it records into.
    pub fn history(&self) -> &History {
        &self.history
    }
}

/// What a reply means for the history.
fn outcome(reply: &Reply) -> Outcome {
    match reply.error() {
        _ if reply.granted() => Outcome::Ok,
        Some(e) if e.kind() == ErrorKind::Indeterminate => Outcome::Indeterminate,
        _ => Outcome::Fail,
    }
}

#[async_trait]
impl Hooks for Recording {
    async fn around(&self, call: Call<'_>, inner: &dyn LeaseStore) -> Reply {
        let (op, holder) = match (call.op(), call.holder()) {
            (wrap::Op::Acquire, Some(holder)) => (Op::Acquire, holder),
            (wrap::Op::Renew, Some(holder)) => (Op::Renew, holder),
            (wrap::Op::Release, Some(holder)) => (Op::Release, holder),
            _ => return call.run(inner).await,
        };
        let mut pending = self.history.invoke(holder.as_str(), op);
        if let Some(token) = call.token() {
            pending = pending.with_token(token);
        }
        // Dropped with the call, `pending` records it as indeterminate.
        let reply = call.run(inner).await;
        let token = call.token().or(reply.acquired_token());
        pending.complete(outcome(&reply), token);
        reply
    }
}
