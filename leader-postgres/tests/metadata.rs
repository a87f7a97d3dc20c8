//! Leader metadata in the Postgres store: kept in the counter row of the
//! term, written with the token, read back by every holder record, guarded
//! by holder, token and session, pushed to watchers, and added to a table
//! of an earlier version.

mod common;

use std::time::Duration;

use common::*;
use leader_core::{ErrorKind, LeaseEvent, LeaseStore, MAX_METADATA_LEN, Metadata};
use leader_postgres::PostgresStore;

const TTL: Duration = Duration::from_secs(10);

fn meta(bytes: impl Into<Vec<u8>>) -> Metadata {
    Metadata::new(bytes).expect("metadata within the limit")
}

/// The metadata `store` reads for `key` from the server.
async fn read(store: &PostgresStore, key: &leader_core::LeaseKey) -> Option<Metadata> {
    store
        .current(key)
        .await
        .expect("current")
        .expect("a holder")
        .metadata
}

#[tokio::test]
async fn metadata_survives_renewals_and_a_plain_term_after_it_has_none() {
    let pg = server().await;
    let (a, b) = (store(pg.url()), store(pg.url()));
    let key = key("meta-renew");
    let h = holder("meta_1_aa");
    let m = meta("10.0.0.7:8080");
    let lease = acquired(
        a.acquire_with_metadata(&key, &h, TTL, &m)
            .await
            .expect("acquire with metadata"),
    );
    for _ in 0..3 {
        a.renew(&lease).await.expect("renew");
    }
    // Read by another client, by a refused acquirer, and by the holder's.
    let info = b.current(&key).await.expect("current").expect("a holder");
    assert_eq!((info.token, info.metadata), (lease.token, Some(m.clone())));
    let refused = held(
        b.acquire(&key, &holder("other_2"), TTL)
            .await
            .expect("acquire"),
    );
    assert_eq!(refused.metadata, Some(m.clone()), "a refused acquirer");
    let local = held(
        a.acquire(&key, &holder("other_3"), TTL)
            .await
            .expect("acquire"),
    );
    assert_eq!(
        local.metadata,
        Some(m.clone()),
        "a refused acquirer on the holder's store"
    );

    // A new term of the same holder on the same session (the re-acquire
    // statement): with new metadata, then plainly, without any.
    let n = meta("10.0.0.8:8080");
    let again = acquired(
        a.acquire_with_metadata(&key, &h, TTL, &n)
            .await
            .expect("re-acquire with metadata"),
    );
    assert!(again.token > lease.token);
    assert_eq!(read(&b, &key).await, Some(n.clone()));
    let plain = acquired(a.acquire(&key, &h, TTL).await.expect("plain re-acquire"));
    assert_eq!(
        read(&b, &key).await,
        None,
        "a plain re-acquire keeps no metadata"
    );
    let local = held(
        a.acquire(&key, &holder("other_3"), TTL)
            .await
            .expect("acquire"),
    );
    assert_eq!((local.token, local.metadata), (plain.token, None));

    // A plain term of another holder after a metadata term has none.
    a.update_metadata(&plain, &m).await.expect("update");
    assert!(a.release(&plain).await.expect("release"));
    let next = acquired(b.acquire(&key, &holder("next_4"), TTL).await.expect("free"));
    let info = a.current(&key).await.expect("current").expect("a holder");
    assert_eq!((info.token, info.metadata), (next.token, None));
    assert!(b.release(&next).await.expect("release"));
}

