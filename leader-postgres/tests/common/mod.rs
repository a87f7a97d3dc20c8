//! Shared helpers for the Postgres integration tests.
#![allow(dead_code, unreachable_pub)]

use std::time::Duration;

use std::sync::Arc;

use leader_core::{
    Acquire, ElectionConfig, Elector, HolderId, Lease, LeaseInfo, LeaseKey, LeaseStore,
};
use leader_postgres::{PostgresConfig, PostgresStore};
use leader_testkit::history::{History, Op, Outcome, Recording};
use leader_testkit::servers::PostgresServer;
use leader_testkit::wrap::Wrapped;
use sqlx::{Connection, PgConnection};
use tokio::task::JoinHandle;

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
    store_with(options(url))
}

/// A store for `config`, which the test built to be valid.
pub fn store_with(config: PostgresConfig) -> PostgresStore {
    PostgresStore::new(config).expect("valid test config")
}

pub fn options(url: &str) -> PostgresConfig {
    PostgresConfig::from_url(url)
        .expect("test URL parses")
        .with_request_timeout(Duration::from_secs(5))
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

/// Terminates the backend that holds `holder`'s lease (found through the
/// counter table and `pg_locks`: pinned sessions are shared, so they carry
/// the store's `application_name`, not a holder's); returns how many.
pub async fn terminate_holder(url: &str, holder: &str) -> i64 {
    let mut admin = admin(url).await;
    sqlx::query_scalar(
        "SELECT count(pg_terminate_backend(pid, 5000)) FROM (SELECT DISTINCT k.pid \
         FROM leader_fencing f JOIN pg_locks k ON k.locktype = 'advisory' AND k.granted \
          AND k.objsubid = 1 AND k.classid = ((f.lock_key >> 32) & 4294967295)::oid \
          AND k.objid = (f.lock_key & 4294967295)::oid AND k.pid = f.pid \
         WHERE f.holder = $1) held",
    )
    .bind(holder)
    .fetch_one(&mut admin)
    .await
    .expect("terminate the holder's session")
}

/// An election config with the suite's real-server timing: `lease`, and a
/// quarter of it for renewal interval, retry period and request timeout.
pub fn election_config(
    prefix: &str,
    resource: &str,
    instance: &str,
    lease: Duration,
) -> ElectionConfig {
    let mut config = ElectionConfig::new(resource).with_timing(lease, lease / 4);
    config.key_prefix = prefix.to_owned();
    config.instance_id = Some(instance.to_owned());
    config.retry_period = Some(lease / 4);
    config.request_timeout = Some(lease / 4);
    config.release_timeout = lease;
    config
}

/// An elector on `store`, its calls recorded in `history` and its
/// step-downs recorded as they are published.
pub struct Recorded {
    pub elector: Elector,
    pub id: String,
    watcher: JoinHandle<()>,
}

impl Drop for Recorded {
    fn drop(&mut self) {
        self.watcher.abort();
        self.elector.abort();
    }
}

pub fn recorded(store: Arc<dyn LeaseStore>, config: ElectionConfig, history: &History) -> Recorded {
    let store = Arc::new(Wrapped::new(store, Recording::new(history.clone())));
    let elector = Elector::start(store, config).expect("valid election config");
    // The holder id (the instance name plus the library's random part):
    // what `Recording` names this instance in the history.
    let id = elector.instance_id().to_string();
    let mut rx = elector.subscribe();
    let (who, history) = (id.clone(), history.clone());
    let watcher = tokio::spawn(async move {
        let (mut was, mut token) = {
            let s = rx.borrow_and_update();
            (s.is_leader, s.token)
        };
        while rx.changed().await.is_ok() {
            let s = rx.borrow_and_update().clone();
            if was && !s.is_leader {
                history.instant(&who, Op::StepDown, Outcome::Ok, token);
            }
            was = s.is_leader;
            if s.is_leader {
                token = s.token;
            }
        }
    });
    Recorded {
        elector,
        id,
        watcher,
    }
}

/// Waits until `elector` leads (true) or not (false), for at most `within`;
/// returns the time waited.
pub async fn until_leading(elector: &Elector, leading: bool, within: Duration) -> Option<Duration> {
    let started = tokio::time::Instant::now();
    let deadline = started + within;
    loop {
        if elector.is_leader() == leading {
            return Some(started.elapsed());
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}
