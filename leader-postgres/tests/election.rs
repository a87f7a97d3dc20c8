//! Electors on real Postgres under the faults a session lock meets: the
//! holder's backend terminated, a partition between holder and server, and
//! `kill -9` of a holder process. Every store call and step-down is
//! recorded and checked by the testkit's history checker.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use leader_core::LeaseStore;
use leader_testkit::history::{CheckOptions, History, Op, Outcome};
use leader_testkit::proxy::{FaultProxy, Mode};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::time::Instant;

/// The suite's real-server profile: a 2 s lease, 3 s slack for a loaded box.
const LEASE: Duration = Duration::from_secs(2);
const SLACK: Duration = Duration::from_secs(3);

fn interval() -> Duration {
    LEASE / 4
}

/// What `is_leader()` promises: lease * (1 - default clock drift 0.01).
fn checked(history: &History) {
    history.assert_ok_with(&CheckOptions::with_validity(LEASE.mul_f64(0.99)));
}

fn prefix(test: &str) -> String {
    format!("pgel-{:08x}-{test}:", rand_suffix())
}

fn rand_suffix() -> u32 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    nanos ^ std::process::id()
}

fn pg_store(url: &str) -> Arc<dyn LeaseStore> {
    Arc::new(store(url))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminated_holder_session_steps_down_without_overlap() {
    let pg = server().await;
    let history = History::new();
    let prefix = prefix("terminate");
    let a = recorded(
        pg_store(pg.url()),
        election_config(&prefix, "svc", "term-a", LEASE),
        &history,
    );
    until_leading(&a.elector, true, interval() * 3 + SLACK)
        .await
        .expect("a leads");
    let b = recorded(
        pg_store(pg.url()),
        election_config(&prefix, "svc", "term-b", LEASE),
        &history,
    );
    let old_token = a.elector.token().expect("a leader has a token");

    let killed = terminate_holder(pg.url(), a.elector.instance_id().as_str()).await;
    assert_eq!(killed, 1, "exactly one session holds the lease");
    let terminated = Instant::now();

    // Noticed at the next renewal: within one renewal interval plus a request.
    let took = until_leading(&a.elector, false, interval() * 2 + SLACK)
        .await
        .expect("the holder steps down after its session is terminated");
    println!("holder stepped down {took:?} after its backend was terminated");

    // Someone leads again with a higher token: b after the lock delay, or
    // a itself at once (the delay does not hold a holder back from its own seat).
    let bound = LEASE + interval() * 3 + SLACK;
    let deadline = terminated + bound;
    let (who, new_token) = loop {
        let leader = [&a, &b]
            .iter()
            .find(|r| r.elector.is_leader())
            .and_then(|r| Some((r.id.clone(), r.elector.token()?)));
        if let Some(leader) = leader {
            break leader;
        }
        assert!(
            Instant::now() < deadline,
            "no new leader within {bound:?} of the termination"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    println!(
        "{who} began a new term (token {new_token}) {:?} after the termination",
        terminated.elapsed()
    );
    assert!(new_token > old_token);
    a.elector.shutdown().await;
    b.elector.shutdown().await;
    checked(&history);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitioned_holder_steps_down_before_the_server_frees_its_lock() {
    let pg = server().await;
    let proxy = FaultProxy::start(pg.addr()).await.expect("fault proxy");
    let via_proxy = pg.url_via(proxy.addr());
    let history = History::new();
    let prefix = prefix("partition");
    let a = recorded(
        pg_store(&via_proxy),
        election_config(&prefix, "svc", "part-a", LEASE),
        &history,
    );
    until_leading(&a.elector, true, interval() * 3 + SLACK)
        .await
        .expect("a leads");
    let b = recorded(
        pg_store(pg.url()),
        election_config(&prefix, "svc", "part-b", LEASE),
        &history,
    );

    proxy.set_mode(Mode::Blackhole);
    let cut = Instant::now();
    // Renewals get no answer; the elector gives up at its renew deadline
    // ((renewal interval + lease) / 2 after the last successful renewal).
    let deadline = (interval() + LEASE) / 2;
    let took = until_leading(&a.elector, false, deadline + SLACK)
        .await
        .expect("the partitioned holder steps down");
    let stepped_down = Instant::now();
    println!(
        "partitioned holder stepped down {took:?} after the cut (renew deadline {deadline:?})"
    );

    // The server keeps a's session (the proxy holds its socket open) until
    // TCP gives up on it, which the tightened keepalive bounds at no less
    // than one lease after the last packet from a. Free it exactly then.
    let last_ok = history
        .events()
        .iter()
        .filter(|e| {
            e.process == a.id && matches!(e.op, Op::Acquire | Op::Renew) && e.outcome == Outcome::Ok
        })
        .map(|e| e.invoked)
        .max()
        .expect("a acquired and renewed");
    let earliest_server_release = last_ok + LEASE;
    assert!(
        stepped_down < earliest_server_release,
        "a stepped down {:?} after its last renewal, later than the server may free its lock ({LEASE:?})",
        stepped_down - last_ok
    );
    assert!(
        !b.elector.is_leader(),
        "b leads while a's session still holds the lock"
    );
    tokio::time::sleep_until(earliest_server_release).await;
    proxy.set_mode(Mode::Reset);

    // b waits out the lock delay (a's term ended without a release).
    let took = until_leading(&b.elector, true, LEASE + interval() * 3 + SLACK)
        .await
        .expect("b leads once the server has freed a's lock");
    println!(
        "b leads {took:?} after the server freed a's lock ({:?} after the cut)",
        cut.elapsed()
    );
    // The lock delay: b first finds the lock free after `freed` and keeps
    // the seat empty for one lease from then.
    assert!(
        took >= LEASE.mul_f64(0.99),
        "b led {took:?} after the server freed a's lock, before the lock delay ({LEASE:?})"
    );
    a.elector.shutdown().await;
    b.elector.shutdown().await;
    checked(&history);
}

/// The environment variable that turns this test binary into a holder
/// process: `url|key prefix|instance id`.
const HOLD_ENV: &str = "LEADER_PG_TEST_HOLD";

/// Not a check: the entry point of the holder process that
/// `kill_9_of_the_holder_process_hands_over` starts by running this test
/// binary again with `--ignored` and [`HOLD_ENV`] set (ignored, so that it
/// is never counted as a passing test).
#[tokio::test]
#[ignore = "the holder process of kill_9_of_the_holder_process_hands_over, not a test"]
async fn holder_process_entry_point() {
    let spec = std::env::var(HOLD_ENV).unwrap_or_else(|_| {
        panic!("not a test: run only as a holder process, with {HOLD_ENV} set")
    });
    let parts: Vec<&str> = spec.split('|').collect();
    let [url, prefix, instance] = parts[..] else {
        panic!("{HOLD_ENV} must be url|prefix|instance, got {spec:?}");
    };
    let elector = leader_core::Elector::start(
        pg_store(url),
        election_config(prefix, "svc", instance, LEASE),
    )
    .expect("start the elector");
    until_leading(&elector, true, interval() * 3 + SLACK * 2)
        .await
        .expect("the holder process leads");
    println!(
        "LEADER {}",
        elector.token().map(|t| t.0).unwrap_or_default()
    );
    // Lead until killed (bounded, should the parent die without killing us).
    tokio::time::sleep(Duration::from_secs(120)).await;
}

/// Starts this test binary as a holder process and waits until it leads.
async fn holder_process(url: &str, prefix: &str, instance: &str) -> tokio::process::Child {
    let exe = std::env::current_exe().expect("test binary path");
    let mut child = tokio::process::Command::new(exe)
        .args([
            "--exact",
            "holder_process_entry_point",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(HOLD_ENV, format!("{url}|{prefix}|{instance}"))
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start the holder process");
    let stdout = child.stdout.take().expect("piped stdout");
    let mut lines = BufReader::new(stdout).lines();
    let leading = tokio::time::timeout(interval() * 3 + SLACK * 2, async {
        while let Some(line) = lines.next_line().await.expect("read its output") {
            if line.contains("LEADER ") {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(
        leading,
        Ok(true),
        "the holder process did not report leading in time"
    );
    child
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_the_holder_process_hands_over() {
    let pg = server().await;
    for lock_delay in [true, false] {
        let history = History::new();
        let prefix = prefix(if lock_delay {
            "kill9-delay"
        } else {
            "kill9-nodelay"
        });
        let mut child = holder_process(pg.url(), &prefix, "proc-a").await;
        let follower: Arc<dyn LeaseStore> =
            Arc::new(store_with(options(pg.url()).with_lock_delay(lock_delay)));
        let b = recorded(
            follower,
            election_config(&prefix, "svc", "proc-b", LEASE),
            &history,
        );
        // b is a follower while the process leads.
        assert!(
            until_leading(&b.elector, true, interval() * 2)
                .await
                .is_none()
        );

        child.start_kill().expect("SIGKILL the holder process");
        let killed = Instant::now();
        child.wait().await.expect("reap the holder process");
        // The kernel closes its socket, Postgres frees the lock at once; b
        // notices at its next poll, then (with the delay) waits one lease.
        let bound = if lock_delay { LEASE } else { Duration::ZERO } + interval() * 3 + SLACK;
        until_leading(&b.elector, true, bound)
            .await
            .unwrap_or_else(|| {
                panic!("no new leader within {bound:?} of kill -9 (lock delay {lock_delay})")
            });
        println!(
            "failover after kill -9 of the holder process: {:?} (lock delay {lock_delay}, lease {LEASE:?}, retry {:?})",
            killed.elapsed(),
            interval()
        );
        b.elector.shutdown().await;
        checked(&history);
    }
}

/// Backends LISTENing on `channel` from connections named `app`.
async fn listeners(url: &str, channel: &str, app: &str) -> Vec<i32> {
    let mut admin = admin(url).await;
    sqlx::query_scalar(
        "SELECT pid FROM pg_stat_activity WHERE query = 'LISTEN \"' || $1 || '\"' \
         AND application_name = $2",
    )
    .bind(channel)
    .bind(app)
    .fetch_all(&mut admin)
    .await
    .expect("list listeners")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_listener_is_replaced_and_handover_is_pushed_again() {
    let pg = server().await;
    let history = History::new();
    let prefix = prefix("listener");
    let a = recorded(
        pg_store(pg.url()),
        election_config(&prefix, "svc", "lst-a", LEASE),
        &history,
    );
    until_leading(&a.elector, true, interval() * 3 + SLACK)
        .await
        .expect("a leads");
    // b's connections that hold no lease carry this name.
    let sep = if pg.url().contains('?') { '&' } else { '?' };
    let b_url = format!("{}{sep}application_name=lst-b-idle", pg.url());
    let b_store = store(&b_url);
    let channel = b_store.channel(a.elector.key());
    let b = recorded(
        Arc::new(b_store),
        election_config(&prefix, "svc", "lst-b", LEASE),
        &history,
    );

    // b subscribes; its listener's backend is then killed.
    let deadline = Instant::now() + interval() * 2 + SLACK;
    let first = loop {
        let found = listeners(pg.url(), &channel, "lst-b-idle").await;
        if let [pid] = found[..] {
            break pid;
        }
        assert!(
            Instant::now() < deadline,
            "b never listened on {channel}: {found:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let mut admin = admin(pg.url()).await;
    sqlx::query("SELECT pg_terminate_backend($1, 5000)")
        .bind(first)
        .execute(&mut admin)
        .await
        .expect("terminate the listener");

    // The subscription ends; the elector polls and subscribes again.
    let deadline = Instant::now() + interval() * 3 + SLACK;
    loop {
        let found = listeners(pg.url(), &channel, "lst-b-idle").await;
        if matches!(found[..], [pid] if pid != first) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "b did not listen again: {found:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // A graceful handover is pushed through the new listener.
    let started = Instant::now();
    a.elector.shutdown().await;
    let took = until_leading(&b.elector, true, interval() + SLACK)
        .await
        .expect("b leads after a's release");
    println!("handover after re-subscribing: {:?}", started.elapsed());
    assert!(took < LEASE);
    b.elector.shutdown().await;
    checked(&history);
}
