//! Helpers shared by the etcd integration tests.

#![allow(dead_code, unreachable_pub)]

pub mod history;
pub mod tls;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use leader_core::LeaseKey;
use leader_testkit::servers::Server;

/// Upper bound for any condition a test waits for: generous, for a loaded
/// 2-core CI machine.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// Extra time on top of bounds derived from configured durations.
pub const SLACK: Duration = Duration::from_secs(5);

/// A key no other test uses.
pub fn unique_key(what: &str) -> LeaseKey {
    static N: AtomicU64 = AtomicU64::new(0);
    let n = N.fetch_add(1, Ordering::SeqCst);
    LeaseKey::new(
        "leader-etcd-test:",
        &format!("{what}-{}-{n}", std::process::id()),
    )
    .expect("valid key")
}

/// A plain etcd-client connection to `server`, to look behind the store's back.
pub async fn raw_client(server: &Server) -> etcd_client::Client {
    etcd_client::Client::connect([server.url()], None)
        .await
        .expect("raw etcd client")
}

/// A loopback port nobody listens on (bound then released).
pub fn free_port() -> u16 {
    // Below the ephemeral range: see `leader_testkit::servers::free_port`.
    leader_testkit::servers::free_port().expect("a free loopback port")
}

/// A private etcd server and a store on it.
pub async fn setup() -> (leader_testkit::servers::EtcdServer, leader_etcd::EtcdStore) {
    let server = leader_testkit::servers::EtcdServer::start()
        .await
        .expect("start a private etcd");
    let store = leader_etcd::EtcdStore::from_url(server.url()).expect("store for the private etcd");
    (server, store)
}

/// A holder id from a test's short name.
pub fn holder(name: &str) -> leader_core::HolderId {
    leader_core::HolderId::new(name).expect("valid holder id")
}

/// Acquires `key` for `who`, which the test expects to be free.
pub async fn acquired(
    store: &leader_etcd::EtcdStore,
    key: &LeaseKey,
    who: &leader_core::HolderId,
    ttl: Duration,
) -> leader_core::Lease {
    use leader_core::{Acquire, LeaseStore};
    match store.acquire(key, who, ttl).await.expect("acquire") {
        Acquire::Acquired(lease) => lease,
        Acquire::Held(info) => panic!("expected to acquire, held by {info:?}"),
    }
}

/// The next event of a subscription, within [`PATIENCE`].
pub async fn next(events: &mut leader_core::LeaseEvents) -> Option<leader_core::LeaseEvent> {
    tokio::time::timeout(PATIENCE, events.recv())
        .await
        .expect("an event (or the end of the subscription) within the patience bound")
}
