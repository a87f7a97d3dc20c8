//! The checker detects each kind of violation in hand-built histories and
//! passes good ones.

use std::sync::Arc;
use std::time::Duration;

use leader_core::{Acquire, FencingToken, HolderId, LeaseKey, LeaseStore, MemoryStore};
use leader_testkit::history::{
    CheckOptions, Event, FencedResource, History, Op, Outcome, Recording, Violation,
};
use leader_testkit::wrap::Wrapped;
use tokio::time::Instant;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// A history builder with times in milliseconds from one origin.
struct Build {
    history: History,
    t0: Instant,
}

impl Build {
    fn new() -> Self {
        let history = History::new();
        let t0 = history.origin();
        Build { history, t0 }
    }
    fn op(
        &self,
        p: &str,
        op: Op,
        from: u64,
        to: u64,
        outcome: Outcome,
        token: Option<u64>,
    ) -> &Self {
        self.history.record(Event::new(
            p,
            op,
            self.t0 + ms(from),
            self.t0 + ms(to),
            outcome,
            token.map(FencingToken),
        ));
        self
    }
    fn acquire(&self, p: &str, from: u64, to: u64, token: u64) -> &Self {
        self.op(p, Op::Acquire, from, to, Outcome::Ok, Some(token))
    }
    fn release(&self, p: &str, at: u64, token: u64) -> &Self {
        self.op(p, Op::Release, at, at + 1, Outcome::Ok, Some(token))
    }
    fn step_down(&self, p: &str, at: u64, token: Option<u64>) -> &Self {
        self.op(p, Op::StepDown, at, at, Outcome::Ok, token)
    }
    fn write(&self, p: &str, at: u64, token: u64, accepted: bool) -> &Self {
        let outcome = if accepted { Outcome::Ok } else { Outcome::Fail };
        self.op(p, Op::FencedWrite, at, at, outcome, Some(token))
    }
}

#[tokio::test]
async fn a_clean_handover_passes_with_counts() {
    let b = Build::new();
    b.acquire("a", 0, 10, 1)
        .op("a", Op::Renew, 40, 41, Outcome::Ok, Some(1))
        .write("a", 50, 1, true)
        .release("a", 100, 1)
        .op("b", Op::Acquire, 5, 6, Outcome::Fail, None)
        .acquire("b", 102, 110, 2)
        .write("b", 120, 2, true)
        .write("a", 130, 1, false)
        .step_down("b", 200, Some(2));
    let summary = b.history.check().expect("a clean history");
    assert_eq!(summary.operations, 9);
    assert_eq!(summary.processes, 2);
    assert_eq!(summary.terms, 2);
    assert_eq!(summary.overlaps, 0);
    assert_eq!(summary.stale_writes_rejected, 1);
    assert_eq!(summary.stale_writes_accepted, 0);
    let line = summary.to_string();
    assert!(!line.contains('\n'), "one line: {line}");
    for needle in [
        "9 operations",
        "2 terms",
        "0 overlaps",
        "1 stale writes rejected",
        "0 stale writes accepted",
    ] {
        assert!(line.contains(needle), "{line:?} lacks {needle:?}");
    }
}

#[tokio::test]
async fn an_unended_term_overlaps_the_next_leader() {
    let b = Build::new();
    b.acquire("a", 0, 10, 1).acquire("b", 40, 50, 2);
    let err = b.history.check().expect_err("a never stepped down");
    assert_eq!(err.summary.overlaps, 1);
    match &err.list[..] {
        [Violation::Overlap { first, second }] => {
            assert_eq!(
                (first.process.as_str(), second.process.as_str()),
                ("a", "b")
            );
            assert_eq!(first.end, None, "a's term is open");
        }
        other => panic!("expected one overlap, got {other:?}"),
    }
    let text = err.to_string();
    assert!(
        text.contains("overlap: a token 1 [10.0ms .. open] and b token 2 [50.0ms .. open]"),
        "{text}"
    );
}

#[tokio::test]
async fn the_validity_bound_ends_a_silent_term() {
    let b = Build::new();
    b.acquire("a", 0, 10, 1)
        .op("a", Op::Renew, 20, 21, Outcome::Ok, Some(1))
        .op("a", Op::Renew, 30, 35, Outcome::Fail, Some(1))
        .acquire("b", 60, 70, 2);
    // Valid until the last successful renewal's send (20) + 45 = 65 < 70.
    b.history
        .check_with(&CheckOptions::with_validity(ms(45)))
        .expect("a's term ended at 65ms");
    // A failed renewal does not extend it: 20 + 55 = 75 > 70.
    let err = b
        .history
        .check_with(&CheckOptions::with_validity(ms(55)))
        .expect_err("overlap");
    assert_eq!(err.summary.overlaps, 1);
}

