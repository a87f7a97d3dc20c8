//! Resign requests (`LeaseStore::request_resign`, `leaderctl resign`).
//!
//! etcd has no publish/subscribe, so a request is a write the holder's watch
//! sees: the *request key*, the lease key followed by [`SUFFIX`], whose value
//! is the token of the term asked to end (decimal ASCII). It is put in one
//! transaction guarded like `update_metadata` (the lease key still holds that
//! term) and under the holder's own etcd lease, so it is deleted with that
//! lease (revoked by release and force release, or expired) and never
//! outlives the term. Release does not delete it itself: a user granted
//! only the lease key can still release. The key's watch covers the range from the lease key to just
//! past its request key, and routes a `PUT` of the request key as
//! [`LeaseEvent::ResignRequested`](leader_core::LeaseEvent::ResignRequested).
//!
//! Lease keys never contain control characters, so no lease key lies in
//! that range but the watched one, and no request key is another's lease key.

use etcd_client::{PutOptions, TxnOp};
use leader_core::{FencingToken, LeaseKey, Result};

use super::EtcdStore;
use super::value::{held, term_of, while_held};
use crate::error::protocol;

/// What follows the lease key in its request key; starts with a NUL, which
/// no lease key contains.
const SUFFIX: &[u8] = b"\0resign";

/// The request key of lease key `k`.
pub(crate) fn request_key(k: &str) -> Vec<u8> {
    [k.as_bytes(), SUFFIX].concat()
}

/// The end (exclusive) of the range a watch of `k` covers: the smallest key
/// after `k`'s request key, so the range holds `k` and its request key, and
/// otherwise only keys with a NUL after `k`, which this library never
/// writes.
pub(crate) fn watch_range_end(k: &str) -> Vec<u8> {
    [k.as_bytes(), SUFFIX, b"\0"].concat()
}

/// The token a request key's value names; `None` for a value this library
/// does not write.
pub(crate) fn requested_token(value: &[u8]) -> Option<FencingToken> {
    let digits = std::str::from_utf8(value).ok()?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok().filter(|t| *t > 0).map(FencingToken)
}

impl EtcdStore {
    /// `request_resign`: reads the key for its holder and etcd lease, then
    /// puts the request key under that lease in a transaction that checks
    /// the key still holds the term with `token`.
    pub(super) async fn send_resign_request(
        &self,
        key: &LeaseKey,
        token: FencingToken,
    ) -> Result<bool> {
        const OP: &str = "request_resign";
        let k = key.as_str();
        let client = self.client(OP, k).await?;
        let (Some(kv), _) = self.get_kv(&client, OP, k).await? else {
            return Ok(false);
        };
        let term = term_of(OP, k, &kv)?;
        if term.token != token {
            return Ok(false);
        }
        let id = kv.lease();
        if id <= 0 {
            // Not written by this library; a request key without a lease
            // would outlive the term.
            return Err(protocol(OP, k, "the key is not attached to an etcd lease"));
        }
        let put = TxnOp::put(
            request_key(k),
            token.0.to_string(),
            Some(PutOptions::new().with_lease(id)),
        );
        let Some(txn) = while_held(k, &term.holder, token, id, &[put]) else {
            return Ok(false);
        };
        let resp = self.send_txn(OP, k, &client, txn).await?;
        // Not held: the term ended between the read and the transaction, and
        // tokens never come back.
        Ok(held(&resp))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_watch_range_holds_the_key_and_its_request_key_only() {
        let k = "app:leader";
        let (start, end) = (k.as_bytes().to_vec(), watch_range_end(k));
        let inside = |key: &[u8]| start.as_slice() <= key && key < end.as_slice();
        assert!(inside(k.as_bytes()));
        assert!(inside(&request_key(k)));
        // Lease keys next to it (no control characters) are outside.
        for other in [
            "app:leader ",
            "app:leader-2",
            "app:leader:x",
            "app:leadex",
            "app:leade",
        ] {
            assert!(!inside(other.as_bytes()), "{other:?} is in the range");
        }
        // And another key's request key is not a lease key's.
        assert!(!inside(&request_key("app:leader-2")));
    }

    #[test]
    fn request_values_are_decimal_tokens() {
        assert_eq!(requested_token(b"42"), Some(FencingToken(42)));
        assert_eq!(
            requested_token(FencingToken(u64::MAX).0.to_string().as_bytes()),
            Some(FencingToken(u64::MAX))
        );
        for bad in [
            &b""[..],
            b"0",
            b"-1",
            b"+1",
            b" 1",
            b"1x",
            b"\xff",
            b"18446744073709551616",
        ] {
            assert_eq!(requested_token(bad), None, "{bad:?}");
        }
    }
}
