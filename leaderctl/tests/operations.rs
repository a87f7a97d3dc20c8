//! `leaderctl run --wait`, `run --hold-at-least` and `resign`, end to end
//! against a private Redis.

mod common;

use std::time::Duration;

use leader::{ElectionConfig, Elector};
use leader_testkit::servers::RedisServer;
use tokio::time::Instant;

use common::{LEASE, exit_status, leaderctl, run_with, text};

/// The lease of the test electors.
const HOLDER_LEASE: Duration = Duration::from_secs(3);

/// An elector campaigning for `resource` on `url` as `instance` (lease 3 s,
/// renewal and retry 500 ms), under the prefix `leaderctl` uses.
fn candidate(url: &str, resource: &str, instance: &str) -> Elector {
    let mut config =
        ElectionConfig::new(resource).with_timing(HOLDER_LEASE, Duration::from_millis(500));
    config.key_prefix = "leader:".into();
    config.instance_id = Some(instance.into());
    Elector::start(leader::connect(url).expect("store"), config).expect("elector")
}

/// An elector holding `resource` on `url` (the lease 3 s).
async fn holder(url: &str, resource: &str) -> Elector {
    let elector = candidate(url, resource, "holder");
    let mut state = elector.subscribe();
    tokio::time::timeout(Duration::from_secs(10), state.wait_for(|s| s.is_leader))
        .await
        .expect("the holder leads")
        .expect("alive");
    elector
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_wait_gives_up_with_75_while_another_instance_leads() {
    let redis = RedisServer::from_env_or_start().await.expect("redis");
    let resource = format!("wait-{}", std::process::id());
    let elector = holder(redis.url(), &resource).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let marker = dir.path().join("ran");
    let wait = Duration::from_secs(1);
    let started = Instant::now();
    let mut run = run_with(
        redis.url(),
        &resource,
        &["--wait", "1s"],
        &format!("touch {}", marker.display()),
    );
    let status = exit_status(&mut run, wait + LEASE * 5).await;
    let took = started.elapsed();
    assert_eq!(status.code(), Some(75), "exit status {status:?}");
    assert!(
        took >= wait,
        "gave up after {took:?}, before --wait {wait:?}"
    );
    assert!(!marker.exists(), "the command ran without leadership");
    assert!(
        elector.is_leader(),
        "the holder lost its seat to a waiter that gave up"
    );
    elector.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_hold_at_least_keeps_the_seat_after_an_early_exit() {
    let redis = RedisServer::from_env_or_start().await.expect("redis");
    let resource = format!("hold-{}", std::process::id());
    let dir = tempfile::tempdir().expect("tempdir");
    let marker = dir.path().join("ran");
    let hold = LEASE * 2;
    let mut run = run_with(
        redis.url(),
        &resource,
        &["--hold-at-least", "4s"],
        &format!("touch {} && exit 3", marker.display()),
    );
    leader_testkit::wait::eventually(LEASE * 5, "the command ran", || async { marker.exists() })
        .await;
    let ran = Instant::now();
    // The command is done, the seat is still held: status says so.
    let common = ["--store", redis.url(), "--resource", resource.as_str()];
    let out = leaderctl(&[&["status"][..], &common].concat());
    assert_eq!(
        out.status.code(),
        Some(0),
        "seat empty after an early exit: {}",
        text(&out)
    );
    let status = exit_status(&mut run, hold + LEASE * 5).await;
    assert_eq!(
        status.code(),
        Some(3),
        "the command's exit code: {status:?}"
    );
    // The command started at most a moment before `ran`.
    assert!(
        ran.elapsed() + Duration::from_millis(500) >= hold,
        "leaderctl exited {:?} after the command ran, before --hold-at-least {hold:?}",
        ran.elapsed()
    );
    let out = leaderctl(&[&["status"][..], &common].concat());
    assert_eq!(
        out.status.code(),
        Some(1),
        "released on exit: {}",
        text(&out)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resign_makes_the_running_holder_hand_over_to_a_follower() {
    let redis = RedisServer::from_env_or_start().await.expect("redis");
    let resource = format!("resign-{}", std::process::id());
    let elector = holder(redis.url(), &resource).await;
    let first = elector.token().expect("the holder leads");
    let follower = candidate(redis.url(), &resource, "follower");
    let mut seen = follower.subscribe();
    // The follower has met the holder: it is campaigning, not starting.
    tokio::time::timeout(
        LEASE * 5,
        seen.wait_for(|s| s.leader.as_ref().is_some_and(|l| l.token == first)),
    )
    .await
    .expect("the follower sees the holder")
    .expect("alive");
    let common = ["--store", redis.url(), "--resource", resource.as_str()];
    // Exit 0 means the term ended within --wait; the holder renews every
    // 500 ms, so nothing but the request ends it.
    let out = leaderctl(&[&["resign", "--wait", "10s"][..], &common].concat());
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(text(&out).contains("resigned"), "{}", text(&out));
    leader_testkit::wait::eventually(LEASE * 5, "the follower leads", || async {
        follower.is_leader()
    })
    .await;
    let second = follower.token().expect("the follower leads");
    assert!(second > first, "token {second} is not above {first}");
    assert!(!elector.is_leader(), "the holder still believes it leads");
    follower.shutdown().await;
    elector.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resign_on_a_resource_nobody_holds_exits_1() {
    let redis = RedisServer::from_env_or_start().await.expect("redis");
    let resource = format!("resign-free-{}", std::process::id());
    let common = ["--store", redis.url(), "--resource", resource.as_str()];
    let out = leaderctl(&[&["resign"][..], &common].concat());
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("has no leader"), "{}", text(&out));
}
