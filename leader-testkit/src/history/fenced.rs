//! [`FencedResource`]: the protected resource of the fencing-token pattern.

use std::sync::{Mutex, MutexGuard};

use leader_core::FencingToken;

use super::{History, Op, Outcome};

#[derive(Debug, Default)]
struct State {
    highest: Option<FencingToken>,
    accepted: u64,
    rejected: u64,
    value: u64,
}

/// A value that accepts a write only with a token at least as high as any
/// it has accepted before, as a database row with a token column would.
/// Every write is recorded in the [`History`] (accepted: `Ok`, rejected:
/// `Fail`) so that the checker can confirm no stale write got through.
#[derive(Debug)]
pub struct FencedResource {
    state: Mutex<State>,
    history: Option<History>,
}

impl Default for FencedResource {
    fn default() -> Self {
        Self::new()
    }
}

impl FencedResource {
    /// A resource that records nothing.
    pub fn new() -> Self {
        FencedResource {
            state: Mutex::new(State::default()),
            history: None,
        }
    }

    /// A resource that records every write in `history`.
    pub fn recording(history: History) -> Self {
        FencedResource {
            state: Mutex::new(State::default()),
            history: Some(history),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Writes on behalf of `process` holding `token`: accepted (`true`) if
    /// `token` is at least the highest token accepted so far, rejected
    /// (`false`) otherwise. The check and the update are one atomic step.
    pub fn write(&self, process: &str, token: FencingToken) -> bool {
        let pending = self
            .history
            .as_ref()
            .map(|h| h.invoke(process, Op::FencedWrite).with_token(token));
        let accepted = {
            let mut state = self.lock();
            let ok = state.highest.is_none_or(|h| token >= h);
            if ok {
                state.highest = Some(token);
                state.accepted += 1;
                state.value += 1;
            } else {
                state.rejected += 1;
            }
            ok
        };
        if let Some(pending) = pending {
            let outcome = if accepted { Outcome::Ok } else { Outcome::Fail };
            pending.complete(outcome, Some(token));
        }
        accepted
    }

    /// The highest token accepted so far.
    pub fn highest(&self) -> Option<FencingToken> {
        self.lock().highest
    }

    /// How many writes were accepted.
    pub fn accepted(&self) -> u64 {
        self.lock().accepted
    }

    /// How many stale writes were rejected.
    pub fn rejected(&self) -> u64 {
        self.lock().rejected
    }
}
