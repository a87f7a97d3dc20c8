//! The faults a run injects, and what each one did.

use std::fmt;
use std::time::Duration;

use rand::Rng;

/// A kind of fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FaultKind {
    /// SIGKILL of the leader process; a new incarnation starts a moment later.
    KillLeader,
    /// SIGSTOP of the leader past its lease, then SIGCONT.
    PauseLeader,
    /// SIGSTOP of the store server, then SIGCONT.
    PauseStore,
    /// SIGKILL of the store server, then a restart on the same port and data.
    KillStore,
    /// The fault proxy of one elector (the leader's, mostly) drops into a
    /// blackhole: nothing flows, nothing fails.
    Blackhole,
    /// The fault proxy of one elector delays every chunk.
    Slow,
}

impl FaultKind {
    /// Every kind.
    pub const ALL: [FaultKind; 6] = [
        FaultKind::KillLeader,
        FaultKind::PauseLeader,
        FaultKind::PauseStore,
        FaultKind::KillStore,
        FaultKind::Blackhole,
        FaultKind::Slow,
    ];

    /// Its short name in reports.
    pub fn name(self) -> &'static str {
        match self {
            FaultKind::KillLeader => "kill-leader",
            FaultKind::PauseLeader => "pause-leader",
            FaultKind::PauseStore => "pause-store",
            FaultKind::KillStore => "kill-store",
            FaultKind::Blackhole => "blackhole",
            FaultKind::Slow => "slow",
        }
    }

    /// Whether it is a process pause of an elector (whose late belief is
    /// judged by fencing, see the crate docs), as opposed to a store or
    /// network fault (under which beliefs must never overlap).
    pub fn is_elector_pause(self) -> bool {
        self == FaultKind::PauseLeader
    }

    /// A random kind; kills and pauses of the leader and network faults are
    /// drawn twice as often as store faults.
    pub fn pick(rng: &mut impl Rng) -> FaultKind {
        const WEIGHTED: [FaultKind; 10] = [
            FaultKind::KillLeader,
            FaultKind::KillLeader,
            FaultKind::PauseLeader,
            FaultKind::PauseLeader,
            FaultKind::PauseStore,
            FaultKind::KillStore,
            FaultKind::Blackhole,
            FaultKind::Blackhole,
            FaultKind::Slow,
            FaultKind::Slow,
        ];
        WEIGHTED[rng.random_range(0..WEIGHTED.len())]
    }
}

impl fmt::Display for FaultKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.name())
    }
}

/// One injected fault.
#[derive(Debug, Clone)]
pub struct Fault {
    /// What.
    pub kind: FaultKind,
    /// Its target: a holder id, `store`, or a seat's proxy (`proxy e3.1`).
    pub target: String,
    /// When it began (ns).
    pub start: u64,
    /// When it was healed (ns): SIGCONT, restart done, proxy back to pass
    /// through; equal to `start` for a kill of an elector.
    pub healed: u64,
    /// Extra detail (durations, latency).
    pub detail: String,
}

impl Fault {
    /// How long it lasted.
    pub fn length(&self) -> Duration {
        Duration::from_nanos(self.healed.saturating_sub(self.start))
    }
}

/// A random duration in `[low, high]`.
pub fn between(rng: &mut impl Rng, low: Duration, high: Duration) -> Duration {
    if high <= low {
        return low;
    }
    let span = (high - low).as_millis().max(1);
    low + Duration::from_millis(u64::try_from(rng.random_range(0..=span)).unwrap_or(0))
}
