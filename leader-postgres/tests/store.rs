//! The Postgres store against a real server: semantics, holder inspection,
//! loss detection, release notifications.

mod common;

use std::time::Duration;

use common::*;
use leader_core::{ErrorKind, FencingToken, LeaseEvent, LeaseStore};
use leader_testkit::proxy::{FaultProxy, Mode};
use leader_testkit::wait::eventually;
use sqlx::Row;

const TTL: Duration = Duration::from_secs(10);

#[tokio::test]
async fn acquire_renew_release_with_increasing_tokens_and_named_holder() {
    let pg = server().await;
    let a = store(pg.url());
    let b = store(pg.url());
    let key = key("basic");
    let (ha, hb) = (holder("alpha_1_aa"), holder("beta_2_bb"));

    let first = acquired(a.acquire(&key, &ha, TTL).await.expect("acquire"));
    a.renew(&first).await.expect("renew while held");

    let info = held(b.acquire(&key, &hb, TTL).await.expect("acquire by b"));
    assert_eq!(info.holder, ha);
    assert_eq!(info.token, first.token);
    assert_eq!(info.remaining, None, "session-bound locks have no TTL");
    let current = b.current(&key).await.expect("current").expect("a holder");
    assert_eq!((current.holder, current.token), (ha.clone(), first.token));

    // The operators' query from the README names holder, token and the
    // backend of the pinned session.
    let mut admin = admin(pg.url()).await;
    let pinned = a
        .pinned_session(&key)
        .await
        .expect("inspect")
        .expect("pinned");
    let readme = include_str!("../README.md");
    let start = readme
        .find("SELECT a.pid, a.application_name")
        .expect("README query");
    let end = start + readme[start..].find(';').expect("query ends");
    let row = sqlx::query(sqlx::AssertSqlSafe(&readme[start..end]))
        .fetch_all(&mut admin)
        .await
        .expect("README query runs")
        .into_iter()
        .find(|r| r.get::<String, _>("resource") == key.as_str())
        .expect("the README query lists the lease");
    assert_eq!(row.get::<String, _>("holder"), "alpha_1_aa");
    assert_eq!(row.get::<i64, _>("token") as u64, first.token.0);
    assert_eq!(row.get::<i32, _>("pid"), pinned.pid);

    assert!(a.release(&first).await.expect("release"));
    assert!(
        !a.release(&first).await.expect("second release"),
        "already released"
    );
    assert_eq!(a.current(&key).await.expect("current"), None);
    let err = a.renew(&first).await.expect_err("renew after release");
    assert_eq!(err.kind(), ErrorKind::NotHolder);

    let second = acquired(b.acquire(&key, &hb, TTL).await.expect("b acquires"));
    assert!(second.token > first.token, "{second:?} after {first:?}");
    assert!(b.release(&second).await.expect("release"));
}

#[tokio::test]
async fn a_busy_lock_names_its_holder_on_a_session_already_in_use() {
    // The common acquisition (on a session whose settings are applied)
    // leaves the holder lookup out of its statement; a miss must still
    // name the holder and its token.
    let pg = server().await;
    let (a, b) = (store(pg.url()), store(pg.url()));
    let (busy, warm) = (key("busy"), key("warm"));
    let (ha, hb) = (holder("alpha_9_aa"), holder("beta_9_bb"));
    let first = acquired(a.acquire(&busy, &ha, TTL).await.expect("acquire by a"));
    // b's session is opened and configured by a lease of its own first.
    let own = acquired(b.acquire(&warm, &hb, TTL).await.expect("acquire by b"));
    for _ in 0..3 {
        let info = held(b.acquire(&busy, &hb, TTL).await.expect("acquire by b"));
        assert_eq!((info.holder, info.token), (ha.clone(), first.token));
    }
    assert!(b.release(&own).await.expect("release by b"));
    let info = held(b.acquire(&busy, &hb, TTL).await.expect("acquire by b"));
    assert_eq!((info.holder, info.token), (ha.clone(), first.token));
    assert!(a.release(&first).await.expect("release by a"));
    let next = acquired(b.acquire(&busy, &hb, TTL).await.expect("acquire by b"));
    assert!(next.token > first.token);
}

