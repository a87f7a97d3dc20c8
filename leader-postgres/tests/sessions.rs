//! Many leases on a few shared pinned sessions, and one shared LISTEN
//! connection per store: connection counts, a session's loss ending every
//! lease on it, session settings, routing of notifications, and the shared
//! listener's loss and recovery.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use futures::{FutureExt, StreamExt};
use leader_core::{ErrorKind, LeaseEvent, LeaseEvents, LeaseKey, LeaseStore};
use leader_postgres::PostgresStore;
use leader_testkit::history::{CheckOptions, History};
use leader_testkit::proxy::{FaultProxy, Mode};
use tokio::time::Instant;

const TTL: Duration = Duration::from_secs(10);
/// The suite's real-server profile: a 2 s lease, 3 s slack for a loaded box.
const LEASE: Duration = Duration::from_secs(2);
const SLACK: Duration = Duration::from_secs(3);

fn interval() -> Duration {
    LEASE / 4
}

/// A store whose leases share at most `sessions` pinned sessions.
fn shared(url: &str, sessions: usize) -> PostgresStore {
    store_with(options(url).with_pinned_sessions(sessions))
}

/// `url` with the connections named `app` (to count them).
fn named(url: &str, app: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}application_name={app}")
}

fn unique(name: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{name}-{}-{nanos}", std::process::id())
}

