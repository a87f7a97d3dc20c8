//! Turning a run's record into the testkit history, checking it, and
//! measuring leaderless gaps.
//!
//! # Overlaps under a paused elector
//!
//! The checker derives believed terms from acquisitions, renewals,
//! step-downs and loss signals, each term capped at the last successful
//! acquire or renew *send* plus `lease * (1 - drift)` (what `is_leader()`
//! guarantees). A process that is SIGSTOPped while its acquire is in flight
//! reports the acquire's completion only after SIGCONT, seconds later; the
//! term then looks like it starts after the cap (the elector itself never
//! trusts it: its validity point is long past), and the checker may pair it
//! with the new leader's term as an overlap. Such an overlap is *excused*
//! only if the paused process was stopped around that term and every fenced
//! write it made with that term's token after the other term began was
//! rejected by the resource; anything else is a violation. Under store and
//! network faults no overlap is excused.

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

use leader::FencingToken;
use leader_testkit::history::{
    CheckOptions, Event, History, Op, Outcome, Summary, Term, Violation,
};

use crate::clock::Clock;
use crate::faults::{Fault, FaultKind};
use crate::log::{Call, Exit, MomentRecord};
use crate::protocol::{CallOutcome, Moment, StoreOp};

/// The timing a run's electors use, for the checker and the bounds.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// Lease duration.
    pub lease: Duration,
    /// Renewal interval (= retry period = request timeout here).
    pub renewal: Duration,
    /// `lease * (1 - clock_drift)`: how long a term is trusted after the
    /// last successful acquire or renew was sent.
    pub validity: Duration,
    /// Follower retry period.
    pub retry: Duration,
    /// Retry jitter fraction.
    pub jitter: f64,
    /// Scheduling allowance of the loaded machine, added to gap bounds only
    /// (never to a safety check).
    pub slack: Duration,
}

impl Timing {
    /// The longest leaderless time allowed around a fault: the fault's own
    /// length, one lease (the old lease running out), and two retry periods
    /// with jitter (the follower's retry after it; Postgres's lock delay
    /// costs one more poll after a session ended without release), plus the
    /// slack.
    pub fn gap_bound(&self, fault: &Fault) -> Duration {
        fault.length() + self.lease + self.retry.mul_f64(2.0 * (1.0 + self.jitter)) + self.slack
    }
}

/// Everything the orchestrator hands to the analysis.
#[derive(Debug)]
pub struct RunRecord {
    /// Store calls.
    pub calls: Vec<Call>,
    /// Step-downs and loss signals.
    pub moments: Vec<MomentRecord>,
    /// Process exits.
    pub exits: Vec<Exit>,
    /// Holders the orchestrator killed, with when (ns).
    pub killed: HashMap<String, u64>,
    /// SIGSTOP windows of electors: holder, stop, cont (ns).
    pub paused: Vec<(String, u64, u64)>,
    /// The faults, in order.
    pub faults: Vec<Fault>,
    /// When the fault phase ended and teardown began (ns).
    pub end: u64,
    /// Fenced writes answered.
    pub writes: u64,
    /// When (ns) the orchestrator waited its whole bound for a leader in
    /// vain before a fault.
    pub stalls: Vec<u64>,
}

/// One fault's effect on leadership.
#[derive(Debug, Clone)]
pub struct FaultGap {
    /// The fault.
    pub fault: Fault,
    /// The longest leaderless time between the fault's start and the next
    /// fault (or the end).
    pub leaderless: Duration,
    /// From the heal until a leader was in place (zero if one was).
    pub after_heal: Option<Duration>,
    /// The bound `leaderless` must stay within.
    pub bound: Duration,
}

/// The result of a run.
#[derive(Debug)]
pub struct Analysis {
    /// The checker's counts.
    pub summary: Summary,
    /// Overlaps excused under an elector pause (see the module docs).
    pub excused: Vec<String>,
    /// Everything that broke a promise.
    pub violations: Vec<String>,
    /// Per fault.
    pub gaps: Vec<FaultGap>,
    /// Fenced writes answered.
    pub writes: u64,
    /// The checker's one-line summary.
    pub checker_line: String,
}

impl Analysis {
    /// Whether the run kept every promise.
    pub fn passed(&self) -> bool {
        self.violations.is_empty()
    }
}

fn op(op: StoreOp) -> Op {
    match op {
        StoreOp::Acquire => Op::Acquire,
        StoreOp::Renew => Op::Renew,
        StoreOp::Release => Op::Release,
    }
}

fn outcome(o: CallOutcome) -> Outcome {
    match o {
        CallOutcome::Ok => Outcome::Ok,
        CallOutcome::Fail => Outcome::Fail,
        CallOutcome::Indeterminate => Outcome::Indeterminate,
    }
}

