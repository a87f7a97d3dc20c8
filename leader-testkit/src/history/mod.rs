//! A recorder of what every instance did, and a checker of the safety
//! properties a leader-election library promises.
//!
//! Record every operation (acquire, renew, release, step-down, loss signal,
//! fenced write) of every instance with its invoke and complete instants on
//! one monotonic clock (`tokio::time::Instant`, so paused-time tests work),
//! its outcome and its fencing token. Then [`History::check`]:
//!
//! * **overlaps**: the believed-held intervals of different instances never
//!   overlap (see [`Term`] for how an interval is derived);
//! * **token order**: an acquisition that starts after another one completed
//!   gets a strictly greater token, and no two acquisitions share one;
//! * **stale writes**: a [`FencedResource`] never accepts a write whose token
//!   is lower than one it had already accepted when the write was made.
//!
//! The check prints one summary line and returns a `Result`;
//! [`History::assert_ok`] panics with every violation listed.
//!
//! [`Recording`] is a [`Wrapped`](crate::wrap::Wrapped) store's hook that
//! records its acquire, renew and release calls with exact timing, so an
//! election test only records what the store cannot see (step-downs, loss
//! signals, fenced writes).
//!
//! ```
//! use leader_core::FencingToken;
//! use leader_testkit::history::{History, Op, Outcome};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let history = History::new();
//! let call = history.invoke("a", Op::Acquire);
//! // ... the store call ...
//! call.complete(Outcome::Ok, Some(FencingToken(1)));
//! history.instant("a", Op::StepDown, Outcome::Ok, Some(FencingToken(1)));
//! history.assert_ok();
//! # }
//! ```

mod check;
mod fenced;
mod recording;

use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};

use leader_core::FencingToken;
use tokio::time::Instant;

pub use check::{CheckOptions, Summary, Term, Violation, Violations};
pub use fenced::FencedResource;
pub use recording::Recording;

/// What an instance did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Op {
    /// Tried to acquire the lease. `Ok` with a token starts a believed term.
    Acquire,
    /// Renewed its lease (with the term's token).
    Renew,
    /// Released its lease: invoking it ends the believed term.
    Release,
    /// Stopped believing it leads (its `is_leader` turned false).
    StepDown,
    /// Its run-while-leader work was told leadership was lost.
    LossSignal,
    /// Wrote to a [`FencedResource`]: `Ok` accepted, `Fail` rejected.
    FencedWrite,
}

/// How an operation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Outcome {
    /// It took effect.
    Ok,
    /// It did not take effect.
    Fail,
    /// Unknown (a timeout, a lost reply, or never completed).
    Indeterminate,
}

/// One recorded operation.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Event {
    /// The instance (process, holder id) that did it.
    pub process: String,
    /// What it did.
    pub op: Op,
    /// When it was invoked.
    pub invoked: Instant,
    /// When it completed; `None` if it never did (then it is indeterminate).
    pub completed: Option<Instant>,
    /// How it ended.
    pub outcome: Outcome,
    /// The fencing token involved (minted by an acquire, held by the others).
    pub token: Option<FencingToken>,
}

impl Event {
    /// A completed event, for hand-built histories.
    pub fn new(
        process: impl Into<String>,
        op: Op,
        invoked: Instant,
        completed: Instant,
        outcome: Outcome,
        token: Option<FencingToken>,
    ) -> Self {
        Event {
            process: process.into(),
            op,
            invoked,
            completed: Some(completed),
            outcome,
            token,
        }
    }
}

#[derive(Debug)]
struct Inner {
    origin: Instant,
    events: Vec<Event>,
}

/// A shared, append-only record of operations. Cheap to clone; clones share
/// the record, so each instance's task can hold one.
#[derive(Clone)]
pub struct History {
    inner: Arc<Mutex<Inner>>,
}

impl fmt::Debug for History {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("History")
            .field("events", &self.lock().events.len())
            .finish()
    }
}

impl Default for History {
    fn default() -> Self {
        Self::new()
    }
}