#[tokio::test]
async fn step_downs_loss_signals_and_releases_end_terms() {
    for (end_op, token) in [
        (Op::StepDown, Some(1)),
        (Op::StepDown, None),
        (Op::LossSignal, Some(1)),
        (Op::Release, Some(1)),
    ] {
        let b = Build::new();
        b.acquire("a", 0, 10, 1)
            .op("a", end_op, 40, 40, Outcome::Ok, token)
            .acquire("b", 45, 50, 2);
        b.history
            .check()
            .unwrap_or_else(|e| panic!("{end_op:?} ends the term: {e}"));

        let late = Build::new();
        late.acquire("a", 0, 10, 1)
            .op("a", end_op, 60, 60, Outcome::Ok, token)
            .acquire("b", 45, 50, 2);
        let err = late.history.check().expect_err("ended after b started");
        assert_eq!(err.summary.overlaps, 1, "{end_op:?}");
    }
    // A step-down for another term does not end this one.
    let b = Build::new();
    b.acquire("a", 0, 10, 2)
        .step_down("a", 20, Some(1))
        .acquire("b", 45, 50, 3);
    assert_eq!(
        b.history
            .check()
            .expect_err("a still leads")
            .summary
            .overlaps,
        1
    );
}

#[tokio::test]
async fn the_same_instance_may_follow_itself() {
    let b = Build::new();
    b.acquire("a", 0, 10, 1)
        .acquire("a", 20, 30, 2)
        .release("a", 40, 2)
        .acquire("b", 50, 60, 3);
    let summary = b.history.check().expect("a new term of the same instance");
    assert_eq!(summary.terms, 3);
}

#[tokio::test]
async fn a_lower_token_after_a_completed_acquisition_is_a_violation() {
    let b = Build::new();
    b.acquire("a", 0, 10, 5)
        .release("a", 15, 5)
        .acquire("b", 20, 30, 3);
    let err = b.history.check().expect_err("token went down");
    assert_eq!(err.summary.token_violations, 1);
    assert!(
        matches!(&err.list[..], [Violation::TokenOrder { earlier, later, .. }]
        if earlier.1 == FencingToken(5) && later.1 == FencingToken(3))
    );
    assert!(
        err.to_string().contains("token order: a got token 5"),
        "{err}"
    );

    // Concurrent acquisitions have no real-time order to respect.
    let ok = Build::new();
    ok.acquire("a", 0, 10, 5)
        .release("b", 9, 3)
        .acquire("b", 5, 8, 3);
    let summary = ok
        .history
        .check()
        .expect("concurrent calls may be ordered either way");
    assert_eq!(summary.token_violations, 0);
}

#[tokio::test]
async fn a_repeated_token_is_a_violation() {
    let b = Build::new();
    b.acquire("a", 0, 10, 1)
        .release("a", 15, 1)
        .acquire("b", 20, 30, 1);
    let err = b.history.check().expect_err("token repeated");
    assert!(
        err.list.iter().any(
            |v| matches!(v, Violation::TokenRepeated { token, .. } if *token == FencingToken(1))
        )
    );
}

#[tokio::test]
async fn an_accepted_stale_write_is_a_violation() {
    let b = Build::new();
    b.acquire("a", 0, 10, 1)
        .release("a", 20, 1)
        .acquire("b", 30, 40, 2)
        .write("b", 50, 2, true)
        .write("a", 60, 1, true);
    let err = b.history.check().expect_err("stale write accepted");
    assert_eq!(err.summary.stale_writes_accepted, 1);
    assert!(
        matches!(&err.list[..], [Violation::StaleWriteAccepted { process, token, highest_before, .. }]
        if process == "a" && *token == FencingToken(1) && *highest_before == FencingToken(2))
    );
}

#[tokio::test]
#[should_panic(expected = "overlap")]
async fn assert_ok_fails_the_test_on_a_violation() {
    let b = Build::new();
    b.acquire("a", 0, 10, 1).acquire("b", 40, 50, 2);
    b.history.assert_ok();
}

#[tokio::test]
async fn fenced_resource_accepts_only_tokens_at_least_the_highest_seen() {
    let history = History::new();
    let resource = FencedResource::recording(history.clone());
    assert!(resource.write("a", FencingToken(1)));
    assert!(
        resource.write("a", FencingToken(1)),
        "the same term writes again"
    );
    assert!(resource.write("b", FencingToken(2)));
    assert!(!resource.write("a", FencingToken(1)), "stale");
    assert!(resource.write("c", FencingToken(7)));
    assert_eq!(resource.highest(), Some(FencingToken(7)));
    assert_eq!((resource.accepted(), resource.rejected()), (4, 1));
    let writes: Vec<(String, Outcome)> = history
        .events()
        .into_iter()
        .map(|e| (e.process, e.outcome))
        .collect();
    assert_eq!(writes[3], ("a".to_owned(), Outcome::Fail));
    let summary = history
        .check()
        .expect("the resource let no stale write through");
    assert_eq!(summary.stale_writes_rejected, 1);
}

