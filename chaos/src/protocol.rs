//! The lines an elector process writes on its stdout (one JSON object per
//! line, written with one `write` so a SIGKILL never leaves half a line) and
//! the answers the orchestrator writes on its stdin.

use serde::{Deserialize, Serialize};

/// A lease operation an elector reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StoreOp {
    /// `LeaseStore::acquire`.
    Acquire,
    /// `LeaseStore::renew`.
    Renew,
    /// `LeaseStore::release`.
    Release,
}

/// How a store call ended, as the elector saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CallOutcome {
    /// It took effect (an acquire that won, a renew or release that acted).
    Ok,
    /// It did not take effect (held by another, not holder, refused).
    Fail,
    /// Unknown: timed out or the connection dropped mid-call.
    Indeterminate,
}

/// A moment without duration in an elector's life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Moment {
    /// `is_leader` turned false (the published state left leadership).
    StepDown,
    /// Run-while-leader work was told leadership was lost.
    LossSignal,
}

/// One line from an elector to the orchestrator. Times are
/// `CLOCK_MONOTONIC` nanoseconds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub enum Report {
    /// The elector is running (sent once, after `Elector::start`).
    Ready {
        /// The elector's holder id.
        holder: String,
    },
    /// A store call is being sent.
    Invoke {
        /// Call id, unique within the process.
        id: u64,
        /// Which call.
        op: StoreOp,
        /// When.
        at: u64,
        /// The term's token (renew, release).
        token: Option<u64>,
    },
    /// A store call returned.
    Complete {
        /// The call id of the matching [`Report::Invoke`].
        id: u64,
        /// How it ended.
        outcome: CallOutcome,
        /// When.
        at: u64,
        /// The token minted (acquire) or held (renew, release).
        token: Option<u64>,
    },
    /// A step-down or loss signal.
    Moment {
        /// Which.
        what: Moment,
        /// When.
        at: u64,
        /// The term's token.
        token: Option<u64>,
    },
    /// A request to write to the shared fenced resource with `token`; the
    /// orchestrator answers with a [`WriteAnswer`] on the elector's stdin.
    Write {
        /// Request id, unique within the process.
        seq: u64,
        /// The writer's fencing token.
        token: u64,
        /// When the writer checked `is_leader()` and sent the request.
        at: u64,
    },
}

/// The orchestrator's answer to a [`Report::Write`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriteAnswer {
    /// The request id.
    pub seq: u64,
    /// Whether the resource accepted the write.
    pub accepted: bool,
}
