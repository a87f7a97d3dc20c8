//! A holder process that is stopped but not dead (SIGSTOP: its kernel still
//! answers TCP, so the server keeps its session) must not keep the seat:
//! the pinned session's `idle_session_timeout` (the lease TTL) makes the
//! server end it about one TTL after its last renewal. A follower then leads
//! after the lock delay; the stopped holder steps down when it resumes, and
//! its late fenced write is rejected.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use leader_core::{Elector, FencingToken, LeaseStore};
use leader_testkit::history::{CheckOptions, FencedResource, History};
use leader_testkit::wait::eventually;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::mpsc;
use tokio::time::Instant;

/// The suite's real-server profile: a 2 s lease, 3 s slack for a loaded box.
const LEASE: Duration = Duration::from_secs(2);
const SLACK: Duration = Duration::from_secs(3);
/// The holder's "work" between its leadership check and its write: long
/// enough that the SIGSTOP, sent when the check is reported, lands inside it.
const WORK: Duration = Duration::from_secs(1);

/// Renewal interval, retry period and request timeout of the suite's config.
fn interval() -> Duration {
    LEASE / 4
}

/// The environment variable that turns this test binary into a holder
/// process: `url|key prefix|instance id`.
const HOLD_ENV: &str = "LEADER_PG_TEST_STOPPED_HOLDER";

