//! Benchmarks of the leader workspace: the cost of leadership on every store
//! (memory, Redis, etcd, Postgres), measured beside the raw store operation
//! done directly with the client crate and beside peer crates, in one run.
//!
//! Run it with `scripts/bench.sh` (or `scripts/bench.sh --quick`); the binary
//! starts the store servers it needs (through `leader-testkit`) on free
//! loopback ports and prints markdown tables. Nothing here is asserted in
//! tests: the figures are for people, `docs/benchmarks.md` explains them.

pub mod child;
pub mod counting;
pub mod failover;
pub mod idle;
pub mod latency;
pub mod peers;
pub mod scale;
pub mod stats;
pub mod stores;
pub mod sys;

use std::fmt;
use std::time::Duration;

/// The error type of the harness: anything, with a message.
pub type Error = Box<dyn std::error::Error + Send + Sync>;

/// The result type of the harness.
pub type Result<T> = std::result::Result<T, Error>;

/// How much work each section does.
#[derive(Debug, Clone)]
pub struct Plan {
    /// `true` for `--quick`.
    pub quick: bool,
    /// Measured iterations of each latency loop.
    pub latency_iters: usize,
    /// Unrecorded warm-up iterations before each latency loop.
    pub warmup_iters: usize,
    /// Graceful handovers per store.
    pub graceful_reps: usize,
    /// Crashes per store.
    pub crash_reps: usize,
    /// Kill -9 of a Postgres holder process, per lock-delay setting.
    pub process_kill_reps: usize,
    /// The idle measurement window.
    pub idle_window: Duration,
    /// Named leases held by one process in the scale test.
    pub scale_leases: usize,
    /// Lease and renewal interval of the held-leases scale test.
    pub scale_timing: (Duration, Duration),
    /// The measurement window of the held-leases scale test.
    pub scale_window: Duration,
    /// Candidates contending for one resource.
    pub candidates: usize,
    /// The measurement window of the contention test.
    pub contention_window: Duration,
    /// Acquire/release cycles of the peer comparison.
    pub peer_iters: usize,
    /// Graceful handovers in the contention test (one candidate fewer each).
    pub handovers: usize,
    /// The stores the latency, scale and idle sections run on (`--stores`).
    pub stores: Vec<stores::Kind>,
}

impl Plan {
    /// The full run quoted in the docs.
    pub fn full() -> Self {
        Plan {
            quick: false,
            latency_iters: 5000,
            warmup_iters: 300,
            graceful_reps: 100,
            crash_reps: 20,
            process_kill_reps: 10,
            idle_window: Duration::from_secs(180),
            scale_leases: 10_000,
            scale_timing: (Duration::from_secs(30), Duration::from_secs(10)),
            scale_window: Duration::from_secs(30),
            candidates: 1000,
            contention_window: Duration::from_secs(30),
            peer_iters: 3000,
            handovers: 20,
            stores: stores::Kind::ALL.to_vec(),
        }
    }

    /// `--quick`: the same sections, scaled down to finish in under a minute.
    pub fn quick() -> Self {
        Plan {
            quick: true,
            latency_iters: 500,
            warmup_iters: 50,
            graceful_reps: 10,
            crash_reps: 2,
            process_kill_reps: 2,
            idle_window: Duration::from_secs(11),
            scale_leases: 1000,
            scale_timing: (Duration::from_secs(6), Duration::from_secs(2)),
            scale_window: Duration::from_secs(4),
            candidates: 100,
            contention_window: Duration::from_secs(4),
            peer_iters: 300,
            handovers: 3,
            stores: stores::Kind::ALL.to_vec(),
        }
    }
}

/// One target of the issue, and whether this run met it.
#[derive(Debug, Clone)]
pub struct Verdict {
    /// What was aimed for.
    pub target: String,
    /// What was measured.
    pub measured: String,
    /// Whether the target was met.
    pub met: bool,
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mark = if self.met { "met" } else { "MISSED" };
        write!(f, "| {} | {} | {} |", self.target, self.measured, mark)
    }
}

/// Collects verdicts across sections for the closing summary.
#[derive(Debug, Default)]
pub struct Verdicts(pub Vec<Verdict>);

impl Verdicts {
    /// Notes one target.
    pub fn add(&mut self, target: impl Into<String>, measured: impl Into<String>, met: bool) {
        self.0.push(Verdict {
            target: target.into(),
            measured: measured.into(),
            met,
        });
    }
}

/// Prints a section title.
pub fn section(title: &str) {
    println!("\n## {title}\n");
}
