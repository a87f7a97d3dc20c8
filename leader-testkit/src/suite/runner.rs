//! The case registry, the runner and the test-generating macro.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use leader_core::{Capabilities, NotificationSupport};
use tokio::time::Instant;

use super::{
    CaseResult, Ctx, Fixture, abuse, election, faults, identity, lifecycle, locks, observe, resign,
    store, waiting,
};

/// Whether a case talks to the store directly or through electors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Level {
    /// `LeaseStore` calls.
    Store,
    /// Through `leader_core::Locks` (named locks).
    Lock,
    /// Through `leader_core::Elector`.
    Election,
}

/// What decides whether a case applies.
struct Env {
    caps: Capabilities,
    control: bool,
    pause: bool,
    links: bool,
    counts: bool,
}

type Applies = fn(&Env) -> Option<&'static str>;
type Run = for<'a> fn(&'a Ctx) -> BoxFuture<'a, CaseResult>;

struct CaseDef {
    name: &'static str,
    level: Level,
    /// `Some(reason)` when the case does not apply (capabilities, whether
    /// the fixture controls its server).
    applies: Applies,
    run: Run,
}

fn always(_: &Env) -> Option<&'static str> {
    None
}

fn needs_control(env: &Env) -> Option<&'static str> {
    (!env.control).then_some("the fixture cannot stop its server (external server or no control)")
}

fn needs_pause(env: &Env) -> Option<&'static str> {
    (!env.pause).then_some("the fixture cannot pause its server (no SIGSTOP control)")
}

fn needs_links(env: &Env) -> Option<&'static str> {
    (!env.links).then_some("the fixture has no linked clients (no fault proxy or link)")
}

fn needs_resource_counts(env: &Env) -> Option<&'static str> {
    (!env.counts).then_some(
        "the fixture counts no server-side resources (Fixture::counts_resources: connections, locks, leases)",
    )
}

fn needs_expiry(env: &Env) -> Option<&'static str> {
    (!env.caps.server_side_expiry).then_some(
        "the store has no server-side expiry (session-bound: see session_loss_frees_the_resource)",
    )
}

fn needs_session(env: &Env) -> Option<&'static str> {
    (!env.caps.session_bound)
        .then_some("the store is not session-bound (see expiry_frees_the_resource)")
}

fn needs_notifications(env: &Env) -> Option<&'static str> {
    (!env.caps.notifies())
        .then_some("the store declares no notifications (see watch_unsupported_is_typed)")
}

fn needs_no_notifications(env: &Env) -> Option<&'static str> {
    (env.caps.notifications != NotificationSupport::None)
        .then_some("the store declares notifications (see release_notifications_arrive)")
}

macro_rules! registry {
    (; $($module:ident :: $name:ident, $level:ident, $applies:ident;)*) => {
        const CASES: &[CaseDef] = &[
            $(CaseDef {
                name: stringify!($name),
                level: Level::$level,
                applies: $applies,
                run: |ctx| Box::pin($module::$name(ctx)),
            },)*
        ];
    };
}

// The one case list (suite/cases.rs) expanded into the registry.
crate::__conformance_case_list!(registry;);

/// The names of every case, in run order.
pub fn case_names() -> Vec<&'static str> {
    CASES.iter().map(|c| c.name).collect()
}

/// How a case ended.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CaseOutcome {
    /// It passed, in this much time (tokio time).
    Passed(Duration),
    /// It does not apply to this store, for this reason.
    NotApplicable(&'static str),
    /// It failed (or panicked, or exceeded its time bound).
    Failed(String),
}

/// One case's result.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct CaseReport {
    /// The case name.
    pub name: &'static str,
    /// Store or election level.
    pub level: Level,
    /// How it ended.
    pub outcome: CaseOutcome,
}

impl fmt::Display for CaseReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.outcome {
            CaseOutcome::Passed(d) => write!(f, "{}: ok ({:.2}s)", self.name, d.as_secs_f64()),
            CaseOutcome::NotApplicable(why) => write!(f, "{}: not applicable: {why}", self.name),
            CaseOutcome::Failed(msg) => write!(f, "{}: FAILED: {msg}", self.name),
        }
    }
}

/// Every case's result for one fixture.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct SuiteReport {
    /// The fixture's name.
    pub fixture: String,
    /// One report per case.
    pub cases: Vec<CaseReport>,
}

impl SuiteReport {
    /// The failed cases.
    pub fn failures(&self) -> Vec<&CaseReport> {
        self.cases
            .iter()
            .filter(|c| matches!(c.outcome, CaseOutcome::Failed(_)))
            .collect()
    }