/// Adds the electors' calls and moments to `history` (which already holds
/// the fenced writes).
pub fn feed(history: &History, clock: &Clock, record: &RunRecord) {
    for c in &record.calls {
        let invoked = clock.instant(c.invoked);
        // A call that never returned stays indeterminate; it cannot start a
        // believed term, so its completion instant does not matter.
        let completed = c.completed.map_or(invoked, |t| clock.instant(t));
        history.record(Event::new(
            c.holder.clone(),
            op(c.op),
            invoked,
            completed,
            outcome(c.outcome),
            c.token.map(FencingToken),
        ));
    }
    for m in &record.moments {
        let at = clock.instant(m.at);
        let what = match m.what {
            Moment::StepDown => Op::StepDown,
            Moment::LossSignal => Op::LossSignal,
        };
        history.record(Event::new(
            m.holder.clone(),
            what,
            at,
            at,
            Outcome::Ok,
            m.token.map(FencingToken),
        ));
    }
}

/// Believed intervals (ns) for gap measurement: like the checker's terms,
/// but also ended by the process's death, and dropped when empty.
fn intervals(record: &RunRecord, validity: Duration) -> Vec<(u64, u64)> {
    let validity = u64::try_from(validity.as_nanos()).unwrap_or(u64::MAX);
    let mut out = Vec::new();
    for a in &record.calls {
        let (StoreOp::Acquire, CallOutcome::Ok, Some(token), Some(start)) =
            (a.op, a.outcome, a.token, a.completed)
        else {
            continue;
        };
        let mut end = a.invoked.saturating_add(validity);
        let mine = record.calls.iter().filter(|c| c.holder == a.holder);
        for c in mine {
            match (c.op, c.outcome) {
                // Only renewals that returned before the term ended count.
                (StoreOp::Renew, CallOutcome::Ok)
                    if c.token == Some(token) && c.completed.is_some_and(|done| done < end) =>
                {
                    end = end.max(c.invoked.saturating_add(validity));
                }
                (StoreOp::Release, _) if c.token == Some(token) && c.invoked >= start => {
                    end = end.min(c.invoked);
                }
                (StoreOp::Acquire, CallOutcome::Ok) if c.token != Some(token) => {
                    if let Some(done) = c.completed.filter(|d| *d >= start) {
                        end = end.min(done);
                    }
                }
                _ => {}
            }
        }
        for m in record.moments.iter().filter(|m| m.holder == a.holder) {
            if m.at >= start && m.token.is_none_or(|t| t == token) {
                end = end.min(m.at);
            }
        }
        if let Some(killed) = record.killed.get(&a.holder).filter(|k| **k >= start) {
            end = end.min(*killed);
        }
        if let Some(exit) = record
            .exits
            .iter()
            .find(|e| e.holder == a.holder && e.at >= start)
        {
            end = end.min(exit.at);
        }
        end = end.min(record.end);
        if end > start {
            out.push((start, end));
        }
    }
    out.sort_unstable();
    out
}

/// Merged leader-present intervals.
fn merged(mut spans: Vec<(u64, u64)>) -> Vec<(u64, u64)> {
    spans.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::new();
    for (s, e) in spans {
        match out.last_mut() {
            Some(last) if s <= last.1 => last.1 = last.1.max(e),
            _ => out.push((s, e)),
        }
    }
    out
}

fn gaps(record: &RunRecord, timing: &Timing) -> Vec<FaultGap> {
    let present = merged(intervals(record, timing.validity));
    let mut out = Vec::new();
    for (i, fault) in record.faults.iter().enumerate() {
        let window_end = record
            .faults
            .get(i + 1)
            .map_or(record.end, |next| next.start)
            .max(fault.healed);
        // Leaderless pieces of [fault.start, window_end].
        let mut cursor = fault.start;
        let mut longest = 0u64;
        for &(s, e) in &present {
            if e <= cursor {
                continue;
            }
            if s >= window_end {
                break;
            }
            if s > cursor {
                longest = longest.max(s - cursor);
            }
            cursor = cursor.max(e);
        }
        if cursor < window_end {
            longest = longest.max(window_end - cursor);
        }
        let after_heal = present
            .iter()
            .find(|(_, e)| *e > fault.healed)
            .map(|&(s, _)| Duration::from_nanos(s.saturating_sub(fault.healed)))
            .filter(|d| {
                fault.healed + u64::try_from(d.as_nanos()).unwrap_or(u64::MAX) < window_end
            });
        out.push(FaultGap {
            fault: fault.clone(),
            leaderless: Duration::from_nanos(longest),
            after_heal,
            bound: timing.gap_bound(fault),
        });
    }
    out
}

/// Whether an overlap is excused: one side's process was SIGSTOPped around
/// its term and every fenced write it made with that token after the other
/// term began was rejected.
fn excused(
    history_events: &[Event],
    clock: &Clock,
    record: &RunRecord,
    timing: &Timing,
    first: &Term,
    second: &Term,
) -> bool {
    let lease = u64::try_from(timing.lease.as_nanos()).unwrap_or(u64::MAX);
    [(first, second), (second, first)]
        .iter()
        .any(|(paused, other)| {
            let start = clock.ns(paused.start);
            let end = paused.end.map_or(record.end, |e| clock.ns(e));
            let was_paused = record.paused.iter().any(|(h, stop, cont)| {
                *h == paused.process && *stop <= end && start.saturating_sub(lease) <= *cont
            });
            was_paused
                && history_events
                    .iter()
                    .filter(|e| {
                        e.op == Op::FencedWrite
                            && e.process == paused.process
                            && e.token == Some(paused.token)
                            && e.invoked >= other.start
                    })
                    .all(|e| e.outcome == Outcome::Fail)
        })
}

