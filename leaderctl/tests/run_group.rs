//! `leaderctl run` owns the command's whole process group: a background
//! grandchild (`sh -c 'writer & wait'`) dies when leaderctl is SIGKILLed and
//! is signalled when leadership is lost, and is stopped before leaderctl
//! exits when the command exits by itself; Ctrl-C and SIGTERM give the
//! conventional exit codes. End to end with the real binary against a
//! private Redis.

mod common;

use std::path::Path;
use std::time::Duration;

use leader_testkit::servers::RedisServer;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::time::Instant;

use common::{
    KillOnDrop, LEASE, exit_status, is_running, leaderctl, numbers_in, run_sh, text,
    time_until_gone,
};
use leader_testkit::wait::eventually;

/// A shell function that appends a counter to `out` every 50 ms for at most
/// 60 s (bounded so that a failing test leaves nothing running for long).
fn writer_fn(name: &str, out: &Path, trap: &str) -> String {
    format!(
        "{name}() {{ {trap} i=0; while [ $i -lt 1200 ]; do echo $i >> {out}; i=$((i+1)); sleep 0.05; done; }}; ",
        out = out.display()
    )
}

/// How long after `kill -9 leaderctl` the background writer may still run.
///
/// The claim is 100 ms. The kill takes three scheduler wake-ups: leaderctl
/// exits (the kernel then sends the guard its parent-death signal), the guard
/// wakes and SIGKILLs the group, the writer is scheduled and dies. On a
/// 2-core machine loaded by a parallel build each wake-up can wait a few
/// scheduler periods (tens of ms with a dozen runnable tasks per core), so
/// 1 s holds there with a wide margin while still catching a writer that
/// is never killed (today's behaviour) or killed only when the lease expires
/// (2 s). The measured figure is printed for the 100 ms claim.
const DEATH_BOUND: Duration = Duration::from_secs(1);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_of_leaderctl_kills_a_background_grandchild() {
    let redis = RedisServer::start().await.expect("a test-owned redis");
    let dir = tempfile::tempdir().expect("tempdir");
    let (out, pids) = (dir.path().join("out"), dir.path().join("pids"));
    let script = format!(
        "{}w & echo $! > {}; wait",
        writer_fn("w", &out, ""),
        pids.display()
    );
    let resource = format!("group-kill-{}", std::process::id());
    let mut run = run_sh(redis.url(), &resource, "group-a", "300ms", &script);
    let mut cleanup = KillOnDrop::default();

    eventually(
        Duration::from_secs(10),
        "the background writer writes",
        || async { !numbers_in(&pids).is_empty() && !numbers_in(&out).is_empty() },
    )
    .await;
    let writer = numbers_in(&pids)[0];
    cleanup.0.push(writer);
    assert!(is_running(writer), "the writer runs while leaderctl leads");

    let killed = Instant::now();
    run.kill().expect("kill -9 leaderctl");
    let took = time_until_gone(writer, DEATH_BOUND).await;
    let _ = run.wait();
    let after_kill = killed.elapsed();
    println!("background writer gone {took:?} after kill -9 of leaderctl");
    assert!(
        took.is_some(),
        "the background writer {writer} still runs {after_kill:?} after kill -9 of leaderctl"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loss_sends_sigterm_then_sigkill_to_the_whole_group() {
    let redis = RedisServer::start().await.expect("a test-owned redis");
    let dir = tempfile::tempdir().expect("tempdir");
    let (out, pids, termed) = (
        dir.path().join("out"),
        dir.path().join("pids"),
        dir.path().join("termed"),
    );
    // `t` exits on SIGTERM (noting it), `i` ignores SIGTERM: it must be
    // SIGKILLed after the grace period.
    let on_term = format!(
        "trap 'echo $LEADER_FENCING_TOKEN >> {}; exit 0' TERM;",
        termed.display()
    );
    let script = format!(
        "{}{}t & echo $! >> {pids}; i & echo $! >> {pids}; wait",
        writer_fn("t", &out, &on_term),
        writer_fn("i", &out, "trap '' TERM;"),
        pids = pids.display()
    );
    let resource = format!("group-loss-{}", std::process::id());
    let url = redis.url().to_owned();
    let mut run = run_sh(&url, &resource, "group-b", "300ms", &script);
    let mut cleanup = KillOnDrop::default();
    eventually(
        Duration::from_secs(10),
        "both background writers run",
        || async { numbers_in(&pids).len() >= 2 },
    )
    .await;
    let first = numbers_in(&pids)[..2].to_vec();
    cleanup.0.extend(&first);

    // An operator force-releases: leaderctl loses at its next renewal.
    let released = Instant::now();
    let out = leaderctl(&[
        "release",
        "--force",
        "--yes",
        "--store",
        &url,
        "--resource",
        &resource,
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));

    // The lost term's lease could expire elsewhere 2 s after its last renewal
    // (at most 2 s after the release): by then the whole group must be gone.
    // 500 ms of margin for a loaded machine.
    let deadline = released + LEASE + Duration::from_millis(500);
    for pid in &first {
        let left = deadline.saturating_duration_since(Instant::now());
        let took = time_until_gone(*pid, left).await;
        assert!(
            took.is_some(),
            "background writer {pid} still runs {:?} after the forced release",
            released.elapsed()
        );
    }
    println!(
        "group gone {:?} after the forced release",
        released.elapsed()
    );
    let termed = std::fs::read_to_string(&termed).unwrap_or_default();
    assert!(
        termed.lines().any(|token| !token.is_empty()),
        "the background writer that handles SIGTERM never got it"
    );

    run.kill().expect("kill -9 leaderctl");
    let _ = run.wait();
    cleanup.0.extend(numbers_in(&pids));
}

/// Starts a `leaderctl run` whose command notes `started`, signals leaderctl
/// once it runs, and returns leaderctl's exit code.
async fn exit_code_after(signal: Signal, trap: &str, name: &str) -> Option<i32> {
    let redis = RedisServer::start().await.expect("a test-owned redis");
    let dir = tempfile::tempdir().expect("tempdir");
    let started = dir.path().join("started");
    let script = format!(
        "{trap} echo $$ > {}; i=0; while [ $i -lt 1200 ]; do i=$((i+1)); sleep 0.05; done",
        started.display()
    );
    let resource = format!("exit-{name}-{}", std::process::id());
    let mut run = run_sh(redis.url(), &resource, name, "1s", &script);
    let mut cleanup = KillOnDrop::default();
    eventually(Duration::from_secs(10), "the command starts", || async {
        !numbers_in(&started).is_empty()
    })
    .await;
    cleanup.0.extend(numbers_in(&started));
    let pid = i32::try_from(run.id()).expect("pid");
    kill(Pid::from_raw(pid), signal).expect("signal leaderctl");
    // Grace 1 s, then the release (request timeout below the lease): 2 lease.
    let status = exit_status(&mut run, LEASE * 2).await;
    status.code()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_exits_130_and_sigterm_143_unless_the_command_exits_with_its_own_code() {
    assert_eq!(
        exit_code_after(Signal::SIGINT, "", "int").await,
        Some(130),
        "Ctrl-C"
    );
    assert_eq!(
        exit_code_after(Signal::SIGTERM, "", "term").await,
        Some(143),
        "SIGTERM"
    );
    // The command handles SIGTERM and exits 3: its status wins.
    assert_eq!(
        exit_code_after(Signal::SIGTERM, "trap 'exit 3' TERM;", "own").await,
        Some(3),
        "SIGTERM handled by the command"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_the_command_leaves_running_is_stopped_before_leaderctl_exits() {
    let redis = RedisServer::start().await.expect("a test-owned redis");
    let dir = tempfile::tempdir().expect("tempdir");
    let (out, pids) = (dir.path().join("out"), dir.path().join("pids"));
    // The command starts a background writer and exits 3 at once.
    let script = format!(
        "{}w & echo $! > {}; exit 3",
        writer_fn("w", &out, ""),
        pids.display()
    );
    let resource = format!("group-left-{}", std::process::id());
    let mut run = run_sh(redis.url(), &resource, "group-c", "300ms", &script);
    let mut cleanup = KillOnDrop::default();
    eventually(Duration::from_secs(10), "the command starts", || async {
        !numbers_in(&pids).is_empty()
    })
    .await;
    let writer = numbers_in(&pids)[0];
    cleanup.0.push(writer);
    // The writer handles SIGTERM by dying; grace 300 ms, then the release.
    let status = exit_status(&mut run, LEASE * 2).await;
    assert_eq!(status.code(), Some(3), "the command's own exit code");
    assert!(
        !is_running(writer),
        "the background writer {writer} still runs after leaderctl exited"
    );
}