#[tokio::test]
async fn a_stale_or_foreign_update_fails_with_not_holder_and_changes_nothing() {
    let pg = server().await;
    let (a, b) = (store(pg.url()), store(pg.url()));
    let key = key("meta-stale");
    let h = holder("stale_1_bb");
    let (m, other) = (meta("first"), meta("second"));
    let old = acquired(
        a.acquire_with_metadata(&key, &h, TTL, &m)
            .await
            .expect("acquire"),
    );
    let new = acquired(
        a.acquire_with_metadata(&key, &h, TTL, &m)
            .await
            .expect("re-acquire"),
    );
    let e = a
        .update_metadata(&old, &other)
        .await
        .expect_err("a replaced term");
    assert_eq!(e.kind(), ErrorKind::NotHolder, "{e}");
    assert_eq!(read(&b, &key).await, Some(m.clone()));
    // Another client holding no session for the lease cannot update it.
    let e = b
        .update_metadata(&new, &other)
        .await
        .expect_err("another client");
    assert_eq!(e.kind(), ErrorKind::NotHolder, "{e}");
    assert_eq!(read(&b, &key).await, Some(m.clone()));

    // The row no longer names this term or session (as after a lost lock):
    // the statement's own guard refuses, although the client still holds it.
    let mut admin = admin(pg.url()).await;
    let pid: i32 = sqlx::query_scalar(
        "UPDATE leader_fencing SET pid = 0 WHERE lock_key = $1 \
         RETURNING (SELECT pid FROM leader_fencing WHERE lock_key = $1)",
    )
    .bind(a.lock_key(&key))
    .fetch_one(&mut admin)
    .await
    .expect("move the row to another session");
    let e = a
        .update_metadata(&new, &other)
        .await
        .expect_err("row of another session");
    assert_eq!(e.kind(), ErrorKind::NotHolder, "{e}");
    sqlx::query("UPDATE leader_fencing SET pid = $2 WHERE lock_key = $1")
        .bind(a.lock_key(&key))
        .bind(pid)
        .execute(&mut admin)
        .await
        .expect("give the row its session back");
    sqlx::query("UPDATE leader_fencing SET token = token + 1 WHERE lock_key = $1")
        .bind(a.lock_key(&key))
        .execute(&mut admin)
        .await
        .expect("move the row to another token");
    let e = a
        .update_metadata(&new, &other)
        .await
        .expect_err("row of another term");
    assert_eq!(e.kind(), ErrorKind::NotHolder, "{e}");
    let row: Option<Vec<u8>> =
        sqlx::query_scalar("SELECT metadata FROM leader_fencing WHERE lock_key = $1")
            .bind(a.lock_key(&key))
            .fetch_one(&mut admin)
            .await
            .expect("the row");
    assert_eq!(
        row.as_deref(),
        Some(m.as_bytes()),
        "the refused update wrote"
    );

    // A released term cannot update the next one's row.
    assert!(a.release(&new).await.expect("release"));
    let e = a.update_metadata(&new, &other).await.expect_err("released");
    assert_eq!(e.kind(), ErrorKind::NotHolder, "{e}");
}

#[tokio::test]
async fn any_bytes_up_to_the_limit_round_trip() {
    let pg = server().await;
    let (a, b) = (store(pg.url()), store(pg.url()));
    let key = key("meta-bytes");
    let h = holder("bytes_1_cc");
    let every_byte: Vec<u8> = (0..MAX_METADATA_LEN).map(|i| (i % 256) as u8).collect();
    let values = [
        meta(vec![0xff, 0xfe, 0x00, 0x80, b'\'', b'\\', 0x00]),
        meta(every_byte),
        meta(Vec::new()),
        meta("ünïcødé 🚀"),
    ];
    assert!(values[0].as_str().is_none(), "not UTF-8");
    let lease = acquired(
        a.acquire_with_metadata(&key, &h, TTL, &values[0])
            .await
            .expect("acquire"),
    );
    let refused = held(
        b.acquire(&key, &holder("other_2"), TTL)
            .await
            .expect("acquire"),
    );
    assert_eq!(refused.metadata.as_ref(), Some(&values[0]));
    for value in &values {
        a.update_metadata(&lease, value).await.expect("update");
        assert_eq!(read(&b, &key).await.as_ref(), Some(value), "{value:?}");
    }
    assert_eq!(read(&b, &key).await.map(|m| m.len()), Some(values[3].len()));
    // Empty metadata is a value, not the absence of one.
    a.update_metadata(&lease, &values[2]).await.expect("update");
    assert_eq!(read(&b, &key).await, Some(meta(Vec::new())));
    assert!(a.release(&lease).await.expect("release"));
}

#[tokio::test]
async fn force_release_returns_the_terms_metadata() {
    let pg = server().await;
    let (a, ops) = (store(pg.url()), store(pg.url()));
    let key = key("meta-force");
    let m = meta("10.0.0.9:9000");
    let lease = acquired(
        a.acquire_with_metadata(&key, &holder("forced_1"), TTL, &m)
            .await
            .expect("acquire"),
    );
    let removed = ops
        .force_release(&key)
        .await
        .expect("force")
        .expect("a holder");
    assert_eq!(
        (removed.token, removed.metadata),
        (lease.token, Some(m.clone()))
    );
    // On the holder's own store (its own session, no termination).
    let c = store(pg.url());
    let lease = acquired(
        c.acquire_with_metadata(&key, &holder("forced_2"), TTL, &m)
            .await
            .expect("acquire again"),
    );
    let removed = c
        .force_release(&key)
        .await
        .expect("force")
        .expect("a holder");
    assert_eq!((removed.token, removed.metadata), (lease.token, Some(m)));
}

