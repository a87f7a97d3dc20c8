//! Stable mappings: lease key -> advisory lock key, lock key -> NOTIFY
//! channel, holder id -> `application_name`, lease TTL -> TCP settings.
//!
//! # Lock keys
//!
//! A lease key (prefix + resource, e.g. `honua:leader:honua-server`) maps to
//! the signed 64-bit advisory lock key
//! `FNV-1a-64("leader-postgres/v1\0" ++ utf8(lease key)) as i64`.
//! The function and the namespace string are part of the crate's stable
//! contract: every version and every process computes the same key, so
//! instances of different versions still exclude each other.
//!
//! Two different names whose hashes collide share one lock (and one fencing
//! counter row): mutual exclusion still holds, but the two resources block
//! each other and never have leaders at the same time. With a 64-bit hash
//! this is vanishingly rare for honest names; when it matters (or to share a
//! lock with other software), pin a key with
//! [`PostgresConfig::with_lock_key`](crate::PostgresConfig::with_lock_key).

use std::time::Duration;

/// The namespace mixed into every hashed lock key.
pub const LOCK_KEY_NAMESPACE: &[u8] = b"leader-postgres/v1\0";

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// The advisory lock key of a lease key, hashed as described in the module docs.
pub fn hashed_lock_key(lease_key: &str) -> i64 {
    let mut hash = FNV_OFFSET;
    for byte in LOCK_KEY_NAMESPACE.iter().chain(lease_key.as_bytes()) {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(FNV_PRIME);
    }
    // Reinterpret the bits; Postgres advisory keys are signed bigints.
    i64::from_ne_bytes(hash.to_ne_bytes())
}

/// The LISTEN/NOTIFY channel of a lock key: `leader_` and 16 hex digits.
/// Names that share a lock key share the channel, as they share the lock.
pub fn channel(lock_key: i64) -> String {
    format!("leader_{:016x}", u64::from_ne_bytes(lock_key.to_ne_bytes()))
}

/// Postgres keeps at most 63 bytes of `application_name`.
pub const MAX_APPLICATION_NAME: usize = 63;

/// A holder id made safe for `application_name`: Postgres accepts only
/// printable ASCII there (it rewrites anything else), and keeps 63 bytes.
/// Non-printable or non-ASCII characters become `?`; the result is cut to 63
/// bytes. The full holder id is stored in the counter table.
pub fn application_name(holder: &str) -> String {
    holder
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .take(MAX_APPLICATION_NAME)
        .collect()
}

/// Per-session TCP settings applied to a lease's pinned connection, derived
/// from the lease TTL so that the server drops the session of a dead or
/// partitioned holder about one TTL after it last heard from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keepalive {
    /// `tcp_keepalives_idle`, whole seconds.
    pub idle_secs: u64,
    /// `tcp_keepalives_interval`, whole seconds.
    pub interval_secs: u64,
    /// `tcp_keepalives_count`.
    pub count: u64,
    /// `tcp_user_timeout`, milliseconds.
    pub user_timeout_ms: u64,
}

impl Keepalive {
    /// Settings for a lease of `ttl`: idle `ceil(ttl/2)`, interval
    /// `ceil(ttl/6)` (both at least 1 s, the kernel's granularity), 3 probes,
    /// and a user timeout equal to `idle + 3 * interval`.
    ///
    /// The server therefore gives up on a silent holder no sooner than `ttl`
    /// and no later than about `ttl + 4 s` after the last packet it received
    /// from it (at least 4 s because keepalive works in whole seconds). Never
    /// sooner than `ttl` is what keeps it safe: the holder's elector steps
    /// down at its renew deadline, which is shorter than the lease.
    pub fn for_ttl(ttl: Duration) -> Self {
        let ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        let ceil_secs = |div: u64| ms.div_ceil(div.saturating_mul(1000)).max(1);
        let idle_secs = ceil_secs(2);
        let interval_secs = ceil_secs(6);
        let count = 3;
        // Postgres caps these settings at INT_MAX; clamp so a week-long TTL
        // still produces valid values.
        let idle_secs = idle_secs.min(i32::MAX as u64 / 1000);
        let interval_secs = interval_secs.min(i32::MAX as u64 / 4000);
        let user_timeout_ms = (idle_secs + count * interval_secs) * 1000;
        Keepalive {
            idle_secs,
            interval_secs,
            count,
            user_timeout_ms,
        }
    }

    /// The time after which the server drops a silent holder's session.
    pub fn bound(&self) -> Duration {
        Duration::from_millis(self.user_timeout_ms)
    }
}

