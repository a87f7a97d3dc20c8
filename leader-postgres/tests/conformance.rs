//! The testkit's conformance suite against a private Postgres (or the one
//! named by `LEADER_TEST_POSTGRES_URL`: the cases that stop the server then
//! do not apply and fail as unpinned). The cases that do not apply to
//! Postgres are pinned below.

use std::sync::Arc;

use leader_core::LeaseStore;
use leader_postgres::PostgresStore;
use leader_testkit::servers::PostgresServer;
use leader_testkit::suite::{ResourceCounts, ServerFixture};
use sqlx::Connection;

async fn fixture() -> ServerFixture<PostgresServer> {
    let server = PostgresServer::from_env_or_start()
        .await
        .expect("a Postgres server for the suite (install the `postgresql` package)");
    ServerFixture::new("postgres", server, |url| async move {
        Ok(Arc::new(PostgresStore::from_url(&url)?) as Arc<dyn LeaseStore>)
    })
    .with_resource_counter(count_resources)
}

/// Postgres's server-side resources a client could leak: client backends
/// (`pg_stat_activity`, this counting connection included) and advisory
/// locks (`pg_locks`).
async fn count_resources(url: String) -> leader_core::Result<ResourceCounts> {
    let failed = |e: sqlx::Error| {
        leader_core::Error::unavailable(format!("counting Postgres resources: {e}"))
    };
    let mut conn = sqlx::PgConnection::connect(&url).await.map_err(failed)?;
    let backends: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'",
    )
    .fetch_one(&mut conn)
    .await
    .map_err(failed)?;
    let locks: i64 =
        sqlx::query_scalar("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'")
            .fetch_one(&mut conn)
            .await
            .map_err(failed)?;
    let _ = conn.close().await;
    Ok(ResourceCounts::from([
        (
            "connections".to_owned(),
            u64::try_from(backends).unwrap_or(0),
        ),
        (
            "advisory locks".to_owned(),
            u64::try_from(locks).unwrap_or(0),
        ),
    ]))
}

// Postgres locks are session-bound (no server-side expiry) and it notifies.
leader_testkit::conformance_tests!(
    fixture().await,
    not_applicable = [expiry_frees_the_resource, watch_unsupported_is_typed]
);
