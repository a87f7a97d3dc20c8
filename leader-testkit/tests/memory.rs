//! The whole conformance suite against `leader_core::MemoryStore`, under
//! paused tokio time: one test per case, with the cases that do not apply
//! to it pinned.

use leader_testkit::suite::{MemoryFixture, case_names};

/// The memory store is not session-bound, notifies, cannot be frozen and
/// has no server-side resources to count.
const NOT_APPLICABLE: &[&str] = &[
    "session_loss_frees_the_resource",
    "watch_unsupported_is_typed",
    "no_leaks_over_many_cycles",
    "hung_store_calls_time_out",
];

mod each_case {
    use leader_testkit::suite::MemoryFixture;

    leader_testkit::conformance_tests!(
        paused,
        MemoryFixture::new(),
        not_applicable = [
            session_loss_frees_the_resource,
            watch_unsupported_is_typed,
            no_leaks_over_many_cycles,
            hung_store_calls_time_out,
        ]
    );
}

/// The runner form: every case on one fixture, all failures reported at
/// the end, the not-applicable set pinned.
#[tokio::test(start_paused = true)]
async fn run_all_cases_on_one_fixture() {
    let report = leader_testkit::suite::run_all(std::sync::Arc::new(MemoryFixture::new())).await;
    assert_eq!(report.cases.len(), case_names().len(), "{report}");
    report.assert_passed_with(NOT_APPLICABLE);
}

/// The shared suite is at least as large as the mature peers' (issue 15).
#[test]
fn the_suite_has_at_least_forty_cases() {
    let n = case_names().len();
    assert!(n >= 40, "only {n} conformance cases");
}
