#![doc = include_str!("../README.md")]

mod conn;
pub mod keys;
mod options;
mod sql;
mod store;
mod watch;

pub use options::{
    DEFAULT_APPLICATION_NAME, DEFAULT_CONNECT_TIMEOUT, DEFAULT_OPERATION_TIMEOUT,
    DEFAULT_PINNED_SESSIONS, DEFAULT_TABLE, PostgresOptions, TableName,
};
pub use store::{PostgresStore, SessionInfo};
