#![doc = include_str!("../README.md")]

mod error;
pub mod memory;
mod names;
mod store;

pub use error::{Error, ErrorKind, Result};
pub use memory::MemoryStore;
pub use names::{FencingToken, HolderId, LeaseKey, MAX_HOLDER_LEN, MAX_KEY_LEN};
pub use store::{
    Acquire, Capabilities, FencingSource, Lease, LeaseEvent, LeaseEvents, LeaseInfo, LeaseStore,
    MAX_TTL, NotificationSupport, check_ttl,
};
