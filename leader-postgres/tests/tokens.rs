//! Fencing tokens never go back, and the lock delay cannot be shortened by
//! the server's clock.

mod common;

use std::time::Duration;

use common::*;
use leader_core::{ErrorKind, LeaseStore};
use leader_testkit::wait::eventually;

const TTL: Duration = Duration::from_secs(2);

#[tokio::test]
async fn a_lost_counter_table_does_not_make_tokens_go_back() {
    let pg = server().await;
    let table = format!("fence_lost_{}", std::process::id());
    let s = store_with(options(pg.url()).with_table(&table));
    let key = key("lost-table");
    let mut last = None;
    for holder_id in ["lost_a", "lost_b", "lost_c"] {
        let lease = acquired(
            s.acquire(&key, &holder(holder_id), TTL)
                .await
                .expect("acquire"),
        );
        assert!(last.is_none_or(|t| lease.token > t));
        last = Some(lease.token);
        assert!(s.release(&lease).await.expect("release"));
    }
    let n = last.expect("three terms");
    assert!(n.0 > 1, "{n}");

    let mut admin = admin(pg.url()).await;
    sqlx::query(sqlx::AssertSqlSafe(format!("DROP TABLE \"{table}\"")))
        .execute(&mut admin)
        .await
        .expect("drop the counter table");
    let lease = acquired(
        s.acquire(&key, &holder("lost_d"), TTL)
            .await
            .expect("acquire recreates the table"),
    );
    assert!(
        lease.token > n,
        "token {} after {n}: tokens went back",
        lease.token
    );
    assert!(s.release(&lease).await.expect("release"));
}

#[tokio::test]
async fn a_server_clock_stepped_forward_does_not_shorten_the_lock_delay() {
    let pg = server().await;
    let s = store(pg.url());
    let key = key("stepped-clock");
    let lease = acquired(
        s.acquire(&key, &holder("stepped_1"), TTL)
            .await
            .expect("acquire"),
    );
    let mut admin = admin(pg.url()).await;
    let ended = terminate_holder(pg.url(), "stepped_1").await;
    assert_eq!(ended, 1);
    let err = s.renew(&lease).await.expect_err("the session is gone");
    assert_eq!(err.kind(), ErrorKind::NotHolder, "{err}");

    let other = store(pg.url());
    let first_try = tokio::time::Instant::now();
    let info = held(
        other
            .acquire(&key, &holder("stepped_2"), TTL)
            .await
            .expect("try"),
    );
    assert_eq!(info.holder.as_str(), "stepped_1");

    // The server's clock jumps an hour ahead: as if the term had been
    // found vacated an hour ago.
    sqlx::query(
        "UPDATE leader_fencing SET vacated_at = now() - interval '1 hour' WHERE lock_key = $1",
    )
    .bind(other.lock_key(&key))
    .execute(&mut admin)
    .await
    .expect("step the recorded time back");
    let info = held(
        other
            .acquire(&key, &holder("stepped_2"), TTL)
            .await
            .expect("try again"),
    );
    let remaining = info.remaining.expect("the delay says how long");
    assert!(remaining > TTL / 2, "{remaining:?}");

    // It ends one TTL after this client first found the seat vacated.
    eventually(TTL * 5, "the delay to pass", || async {
        matches!(
            other.acquire(&key, &holder("stepped_2"), TTL).await,
            Ok(leader_core::Acquire::Acquired(_))
        )
    })
    .await;
    assert!(
        first_try.elapsed() >= TTL,
        "acquired before the delay ended"
    );
}
