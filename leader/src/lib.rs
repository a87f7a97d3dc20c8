//! Leader election and leases on shared stores, one dependency away.
//!
//! This facade re-exports [`leader_core`] (the elector, named locks, fencing
//! tokens, health, metrics, config, the in-memory store) and builds a store
//! from a URL at run time, each store behind its cargo feature:
//!
//! | URL | store | feature |
//! |---|---|---|
//! | `memory://` or `memory://name` | in-process [`MemoryStore`] | always |
//! | `redis://`, `rediss://`, `host:port,password=...,ssl=true` | Redis | `redis` (default) |
//! | `etcd://h1:2379,h2:2379`, `http://...`, `https://...` | etcd | `etcd` |
//! | `postgres://...`, `postgresql://...` | Postgres | `postgres` |
//!
//! The `etcd` feature needs `protoc` at build time: etcd-client's build script
//! generates its gRPC code from `.proto` files and stops with "Could not find
//! `protoc`" without it (Debian: `apt-get install protobuf-compiler`, or set
//! `PROTOC` to the binary's path). The other stores need nothing but cargo.
//!
//! One compiled program runs against any enabled store by changing only its
//! configuration:
//!
//! ```no_run
//! # async fn run() -> leader::Result<()> {
//! // LeaderElection section + store connection string, from a file and/or
//! // LeaderElection__* / Store__ConnectionString / Redis__ConnectionString.
//! // Needs a store and LeaderElection__ResourceName; LeaderElection__Enabled=false
//! // asks for single-instance mode (always leader) instead.
//! let settings = leader::Settings::from_env()?;
//! let elector = settings.start_elector()?;
//! if elector.is_leader() { /* work */ }
//! elector.shutdown().await;
//! # Ok(()) }
//! ```

mod connect;
#[cfg(feature = "axum")]
pub mod http;
mod settings;

pub use connect::{StoreKind, StoreOptions, StoreUrl, connect, connect_with};
pub use leader_core::*;
pub use settings::Settings;

/// The Redis store crate, when the `redis` feature is on.
#[cfg(feature = "redis")]
pub use leader_redis as redis;

/// The etcd store crate, when the `etcd` feature is on.
#[cfg(feature = "etcd")]
pub use leader_etcd as etcd;

/// The Postgres store crate, when the `postgres` feature is on.
#[cfg(feature = "postgres")]
pub use leader_postgres as postgres;

/// The workspace README's examples, compiled as doctests so they stay true.
#[doc = include_str!("../../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;

/// This crate's README's examples, compiled as doctests so they stay true.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct CrateReadmeDoctests;