#[tokio::test]
async fn same_holder_reacquire_is_a_new_term_and_retires_the_old_token() {
    let pg = server().await;
    let s = store(pg.url());
    let key = key("reacquire");
    let h = holder("same_1_cc");
    let old = acquired(s.acquire(&key, &h, TTL).await.expect("acquire"));
    let new = acquired(s.acquire(&key, &h, TTL).await.expect("re-acquire"));
    assert!(new.token > old.token);
    let err = s.renew(&old).await.expect_err("old term");
    assert_eq!(err.kind(), ErrorKind::NotHolder);
    assert!(
        !s.release(&old).await.expect("release old"),
        "old term is not ours"
    );
    s.renew(&new).await.expect("new term renews");
    // One release frees it: the session's lock count stayed at one.
    assert!(s.release(&new).await.expect("release new"));
    let other = store(pg.url());
    let next = acquired(
        other
            .acquire(&key, &holder("other_1"), TTL)
            .await
            .expect("free"),
    );
    assert!(next.token > new.token);

    // Same holder from another store (another process, or a session of ours
    // the server has not dropped yet): the stale session is ended.
    let again = acquired(
        s.acquire(&key, &holder("other_1"), TTL)
            .await
            .expect("same holder elsewhere"),
    );
    assert!(again.token > next.token);
    let err = other
        .renew(&next)
        .await
        .expect_err("the replaced session is gone");
    assert_eq!(err.kind(), ErrorKind::NotHolder);
}

#[tokio::test]
async fn counter_table_is_created_with_the_configured_name_and_documented_schema() {
    let pg = server().await;
    let s = store_with(options(pg.url()).with_table("fence_tokens"));
    let key = key("schema");
    let lease = acquired(s.acquire(&key, &holder("h_1"), TTL).await.expect("acquire"));
    let mut admin = admin(pg.url()).await;
    let row = sqlx::query(
        "SELECT resource, token, holder, pid, acquired_at IS NOT NULL AS stamped \
         FROM fence_tokens WHERE lock_key = $1",
    )
    .bind(s.lock_key(&key))
    .fetch_one(&mut admin)
    .await
    .expect("the counter row");
    assert_eq!(row.get::<String, _>("resource"), key.as_str());
    assert_eq!(row.get::<i64, _>("token") as u64, lease.token.0);
    assert_eq!(row.get::<String, _>("holder"), "h_1");
    assert!(row.get::<bool, _>("stamped"));
    assert!(s.release(&lease).await.expect("release"));
}

#[tokio::test]
async fn explicit_lock_keys_are_used_and_visible_in_pg_locks() {
    let pg = server().await;
    let key = key("explicit");
    let s = store_with(options(pg.url()).with_lock_key(key.resource(), 4_242));
    assert_eq!(s.lock_key(&key), 4_242);
    let lease = acquired(s.acquire(&key, &holder("h_2"), TTL).await.expect("acquire"));
    let mut admin = admin(pg.url()).await;
    let taken: bool = sqlx::query_scalar("SELECT NOT pg_try_advisory_lock(4242)")
        .fetch_one(&mut admin)
        .await
        .expect("try lock");
    assert!(taken, "the explicit key is the one locked");
    assert!(s.release(&lease).await.expect("release"));
}

