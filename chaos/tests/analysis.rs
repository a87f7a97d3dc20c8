//! The run analysis on hand-built records: which overlaps are violations,
//! which are excused (a SIGSTOPped holder whose late writes were all fenced
//! off), and the leaderless-gap bound.

use std::collections::HashMap;
use std::time::Duration;

use leader::FencingToken;
use leader_chaos::analysis::{RunRecord, Timing, analyse, feed};
use leader_chaos::clock::{Clock, mono_ns};
use leader_chaos::faults::{Fault, FaultKind};
use leader_chaos::log::Call;
use leader_chaos::protocol::{CallOutcome, StoreOp};
use leader_testkit::history::{Event, History, Op, Outcome};

const MS: u64 = 1_000_000;

fn timing() -> Timing {
    Timing {
        lease: Duration::from_secs(2),
        renewal: Duration::from_millis(500),
        validity: Duration::from_millis(1980),
        retry: Duration::from_millis(500),
        jitter: 0.2,
        slack: Duration::from_millis(1500),
    }
}

fn acquire(holder: &str, invoked: u64, completed: u64, token: u64) -> Call {
    Call {
        holder: holder.to_owned(),
        op: StoreOp::Acquire,
        invoked,
        completed: Some(completed),
        outcome: CallOutcome::Ok,
        token: Some(token),
    }
}

fn record(calls: Vec<Call>, end: u64) -> RunRecord {
    RunRecord {
        calls,
        moments: Vec::new(),
        exits: Vec::new(),
        killed: HashMap::new(),
        paused: Vec::new(),
        faults: Vec::new(),
        end,
        writes: 0,
        stalls: Vec::new(),
    }
}

fn write(history: &History, clock: &Clock, holder: &str, at: u64, token: u64, accepted: bool) {
    let at = clock.instant(at);
    let outcome = if accepted { Outcome::Ok } else { Outcome::Fail };
    history.record(Event::new(
        holder,
        Op::FencedWrite,
        at,
        at,
        outcome,
        Some(FencingToken(token)),
    ));
}

/// `a` completes an acquire at +3 s although it was sent at +0 (it was
/// stopped in between); `b` acquired at +2.1 s: the checker sees an overlap.
fn paused_acquire(t0: u64) -> RunRecord {
    record(
        vec![
            acquire("a", t0, t0 + 3000 * MS, 10),
            acquire("b", t0 + 2050 * MS, t0 + 2100 * MS, 11),
        ],
        t0 + 6000 * MS,
    )
}

#[test]
fn overlapping_terms_without_a_pause_are_a_violation() {
    let t0 = mono_ns();
    let clock = Clock::new();
    let history = History::new();
    let rec = record(
        vec![
            acquire("a", t0, t0 + 10 * MS, 10),
            acquire("b", t0 + 500 * MS, t0 + 510 * MS, 11),
        ],
        t0 + 5000 * MS,
    );
    feed(&history, &clock, &rec);
    let result = analyse(&history, &clock, &rec, &timing());
    assert_eq!(result.summary.overlaps, 1);
    assert!(result.excused.is_empty());
    assert!(!result.passed(), "{result}");
}

#[test]
fn a_paused_holders_overlap_is_excused_when_its_late_writes_were_fenced_off() {
    let t0 = mono_ns();
    let clock = Clock::new();
    let history = History::new();
    let mut rec = paused_acquire(t0);
    rec.paused
        .push(("a".to_owned(), t0 + 5 * MS, t0 + 2990 * MS));
    write(&history, &clock, "b", t0 + 2200 * MS, 11, true);
    write(&history, &clock, "a", t0 + 3001 * MS, 10, false);
    feed(&history, &clock, &rec);
    let result = analyse(&history, &clock, &rec, &timing());
    assert_eq!(result.summary.overlaps, 1);
    assert_eq!(result.excused.len(), 1);
    assert!(result.passed(), "{result}");
}

#[test]
fn a_paused_holders_overlap_is_a_violation_when_a_late_write_got_through() {
    let t0 = mono_ns();
    let clock = Clock::new();
    let history = History::new();
    let mut rec = paused_acquire(t0);
    rec.paused
        .push(("a".to_owned(), t0 + 5 * MS, t0 + 2990 * MS));
    // The new leader has not written yet: the old one's write is accepted.
    write(&history, &clock, "a", t0 + 3001 * MS, 10, true);
    feed(&history, &clock, &rec);
    let result = analyse(&history, &clock, &rec, &timing());
    assert_eq!(result.summary.overlaps, 1);
    assert!(result.excused.is_empty());
    assert!(!result.passed(), "{result}");
}

#[test]
fn the_same_overlap_without_a_recorded_pause_is_a_violation() {
    let t0 = mono_ns();
    let clock = Clock::new();
    let history = History::new();
    let rec = paused_acquire(t0);
    write(&history, &clock, "a", t0 + 3001 * MS, 10, false);
    feed(&history, &clock, &rec);
    let result = analyse(&history, &clock, &rec, &timing());
    assert!(!result.passed(), "{result}");
}

fn kill_then_takeover(takeover_after: u64) -> (RunRecord, u64) {
    let t0 = mono_ns();
    let kill = t0 + 1000 * MS;
    let mut rec = record(
        vec![
            acquire("a", t0, t0 + 10 * MS, 10),
            acquire(
                "b",
                kill + takeover_after - 10 * MS,
                kill + takeover_after,
                11,
            ),
        ],
        kill + takeover_after + 3000 * MS,
    );
    rec.killed.insert("a".to_owned(), kill);
    rec.faults.push(Fault {
        kind: FaultKind::KillLeader,
        target: "a".to_owned(),
        start: kill,
        healed: kill,
        detail: String::new(),
    });
    (rec, t0)
}

#[test]
fn a_takeover_within_lease_and_retry_passes_and_is_measured() {
    let (rec, _) = kill_then_takeover(2300 * MS);
    let clock = Clock::new();
    let history = History::new();
    feed(&history, &clock, &rec);
    let result = analyse(&history, &clock, &rec, &timing());
    assert!(result.passed(), "{result}");
    let gap = result.gaps[0].leaderless;
    assert!(
        gap >= Duration::from_millis(2290) && gap <= Duration::from_millis(2310),
        "the gap runs from the kill to the takeover: {gap:?}"
    );
}

#[test]
fn a_takeover_later_than_the_bound_is_a_violation() {
    let bound = timing().gap_bound(&Fault {
        kind: FaultKind::KillLeader,
        target: String::new(),
        start: 0,
        healed: 0,
        detail: String::new(),
    });
    let late = u64::try_from((bound + Duration::from_millis(200)).as_nanos()).expect("fits");
    let (rec, _) = kill_then_takeover(late);
    let clock = Clock::new();
    let history = History::new();
    feed(&history, &clock, &rec);
    let result = analyse(&history, &clock, &rec, &timing());
    assert!(!result.passed(), "{result}");
}

#[test]
fn a_run_without_any_leader_fails() {
    let t0 = mono_ns();
    let clock = Clock::new();
    let history = History::new();
    let rec = record(Vec::new(), t0 + 5000 * MS);
    feed(&history, &clock, &rec);
    let result = analyse(&history, &clock, &rec, &timing());
    assert!(!result.passed(), "{result}");
}
