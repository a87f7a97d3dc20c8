#![doc = include_str!("../README.md")]

mod error;
pub mod history;
pub mod metrics;
pub mod proxy;
pub mod servers;
pub mod suite;
pub mod system_roots;
pub mod wait;
pub mod wrap;

pub use error::{Error, Result};