    /// The names of the cases that did not apply.
    pub fn not_applicable(&self) -> Vec<&'static str> {
        self.cases
            .iter()
            .filter(|c| matches!(c.outcome, CaseOutcome::NotApplicable(_)))
            .map(|c| c.name)
            .collect()
    }

    /// One line: cases run (passed, failed by name) and not applicable (by
    /// name).
    pub fn summary(&self) -> String {
        summary_line(&self.fixture, &self.cases)
    }

    /// Panics listing every failed case, if any.
    ///
    /// # Panics
    ///
    /// When a case failed.
    #[track_caller]
    pub fn assert_passed(&self) {
        let failures = self.failures();
        if !failures.is_empty() {
            let list: Vec<String> = failures.iter().map(|c| format!("  {c}")).collect();
            panic!(
                "{} of {} conformance cases failed on {}:\n{}",
                failures.len(),
                self.cases.len(),
                self.fixture,
                list.join("\n")
            );
        }
    }

    /// Panics unless every case ran and passed except exactly the pinned
    /// `not_applicable` ones (see [`pinning_violation`]).
    ///
    /// # Panics
    ///
    /// When a case failed, a case outside the pinned set did not apply, a
    /// pinned case ran, or the pinned set names an unknown case.
    #[track_caller]
    pub fn assert_passed_with(&self, not_applicable: &[&str]) {
        let mut problems: Vec<String> = unknown_cases(not_applicable)
            .into_iter()
            .map(|n| format!("  the pinned not-applicable set names {n:?}, which is no case"))
            .collect();
        problems.extend(
            self.cases
                .iter()
                .filter_map(|c| pinning_violation(c, not_applicable))
                .map(|p| format!("  {p}")),
        );
        problems.extend(self.failures().iter().map(|c| format!("  {c}")));
        assert!(
            problems.is_empty(),
            "conformance on {}:\n{}",
            self.fixture,
            problems.join("\n")
        );
    }
}

impl fmt::Display for SuiteReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{}", self.summary())?;
        for c in &self.cases {
            writeln!(f, "  {c}")?;
        }
        Ok(())
    }
}

/// `conformance on redis: 38 run (37 passed, 1 failed: x), 2 not applicable: a, b`
fn summary_line(fixture: &str, cases: &[CaseReport]) -> String {
    let names = |want: fn(&CaseOutcome) -> bool| -> Vec<&str> {
        cases
            .iter()
            .filter(|c| want(&c.outcome))
            .map(|c| c.name)
            .collect()
    };
    let passed = names(|o| matches!(o, CaseOutcome::Passed(_)));
    let failed = names(|o| matches!(o, CaseOutcome::Failed(_)));
    let na = names(|o| matches!(o, CaseOutcome::NotApplicable(_)));
    let run = cases.len() - na.len();
    let failed = if failed.is_empty() {
        "0 failed".to_owned()
    } else {
        format!("{} failed: {}", failed.len(), failed.join(", "))
    };
    let na = if na.is_empty() {
        "0 not applicable".to_owned()
    } else {
        format!("{} not applicable: {}", na.len(), na.join(", "))
    };
    format!(
        "conformance on {fixture}: {run} run ({} passed, {failed}), {na}",
        passed.len()
    )
}

/// The names in `pinned` that are no case.
fn unknown_cases<'a>(pinned: &[&'a str]) -> Vec<&'a str> {
    let known = case_names();
    pinned
        .iter()
        .filter(|n| !known.contains(n))
        .copied()
        .collect()
}

/// Why `report` breaks the pinned not-applicable set, if it does: a case
/// that did not apply must be pinned (a store that wrongly lost a
/// capability, or a fixture that lost its server control, would otherwise
/// drop cases silently), and a pinned case must not run.
pub fn pinning_violation(report: &CaseReport, not_applicable: &[&str]) -> Option<String> {
    let pinned = not_applicable.contains(&report.name);
    match &report.outcome {
        CaseOutcome::NotApplicable(why) if !pinned => Some(format!(
            "{} did not apply ({why}) but is not in this store's pinned not-applicable set; \
             if the store really lost this ability, add it there",
            report.name
        )),
        CaseOutcome::Passed(_) | CaseOutcome::Failed(_) if pinned => Some(format!(
            "{} is pinned as not applicable but it applies and ran; remove it from the pinned set",
            report.name
        )),
        _ => None,
    }
}

