//! The conformance suite every store runs: plain `pub async fn` cases over a
//! [`Ctx`] (a store client, a random key prefix, timing), chosen by the
//! store's declared [`Capabilities`](leader_core::Capabilities), plus a runner and a macro.
//!
//! A store crate's whole test file:
//!
//! ```no_run
//! # mod leader_redis {
//! #     // Stands in for the store crate in this example.
//! #     pub struct RedisStore;
//! #     impl RedisStore {
//! #         pub fn from_url(_url: &str) -> leader_core::Result<leader_core::MemoryStore> {
//! #             Ok(leader_core::MemoryStore::new())
//! #         }
//! #     }
//! # }
//! use std::sync::Arc;
//! use leader_core::LeaseStore;
//! use leader_testkit::{servers::RedisServer, suite::ServerFixture};
//!
//! async fn fixture() -> ServerFixture<RedisServer> {
//!     let server = RedisServer::from_env_or_start().await.expect("redis-server");
//!     ServerFixture::new("redis", server, |url| async move {
//!         Ok(Arc::new(leader_redis::RedisStore::from_url(&url)?) as Arc<dyn LeaseStore>)
//!     })
//! }
//!
//! leader_testkit::conformance_tests!(fixture().await, not_applicable = [watch_unsupported_is_typed]);
//! ```
//!
//! [`conformance_tests!`](crate::conformance_tests) expands to one
//! `#[tokio::test]` per case (so a failure names its case); each test
//! builds its own fixture. [`run_all`] runs every case on one fixture
//! instead, naming each as it runs and reporting all failures at the end.
//!
//! Cases that do not apply to a store (by its capabilities, or because the
//! fixture cannot stop its server) report "not applicable" with the reason.
//! Each store pins the set it expects (`not_applicable = [...]` in
//! [`conformance_tests!`](crate::conformance_tests),
//! [`SuiteReport::assert_passed_with`] for [`run_all`]): any other case that
//! does not apply fails, and every run writes a one-line summary per store.
//!
//! The case list itself is written once, in `suite/cases.rs`.
//!
//! Timing bounds derive from the [`Profile`] (lease, slack): short leases
//! keep real-server runs fast; the slack absorbs a loaded CI machine.

/// Fails the case with a formatted message unless the condition holds.
macro_rules! ensure {
    ($cond:expr, $($fmt:tt)+) => {
        if !$cond {
            return Err($crate::suite::Failure::new(format!($($fmt)+)));
        }
    };
}

mod abuse;
mod cases;
mod cluster;
mod ctx;
mod election;
mod faults;
mod fixture;
mod identity;
mod lifecycle;
mod locks;
mod memory;
mod observe;
mod resign;
mod runner;
mod store;
mod waiting;

pub use abuse::*;
pub use ctx::{CaseResult, Ctx, Failure, Profile};
pub use election::*;
pub use faults::*;
pub use fixture::{Fixture, Link, LinkedClient, ResourceCounts, ServerControl, ServerFixture};
pub use identity::*;
pub use lifecycle::*;
pub use locks::*;
pub use memory::{FaultyLink, MemoryFixture};
pub use observe::*;
pub use resign::*;
pub use runner::{
    CaseOutcome, CaseReport, Level, SuiteReport, Tally, assert_pinned_names_are_cases, case_names,
    check_case, pinning_violation, run_all, run_case,
};
pub use store::*;
pub use waiting::*;
