//! Health reports in the card's shape.
//!
//! A leader is `Healthy`; a follower is `Degraded` by default (the card's
//! convention: normal for followers, do not alert on it); `Unhealthy` means
//! the store has not answered for longer than the configured bound, or the
//! elector believes it leads but has not renewed within the lease. Alert only
//! on `Unhealthy`. Healthy and Degraded map to HTTP 200, Unhealthy to 503.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::names::{FencingToken, HolderId};

/// The health status, spelled as the card spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum HealthStatus {
    /// The instance leads (or election is disabled).
    Healthy,
    /// A normal follower.
    Degraded,
    /// The store is unreachable, or leadership is in doubt.
    Unhealthy,
}

impl HealthStatus {
    /// The HTTP status a health endpoint should answer with.
    pub fn http_status(self) -> u16 {
        match self {
            HealthStatus::Healthy | HealthStatus::Degraded => 200,
            HealthStatus::Unhealthy => 503,
        }
    }

    /// `"Healthy"`, `"Degraded"` or `"Unhealthy"`.
    pub fn as_str(self) -> &'static str {
        match self {
            HealthStatus::Healthy => "Healthy",
            HealthStatus::Degraded => "Degraded",
            HealthStatus::Unhealthy => "Unhealthy",
        }
    }
}

/// The data part of a health report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct HealthData {
    /// Whether this instance may act as leader right now.
    pub is_leader: bool,
    /// This instance's holder id.
    pub instance_id: HolderId,
    /// The resource name.
    pub resource: String,
    /// The current leader, when known.
    pub leader_id: Option<HolderId>,
    /// This instance's fencing token while it leads.
    pub fencing_token: Option<FencingToken>,
    /// How long this instance's leadership stays valid without renewal.
    #[serde(serialize_with = "opt_millis", rename = "lease_remaining_ms")]
    pub lease_remaining: Option<Duration>,
    /// Time since the last successful renewal (or acquisition) of this
    /// instance's lease.
    #[serde(serialize_with = "opt_millis", rename = "since_last_renewal_ms")]
    pub since_last_renewal: Option<Duration>,
    /// Failed store calls in a row.
    pub consecutive_failures: u32,
    /// The store kind (`redis`, `etcd`, `postgres`, `memory`).
    pub store: &'static str,
    /// `"election"`, or `"single-instance"` when election is disabled and
    /// this instance leads without asking anyone: every replica so
    /// configured does the singleton work.
    pub mode: &'static str,
}

/// The health `mode` of an elector on `store` (`"disabled"`: no election).
pub(crate) fn mode_of(store: &str) -> &'static str {
    if store == "disabled" {
        "single-instance"
    } else {
        "election"
    }
}

/// One health report: the `leader_election` entry of a health document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct HealthReport {
    /// The status.
    pub status: HealthStatus,
    /// A human-readable reason.
    pub description: String,
    /// The details.
    pub data: HealthData,
    /// The last store error, when Unhealthy (already free of secrets).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exception: Option<String>,
}

impl HealthReport {
    /// The whole health document in the card's shape:
    /// `{"status": ..., "results": {"leader_election": {...}}}`, so that
    /// `jq '.results.leader_election.status'` and `.data.is_leader` work.
    pub fn to_document(&self) -> Value {
        json!({
            "status": self.status,
            "results": { "leader_election": self },
        })
    }
}

fn opt_millis<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        None => s.serialize_none(),
    }
}
