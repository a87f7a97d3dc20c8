//! The postgres store for leader election (work in progress).

pub mod keys;
mod options;

pub use options::{
    DEFAULT_APPLICATION_NAME, DEFAULT_CONNECT_TIMEOUT, DEFAULT_OPERATION_TIMEOUT, DEFAULT_TABLE,
    PostgresOptions, TableName,
};
