//! The safety checker behind [`History::check`](super::History::check).

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

use leader_core::FencingToken;
use tokio::time::Instant;

use super::{Event, Op, Outcome};

/// Options of a check.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct CheckOptions {
    /// Caps every believed term at its last successful acquire or renew
    /// *invocation* plus this duration: what an elector's `is_leader()`
    /// guarantees (`lease * (1 - clock_drift)`). Without it, a term whose end
    /// was not recorded stays open until the end of the history.
    pub validity: Option<Duration>,
}

impl CheckOptions {
    /// Options with [`CheckOptions::validity`] set.
    pub fn with_validity(validity: Duration) -> Self {
        CheckOptions {
            validity: Some(validity),
        }
    }
}

/// One believed-held interval: from the completion of a successful acquire
/// until the first of: the instance's release invocation for that token, a
/// step-down or loss signal for it (or without a token), its next successful
/// acquisition, or the validity cap of [`CheckOptions::validity`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Term {
    /// The instance that believed it led.
    pub process: String,
    /// The term's fencing token.
    pub token: FencingToken,
    /// When the belief started (the acquire completed).
    pub start: Instant,
    /// When it ended; `None`: still open at the end of the history.
    pub end: Option<Instant>,
}

impl Term {
    fn overlaps(&self, other: &Term) -> bool {
        let before_end = |t: Instant, end: Option<Instant>| end.is_none_or(|e| t < e);
        before_end(self.start, other.end) && before_end(other.start, self.end)
    }
}

/// A broken safety property.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Violation {
    /// Two instances believed they led at the same time.
    Overlap {
        /// The term that started first.
        first: Term,
        /// The term that started while `first` was still believed.
        second: Term,
    },
    /// An acquisition that started after another one had completed got a
    /// token that is not greater.
    TokenOrder {
        /// The instance and token of the acquisition that completed first.
        earlier: (String, FencingToken),
        /// The instance and token of the later acquisition.
        later: (String, FencingToken),
        /// When the earlier acquisition completed.
        earlier_completed: Instant,
        /// When the later one was invoked.
        later_invoked: Instant,
    },
    /// Two acquisitions got the same token.
    TokenRepeated {
        /// The token.
        token: FencingToken,
        /// The two instances.
        processes: (String, String),
    },
    /// A fenced resource accepted a write with a token lower than one it had
    /// already accepted.
    StaleWriteAccepted {
        /// The writer.
        process: String,
        /// Its token.
        token: FencingToken,
        /// The highest token accepted before the write was invoked.
        highest_before: FencingToken,
        /// When the stale write was invoked.
        at: Instant,
    },
}

fn ms(origin: Instant, t: Instant) -> String {
    format!(
        "{:.1}ms",
        t.saturating_duration_since(origin).as_secs_f64() * 1e3
    )
}

fn term_text(origin: Instant, t: &Term) -> String {
    let end = t.end.map_or_else(|| "open".to_owned(), |e| ms(origin, e));
    format!(
        "{} token {} [{} .. {}]",
        t.process,
        t.token,
        ms(origin, t.start),
        end
    )
}

impl Violation {
    /// One line describing the violation, times as offsets from `origin`.
    pub fn describe(&self, origin: Instant) -> String {
        match self {
            Violation::Overlap { first, second } => format!(
                "overlap: {} and {} believed they led at once",
                term_text(origin, first),
                term_text(origin, second)
            ),
            Violation::TokenOrder {
                earlier,
                later,
                earlier_completed,
                later_invoked,
            } => format!(
                "token order: {} got token {} at {}, then {} invoked at {} got token {} (not greater)",
                earlier.0,
                earlier.1,
                ms(origin, *earlier_completed),
                later.0,
                ms(origin, *later_invoked),
                later.1
            ),
            Violation::TokenRepeated { token, processes } => format!(
                "token repeated: {} and {} both acquired token {}",
                processes.0, processes.1, token
            ),
            Violation::StaleWriteAccepted {
                process,
                token,
                highest_before,
                at,
            } => format!(
                "stale write accepted: {process} wrote with token {token} at {} after token {highest_before} had been accepted",
                ms(origin, *at)
            ),
        }
    }
}