/// The pinned session's `idle_session_timeout` for a lease of `ttl`: 1.25
/// TTL in whole milliseconds, rounded up (at least 1 ms; Postgres caps it
/// at `i32::MAX` ms, about 24.8 days).
///
/// The server ends the session, and so frees the lock, when it has waited
/// this long for the holder's next statement. A holder renews every renewal
/// interval (shorter than the TTL), so a running holder never trips it; a
/// stopped one loses the lock 1.25 TTL after its last statement finished,
/// which is after its own validity (counted from that statement's send
/// time) has ended. The extra quarter lets a running process's own
/// store-side expiry (one TTL from the send time) give a lease that is no
/// longer renewed up first, as a release that notifies followers and needs
/// no lock delay, even when its timer fires late on a loaded machine.
pub fn idle_session_timeout_ms(ttl: Duration) -> u64 {
    let micros = u64::try_from(ttl.as_micros()).unwrap_or(u64::MAX);
    micros
        .saturating_add(micros / 4)
        .div_ceil(1000)
        .clamp(1, i32::MAX as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_keys_are_stable_across_versions() {
        // Pinned values: changing them breaks mutual exclusion between
        // instances running different versions of this crate.
        assert_eq!(
            hashed_lock_key("honua:leader:honua-server"),
            -504_945_085_076_340_863
        );
        assert_eq!(hashed_lock_key(""), -5_184_856_871_425_406_928);
        assert_eq!(
            hashed_lock_key("p:x"),
            fnv_reference(b"leader-postgres/v1\0p:x")
        );
        assert_ne!(hashed_lock_key("a"), hashed_lock_key("b"));
        assert_ne!(hashed_lock_key("p:a"), hashed_lock_key("pa:"));
    }

    /// An independent spelling of FNV-1a-64 (test vector: "a" -> 0xaf63dc4c8601ec8c).
    fn fnv_reference(bytes: &[u8]) -> i64 {
        let mut h: u64 = 14_695_981_039_346_656_037;
        for b in bytes {
            h = (h ^ u64::from(*b)).wrapping_mul(1_099_511_628_211);
        }
        h as i64
    }

    #[test]
    fn fnv_matches_the_published_test_vector() {
        assert_eq!(fnv_reference(b"a") as u64, 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn channels_are_short_identifiers() {
        assert_eq!(channel(0), "leader_0000000000000000");
        assert_eq!(channel(-1), "leader_ffffffffffffffff");
        assert!(channel(hashed_lock_key("x")).len() <= 63);
    }

    #[test]
    fn application_names_are_ascii_and_truncated() {
        assert_eq!(application_name("host_12_ab"), "host_12_ab");
        assert_eq!(application_name("hôte_1"), "h?te_1");
        let long = "x".repeat(600);
        assert_eq!(application_name(&long).len(), MAX_APPLICATION_NAME);
        let multi = "é".repeat(100);
        let name = application_name(&multi);
        assert_eq!(name.len(), MAX_APPLICATION_NAME);
        assert!(name.chars().all(|c| c == '?'));
    }

    #[test]
    fn idle_session_timeout_is_a_quarter_above_the_ttl_rounded_up_to_a_millisecond() {
        assert_eq!(idle_session_timeout_ms(Duration::from_secs(2)), 2500);
        assert_eq!(idle_session_timeout_ms(Duration::from_micros(1500)), 2);
        assert_eq!(idle_session_timeout_ms(Duration::from_nanos(1)), 1);
        assert_eq!(
            idle_session_timeout_ms(leader_core::MAX_TTL),
            leader_core::MAX_TTL.as_millis() as u64 * 5 / 4
        );
        assert!(idle_session_timeout_ms(Duration::from_secs(u64::MAX)) <= i32::MAX as u64);
    }

    #[test]
    fn keepalive_bound_is_at_least_the_ttl_and_close_to_it() {
        for ms in [
            1, 200, 999, 1000, 1500, 5_000, 10_000, 15_000, 30_000, 60_000, 3_600_000,
        ] {
            let ttl = Duration::from_millis(ms);
            let k = Keepalive::for_ttl(ttl);
            assert!(k.bound() >= ttl, "{ttl:?}: {k:?}");
            assert!(k.bound() <= ttl + Duration::from_secs(4), "{ttl:?}: {k:?}");
            assert_eq!(k.count, 3);
            assert!(k.idle_secs >= 1 && k.interval_secs >= 1);
        }
        assert_eq!(
            Keepalive::for_ttl(Duration::from_secs(30)).bound(),
            Duration::from_secs(30)
        );
        let week = Keepalive::for_ttl(leader_core::MAX_TTL);
        assert!(week.user_timeout_ms <= i32::MAX as u64);
    }
}
