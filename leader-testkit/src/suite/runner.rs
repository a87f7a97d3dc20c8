//! The case registry, the runner and the test-generating macro.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use leader_core::{Capabilities, NotificationSupport};
use tokio::time::Instant;

use super::{CaseResult, Ctx, Fixture, election, faults, identity, store};

/// Whether a case talks to the store directly or through electors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Level {
    /// `LeaseStore` calls.
    Store,
    /// Through `leader_core::Elector`.
    Election,
}

/// What decides whether a case applies.
struct Env {
    caps: Capabilities,
    control: bool,
    pause: bool,
    links: bool,
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
    ($($module:ident :: $name:ident, $level:ident, $applies:expr;)*) => {
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

registry! {
    store::exclusivity, Store, always;
    store::same_holder_acquires_again_with_a_new_token, Store, always;
    store::renew_extends_the_lease, Store, always;
    store::non_holders_cannot_renew_or_release, Store, always;
    store::release_then_acquire_again, Store, always;
    store::expiry_frees_the_resource, Store, needs_expiry;
    store::session_loss_frees_the_resource, Store, needs_session;
    store::tokens_strictly_increase, Store, always;
    store::concurrent_acquirers_one_wins, Store, always;
    store::current_reports_holder_token_and_remaining, Store, always;
    store::resources_are_isolated, Store, always;
    store::odd_names_work_or_are_refused, Store, always;
    store::invalid_arguments_are_refused, Store, always;
    store::release_notifications_arrive, Store, needs_notifications;
    store::watch_unsupported_is_typed, Store, needs_no_notifications;
    store::force_release_frees_any_holder, Store, always;
    faults::down_store_gives_typed_errors, Store, needs_control;
    faults::client_recovers_after_restart, Store, needs_control;
    faults::hung_store_calls_time_out, Store, needs_pause;
    election::election_one_leader, Election, always;
    election::election_crash_failover, Election, always;
    election::election_graceful_handover, Election, always;
    election::election_work_cancelled_on_loss, Election, always;
    election::election_partitioned_leader_steps_down, Election, needs_links;
    election::election_slow_store_keeps_one_leader, Election, needs_links;
    election::election_store_down_steps_down, Election, needs_control;
    election::election_store_returns, Election, needs_control;
    identity::identity_shared_instance_id_one_holder, Election, always;
}

/// The names of every case, in run order.
pub fn case_names() -> Vec<&'static str> {
    CASES.iter().map(|c| c.name).collect()
}

/// Panics unless `listed` names exactly the registered cases (the
/// [`conformance_tests!`](crate::conformance_tests) macro checks itself
/// with this).
///
/// # Panics
///
/// When a case is missing from `listed` or `listed` names an unknown case.
pub fn assert_all_cases_listed(listed: &[&str]) {
    let known = case_names();
    let missing: Vec<_> = known.iter().filter(|n| !listed.contains(n)).collect();
    let unknown: Vec<_> = listed.iter().filter(|n| !known.contains(n)).collect();
    assert!(
        missing.is_empty() && unknown.is_empty(),
        "conformance case list out of date: missing {missing:?}, unknown {unknown:?}"
    );
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
}

impl fmt::Display for SuiteReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let passed = self
            .cases
            .iter()
            .filter(|c| matches!(c.outcome, CaseOutcome::Passed(_)))
            .count();
        let na = self
            .cases
            .iter()
            .filter(|c| matches!(c.outcome, CaseOutcome::NotApplicable(_)))
            .count();
        writeln!(
            f,
            "conformance on {}: {passed} passed, {} failed, {na} not applicable",
            self.fixture,
            self.failures().len()
        )?;
        for c in &self.cases {
            writeln!(f, "  {c}")?;
        }
        Ok(())
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

/// Runs every case on one fixture, in order (store cases first), printing
/// each as it runs, and returns the report; call
/// [`SuiteReport::assert_passed`] on it.
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
    report
}

/// Runs one case and panics if it failed: what each test generated by
/// [`conformance_tests!`](crate::conformance_tests) calls.
///
/// # Panics
///
/// When the case failed.
pub async fn check_case(fixture: impl Fixture, name: &str) {
    let report = run_case(Arc::new(fixture), name).await;
    if let CaseOutcome::Failed(msg) = &report.outcome {
        panic!("conformance case {name} failed: {msg}");
    }
}

/// Expands to one `#[tokio::test]` per conformance case, each building its
/// own fixture with the given expression (which may `.await`), plus a test
/// that the list is complete.
///
/// ```no_run
/// # use leader_testkit::suite::MemoryFixture;
/// # async fn my_fixture() -> MemoryFixture { MemoryFixture::new() }
/// # mod real_time {
/// #     use super::*;
/// leader_testkit::conformance_tests!(my_fixture().await);          // multi-thread runtime, real time
/// # }
/// # mod paused_time {
/// #     use leader_testkit::suite::MemoryFixture;
/// leader_testkit::conformance_tests!(paused, MemoryFixture::new()); // paused tokio time
/// # }
/// ```
///
/// The calling crate needs `tokio` as a dev-dependency with the `macros`
/// and `rt-multi-thread` features (and `test-util` for `paused`). The test
/// functions are named after the cases (`exclusivity`, ...): invoke the
/// macro in a module of its own if the file has other tests.
#[macro_export]
macro_rules! conformance_tests {
    (paused, $fixture:expr) => {
        $crate::__conformance_cases!((start_paused = true) $fixture);
    };
    ($fixture:expr) => {
        $crate::__conformance_cases!((flavor = "multi_thread", worker_threads = 2) $fixture);
    };
}

/// The case list behind [`conformance_tests!`]; keep it in step with the
/// registry (a generated test checks that).
#[doc(hidden)]
#[macro_export]
macro_rules! __conformance_cases {
    ($attr:tt $fixture:expr) => {
        $crate::__conformance_cases!(@emit $attr $fixture;
            exclusivity,
            same_holder_acquires_again_with_a_new_token,
            renew_extends_the_lease,
            non_holders_cannot_renew_or_release,
            release_then_acquire_again,
            expiry_frees_the_resource,
            session_loss_frees_the_resource,
            tokens_strictly_increase,
            concurrent_acquirers_one_wins,
            current_reports_holder_token_and_remaining,
            resources_are_isolated,
            odd_names_work_or_are_refused,
            invalid_arguments_are_refused,
            release_notifications_arrive,
            watch_unsupported_is_typed,
            force_release_frees_any_holder,
            down_store_gives_typed_errors,
            client_recovers_after_restart,
            hung_store_calls_time_out,
            election_one_leader,
            election_crash_failover,
            election_graceful_handover,
            election_work_cancelled_on_loss,
            election_partitioned_leader_steps_down,
            election_slow_store_keeps_one_leader,
            election_store_down_steps_down,
            election_store_returns,
            identity_shared_instance_id_one_holder,
        );
    };
    (@emit $attr:tt $fixture:expr; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test $attr]
            async fn $case() {
                $crate::suite::check_case($fixture, stringify!($case)).await;
            }
        )*

        #[test]
        fn conformance_case_list_is_complete() {
            $crate::suite::assert_all_cases_listed(&[$(stringify!($case)),*]);
        }
    };
}
