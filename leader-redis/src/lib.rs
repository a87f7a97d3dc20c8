#![doc = include_str!("../README.md")]

pub mod config;
mod conn;
mod error;
pub mod keys;
mod scripts;
mod store;
mod watch;

pub use config::{Endpoint, RedisConfig, Secret, Topology};
pub use keys::KeyLayout;
pub use store::{
    DEFAULT_CONNECT_TIMEOUT, DEFAULT_RESPONSE_TIMEOUT, DEFAULT_SENTINEL_CHECK,
    DEFAULT_WATCH_HEARTBEAT, RedisStore, RedisStoreBuilder, WaitReplicas,
};