/// Server connections named `app`: all of them, and those holding locks.
async fn connections(url: &str, app: &str) -> (i64, i64, i64) {
    let mut admin = admin(url).await;
    sqlx::query_as(
        "SELECT (SELECT count(*) FROM pg_stat_activity WHERE application_name = $1), \
                count(DISTINCT k.pid), count(k.pid) \
         FROM pg_locks k JOIN pg_stat_activity a ON a.pid = k.pid \
         WHERE k.locktype = 'advisory' AND a.application_name = $1",
    )
    .bind(app)
    .fetch_one(&mut admin)
    .await
    .expect("count connections and locks")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_leases_on_one_client_use_a_handful_of_connections() {
    const LEASES: usize = 1000;
    let pg = server().await;
    let app = unique("many");
    let s = store(&named(pg.url(), &app));
    let prefix = unique("many");
    let keys: Vec<LeaseKey> = (0..LEASES)
        .map(|i| LeaseKey::new(&format!("{prefix}:"), &format!("r{i}")).expect("valid key"))
        .collect();
    let started = Instant::now();
    let leases: Vec<_> = futures::stream::iter(keys.iter().enumerate())
        .map(|(i, k)| {
            let s = s.clone();
            async move {
                acquired(
                    s.acquire(k, &holder(&format!("many_{i}")), TTL)
                        .await
                        .expect("acquire"),
                )
            }
        })
        .buffer_unordered(64)
        .collect()
        .await;
    let took = started.elapsed();
    let (backends, locking, locks) = connections(pg.url(), &app).await;
    println!(
        "{LEASES} leases acquired in {took:?}, held on {locking} pinned sessions; {backends} \
         server connections in all"
    );
    assert_eq!(locks, LEASES as i64, "every lease holds its advisory lock");
    assert!(
        locking as usize <= leader_postgres::DEFAULT_PINNED_SESSIONS,
        "{locking} sessions hold the locks, above the bound"
    );
    // The pinned sessions plus at most the idle connections kept for
    // lookups (the schema check).
    assert!(
        backends as usize <= leader_postgres::DEFAULT_PINNED_SESSIONS + 2,
        "{backends} connections for {LEASES} leases"
    );

    let started = Instant::now();
    let renewed = futures::future::join_all(leases.iter().map(|l| s.renew(l))).await;
    println!("renewing all {LEASES} took {:?}", started.elapsed());
    assert!(renewed.iter().all(Result::is_ok), "every renewal succeeds");
    let released = futures::future::join_all(leases.iter().map(|l| s.release(l))).await;
    assert!(
        released.into_iter().all(|r| r.expect("release")),
        "every release frees its lease"
    );
    assert_eq!(connections(pg.url(), &app).await.2, 0, "no lock left");
}

#[tokio::test]
async fn leases_on_one_session_all_fail_renewal_when_it_is_terminated() {
    let pg = server().await;
    let s = shared(pg.url(), 1);
    let keys: Vec<LeaseKey> = (0..5).map(|i| key(&format!("one-session-{i}"))).collect();
    let mut leases = Vec::new();
    for (i, k) in keys.iter().enumerate() {
        let h = holder(&format!("one_{i}"));
        leases.push(acquired(s.acquire(k, &h, TTL).await.expect("acquire")));
    }
    let first = s
        .pinned_session(&keys[0])
        .await
        .expect("inspect")
        .expect("pinned");
    assert_eq!(first.leases, keys.len(), "{first:?}");
    for k in &keys {
        let info = s.pinned_session(k).await.expect("inspect").expect("pinned");
        assert_eq!(info.pid, first.pid, "every lease on the one session");
    }

    let mut admin = admin(pg.url()).await;
    let ended: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1, 5000)")
        .bind(first.pid)
        .fetch_one(&mut admin)
        .await
        .expect("terminate the session");
    assert!(ended);
    for lease in &leases {
        let err = s
            .renew(lease)
            .await
            .expect_err("renewal after the session ended");
        assert_eq!(err.kind(), ErrorKind::NotHolder, "{err}");
        assert!(
            !s.release(lease).await.expect("release"),
            "nothing to release"
        );
    }
    // The terms ended without a release: others wait out the lock delay.
    let other = store(pg.url());
    for k in &keys {
        let info = held(other.acquire(k, &holder("next_1"), TTL).await.expect("try"));
        assert!(info.remaining.is_some(), "{info:?}");
    }
    // The store opens a new session for the next lease.
    let again = acquired(
        s.acquire(&key("one-session-after"), &holder("one_after"), TTL)
            .await
            .expect("a new session"),
    );
    assert!(s.release(&again).await.expect("release"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn electors_on_one_session_all_step_down_when_it_ends_and_followers_take_over() {
    let pg = server().await;
    let prefix = format!("{}:", unique("pgshared"));
    let one = Arc::new(shared(pg.url(), 1));
    let two: Arc<dyn LeaseStore> = Arc::new(store(pg.url()));
    let resources = ["r0", "r1", "r2"];
    // One history per resource: each is checked on its own.
    let histories: Vec<History> = resources.iter().map(|_| History::new()).collect();
    // An elector per resource on `store`, instances named `name-<resource>`.
    let elect = |store: Arc<dyn LeaseStore>, name: &str| -> Vec<Recorded> {
        resources
            .iter()
            .zip(&histories)
            .map(|(r, history)| {
                let config = election_config(&prefix, r, &format!("{name}-{r}"), LEASE);
                recorded(store.clone(), config, history)
            })
            .collect()
    };
    let leaders = elect(one.clone(), "one");
    for l in &leaders {
        until_leading(&l.elector, true, interval() * 3 + SLACK)
            .await
            .expect("each leads");
    }
    let followers = elect(two, "two");
    let mut pids = Vec::new();
    for l in &leaders {
        let info = one
            .pinned_session(l.elector.key())
            .await
            .expect("inspect")
            .expect("pinned");
        pids.push(info.pid);
    }
    assert!(
        pids.windows(2).all(|w| w[0] == w[1]),
        "one session: {pids:?}"
    );
    let old_tokens: Vec<_> = leaders.iter().map(|l| l.elector.token()).collect();

    let mut admin = admin(pg.url()).await;
    sqlx::query("SELECT pg_terminate_backend($1, 5000)")
        .bind(pids[0])
        .execute(&mut admin)
        .await
        .expect("terminate the shared session");
    let terminated = Instant::now();
    for l in &leaders {
        let took = until_leading(&l.elector, false, interval() * 2 + SLACK)
            .await
            .expect("every elector on the session steps down");
        println!("{} stepped down {took:?} after the termination", l.id);
    }
    for l in &leaders {
        l.elector.shutdown().await;
    }
    // The followers take over once the lock delay (one lease) has passed.
    let bound = LEASE + interval() * 4 + SLACK * 2;
    for (f, old) in followers.iter().zip(&old_tokens) {
        until_leading(&f.elector, true, bound.saturating_sub(terminated.elapsed()))
            .await
            .unwrap_or_else(|| panic!("{} did not lead within {bound:?}", f.id));
        assert!(f.elector.token() > *old, "a higher token");
    }
    println!(
        "all followers lead {:?} after the termination",
        terminated.elapsed()
    );
    for f in &followers {
        f.elector.shutdown().await;
    }
    for history in &histories {
        history.assert_ok_with(&CheckOptions::with_validity(LEASE.mul_f64(0.99)));
    }
}

#[tokio::test]
async fn a_shared_session_runs_with_the_longest_ttl_of_its_leases() {
    let pg = server().await;
    let s = shared(pg.url(), 1);
    let (long, short) = (key("ttl-long"), key("ttl-short"));
    let a = acquired(
        s.acquire(&long, &holder("ttl_long"), Duration::from_secs(4))
            .await
            .expect("acquire"),
    );
    let b = acquired(
        s.acquire(&short, &holder("ttl_short"), Duration::from_secs(2))
            .await
            .expect("acquire"),
    );
    let info = s
        .pinned_session(&short)
        .await
        .expect("inspect")
        .expect("pinned");
    assert_eq!(info.leases, 2);
    // Never ended while the longer lease may still be valid.
    assert_eq!(info.idle_session_timeout.as_deref(), Some("5s"), "{info:?}");
    assert_eq!(info.tcp_user_timeout, "5000", "{info:?}");
    assert!(s.release(&a).await.expect("release"));
    assert!(s.release(&b).await.expect("release"));
}

/// Acquires and releases `key` on `s`, which notifies its watchers.
async fn cycle(s: &PostgresStore, key: &LeaseKey) {
    let lease = acquired(
        s.acquire(key, &holder("cycler_1"), TTL)
            .await
            .expect("acquire"),
    );
    assert!(s.release(&lease).await.expect("release"));
}

/// Events already delivered to `events`, without waiting.
fn pending(events: &mut LeaseEvents) -> usize {
    let mut n = 0;
    while let Some(Some(_)) = events.recv().now_or_never() {
        n += 1;
    }
    n
}

async fn next(events: &mut LeaseEvents) -> Option<LeaseEvent> {
    tokio::time::timeout(SLACK * 2, events.recv())
        .await
        .expect("an event or the end of the subscription")
}

#[tokio::test]
async fn two_watchers_on_one_client_each_see_only_their_own_keys_events() {
    let pg = server().await;
    let app = unique("route");
    let watchers = store(&named(pg.url(), &app));
    let cycler = store(pg.url());
    let (k1, k2) = (key("route-1"), key("route-2"));
    let mut w1 = watchers.watch(&k1).await.expect("watch k1");
    let mut w2 = watchers.watch(&k2).await.expect("watch k2");
    assert_eq!(
        connections(pg.url(), &app).await.0,
        1,
        "one LISTEN connection for both watchers"
    );
    // k1, k2, k1, k2: notifications arrive in commit order, so once w2 has
    // its second event every earlier one has been routed.
    for k in [&k1, &k2, &k1, &k2] {
        cycle(&cycler, k).await;
    }
    assert_eq!(next(&mut w2).await, Some(LeaseEvent::Vacated));
    assert_eq!(next(&mut w2).await, Some(LeaseEvent::Vacated));
    assert_eq!(pending(&mut w2), 0, "w2 got only k2's two releases");
    assert_eq!(pending(&mut w1), 2, "w1 got only k1's two releases");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shared_listener_is_reestablished_once_for_all_after_it_breaks() {
    let pg = server().await;
    let proxy = FaultProxy::start(pg.addr()).await.expect("proxy");
    let watchers = store(&pg.url_via(proxy.addr()));
    let cycler = store(pg.url());
    let (k1, k2) = (key("relisten-1"), key("relisten-2"));
    let mut w1 = watchers.watch(&k1).await.expect("watch k1");
    let mut w2 = watchers.watch(&k2).await.expect("watch k2");
    assert_eq!(proxy.open_connections(), 1, "one LISTEN connection");

    // The shared connection breaks: every subscription ends (the electors
    // poll meanwhile), and while it cannot be re-established, subscribing
    // fails as unavailable instead of hanging.
    // (In this mode new connections are reset at once, too.)
    proxy.set_mode(Mode::Reset);
    assert_eq!(next(&mut w1).await, None, "w1's subscription ends");
    assert_eq!(next(&mut w2).await, None, "w2's subscription ends");
    let err = watchers
        .watch(&k1)
        .await
        .expect_err("no server to listen on");
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");

    // Back: both subscribe again, on one new connection.
    proxy.set_mode(Mode::PassThrough);
    let (a, b) = tokio::join!(watchers.watch(&k1), watchers.watch(&k2));
    let (mut w1, mut w2) = (a.expect("watch k1 again"), b.expect("watch k2 again"));
    assert_eq!(proxy.open_connections(), 1, "re-established once for both");
    cycle(&cycler, &k1).await;
    assert_eq!(next(&mut w1).await, Some(LeaseEvent::Vacated));
    cycle(&cycler, &k2).await;
    assert_eq!(next(&mut w2).await, Some(LeaseEvent::Vacated));
    assert_eq!(pending(&mut w1), 0, "w1 got only k1's release");
}
