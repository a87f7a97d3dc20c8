//! Leases and leader election on etcd v3, for the `leader-core` elector.
//!
//! [`EtcdStore`] implements [`leader_core::LeaseStore`] with etcd leases and
//! transactions. The fencing token is the etcd **revision** of the
//! transaction that started the term (the key's create revision for a fresh
//! acquisition, its mod revision in general), which grows with every new
//! term; see [`EtcdStore`] for the exact operations.
//!
//! ```no_run
//! # async fn demo() -> leader_core::Result<()> {
//! use leader_core::{Acquire, HolderId, LeaseKey, LeaseStore};
//! use leader_etcd::EtcdStore;
//!
//! // Nothing is contacted until the first operation.
//! let store = EtcdStore::from_url("etcd://127.0.0.1:2379,127.0.0.1:22379")?;
//! let key = LeaseKey::new("honua:leader:", "honua-server")?;
//! let me = HolderId::generate();
//! if let Acquire::Acquired(lease) =
//!     store.acquire(&key, &me, std::time::Duration::from_secs(10)).await?
//! {
//!     println!("leader with fencing token {}", lease.token);
//!     store.release(&lease).await?;
//! }
//! # Ok(()) }
//! ```
//!
//! TTLs are whole seconds in etcd: a TTL is rounded **up** to the next
//! second (`Capabilities::ttl_granularity` is 1 s), so the server may keep a
//! lease a little longer than asked, never shorter. etcd also enforces a
//! minimum TTL of 1.5 election timeouts (2 s with default server flags).

mod config;
mod error;
mod store;
mod watch;

pub use config::{
    DEFAULT_CONNECT_TIMEOUT, DEFAULT_PORT, DEFAULT_REQUEST_TIMEOUT, EtcdConfig, TlsConfig,
};
pub use store::EtcdStore;

/// The etcd-client crate this store is built on, for [`EtcdStore::with_client`].
pub use etcd_client;