/// What a check counted. Its `Display` is the one summary line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct Summary {
    /// Recorded operations.
    pub operations: usize,
    /// Distinct instances.
    pub processes: usize,
    /// Believed terms (successful acquisitions).
    pub terms: usize,
    /// Overlapping pairs of terms of different instances.
    pub overlaps: usize,
    /// Token order and repetition violations.
    pub token_violations: usize,
    /// Fenced writes the resource rejected (stale writes stopped).
    pub stale_writes_rejected: usize,
    /// Fenced writes accepted although a higher token had been accepted.
    pub stale_writes_accepted: usize,
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "history: {} operations by {} instances, {} terms, {} overlaps, {} token violations, \
             {} stale writes rejected, {} stale writes accepted",
            self.operations,
            self.processes,
            self.terms,
            self.overlaps,
            self.token_violations,
            self.stale_writes_rejected,
            self.stale_writes_accepted
        )
    }
}

/// Every violation a check found, with the summary.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Violations {
    /// The counts.
    pub summary: Summary,
    /// Each violation.
    pub list: Vec<Violation>,
    /// The history's clock origin (for printing offsets).
    pub origin: Instant,
}

impl fmt::Display for Violations {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{}", self.summary)?;
        for v in &self.list {
            writeln!(f, "  - {}", v.describe(self.origin))?;
        }
        Ok(())
    }
}

impl std::error::Error for Violations {}

/// The believed terms of a history, in order of start.
pub(crate) fn terms(events: &[Event], options: &CheckOptions) -> Vec<Term> {
    // Each term only looks at its own instance's events.
    let mut by_process: HashMap<&str, Vec<&Event>> = HashMap::new();
    for e in events {
        by_process.entry(e.process.as_str()).or_default().push(e);
    }
    let mut out = Vec::new();
    for acquire in events.iter().filter(|e| e.op == Op::Acquire) {
        let (Outcome::Ok, Some(token), Some(start)) =
            (acquire.outcome, acquire.token, acquire.completed)
        else {
            continue;
        };
        let same_term = |e: &Event| e.token.is_none_or(|t| t == token);
        let mut end: Option<Instant> = None;
        let mut close = |t: Instant| end = Some(end.map_or(t, |e| e.min(t)));
        let mut last_ok_sent = acquire.invoked;
        let mine = by_process
            .get(acquire.process.as_str())
            .map_or(&[][..], Vec::as_slice);
        for e in mine.iter().filter(|e| e.invoked >= start) {
            match e.op {
                Op::Release | Op::StepDown | Op::LossSignal if same_term(e) => close(e.invoked),
                Op::Acquire if e.outcome == Outcome::Ok && e.token != Some(token) => {
                    if let Some(c) = e.completed {
                        close(c);
                    }
                }
                Op::Renew if e.outcome == Outcome::Ok && e.token == Some(token) => {
                    last_ok_sent = last_ok_sent.max(e.invoked);
                }
                _ => {}
            }
        }
        if let Some(validity) = options.validity {
            close(last_ok_sent + validity);
        }
        out.push(Term {
            process: acquire.process.clone(),
            token,
            start,
            end: end.map(|e| e.max(start)),
        });
    }
    out.sort_by_key(|t| t.start);
    out
}

/// For events sorted by completion: the running maximum token and the
/// event holding it, so "the highest token completed before `t`" is a
/// binary search.
struct PrefixMax<'a> {
    completed: Vec<Instant>,
    best: Vec<(FencingToken, &'a Event)>,
}

