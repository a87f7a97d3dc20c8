//! Through PgBouncer in transaction mode, session advisory locks cannot work:
//! the store must notice and refuse with a clear error, and leave no lock
//! behind on the pooled server connections.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use leader_core::{ErrorKind, HolderId, LeaseKey, LeaseStore};
use leader_postgres::PostgresStore;
use leader_testkit::servers::{PostgresServer, free_port};
use sqlx::Connection;

struct Bouncer(Child);

impl Drop for Bouncer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// PgBouncer in transaction mode in front of `pg_port`, handing out server
/// connections round robin (so consecutive statements of one client reach
/// different backends once two exist). It refuses to run as root: it runs as
/// the postgres user, and dies with the test.
fn start_bouncer(dir: &Path, pg_port: u16, port: u16) -> Bouncer {
    let ini = dir.join("pgbouncer.ini");
    std::fs::write(dir.join("users.txt"), "\"postgres\" \"\"\n").expect("users file");
    std::fs::write(
        &ini,
        format!(
            "[databases]\n\
             postgres = host=127.0.0.1 port={pg_port} dbname=postgres user=postgres\n\
             [pgbouncer]\n\
             listen_addr = 127.0.0.1\n\
             listen_port = {port}\n\
             unix_socket_dir =\n\
             auth_type = trust\n\
             auth_file = {users}\n\
             pool_mode = transaction\n\
             server_round_robin = 1\n\
             default_pool_size = 4\n\
             ignore_startup_parameters = extra_float_digits,options,search_path\n\
             logfile = {log}\n",
            users = dir.join("users.txt").display(),
            log = dir.join("pgbouncer.log").display(),
        ),
    )
    .expect("pgbouncer.ini");
    let status = Command::new("chown")
        .args(["-R", "postgres:postgres"])
        .arg(dir)
        .status()
        .expect("chown");
    assert!(status.success());
    let child = Command::new("setpriv")
        .args([
            "--reuid=postgres",
            "--regid=postgres",
            "--clear-groups",
            "--pdeathsig",
            "KILL",
            "--",
        ])
        .arg("/usr/sbin/pgbouncer")
        .arg(&ini)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("pgbouncer starts (Debian package pgbouncer)");
    Bouncer(child)
}

async fn connect_when_up(url: &str) -> sqlx::PgConnection {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        match sqlx::PgConnection::connect(url).await {
            Ok(conn) => return conn,
            Err(e) => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "pgbouncer did not answer: {e}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_pooler_is_refused_and_leaves_no_lock() {
    let pg = PostgresServer::start()
        .await
        .expect("a test-owned postgres");
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port().expect("a free loopback port");
    let _bouncer = start_bouncer(dir.path(), pg.addr().port(), port);
    let url = format!("postgres://postgres@127.0.0.1:{port}/postgres");

    // Two clients at once make the pool open two server connections.
    let (mut a, mut b) = (connect_when_up(&url).await, connect_when_up(&url).await);
    // (Simple protocol: PgBouncer 1.18 has no prepared statements in
    // transaction mode.)
    let (x, y) = tokio::join!(
        sqlx::raw_sql("SELECT pg_sleep(0.3)").execute(&mut a),
        sqlx::raw_sql("SELECT pg_sleep(0.3)").execute(&mut b)
    );
    x.expect("first warm-up statement");
    y.expect("second warm-up statement");
    drop((a, b));

    let store = PostgresStore::from_url(&url).expect("valid url");
    let key = LeaseKey::new("bouncer:", "job").expect("key");
    let me = HolderId::new("behind-a-pooler").expect("holder");
    let err = store
        .acquire(&key, &me, Duration::from_secs(5))
        .await
        .expect_err("a lock through a transaction pooler must be refused");
    assert_eq!(err.kind(), ErrorKind::InvalidConfig, "{err}");
    assert!(err.to_string().contains("pooler"), "{err}");

    // Nothing is left locked on the server connections the pool keeps.
    let mut direct = sqlx::PgConnection::connect(pg.url())
        .await
        .expect("direct connection");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (locks,): (i64,) =
            sqlx::query_as("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'")
                .fetch_one(&mut direct)
                .await
                .expect("pg_locks");
        if locks == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{locks} advisory lock(s) left on pooled server connections"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