/// Checks the run: the history checker, the overlap rule above, gap bounds
/// and unexpected process exits.
pub fn analyse(history: &History, clock: &Clock, record: &RunRecord, timing: &Timing) -> Analysis {
    let options = CheckOptions::with_validity(timing.validity);
    let (summary, list, origin) = match history.check_with(&options) {
        Ok(summary) => (summary, Vec::new(), history.origin()),
        Err(v) => (v.summary, v.list, v.origin),
    };
    let checker_line = summary.to_string();
    let events = history.events();
    let mut excused_list = Vec::new();
    let mut violations = Vec::new();
    for v in &list {
        match v {
            Violation::Overlap { first, second }
                if excused(&events, clock, record, timing, first, second) =>
            {
                excused_list.push(v.describe(origin));
            }
            _ => violations.push(v.describe(origin)),
        }
    }
    let gaps = gaps(record, timing);
    for g in &gaps {
        if g.leaderless > g.bound {
            violations.push(format!(
                "no leader for {:.2} s around {} of {} (bound {:.2} s)",
                g.leaderless.as_secs_f64(),
                g.fault.kind,
                g.fault.target,
                g.bound.as_secs_f64()
            ));
        }
    }
    if summary.terms == 0 {
        violations.push("no elector ever became leader".to_owned());
    }
    for stall in &record.stalls {
        violations.push(format!(
            "no leader within the wait bound at {:.2} s",
            Duration::from_nanos(clock.ns(origin).max(*stall) - clock.ns(origin)).as_secs_f64()
        ));
    }
    for exit in &record.exits {
        if !record.killed.contains_key(&exit.holder) && exit.at < record.end {
            violations.push(format!(
                "elector {} exited by itself ({})",
                exit.holder, exit.status
            ));
        }
    }
    Analysis {
        summary,
        excused: excused_list,
        violations,
        gaps,
        writes: record.writes,
        checker_line,
    }
}

impl fmt::Display for Analysis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut per_kind: Vec<(FaultKind, usize)> = FaultKind::ALL
            .iter()
            .map(|k| (*k, self.gaps.iter().filter(|g| g.fault.kind == *k).count()))
            .filter(|(_, n)| *n > 0)
            .collect();
        per_kind.sort();
        let kinds: Vec<String> = per_kind.iter().map(|(k, n)| format!("{k} {n}")).collect();
        writeln!(
            f,
            "faults injected: {} ({})",
            self.gaps.len(),
            kinds.join(", ")
        )?;
        writeln!(
            f,
            "leadership terms: {}; fenced writes: {} ({} stale rejected, {} stale accepted)",
            self.summary.terms,
            self.writes,
            self.summary.stale_writes_rejected,
            self.summary.stale_writes_accepted
        )?;
        writeln!(
            f,
            "overlapping believed terms: {} ({} excused: paused holder, every late write fenced off)",
            self.summary.overlaps,
            self.excused.len()
        )?;
        for e in &self.excused {
            writeln!(f, "  excused: {e}")?;
        }
        if let Some(worst) = self
            .gaps
            .iter()
            .max_by(|a, b| a.leaderless.cmp(&b.leaderless))
        {
            writeln!(
                f,
                "worst leaderless gap: {:.2} s around {} (fault {:.2} s, bound {:.2} s)",
                worst.leaderless.as_secs_f64(),
                worst.fault.kind,
                worst.fault.length().as_secs_f64(),
                worst.bound.as_secs_f64()
            )?;
        }
        for kind in FaultKind::ALL {
            let of_kind: Vec<&FaultGap> =
                self.gaps.iter().filter(|g| g.fault.kind == kind).collect();
            if of_kind.is_empty() {
                continue;
            }
            let worst = of_kind
                .iter()
                .map(|g| g.leaderless)
                .max()
                .unwrap_or_default();
            let worst_heal = of_kind
                .iter()
                .filter_map(|g| g.after_heal)
                .max()
                .unwrap_or_default();
            writeln!(
                f,
                "  {kind:<12} x{:<3} longest leaderless {:.2} s, longest after heal {:.2} s",
                of_kind.len(),
                worst.as_secs_f64(),
                worst_heal.as_secs_f64()
            )?;
        }
        if self.violations.is_empty() {
            write!(f, "RESULT: OK (0 violations)")
        } else {
            writeln!(f, "violations: {}", self.violations.len())?;
            for v in &self.violations {
                writeln!(f, "  - {v}")?;
            }
            write!(f, "RESULT: FAILED ({} violations)", self.violations.len())
        }
    }
}
