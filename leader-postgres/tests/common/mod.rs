//! Shared helpers for the Postgres integration tests.
#![allow(dead_code, unreachable_pub)]

use std::future::Future;
use std::time::Duration;

use leader_core::{Acquire, HolderId, Lease, LeaseInfo, LeaseKey};
use leader_postgres::{PostgresOptions, PostgresStore};
use leader_testkit::servers::PostgresServer;
use sqlx::{Connection, PgConnection};

/// A private Postgres (or `LEADER_TEST_POSTGRES_URL`).
pub async fn server() -> PostgresServer {
    PostgresServer::from_env_or_start()
        .await
        .expect("a Postgres server for the test (install the `postgresql` package)")
}

/// A private Postgres the test controls (kill, pause), never an external one.
pub async fn private_server() -> PostgresServer {
    PostgresServer::start()
        .await
        .expect("a private Postgres server for the test (install the `postgresql` package)")
}

/// A store on `url` with short timeouts suited to tests.
pub fn store(url: &str) -> PostgresStore {
    PostgresStore::new(options(url))
}

pub fn options(url: &str) -> PostgresOptions {
    PostgresOptions::from_url(url)
        .and_then(|o| o.operation_timeout(Duration::from_secs(5)))
        .expect("test URL parses")
}

/// A key unique to this test run.
pub fn key(name: &str) -> LeaseKey {
    let run: u64 = std::process::id().into();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    LeaseKey::new(&format!("test:{run}:{nanos}:"), name).expect("valid key")
}

pub fn holder(name: &str) -> HolderId {
    HolderId::new(name).expect("valid holder")
}

pub fn acquired(outcome: Acquire) -> Lease {
    match outcome {
        Acquire::Acquired(lease) => lease,
        Acquire::Held(info) => panic!("expected to acquire, but {info:?} holds it"),
    }
}

pub fn held(outcome: Acquire) -> LeaseInfo {
    match outcome {
        Acquire::Held(info) => info,
        Acquire::Acquired(lease) => panic!("expected Held, but acquired {lease:?}"),
    }
}

/// A plain connection for the test's own SQL.
pub async fn admin(url: &str) -> PgConnection {
    PgConnection::connect(url)
        .await
        .expect("admin connection to the test server")
}

/// Polls `check` every 20 ms until it returns true or `limit` passes.
pub async fn eventually<F, Fut>(limit: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if check().await {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
