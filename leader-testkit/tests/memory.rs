//! The whole conformance suite against `leader_core::MemoryStore`, under
//! paused tokio time: one test per case.

use leader_testkit::suite::MemoryFixture;

leader_testkit::conformance_tests!(paused, MemoryFixture::new());

/// The runner form: every case on one fixture, all failures reported at
/// the end.
#[tokio::test(start_paused = true)]
async fn run_all_cases_on_one_fixture() {
    let report = leader_testkit::suite::run_all(std::sync::Arc::new(MemoryFixture::new())).await;
    report.assert_passed();
    assert!(report.cases.len() >= 24, "{report}");
}
