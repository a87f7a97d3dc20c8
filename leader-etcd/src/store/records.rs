//! Decoding what etcd returns into the core's types, and the errors for it.

use std::time::Duration;

use etcd_client::{KeyValue, TxnOpResponse, TxnResponse};
use leader_core::{Error, FencingToken, HolderId, Lease, LeaseKey, Result};

use crate::error::protocol;

/// The whole seconds etcd grants for `ttl`: rounded up, at least 1.
pub(super) fn ttl_seconds(ttl: Duration) -> i64 {
    let millis = ttl.as_millis().max(1);
    i64::try_from(millis.div_ceil(1000)).unwrap_or(i64::MAX)
}

pub(super) fn not_holder(op: &'static str, lease: &Lease, why: &str) -> Error {
    Error::not_holder(format!(
        "lease with token {} is no longer held by {}: {why}",
        lease.token, lease.holder
    ))
    .with_store("etcd")
    .with_operation(op)
    .with_key(lease.key.as_str())
}

/// The fencing token of a key written by `acquire`: the revision of the
/// transaction that wrote it (its mod revision; see [`EtcdStore`]).
pub(super) fn token_of(op: &'static str, key: &str, kv: &KeyValue) -> Result<FencingToken> {
    u64::try_from(kv.mod_revision())
        .ok()
        .filter(|r| *r > 0)
        .map(FencingToken)
        .ok_or_else(|| {
            protocol(
                op,
                key,
                format!("the key has an invalid revision {}", kv.mod_revision()),
            )
        })
}

pub(super) fn lease_id_of(lease: &Lease) -> Result<i64> {
    i64::try_from(lease.handle)
        .ok()
        .filter(|id| *id > 0)
        .ok_or_else(|| {
            Error::invalid_argument("this lease was not acquired from an etcd store")
                .with_store("etcd")
                .with_key(lease.key.as_str())
        })
}

/// The first key-value of the last `Get` in a transaction's answers.
pub(super) fn txn_get(resp: &TxnResponse) -> Option<KeyValue> {
    resp.op_responses()
        .into_iter()
        .rev()
        .find_map(|r| match r {
            TxnOpResponse::Get(mut g) => Some(g.take_kvs().into_iter().next()),
            _ => None,
        })
        .flatten()
}

pub(super) fn lease(
    key: &LeaseKey,
    holder: &HolderId,
    token: FencingToken,
    ttl: Duration,
    id: i64,
) -> Lease {
    // Lease ids granted by etcd are positive.
    Lease::new(key.clone(), holder.clone(), token, ttl).with_handle(id.unsigned_abs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttls_round_up_to_whole_seconds() {
        assert_eq!(ttl_seconds(Duration::from_millis(1)), 1);
        assert_eq!(ttl_seconds(Duration::from_millis(999)), 1);
        assert_eq!(ttl_seconds(Duration::from_millis(1000)), 1);
        assert_eq!(ttl_seconds(Duration::from_millis(1001)), 2);
        assert_eq!(ttl_seconds(Duration::from_secs(30)), 30);
    }
}
