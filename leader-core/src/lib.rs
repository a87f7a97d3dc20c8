#![doc = include_str!("../README.md")]

mod config;
mod elector;
mod error;
mod health;
mod keeper;
mod lock;
pub mod memory;
mod metadata;
mod names;
mod observer;
mod store;
pub mod store_config;
mod telemetry;
mod timing;
mod tracker;
pub mod turns;

/// The attribute a [`LeaseStore`] implementation is written with; re-exported
/// so a store crate needs no direct dependency on `async-trait`.
pub use async_trait::async_trait;
pub use config::{ElectionConfig, Preset, SECTION, UNNAMED_RESOURCE, parse_duration};
pub use elector::{Elector, LeaderContext, OnReturn, WorkHandle};
pub use error::{Error, ErrorKind, Result};
pub use health::{HealthData, HealthReport, HealthStatus, Probe, Readiness};
pub use lock::{LockGuard, LockOptions, Locks};
pub use memory::MemoryStore;
pub use metadata::{MAX_METADATA_LEN, Metadata};
pub use names::{
    FencingToken, HolderId, LeaseKey, MAX_HOLDER_LEN, MAX_INSTANCE_ID_LEN, MAX_KEY_LEN,
};
pub use observer::{LeaderInfo, Observer};
pub use store::{
    Acquire, Capabilities, FencingSource, Lease, LeaseEvent, LeaseEvents, LeaseInfo, LeaseStore,
    MAX_TTL, NotificationSupport, check_ttl,
};
pub use telemetry::describe_metrics;
pub use tracker::LeaderState;
