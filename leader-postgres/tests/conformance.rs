//! The testkit's conformance suite against a private Postgres (or the one
//! named by `LEADER_TEST_POSTGRES_URL`; cases that stop the server then do
//! not apply).

use std::sync::Arc;

use leader_core::LeaseStore;
use leader_postgres::PostgresStore;
use leader_testkit::servers::PostgresServer;
use leader_testkit::suite::ServerFixture;

async fn fixture() -> ServerFixture<PostgresServer> {
    let server = PostgresServer::from_env_or_start()
        .await
        .expect("a Postgres server for the suite (install the `postgresql` package)");
    ServerFixture::new("postgres", server, |url| async move {
        Ok(Arc::new(PostgresStore::from_url(&url)?) as Arc<dyn LeaseStore>)
    })
}

leader_testkit::conformance_tests!(fixture().await);
