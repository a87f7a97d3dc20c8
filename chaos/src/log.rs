//! What the orchestrator learns from its electors while a run goes on: every
//! store call, step-down and loss signal (for the history), who believes it
//! leads right now (to aim faults at the leader), and process exits.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use crate::protocol::{CallOutcome, Moment, Report, StoreOp};

/// One store call of one elector.
#[derive(Debug, Clone)]
pub struct Call {
    /// The holder id (process name in the history).
    pub holder: String,
    /// Which call.
    pub op: StoreOp,
    /// When it was sent (ns).
    pub invoked: u64,
    /// When it returned (ns); `None`: never (the process was killed or
    /// paused until the end).
    pub completed: Option<u64>,
    /// How it ended (indeterminate until it completes).
    pub outcome: CallOutcome,
    /// Minted or held token.
    pub token: Option<u64>,
}

/// A step-down or loss signal.
#[derive(Debug, Clone)]
pub struct MomentRecord {
    /// The holder id.
    pub holder: String,
    /// Which.
    pub what: Moment,
    /// When (ns).
    pub at: u64,
    /// The term's token.
    pub token: Option<u64>,
}

/// A process that ended.
#[derive(Debug, Clone)]
pub struct Exit {
    /// The holder id.
    pub holder: String,
    /// When the orchestrator saw it end (ns).
    pub at: u64,
    /// Its exit status, as text.
    pub status: String,
}

#[derive(Debug, Clone, Copy)]
struct Belief {
    token: u64,
    valid_until: u64,
}

#[derive(Debug, Default)]
struct Inner {
    calls: Vec<Call>,
    open: HashMap<(String, u64), usize>,
    moments: Vec<MomentRecord>,
    exits: Vec<Exit>,
    beliefs: HashMap<String, Belief>,
    writes_answered: u64,
}

/// The shared record. Cheap to clone.
#[derive(Debug, Clone)]
pub struct RunLog {
    inner: Arc<Mutex<Inner>>,
    validity_ns: u64,
}

impl RunLog {
    /// A record for electors whose `is_leader()` trusts a term for
    /// `validity` after the last successful acquire or renew was sent.
    pub fn new(validity: Duration) -> Self {
        RunLog {
            inner: Arc::default(),
            validity_ns: u64::try_from(validity.as_nanos()).unwrap_or(u64::MAX),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Single pushes and assignments: consistent across a panic.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes in one line of `holder`.
    pub fn report(&self, holder: &str, report: &Report) {
        let mut inner = self.lock();
        match *report {
            Report::Ready { .. } | Report::Write { .. } => {}
            Report::Invoke { id, op, at, token } => {
                let index = inner.calls.len();
                inner.calls.push(Call {
                    holder: holder.to_owned(),
                    op,
                    invoked: at,
                    completed: None,
                    outcome: CallOutcome::Indeterminate,
                    token,
                });
                inner.open.insert((holder.to_owned(), id), index);
            }
            Report::Complete {
                id,
                outcome,
                at,
                token,
            } => {
                let Some(index) = inner.open.remove(&(holder.to_owned(), id)) else {
                    return;
                };
                let validity = self.validity_ns;
                let call = &mut inner.calls[index];
                call.completed = Some(at);
                call.outcome = outcome;
                call.token = token.or(call.token);
                let (op, invoked, token) = (call.op, call.invoked, call.token);
                if outcome == CallOutcome::Ok
                    && let Some(token) = token
                {
                    let until = invoked.saturating_add(validity);
                    match op {
                        StoreOp::Acquire => {
                            inner.beliefs.insert(
                                holder.to_owned(),
                                Belief {
                                    token,
                                    valid_until: until,
                                },
                            );
                        }
                        StoreOp::Renew => {
                            if let Some(b) = inner.beliefs.get_mut(holder)
                                && b.token == token
                            {
                                b.valid_until = b.valid_until.max(until);
                            }
                        }
                        StoreOp::Release => {
                            inner.beliefs.remove(holder);
                        }
                    }
                }
            }
            Report::Moment { what, at, token } => {
                inner.moments.push(MomentRecord {
                    holder: holder.to_owned(),
                    what,
                    at,
                    token,
                });
                if inner
                    .beliefs
                    .get(holder)
                    .is_some_and(|b| token.is_none_or(|t| t == b.token))
                {
                    inner.beliefs.remove(holder);
                }
            }
        }
    }

    /// Counts one answered fenced write.
    pub fn write_answered(&self) {
        self.lock().writes_answered += 1;
    }

    /// Records that `holder`'s process ended.
    pub fn exited(&self, holder: &str, at: u64, status: String) {
        let mut inner = self.lock();
        inner.beliefs.remove(holder);
        inner.exits.push(Exit {
            holder: holder.to_owned(),
            at,
            status,
        });
    }

    /// Who believes it leads at `now` (ns) according to the reports so far:
    /// the holder whose term is valid, if any (the most recent when several
    /// claim it, which only a violation can cause).
    pub fn leader_at(&self, now: u64) -> Option<String> {
        self.lock()
            .beliefs
            .iter()
            .filter(|(_, b)| b.valid_until > now)
            .max_by_key(|(_, b)| b.token)
            .map(|(h, _)| h.clone())
    }

    /// Every call, moment and exit so far.
    pub fn snapshot(&self) -> (Vec<Call>, Vec<MomentRecord>, Vec<Exit>, u64) {
        let inner = self.lock();
        (
            inner.calls.clone(),
            inner.moments.clone(),
            inner.exits.clone(),
            inner.writes_answered,
        )
    }
}
