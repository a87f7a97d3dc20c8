//! Chaos runs for the leader workspace: electors as separate processes
//! against a real store, random faults, and the testkit's history checker.
//!
//! `scripts/chaos.sh STORE SECONDS` builds the `leader-chaos` binary and runs
//! `leader-chaos run --store STORE --seconds SECONDS`. The orchestrator
//! ([`orchestrator::run`]) starts a private store server (testkit), one
//! [`FaultProxy`](leader_testkit::proxy::FaultProxy) per elector, and five
//! elector processes (the same binary, `elector` mode, [`elector::run`]).
//! Each elector reports every store call, step-down and loss signal with
//! `CLOCK_MONOTONIC` timestamps on its stdout ([`protocol`]), and while
//! `is_leader()` holds it writes to a fenced register the orchestrator keeps
//! (a testkit `FencedResource`: a write with a token lower than one already
//! accepted is rejected).
//!
//! Faults ([`faults::FaultKind`]): SIGKILL of the leader (a new incarnation
//! starts), SIGSTOP of the leader past its lease, SIGSTOP and SIGKILL +
//! restart of the store, a blackholed or slowed proxy (mostly the leader's).
//! With `--store etcd-cluster` the store is a three-member etcd cluster
//! ([`cluster::EtcdCluster`]) and the store faults hit its leader member.
//! At the end the record goes through the testkit checker and
//! [`analysis::analyse`]; see that module for the one place a believed
//! overlap is tolerated (a SIGSTOPped holder whose late writes were all
//! fenced off), and docs/reliability.md for results.

pub mod analysis;
pub mod clock;
pub mod cluster;
pub mod elector;
pub mod faults;
pub mod log;
pub mod orchestrator;
pub mod procs;
pub mod protocol;