/// The longest a case may take: generous, derived from the profile.
fn case_bound(ctx: &Ctx) -> Duration {
    let p = ctx.profile();
    p.lease * 20 + p.slack * 10 + Duration::from_secs(30)
}

/// Runs the case called `name` on `fixture`: checks it applies, builds a
/// [`Ctx`], runs it in its own task (so a panic is reported, not
/// propagated) under a time bound, and prints one line.
pub async fn run_case(fixture: Arc<dyn Fixture>, name: &str) -> CaseReport {
    let Some(def) = CASES.iter().find(|c| c.name == name) else {
        return CaseReport {
            name: "unknown",
            level: Level::Store,
            outcome: CaseOutcome::Failed(format!("no conformance case is called {name:?}")),
        };
    };
    let report = |outcome| CaseReport {
        name: def.name,
        level: def.level,
        outcome,
    };
    let ctx = match Ctx::new(fixture.clone(), def.name).await {
        Ok(ctx) => ctx,
        Err(e) => return report(CaseOutcome::Failed(format!("setting up: {e}"))),
    };
    let env = Env {
        caps: ctx.capabilities(),
        control: ctx.control().is_some(),
        pause: ctx.control().is_some_and(|c| c.can_pause()),
        links: ctx.links(),
        counts: fixture.counts_resources(),
    };
    if let Some(reason) = (def.applies)(&env) {
        let r = report(CaseOutcome::NotApplicable(reason));
        println!("[{}] {r}", fixture.name());
        return r;
    }
    let bound = case_bound(&ctx);
    let run = def.run;
    let started = Instant::now();
    let task = tokio::spawn(async move { tokio::time::timeout(bound, run(&ctx)).await });
    let outcome = match task.await {
        Ok(Ok(Ok(()))) => CaseOutcome::Passed(started.elapsed()),
        Ok(Ok(Err(failure))) => CaseOutcome::Failed(failure.to_string()),
        Ok(Err(_)) => CaseOutcome::Failed(format!("did not finish within {bound:?} (a hang)")),
        Err(e) if e.is_panic() => {
            let payload = e.into_panic();
            let msg = payload
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_else(|| "(no message)".to_owned());
            CaseOutcome::Failed(format!("panicked: {msg}"))
        }
        Err(e) => CaseOutcome::Failed(format!("task failed: {e}")),
    };
    // A failed control case may leave the server down: bring it back so
    // the next case on this fixture starts clean.
    if matches!(outcome, CaseOutcome::Failed(_))
        && let Some(control) = fixture.control()
        && let Err(e) = async {
            if control.can_pause() {
                control.resume().await?;
            }
            control.start().await
        }
        .await
    {
        println!(
            "[{}] could not restart the server after {}: {e}",
            fixture.name(),
            def.name
        );
    }
    let r = report(outcome);
    println!("[{}] {r}", fixture.name());
    r
}

/// Writes one line to the test process's stderr, past the test harness's
/// output capture (which takes `print!`/`eprint!` only), so that summaries
/// show in every `cargo test` run, not only with `--nocapture`.
fn announce(line: &str) {
    use std::io::Write;
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "{line}");
}

/// Runs every case on one fixture, in order (store cases first), printing
/// each as it runs and the one-line summary at the end, and returns the
/// report; call [`SuiteReport::assert_passed_with`] on it with the store's
/// pinned not-applicable set.
pub async fn run_all(fixture: Arc<dyn Fixture>) -> SuiteReport {
    let mut cases = Vec::new();
    for def in CASES {
        cases.push(run_case(fixture.clone(), def.name).await);
    }
    let report = SuiteReport {
        fixture: fixture.name(),
        cases,
    };
    print!("{report}");
    announce(&report.summary());
    report
}

/// The outcomes of the tests generated by one
/// [`conformance_tests!`](crate::conformance_tests) invocation: when the last
/// of them ends, the one-line summary of the store is written to stderr.
#[derive(Debug)]
pub struct Tally {
    seen: std::sync::Mutex<Vec<CaseReport>>,
}

impl Tally {
    /// An empty tally (a `static` in the generated tests).
    pub const fn new() -> Self {
        Tally {
            seen: std::sync::Mutex::new(Vec::new()),
        }
    }

    /// Records one case; returns the summary line once every case has been
    /// recorded.
    fn record(&self, report: CaseReport, fixture: &str) -> Option<String> {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        seen.push(report);
        (seen.len() == CASES.len()).then(|| {
            let mut cases = seen.clone();
            cases.sort_by_key(|c| CASES.iter().position(|d| d.name == c.name));
            summary_line(fixture, &cases)
        })
    }
}