#[tokio::test]
async fn terminated_holder_session_fails_renewal_and_the_lock_delay_keeps_the_seat_empty() {
    let pg = server().await;
    let s = store(pg.url());
    let key = key("terminated");
    let ttl = Duration::from_secs(2);
    let lease = acquired(
        s.acquire(&key, &holder("victim_1"), ttl)
            .await
            .expect("acquire"),
    );
    assert_eq!(terminate_holder(pg.url(), "victim_1").await, 1);
    let err = s
        .renew(&lease)
        .await
        .expect_err("renew on a terminated session");
    assert_eq!(err.kind(), ErrorKind::NotHolder, "{err}");

    // The victim might still believe it leads until its next renewal: the
    // seat stays empty for one TTL after it is first found free.
    let other = store(pg.url());
    let first_try = tokio::time::Instant::now();
    let info = held(
        other
            .acquire(&key, &holder("next_1"), ttl)
            .await
            .expect("try"),
    );
    assert_eq!(info.holder.as_str(), "victim_1");
    let remaining = info.remaining.expect("the delay says how long");
    assert!(remaining <= ttl && remaining > ttl / 2, "{remaining:?}");
    assert_eq!(
        other.current(&key).await.expect("current"),
        None,
        "nobody holds the lock"
    );
    eventually(ttl * 5, "the delay to pass", || async {
        matches!(
            other.acquire(&key, &holder("next_1"), ttl).await,
            Ok(leader_core::Acquire::Acquired(_))
        )
    })
    .await;
    assert!(
        first_try.elapsed() >= ttl,
        "acquired before the delay ended"
    );
}

#[tokio::test]
async fn without_lock_delay_a_terminated_holders_lock_is_free_at_once() {
    let pg = server().await;
    let opts = options(pg.url()).with_lock_delay(false);
    let s = store_with(opts.clone());
    let other = store_with(opts);
    let key = key("nodelay");
    let lease = acquired(
        s.acquire(&key, &holder("victim_2"), TTL)
            .await
            .expect("acquire"),
    );
    assert_eq!(terminate_holder(pg.url(), "victim_2").await, 1);
    let next = acquired(
        other
            .acquire(&key, &holder("next_2"), TTL)
            .await
            .expect("free at once"),
    );
    assert!(next.token > lease.token);
}

#[tokio::test]
async fn a_lease_not_renewed_within_its_ttl_is_given_up_by_the_store() {
    let pg = server().await;
    let s = store(pg.url());
    let other = store(pg.url());
    let key = key("expiry");
    let ttl = Duration::from_millis(800);
    // The store's clock starts when it sends the acquisition: after this.
    let started = tokio::time::Instant::now();
    let lease = acquired(
        s.acquire(&key, &holder("idle_1"), ttl)
            .await
            .expect("acquire"),
    );
    let mut events = other.watch(&key).await.expect("watch");
    // Released as if gracefully: followers hear of it and no delay applies.
    let event = tokio::time::timeout(ttl * 10, events.recv())
        .await
        .expect("expiry notified");
    assert_eq!(event, Some(LeaseEvent::Vacated));
    assert!(
        started.elapsed() >= ttl,
        "expired early: {:?}",
        started.elapsed()
    );
    let next = acquired(
        other
            .acquire(&key, &holder("next_3"), ttl)
            .await
            .expect("free, no delay"),
    );
    assert!(next.token > lease.token);
    let err = s.renew(&lease).await.expect_err("expired");
    assert_eq!(err.kind(), ErrorKind::NotHolder);
}

#[tokio::test]
async fn force_release_ends_the_holder_session_and_returns_its_info() {
    let pg = server().await;
    let s = store(pg.url());
    let ops = store(pg.url());
    let key = key("force");
    let lease = acquired(
        s.acquire(&key, &holder("stuck_1"), TTL)
            .await
            .expect("acquire"),
    );
    let removed = ops
        .force_release(&key)
        .await
        .expect("force release")
        .expect("a holder");
    assert_eq!(
        (removed.holder.as_str(), removed.token),
        ("stuck_1", lease.token)
    );
    assert_eq!(ops.current(&key).await.expect("current"), None);
    assert_eq!(
        ops.force_release(&key).await.expect("nothing to remove"),
        None
    );
    let err = s.renew(&lease).await.expect_err("holder lost it");
    assert_eq!(err.kind(), ErrorKind::NotHolder);
    // A force release is the operator's decision: no lock delay follows.
    let next = acquired(
        ops.acquire(&key, &holder("ops_1"), TTL)
            .await
            .expect("free at once"),
    );
    assert!(next.token > lease.token);
}

