//! `leaderctl` end to end against a private Redis started by the testkit:
//! status, watch and release; `run` starts the child only on the leader, stops
//! it when leadership is lost, and two `leaderctl run` never run their
//! children at the same time (checked with the testkit's fenced resource).

mod common;

use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use leader::{ElectionConfig, Elector, FencingToken};
use leader_testkit::history::FencedResource;
use leader_testkit::servers::RedisServer;
use tokio::time::Instant;

use common::{BIN, Run, leaderctl, run_sh, text};
use leader_testkit::wait::eventually;

/// The next line `watch` prints that satisfies `want`, within 20 s.
async fn next_line(
    lines: &mut tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
    what: &str,
    want: impl Fn(&str) -> bool,
) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let line = tokio::time::timeout_at(deadline, lines.next_line())
            .await
            .unwrap_or_else(|_| panic!("watch printed no line with {what} within 20 s"))
            .expect("watch output")
            .unwrap_or_else(|| panic!("watch exited before printing {what}"));
        if want(&line) {
            return line;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_watch_and_forced_release() {
    use tokio::io::AsyncBufReadExt;

    let redis = RedisServer::from_env_or_start().await.expect("redis");
    let url = redis.url().to_owned();
    let resource = format!("ctl-{}", std::process::id());
    let common = ["--store", url.as_str(), "--resource", resource.as_str()];

    let out = leaderctl(&[&["status"][..], &common].concat());
    assert_eq!(out.status.code(), Some(1), "no leader yet: {}", text(&out));
    assert!(text(&out).contains("no leader"));

    // An operator watches while an elector wins and is force-released.
    let mut watch = tokio::process::Command::new(BIN)
        .args(
            [
                &["watch", "--interval", "100ms", "--for", "60s"][..],
                &common,
            ]
            .concat(),
        )
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("watch starts");
    let mut lines = tokio::io::BufReader::new(watch.stdout.take().expect("stdout")).lines();
    // The empty seat is reported before anything else happens.
    next_line(&mut lines, "the empty seat", |l| l.ends_with("no leader")).await;

    let mut config = ElectionConfig::new(&resource)
        .with_timing(Duration::from_secs(3), Duration::from_millis(500));
    config.instance_id = Some("ctl-elector".into());
    let store = leader::connect(&url).expect("store");
    let elector = Elector::start(store, config).expect("elector");
    let mut state = elector.subscribe();
    tokio::time::timeout(Duration::from_secs(10), state.wait_for(|s| s.is_leader))
        .await
        .expect("the elector leads")
        .expect("alive");
    let token = elector.token().expect("token");
    let seen = format!("leader {} (token {token}", elector.instance_id());
    next_line(&mut lines, "the new leader", |l| l.contains(&seen)).await;

    let out = leaderctl(&[&["status", "--json"][..], &common].concat());
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(doc["leader"]["holder"], elector.instance_id().as_str());
    assert_eq!(doc["leader"]["token"], token.get());

    let out = leaderctl(&[&["release", "--force"][..], &common].concat());
    assert_eq!(
        out.status.code(),
        Some(2),
        "no confirmation without a terminal: {}",
        text(&out)
    );
    assert!(text(&out).contains("--yes"));

    let out = leaderctl(&[&["release", "--force", "--yes"][..], &common].concat());
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(text(&out).contains("ctl-elector"));
    // The holder notices at its next renewal and steps down.
    tokio::time::timeout(Duration::from_secs(5), state.wait_for(|s| !s.is_leader))
        .await
        .expect("the holder steps down after a forced release")
        .expect("alive");
    // The watcher reports the change: the empty seat, or the next term if
    // the elector already won again (both are changes after the release).
    let change = next_line(&mut lines, "a change after the release", |l| {
        !l.contains(&seen)
    })
    .await;
    assert!(
        change.ends_with("no leader") || change.contains("leader ctl-elector (token"),
        "{change}"
    );
    elector.shutdown().await;
}

/// One `leaderctl run` whose child appends `<token> <instance>` to `log`
/// every 50 ms, and `<token> stop` when terminated.
fn spawn_run(url: &str, resource: &str, instance: &str, log: &Path) -> Run {
    let script = format!(
        "trap 'echo \"$LEADER_FENCING_TOKEN stop\" >> {log}; exit 0' TERM; \
         while true; do echo \"$LEADER_FENCING_TOKEN $LEADER_INSTANCE_ID\" >> {log}; sleep 0.05; done",
        log = log.display()
    );
    run_sh(url, resource, instance, "300ms", &script)
}

fn log_lines(log: &Path) -> Vec<(u64, String)> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (token, who) = l.split_once(' ')?;
            // LEADER_INSTANCE_ID is the holder id, `<instance>/<random>`:
            // keep the instance part the test named.
            let who = who.split('/').next().unwrap_or(who);
            Some((token.parse().ok()?, who.to_owned()))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_keeps_exactly_one_child_through_crash_and_store_outage() {
    let redis = RedisServer::start()
        .await
        .expect("a test-owned redis (it is paused)");
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("children.log");
    let resource = format!("run-{}", std::process::id());
    let lease = Duration::from_secs(2);

    let mut a = spawn_run(redis.url(), &resource, "run-a", &log);
    let mut b = spawn_run(redis.url(), &resource, "run-b", &log);
    eventually(Duration::from_secs(10), "a child starts", || async {
        !log_lines(&log).is_empty()
    })
    .await;
    let first = log_lines(&log)[0].1.clone();
    let (leader, follower) = if first == "run-a" {
        (&mut a, &mut b)
    } else {
        (&mut b, &mut a)
    };

    // Crash the leading leaderctl: its child dies with it, the other takes over.
    leader.kill().expect("kill -9");
    let _ = leader.wait();
    let crashed = Instant::now();
    let other = if first == "run-a" { "run-b" } else { "run-a" };
    eventually(lease * 5, "the other instance's child starts", || async {
        log_lines(&log).iter().any(|(_, who)| who == other)
    })
    .await;
    let failover = crashed.elapsed();
    println!("crash failover: {failover:?} (lease {lease:?})");

    // The store stops answering: the child is stopped before the lease could
    // expire (renew deadline 1.25 s + grace 0.3 s < lease 2 s).
    let before = log_lines(&log).len();
    redis.pause().expect("SIGSTOP redis");
    let paused = Instant::now();
    eventually(lease * 5, "the child is stopped", || async {
        log_lines(&log)[before..]
            .iter()
            .any(|(_, who)| who == "stop")
    })
    .await;
    let stopped_after = paused.elapsed();
    redis.resume().expect("SIGCONT redis");
    assert!(
        stopped_after < lease + Duration::from_millis(500),
        "stopped only after {stopped_after:?}"
    );

    // The store is back: a child runs again, with a higher token.
    let n = log_lines(&log).len();
    eventually(lease * 5, "a child runs again", || async {
        log_lines(&log)[n..].iter().any(|(_, who)| who == other)
    })
    .await;
    let _ = follower.kill();
    let _ = follower.wait();

    // Replay the log into a fenced resource: a line with a lower token after a
    // higher one would mean two children ran at the same time.
    let fenced = Arc::new(FencedResource::new());
    for (token, who) in log_lines(&log) {
        assert!(
            fenced.write(&who, FencingToken(token)),
            "stale child wrote after a newer term: token {token} ({who})"
        );
    }
    assert_eq!(fenced.rejected(), 0);
    let terms: std::collections::BTreeSet<u64> = log_lines(&log).iter().map(|(t, _)| *t).collect();
    assert!(terms.len() >= 3, "three terms expected, got {terms:?}");
}