impl Default for Tally {
    fn default() -> Self {
        Self::new()
    }
}

/// Runs one case, checks it against the store's pinned not-applicable set,
/// records it in `tally`, and panics if it failed or broke the pinning: what
/// each test generated by [`conformance_tests!`](crate::conformance_tests)
/// calls.
///
/// # Panics
///
/// When the case failed, did not apply without being pinned, or ran while
/// pinned as not applicable.
pub async fn check_case(fixture: impl Fixture, name: &str, not_applicable: &[&str], tally: &Tally) {
    let fixture_name = fixture.name();
    let report = run_case(Arc::new(fixture), name).await;
    let pinning = pinning_violation(&report, not_applicable);
    let failed = match &report.outcome {
        CaseOutcome::Failed(msg) => Some(msg.clone()),
        _ => None,
    };
    if let Some(line) = tally.record(report, &fixture_name) {
        announce(&line);
    }
    if let Some(problem) = pinning {
        panic!("conformance on {fixture_name}: {problem}");
    }
    if let Some(msg) = failed {
        panic!("conformance case {name} failed: {msg}");
    }
}

/// Panics if the pinned not-applicable set names something that is no
/// case (a typo would otherwise pin nothing).
///
/// # Panics
///
/// When a pinned name is unknown.
pub fn assert_pinned_names_are_cases(not_applicable: &[&str]) {
    let unknown = unknown_cases(not_applicable);
    assert!(
        unknown.is_empty(),
        "the pinned not-applicable set names unknown cases: {unknown:?} (known: {:?})",
        case_names()
    );
}

/// Expands to one `#[tokio::test]` per conformance case, each building its
/// own fixture with the given expression (which may `.await`), checked
/// against the store's pinned set of cases that do not apply.
///
/// ```no_run
/// # use leader_testkit::suite::MemoryFixture;
/// # async fn my_fixture() -> MemoryFixture { MemoryFixture::new() }
/// # mod real_time {
/// #     use super::*;
/// // multi-thread runtime, real time
/// leader_testkit::conformance_tests!(my_fixture().await, not_applicable = [
///     session_loss_frees_the_resource,
/// ]);
/// # }
/// # mod paused_time {
/// #     use leader_testkit::suite::MemoryFixture;
/// // paused tokio time
/// leader_testkit::conformance_tests!(paused, MemoryFixture::new(), not_applicable = []);
/// # }
/// ```
///
/// A case that does not apply but is not pinned fails its test (naming the
/// reason), and so does a pinned case that applies: a store that silently
/// lost a capability, or a `LEADER_TEST_*_URL` that turns the server-control
/// cases off, cannot drop cases unnoticed. When the last generated test
/// ends, one line is written to stderr (shown without `--nocapture`):
/// `conformance on <store>: N run (P passed, F failed: ...), M not applicable: ...`.
///
/// The calling crate needs `tokio` as a dev-dependency with the `macros`
/// and `rt-multi-thread` features (and `test-util` for `paused`). The test
/// functions are named after the cases (`exclusivity`, ...): invoke the
/// macro in a module of its own if the file has other tests.
#[macro_export]
macro_rules! conformance_tests {
    (paused, $fixture:expr, not_applicable = [$($na:ident),* $(,)?] $(,)?) => {
        $crate::__conformance_case_list!(
            $crate::__conformance_cases; (start_paused = true) ($fixture) [$($na),*]
        );
    };
    ($fixture:expr, not_applicable = [$($na:ident),* $(,)?] $(,)?) => {
        $crate::__conformance_case_list!(
            $crate::__conformance_cases;
            (flavor = "multi_thread", worker_threads = 2) ($fixture) [$($na),*]
        );
    };
}

/// Emits the tests of [`conformance_tests!`] from the one case list.
#[doc(hidden)]
#[macro_export]
macro_rules! __conformance_cases {
    ($attr:tt ($fixture:expr) [$($na:ident),*];
     $($module:ident :: $case:ident, $level:ident, $applies:ident;)*) => {
        const NOT_APPLICABLE: &[&str] = &[$(stringify!($na)),*];
        static TALLY: $crate::suite::Tally = $crate::suite::Tally::new();

        $(
            #[tokio::test $attr]
            async fn $case() {
                $crate::suite::check_case($fixture, stringify!($case), NOT_APPLICABLE, &TALLY)
                    .await;
            }
        )*

        #[test]
        fn pinned_not_applicable_names_are_cases() {
            $crate::suite::assert_pinned_names_are_cases(NOT_APPLICABLE);
        }
    };
}