#[tokio::test(start_paused = true)]
async fn recording_store_records_acquire_renew_release_with_tokens() {
    let history = History::new();
    let store = Wrapped::new(
        Arc::new(MemoryStore::new()),
        Recording::new(history.clone()),
    );
    let key = LeaseKey::new("t:", "r").expect("key");
    let (a, b) = (
        HolderId::new("a").expect("a"),
        HolderId::new("b").expect("b"),
    );
    let Acquire::Acquired(lease) = store.acquire(&key, &a, ms(1000)).await.expect("acquire") else {
        panic!("free key");
    };
    assert!(matches!(
        store.acquire(&key, &b, ms(1000)).await,
        Ok(Acquire::Held(_))
    ));
    tokio::time::advance(ms(10)).await;
    store.renew(&lease).await.expect("renew");
    assert!(store.release(&lease).await.expect("release"));
    let got: Vec<(String, Op, Outcome, Option<FencingToken>)> = history
        .events()
        .into_iter()
        .map(|e| (e.process, e.op, e.outcome, e.token))
        .collect();
    let t = Some(lease.token);
    assert_eq!(
        got,
        vec![
            ("a".into(), Op::Acquire, Outcome::Ok, t),
            ("b".into(), Op::Acquire, Outcome::Fail, None),
            ("a".into(), Op::Renew, Outcome::Ok, t),
            ("a".into(), Op::Release, Outcome::Ok, t),
        ]
    );
    let summary = history.check().expect("one clean term");
    assert_eq!(summary.terms, 1);
}

#[tokio::test]
async fn an_uncompleted_operation_stays_indeterminate_and_starts_no_term() {
    let history = History::new();
    drop(history.invoke("a", Op::Acquire));
    let events = history.events();
    assert_eq!(events[0].outcome, Outcome::Indeterminate);
    assert_eq!(events[0].completed, None);
    assert_eq!(history.check().expect("nothing believed").terms, 0);
}

#[tokio::test]
async fn the_timeline_shows_each_event_on_one_line() {
    let b = Build::new();
    b.acquire("a", 0, 10, 1).step_down("a", 20, Some(1));
    drop(b.history.invoke("b", Op::Renew));
    let text = b.history.timeline(10);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "+0.0ms..+10.0ms a Acquire Ok token 1");
    assert_eq!(lines[1], "+20.0ms..+20.0ms a StepDown Ok token 1");
    assert!(
        lines[2].ends_with("..never b Renew Indeterminate"),
        "{}",
        lines[2]
    );
    assert!(
        b.history
            .timeline(1)
            .starts_with("(2 earlier events not shown)")
    );
}

/// The checker's sorted sweeps agree with the plain pairwise definitions on
/// random histories (acquisitions with random tokens and overlapping calls,
/// accepted and rejected fenced writes).
#[tokio::test]
async fn the_fast_checker_agrees_with_the_pairwise_definitions() {
    use rand::Rng;
    let mut rng = rand::rng();
    for _ in 0..300 {
        let b = Build::new();
        let n = rng.random_range(1..12);
        let mut acquires = Vec::new();
        let mut writes = Vec::new();
        for i in 0..n {
            let p = ["a", "b", "c"][rng.random_range(0..3)];
            let from = rng.random_range(0..100);
            let to = from + rng.random_range(0..20);
            if rng.random_bool(0.5) {
                let token = rng.random_range(1..8);
                b.acquire(p, from, to, token);
                // End every term at once: only token order is under test.
                b.step_down(p, to, Some(token));
                acquires.push((from, to, token, i));
            } else {
                let token = rng.random_range(1..8);
                let ok = rng.random_bool(0.7);
                b.write(p, from, token, ok);
                if ok {
                    writes.push((from, token));
                }
            }
        }
        // Pairwise: a later call (invoked after another completed) with a
        // strictly lower token, or two acquisitions with the same token.
        let order = acquires
            .iter()
            .filter(|y| acquires.iter().any(|x| x.1 < y.0 && y.2 < x.2))
            .count();
        let repeats = acquires
            .iter()
            .filter(|y| acquires.iter().any(|x| x.3 < y.3 && x.2 == y.2))
            .count();
        let stale = writes
            .iter()
            .filter(|w| writes.iter().any(|o| o.0 < w.0 && w.1 < o.1))
            .count();
        let summary = match b.history.check() {
            Ok(s) => s,
            Err(v) => v.summary,
        };
        assert_eq!(
            summary.token_violations,
            order + repeats,
            "{}",
            b.history.timeline(50)
        );
        assert_eq!(
            summary.stale_writes_accepted,
            stale,
            "{}",
            b.history.timeline(50)
        );
    }
}
