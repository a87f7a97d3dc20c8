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