impl History {
    /// An empty history whose clock origin is now.
    pub fn new() -> Self {
        History {
            inner: Arc::new(Mutex::new(Inner {
                origin: Instant::now(),
                events: Vec::new(),
            })),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Appends are single pushes: a panic elsewhere cannot corrupt them.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records that `process` invokes `op` now; complete it with
    /// [`Pending::complete`]. If the [`Pending`] is dropped uncompleted the
    /// event stays indeterminate with no completion time.
    pub fn invoke(&self, process: impl Into<String>, op: Op) -> Pending {
        let mut inner = self.lock();
        inner.events.push(Event {
            process: process.into(),
            op,
            invoked: Instant::now(),
            completed: None,
            outcome: Outcome::Indeterminate,
            token: None,
        });
        Pending {
            history: self.clone(),
            index: inner.events.len() - 1,
        }
    }

    /// Records an operation that has no duration (a step-down, a loss
    /// signal) as invoked and completed now.
    pub fn instant(
        &self,
        process: impl Into<String>,
        op: Op,
        outcome: Outcome,
        token: Option<FencingToken>,
    ) {
        let now = Instant::now();
        self.record(Event::new(process, op, now, now, outcome, token));
    }

    /// Appends a complete event (for hand-built histories and custom
    /// recorders).
    pub fn record(&self, event: Event) {
        self.lock().events.push(event);
    }

    /// A copy of every event so far, in the order they were invoked.
    pub fn events(&self) -> Vec<Event> {
        self.lock().events.clone()
    }

    /// How many operations were recorded.
    pub fn len(&self) -> usize {
        self.lock().events.len()
    }

    /// Whether nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every event as one line (`+12.3ms..+12.9ms i0 Acquire Ok token 7`),
    /// at most the last `max` events, for failure messages.
    pub fn timeline(&self, max: usize) -> String {
        let inner = self.lock();
        let ms = |t: Instant| t.saturating_duration_since(inner.origin).as_secs_f64() * 1e3;
        let skip = inner.events.len().saturating_sub(max);
        let mut out = String::new();
        if skip > 0 {
            out.push_str(&format!("({skip} earlier events not shown)\n"));
        }
        for e in &inner.events[skip..] {
            let done = e
                .completed
                .map_or_else(|| "never".to_owned(), |c| format!("+{:.1}ms", ms(c)));
            let token = e.token.map_or_else(String::new, |t| format!(" token {t}"));
            out.push_str(&format!(
                "+{:.1}ms..{done} {} {:?} {:?}{token}\n",
                ms(e.invoked),
                e.process,
                e.op,
                e.outcome
            ));
        }
        out
    }

    /// The clock origin (when the history was created), for printing offsets.
    pub fn origin(&self) -> Instant {
        self.lock().origin
    }

    /// Checks the history with default options, prints one summary line and
    /// returns the summary or every violation found.
    ///
    /// # Errors
    ///
    /// [`Violations`] listing each overlap, token regression and accepted
    /// stale write.
    pub fn check(&self) -> Result<Summary, Violations> {
        self.check_with(&CheckOptions::default())
    }

    /// [`History::check`] with options (such as the validity bound that
    /// caps a term whose end was not observed).
    ///
    /// # Errors
    ///
    /// As [`History::check`].
    pub fn check_with(&self, options: &CheckOptions) -> Result<Summary, Violations> {
        let (origin, events) = {
            let inner = self.lock();
            (inner.origin, inner.events.clone())
        };
        let result = check::check(origin, &events, options);
        match &result {
            Ok(summary) => println!("{summary}"),
            Err(violations) => println!("{}", violations.summary),
        }
        result
    }

    /// Checks with default options and panics, listing every violation, if
    /// any safety property was broken.
    ///
    /// # Panics
    ///
    /// On any violation: that is the point.
    #[track_caller]
    pub fn assert_ok(&self) -> Summary {
        self.assert_ok_with(&CheckOptions::default())
    }

    /// [`History::assert_ok`] with options.
    ///
    /// # Panics
    ///
    /// On any violation.
    #[track_caller]
    pub fn assert_ok_with(&self, options: &CheckOptions) -> Summary {
        match self.check_with(options) {
            Ok(summary) => summary,
            Err(violations) => panic!("{violations}"),
        }
    }
}

/// An operation in flight; see [`History::invoke`].
#[derive(Debug)]
#[must_use = "complete the operation, or it stays indeterminate"]
pub struct Pending {
    history: History,
    index: usize,
}

impl Pending {
    /// Records the operation's completion now, with its outcome and token.
    pub fn complete(self, outcome: Outcome, token: Option<FencingToken>) {
        let now = Instant::now();
        let mut inner = self.history.lock();
        if let Some(event) = inner.events.get_mut(self.index) {
            event.completed = Some(now);
            event.outcome = outcome;
            event.token = token.or(event.token);
        }
    }

    /// Sets the token known at invocation (a renew's or release's term).
    pub fn with_token(self, token: FencingToken) -> Self {
        if let Some(event) = self.history.lock().events.get_mut(self.index) {
            event.token = Some(token);
        }
        self
    }
}
