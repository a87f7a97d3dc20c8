#![doc = include_str!("../README.md")]

mod builder;
mod clients;
mod config;
mod conn;
mod error;
mod expiry;
mod keys;
mod reply;
mod scripts;
mod store;
mod subscriptions;
mod watch;

pub use builder::{
    DEFAULT_CONNECT_TIMEOUT, DEFAULT_RESPONSE_TIMEOUT, DEFAULT_SENTINEL_CHECK,
    DEFAULT_WATCH_HEARTBEAT, RedisStoreBuilder, WaitReplicas,
};
pub use config::{DEFAULT_PORT, DEFAULT_SENTINEL_PORT, Endpoint, RedisConfig, Secret, Topology};
pub use expiry::ExpiryNotifications;
pub use keys::{KeyLayout, hash_tag};
pub use store::RedisStore;
