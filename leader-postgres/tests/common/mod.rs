//! Shared helpers for the Postgres integration tests.
#![allow(dead_code, unreachable_pub)]

use std::time::Duration;

use std::sync::Arc;

use leader_core::{
    Acquire, ElectionConfig, Elector, HolderId, Lease, LeaseInfo, LeaseKey, LeaseStore,
};
use leader_postgres::{PostgresOptions, PostgresStore};
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