#[tokio::test]
async fn release_notifies_watchers_and_listener_loss_ends_the_stream() {
    let pg = server().await;
    let s = store(pg.url());
    let follower = store(pg.url());
    let key = key("watch");
    let lease = acquired(
        s.acquire(&key, &holder("leader_1"), TTL)
            .await
            .expect("acquire"),
    );
    let mut events = follower.watch(&key).await.expect("watch");
    assert!(s.release(&lease).await.expect("release"));
    let event = tokio::time::timeout(Duration::from_secs(10), events.recv())
        .await
        .expect("a release event within 10 s");
    assert_eq!(event, Some(LeaseEvent::Vacated));

    // Kill the listener's backend: the subscription ends (recv None).
    let mut admin = admin(pg.url()).await;
    let channel = follower.channel(&key);
    let killed: i64 = sqlx::query_scalar(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
         WHERE query ILIKE '%LISTEN%' || $1 || '%' AND pid <> pg_backend_pid()",
    )
    .bind(&channel)
    .fetch_one(&mut admin)
    .await
    .expect("terminate listener");
    assert_eq!(killed, 1, "exactly one listener backend");
    let end = tokio::time::timeout(Duration::from_secs(10), events.recv())
        .await
        .expect("the stream ends within 10 s");
    assert_eq!(end, None);
}

#[tokio::test]
async fn cancelled_renewal_gives_the_lease_up_instead_of_leaving_it_in_doubt() {
    let pg = server().await;
    let proxy = FaultProxy::start(pg.addr()).await.expect("proxy");
    let via_proxy = pg.url_via(proxy.addr());
    let s = store_with(options(&via_proxy).with_lock_delay(false));
    let key = key("cancel");
    let lease = acquired(s.acquire(&key, &holder("c_1"), TTL).await.expect("acquire"));
    // The renewal is sent into a partition and its future dropped (as an
    // elector's request timeout does).
    proxy.set_mode(Mode::Blackhole);
    let cancelled = tokio::time::timeout(Duration::from_millis(300), s.renew(&lease)).await;
    assert!(
        cancelled.is_err(),
        "the renewal cannot finish in a partition"
    );
    proxy.set_mode(Mode::PassThrough);
    // The dropped renewal is not cut off mid-statement: it finishes in the
    // background, landing late or timing out (the session is then closed
    // and the lease given up); the next call knows which, and either way
    // the lock comes free (the lock delay, an acquirer's option, is off to
    // observe that directly).
    match s.renew(&lease).await {
        Ok(()) => assert!(
            s.release(&lease).await.expect("release"),
            "release after renew"
        ),
        Err(err) => assert_eq!(err.kind(), ErrorKind::NotHolder, "{err}"),
    }
    let other = store_with(options(pg.url()).with_lock_delay(false));
    eventually(
        Duration::from_secs(10),
        "the closed session's lock to be freed",
        || async {
            matches!(
                other.acquire(&key, &holder("n_1"), TTL).await,
                Ok(leader_core::Acquire::Acquired(_))
            )
        },
    )
    .await;
}

#[tokio::test]
async fn unreachable_server_is_unavailable_not_a_panic() {
    // A port nobody listens on: take one and free it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let s = store(&format!(
        "postgres://u:pw@127.0.0.1:{port}/db?connect_timeout=2"
    ));
    let err = s
        .acquire(&key("down"), &holder("h"), TTL)
        .await
        .expect_err("nobody listens");
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
    assert!(!format!("{err:?}").contains("pw"));
    let bad_ttl = s
        .acquire(&key("ttl"), &holder("h"), Duration::ZERO)
        .await
        .expect_err("zero ttl");
    assert_eq!(bad_ttl.kind(), ErrorKind::InvalidArgument);
    let _ = FencingToken(0);
}

