#![doc = include_str!("../README.md")]

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