impl<'a> PrefixMax<'a> {
    fn new(mut done: Vec<(&'a Event, Instant, FencingToken)>) -> Self {
        done.sort_by_key(|d| d.1);
        let mut best: Vec<(FencingToken, &'a Event)> = Vec::with_capacity(done.len());
        for &(e, _, token) in &done {
            let next = match best.last() {
                Some(&(max, holder)) if max >= token => (max, holder),
                _ => (token, e),
            };
            best.push(next);
        }
        PrefixMax {
            completed: done.iter().map(|d| d.1).collect(),
            best,
        }
    }

    /// The highest token among events completed strictly before `t`.
    fn before(&self, t: Instant) -> Option<(FencingToken, &'a Event)> {
        let n = self.completed.partition_point(|&c| c < t);
        n.checked_sub(1).map(|i| self.best[i])
    }
}

fn completed_with_token(e: &Event) -> Option<(&Event, Instant, FencingToken)> {
    Some((e, e.completed?, e.token?))
}

pub(crate) fn check(
    origin: Instant,
    events: &[Event],
    options: &CheckOptions,
) -> Result<Summary, Violations> {
    let mut list = Vec::new();
    let terms = terms(events, options);

    // Terms are sorted by start: only later-starting terms that begin
    // before this one ends can overlap it.
    let mut overlaps = 0;
    for (i, a) in terms.iter().enumerate() {
        for b in &terms[i + 1..] {
            if a.end.is_some_and(|end| b.start >= end) {
                break;
            }
            if a.process != b.process && a.overlaps(b) {
                overlaps += 1;
                list.push(Violation::Overlap {
                    first: a.clone(),
                    second: b.clone(),
                });
            }
        }
    }

    let acquired: Vec<&Event> = events
        .iter()
        .filter(|e| e.op == Op::Acquire && e.outcome == Outcome::Ok && e.token.is_some())
        .collect();
    let mut token_violations = 0;
    let mut seen: HashMap<FencingToken, &Event> = HashMap::new();
    for e in &acquired {
        let Some(token) = e.token else { continue };
        if let Some(first) = seen.get(&token) {
            token_violations += 1;
            list.push(Violation::TokenRepeated {
                token,
                processes: (first.process.clone(), e.process.clone()),
            });
        } else {
            seen.insert(token, e);
        }
    }
    let done = PrefixMax::new(
        acquired
            .iter()
            .filter_map(|e| completed_with_token(e))
            .collect(),
    );
    for later in &acquired {
        let Some(token) = later.token else { continue };
        // Equal tokens are reported as repeated above.
        if let Some((max, earlier)) = done.before(later.invoked)
            && token < max
        {
            token_violations += 1;
            list.push(Violation::TokenOrder {
                earlier: (earlier.process.clone(), max),
                later: (later.process.clone(), token),
                earlier_completed: earlier.completed.unwrap_or(earlier.invoked),
                later_invoked: later.invoked,
            });
        }
    }

    let writes: Vec<&Event> = events.iter().filter(|e| e.op == Op::FencedWrite).collect();
    let stale_writes_rejected = writes.iter().filter(|e| e.outcome == Outcome::Fail).count();
    let accepted: Vec<&Event> = writes
        .iter()
        .copied()
        .filter(|e| e.outcome == Outcome::Ok)
        .collect();
    let done = PrefixMax::new(
        accepted
            .iter()
            .filter_map(|e| completed_with_token(e))
            .collect(),
    );
    let mut stale_writes_accepted = 0;
    for w in &accepted {
        let Some(token) = w.token else { continue };
        if let Some((highest, _)) = done.before(w.invoked)
            && token < highest
        {
            stale_writes_accepted += 1;
            list.push(Violation::StaleWriteAccepted {
                process: w.process.clone(),
                token,
                highest_before: highest,
                at: w.invoked,
            });
        }
    }

    let mut processes: Vec<&str> = events.iter().map(|e| e.process.as_str()).collect();
    processes.sort_unstable();
    processes.dedup();
    let summary = Summary {
        operations: events.len(),
        processes: processes.len(),
        terms: terms.len(),
        overlaps,
        token_violations,
        stale_writes_rejected,
        stale_writes_accepted,
    };
    if list.is_empty() {
        Ok(summary)
    } else {
        Err(Violations {
            summary,
            list,
            origin,
        })
    }
}