#[tokio::test]
async fn an_update_is_pushed_to_watchers_as_metadata_updated() {
    let pg = server().await;
    let (a, follower) = (store(pg.url()), store(pg.url()));
    let key = key("meta-watch");
    let h = holder("pushed 1/dd");
    let lease = acquired(a.acquire(&key, &h, TTL).await.expect("acquire"));
    let mut events = follower.watch(&key).await.expect("watch");
    a.update_metadata(&lease, &meta("10.0.0.3:80"))
        .await
        .expect("update");
    let event = tokio::time::timeout(TTL, events.recv())
        .await
        .expect("an event within the TTL");
    assert_eq!(
        event,
        Some(LeaseEvent::MetadataUpdated {
            holder: h.clone(),
            token: lease.token
        })
    );
    // The value is visible once the event arrives (NOTIFY is sent on commit).
    assert_eq!(read(&follower, &key).await, Some(meta("10.0.0.3:80")));
    assert!(a.release(&lease).await.expect("release"));
    let event = tokio::time::timeout(TTL, events.recv())
        .await
        .expect("an event within the TTL");
    assert_eq!(event, Some(LeaseEvent::Vacated));
}

#[tokio::test]
async fn a_table_of_the_previous_version_gets_the_column() {
    let pg = server().await;
    let table = format!("leader_old_{}", std::process::id());
    let mut admin = admin(pg.url()).await;
    // The previous version's schema, with a term it left behind.
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "CREATE TABLE {table} (lock_key bigint PRIMARY KEY, resource text NOT NULL, \
         token bigint NOT NULL, holder text NOT NULL, pid integer NOT NULL, \
         acquired_at timestamptz NOT NULL, ttl_ms bigint NOT NULL, \
         released boolean NOT NULL, vacated_at timestamptz)"
    )))
    .execute(&mut admin)
    .await
    .expect("the old table");
    let old = store_with(options(pg.url()).with_table(&table));
    let key = key("meta-upgrade");
    let far_future: i64 = 1 << 60;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO {table} VALUES ($1, $2, $3, 'old_1', 0, now(), 1000, true, NULL)"
    )))
    .bind(old.lock_key(&key))
    .bind(key.as_str())
    .bind(far_future)
    .execute(&mut admin)
    .await
    .expect("a term of the old version");

    let m = meta([0xde, 0xad, 0xbe, 0xef]);
    let lease = acquired(
        old.acquire_with_metadata(&key, &holder("new_1"), TTL, &m)
            .await
            .expect("acquire on the old table"),
    );
    assert!(
        lease.token.0 > far_future as u64,
        "the old row's token is kept"
    );
    let other = store_with(options(pg.url()).with_table(&table));
    let info = other
        .current(&key)
        .await
        .expect("current")
        .expect("a holder");
    assert_eq!(info.metadata, Some(m));
    let kind: String = sqlx::query_scalar(
        "SELECT data_type FROM information_schema.columns \
         WHERE table_name = $1 AND column_name = 'metadata'",
    )
    .bind(&table)
    .fetch_one(&mut admin)
    .await
    .expect("the metadata column");
    assert_eq!(kind, "bytea");
    assert!(old.release(&lease).await.expect("release"));
    sqlx::query(sqlx::AssertSqlSafe(format!("DROP TABLE {table}")))
        .execute(&mut admin)
        .await
        .expect("drop");
}

#[tokio::test]
async fn a_proclaimed_address_is_stored_with_the_elector_term() {
    let pg = server().await;
    let lease = Duration::from_secs(2);
    let prefix = format!("meta-el:{}:", std::process::id());
    let config = election_config(&prefix, "svc", "leader", lease);
    let leader = leader_core::Elector::start_with_metadata(
        std::sync::Arc::new(store(pg.url())),
        config,
        meta("10.0.0.1:8080"),
    )
    .expect("elector");
    until_leading(&leader, true, lease * 10)
        .await
        .expect("the only candidate leads");
    let (reader, key) = (store(pg.url()), leader.key().clone());
    let info = reader
        .current(&key)
        .await
        .expect("current")
        .expect("a holder");
    assert_eq!(
        info.metadata.as_ref().and_then(Metadata::as_str),
        Some("10.0.0.1:8080")
    );
    // proclaim returns once the store has it.
    leader
        .proclaim(meta("10.0.0.2:8080"))
        .await
        .expect("proclaim");
    let now = reader
        .current(&key)
        .await
        .expect("current")
        .expect("a holder");
    assert_eq!(
        (now.token, now.metadata.as_ref().and_then(Metadata::as_str)),
        (info.token, Some("10.0.0.2:8080"))
    );
    leader.shutdown().await;
}
