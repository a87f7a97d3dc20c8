#![doc = include_str!("../README.md")]

mod clients;
mod config;
mod conn;
mod error;
mod expiry;
mod keys;
mod metadata;
mod reply;
mod scripts;
mod store;
mod subscriptions;
mod watch;

pub use config::{
    DEFAULT_CONNECT_TIMEOUT, DEFAULT_PORT, DEFAULT_REQUEST_TIMEOUT,
    DEFAULT_SENTINEL_CHECK_INTERVAL, DEFAULT_SENTINEL_PORT, DEFAULT_WATCH_HEARTBEAT, Endpoint,
    RedisConfig, Topology, WaitReplicas,
};
pub use expiry::ExpiryNotifications;
pub use keys::{KeyLayout, hash_tag};
pub use store::RedisStore;
