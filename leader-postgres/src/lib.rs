#![doc = include_str!("../README.md")]

mod config;
mod conn;
pub mod keys;
mod sql;
mod store;
mod watch;

pub use config::{
    DEFAULT_APPLICATION_NAME, DEFAULT_CONNECT_TIMEOUT, DEFAULT_PINNED_SESSIONS,
    DEFAULT_REQUEST_TIMEOUT, DEFAULT_TABLE, PostgresConfig, TableName,
};
pub use store::{PostgresStore, SessionInfo};
