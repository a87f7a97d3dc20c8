#![doc = include_str!("../README.md")]

mod config;
mod elector;
mod error;
mod health;
mod keeper;
mod lock;
pub mod memory;
mod names;
mod store;
mod telemetry;
pub mod testing;
mod timing;
mod tracker;

pub use config::{ElectionConfig, Preset, SECTION, UNNAMED_RESOURCE, parse_duration};
pub use elector::{Elector, LeaderContext, WorkHandle};
pub use error::{Error, ErrorKind, Result};
pub use health::{HealthData, HealthReport, HealthStatus};
pub use lock::{LockGuard, Locks};
pub use memory::MemoryStore;
pub use names::{
    FencingToken, HolderId, LeaseKey, MAX_HOLDER_LEN, MAX_INSTANCE_ID_LEN, MAX_KEY_LEN,
};
pub use store::{
    Acquire, Capabilities, FencingSource, Lease, LeaseEvent, LeaseEvents, LeaseInfo, LeaseStore,
    MAX_TTL, NotificationSupport, check_ttl,
};
pub use tracker::LeaderState;