/// Not a check: the entry point of the holder process that
/// `a_stopped_holder_loses_the_seat_and_its_late_write_is_fenced` starts
/// by running this test binary again with [`HOLD_ENV`] set. Without it, it
/// returns at once.
///
/// It leads, then loops: check `is_leader()`, report `CHECKED token`, work
/// for [`WORK`], report `WRITE token` (the write goes to the parent's fenced
/// resource). It reports `STEPPED_DOWN` when its elector steps down.
#[tokio::test]
async fn stopped_holder_process_entry_point() {
    let Ok(spec) = std::env::var(HOLD_ENV) else {
        return;
    };
    let parts: Vec<&str> = spec.split('|').collect();
    let [url, prefix, instance] = parts[..] else {
        panic!("{HOLD_ENV} must be url|prefix|instance, got {spec:?}");
    };
    let store: Arc<dyn LeaseStore> = Arc::new(store(url));
    let elector = Elector::start(store, election_config(prefix, "svc", instance, LEASE))
        .expect("start the elector");
    until_leading(&elector, true, interval() * 3 + SLACK * 2)
        .await
        .expect("the holder process leads");
    println!(
        "LEADER {}",
        elector.token().map(|t| t.0).unwrap_or_default()
    );
    let mut states = elector.subscribe();
    tokio::spawn(async move {
        while states.changed().await.is_ok() {
            if !states.borrow_and_update().is_leader {
                println!("STEPPED_DOWN");
                return;
            }
        }
    });
    // Bounded, should the parent die without killing us.
    let end = Instant::now() + Duration::from_secs(120);
    while Instant::now() < end {
        if elector.is_leader()
            && let Some(token) = elector.token()
        {
            println!("CHECKED {}", token.0);
            tokio::time::sleep(WORK).await;
            println!("WRITE {}", token.0);
        } else {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Starts the holder process; its output lines arrive on the receiver.
fn holder_process(
    url: &str,
    prefix: &str,
    instance: &str,
) -> (tokio::process::Child, mpsc::UnboundedReceiver<String>) {
    let exe = std::env::current_exe().expect("test binary path");
    let mut child = tokio::process::Command::new(exe)
        .args([
            "--exact",
            "stopped_holder_process_entry_point",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(HOLD_ENV, format!("{url}|{prefix}|{instance}"))
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start the holder process");
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut lines = BufReader::new(stdout).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            // libtest prints `test NAME ... ` before the test's first line.
            let line = ["LEADER ", "CHECKED ", "WRITE ", "STEPPED_DOWN"]
                .iter()
                .filter_map(|w| line.find(w))
                .min()
                .map_or(line.clone(), |at| line[at..].to_owned());
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    (child, rx)
}

/// The next line from the holder starting with `word`, within `limit`;
/// `WRITE` lines met on the way are applied to `resource` as in-time writes.
async fn next_line(
    rx: &mut mpsc::UnboundedReceiver<String>,
    word: &str,
    limit: Duration,
    resource: &FencedResource,
) -> String {
    let found = tokio::time::timeout(limit, async {
        while let Some(line) = rx.recv().await {
            if line.starts_with(word) {
                return Some(line);
            }
            if let Some(token) = written_token(&line) {
                resource.write("stop-a", token);
            }
        }
        None
    })
    .await;
    match found {
        Ok(Some(line)) => line,
        Ok(None) => panic!("the holder process ended before reporting {word}"),
        Err(_) => panic!("the holder process did not report {word} within {limit:?}"),
    }
}

fn written_token(line: &str) -> Option<FencingToken> {
    line.strip_prefix("WRITE ")
        .and_then(|t| t.trim().parse().ok())
        .map(FencingToken)
}

fn signal(child: &tokio::process::Child, name: &str) {
    let pid = child.id().expect("the holder process runs");
    let status = std::process::Command::new("kill")
        .args([&format!("-{name}"), &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{name} {pid} failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_holder_loses_the_seat_and_its_late_write_is_fenced() {
    let pg = server().await;
    let history = History::new();
    let resource = Arc::new(FencedResource::recording(history.clone()));
    let prefix = format!("pgstop-{}-{}:", std::process::id(), rand_suffix());

    let (mut child, mut lines) = holder_process(pg.url(), &prefix, "stop-a");
    let leader = next_line(&mut lines, "LEADER ", interval() * 3 + SLACK * 2, &resource).await;
    println!("holder process: {leader}");
    let b = recorded(
        Arc::new(store(pg.url())),
        election_config(&prefix, "svc", "stop-b", LEASE),
        &history,
    );
    // b writes whenever it believes it leads.
    let writer = {
        let (elector, resource) = (b.elector.clone(), resource.clone());
        tokio::spawn(async move {
            loop {
                if elector.is_leader()
                    && let Some(token) = elector.token()
                {
                    resource.write("stop-b", token);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };

    // Stop the holder between its leadership check and its write.
    let checked = next_line(&mut lines, "CHECKED ", WORK * 2 + SLACK, &resource).await;
    signal(&child, "STOP");
    let stopped = Instant::now();
    let stale: FencingToken =
        written_token(&checked.replace("CHECKED", "WRITE")).expect("the check names its token");

    // The server ends the stopped holder's session one lease after its last
    // renewal finished (at most: the stop), the follower finds the lock free
    // at its next poll and waits out the lock delay (one lease), then takes
    // it at the poll after.
    let bound = LEASE + LEASE + interval() * 3 + SLACK;
    let took = until_leading(&b.elector, true, bound)
        .await
        .unwrap_or_else(|| panic!("no follower led within {bound:?} of the SIGSTOP"));
    println!(
        "follower leads {took:?} after the SIGSTOP of the holder (lease {LEASE:?}, retry {:?})",
        interval()
    );
    // Not before the stopped holder's validity (at most one lease from its
    // last renewal, sent before the stop) has ended.
    assert!(
        took >= LEASE,
        "the follower led {took:?} after the stop, before the stopped holder's lease ran out"
    );
    let b_token = b.elector.token().expect("a leader has a token");
    assert!(b_token > stale, "{b_token} after {stale}");
    let deadline = Instant::now() + interval() + SLACK;
    while resource.highest() != Some(b_token) {
        assert!(Instant::now() < deadline, "the new leader never wrote");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // Resumed, the old holder steps down and its late write is refused.
    signal(&child, "CONT");
    let resumed = Instant::now();
    let limit = interval() * 2 + SLACK;
    let mut stepped_down = false;
    let mut late_write = None;
    while !(stepped_down && late_write.is_some()) {
        let line = tokio::time::timeout_at(resumed + limit, lines.recv())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "within {limit:?} of SIGCONT: stepped down {stepped_down}, late write \
                     {late_write:?}"
                )
            })
            .expect("the holder process keeps running");
        if line.starts_with("STEPPED_DOWN") {
            stepped_down = true;
            println!(
                "the resumed holder stepped down {:?} after SIGCONT",
                resumed.elapsed()
            );
        } else if let Some(token) = written_token(&line) {
            assert_eq!(
                token, stale,
                "the only write after the stop is the stale one"
            );
            late_write = Some(resource.write("stop-a", token));
        }
    }
    assert_eq!(late_write, Some(false), "the stale write was accepted");
    assert!(!b.elector.is_leader() || b.elector.token() == Some(b_token));

    writer.abort();
    child.start_kill().expect("kill the holder process");
    let _ = child.wait().await;
    b.elector.shutdown().await;
    let summary = history.assert_ok_with(&CheckOptions::with_validity(LEASE.mul_f64(0.99)));
    assert!(summary.stale_writes_rejected >= 1, "{summary:?}");
    println!("elapsed since the stop: {:?}", stopped.elapsed());
}

#[tokio::test]
async fn the_pinned_session_idles_out_after_one_ttl_and_is_replaced_when_unused() {
    let pg = server().await;
    let s = store(pg.url());
    let key = key("idle-timeout");
    let lease = acquired(
        s.acquire(&key, &holder("idle_1"), LEASE)
            .await
            .expect("acquire"),
    );
    let info = s
        .pinned_session(&key)
        .await
        .expect("session")
        .expect("pinned");
    assert_eq!(
        info.idle_session_timeout.as_deref(),
        Some("2500ms"),
        "{info:?}"
    );
    assert!(s.release(&lease).await.expect("release"));

    // The released session keeps its settings for the next lease (no
    // settings on every acquisition); unused, the server ends it...
    eventually(
        LEASE * 2 + SLACK,
        "the server to end the unused session",
        || {
            let url = pg.url().to_owned();
            async move {
                !sqlx::query_scalar::<_, bool>(
                    "SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE pid = $1)",
                )
                .bind(info.pid)
                .fetch_one(&mut admin(&url).await)
                .await
                .expect("look the backend up")
            }
        },
    )
    .await;
    // ... and the next acquisition replaces it without an error.
    let next = acquired(
        s.acquire(&key, &holder("idle_2"), LEASE)
            .await
            .expect("an acquisition after the session idled out"),
    );
    let now = s
        .pinned_session(&key)
        .await
        .expect("session")
        .expect("pinned");
    assert_ne!(now.pid, info.pid, "a new session");
    assert!(s.release(&next).await.expect("release"));
}

fn rand_suffix() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0)
}