#[tokio::test]
async fn tokens_survive_a_server_crash_and_a_lost_table_is_recreated() {
    // The private server runs with synchronous_commit=off; the store's
    // sessions force it on, so a SIGKILL right after a term keeps its token.
    let pg = private_server().await;
    let s = store(pg.url());
    let key = key("crash");
    let first = acquired(s.acquire(&key, &holder("a_1"), TTL).await.expect("acquire"));
    assert!(s.release(&first).await.expect("release"));
    pg.kill().await.expect("kill the server");
    pg.restart().await.expect("restart the server");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let next = loop {
        match s.acquire(&key, &holder("b_1"), TTL).await {
            Ok(outcome) => break acquired(outcome),
            Err(e) => assert!(tokio::time::Instant::now() < deadline, "no recovery: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        next.token > first.token,
        "token {} after {} (a commit was lost)",
        next.token,
        first.token
    );
    assert!(s.release(&next).await.expect("release"));

    // The table disappears (a restore from an old backup): recreated.
    let mut admin = admin(pg.url()).await;
    sqlx::query("DROP TABLE leader_fencing")
        .execute(&mut admin)
        .await
        .expect("drop");
    let again = acquired(
        s.acquire(&key, &holder("c_1"), TTL)
            .await
            .expect("acquire recreates"),
    );
    assert!(
        again.token > next.token,
        "a new table must not restart tokens: {} after {}",
        again.token,
        next.token
    );
}

#[tokio::test]
async fn the_pinned_session_runs_with_keepalives_derived_from_the_ttl() {
    let pg = server().await;
    let s = store(pg.url());
    let key = key("keepalive");
    assert_eq!(s.pinned_session(&key).await.expect("no lease yet"), None);
    let ttl = Duration::from_secs(30);
    let lease = acquired(
        s.acquire(&key, &holder("ka_1"), ttl)
            .await
            .expect("acquire"),
    );
    let info = s
        .pinned_session(&key)
        .await
        .expect("session")
        .expect("pinned");
    // ttl/2 idle, ttl/6 interval (s), 3 probes, user timeout (ms) idle + 3 * interval.
    assert_eq!(
        (
            info.tcp_keepalives_idle.as_str(),
            info.tcp_keepalives_interval.as_str(),
            info.tcp_keepalives_count.as_str(),
            info.tcp_user_timeout.as_str()
        ),
        ("15", "5", "3", "30000"),
        "{info:?}"
    );
    assert_eq!(
        info.application_name,
        leader_postgres::DEFAULT_APPLICATION_NAME
    );
    assert_eq!(info.leases, 1);
    let current = s.current(&key).await.expect("current").expect("held");
    assert_eq!(current.token, lease.token);
    let mut admin = admin(pg.url()).await;
    let locked_by: i32 = sqlx::query_scalar(
        "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted AND objsubid = 1 \
         AND classid = (($1::bigint >> 32) & 4294967295)::oid AND objid = ($1::bigint & 4294967295)::oid",
    )
    .bind(s.lock_key(&key))
    .fetch_one(&mut admin)
    .await
    .expect("the lock in pg_locks");
    assert_eq!(locked_by, info.pid, "the pinned session holds the lock");
    assert!(s.release(&lease).await.expect("release"));
    assert_eq!(s.pinned_session(&key).await.expect("released"), None);
}

#[test]
fn store_debug_never_shows_the_password() {
    let s = leader_postgres::PostgresStore::from_url("postgres://app:hunter2-secret@db/app")
        .expect("valid URL");
    let shown = format!("{s:?}");
    assert!(!shown.contains("hunter2"), "{shown}");
    assert!(shown.contains("<redacted>"), "{shown}");
}

#[tokio::test]
async fn concurrent_acquires_by_one_holder_in_one_store_do_not_fight() {
    let pg = server().await;
    let s = store(pg.url());
    let key = key("same-holder-race");
    let h = holder("racer_1");
    let (x, y) = tokio::join!(s.acquire(&key, &h, TTL), s.acquire(&key, &h, TTL));
    let (x, y) = (acquired(x.expect("first")), acquired(y.expect("second")));
    let (older, newer) = if x.token < y.token { (x, y) } else { (y, x) };
    assert!(newer.token > older.token);
    s.renew(&newer).await.expect("the newer term holds");
    assert_eq!(
        s.renew(&older).await.expect_err("superseded").kind(),
        ErrorKind::NotHolder
    );
    assert!(s.release(&newer).await.expect("release"));
}
