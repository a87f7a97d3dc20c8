//! Reading script replies: anything unexpected is a `Protocol` error naming
//! what was wrong, never a panic.

use std::time::Duration;

use leader_core::{Error, FencingToken, HolderId, LeaseInfo, Result};
use redis::Value;

use crate::metadata;

/// A `Protocol` error for `operation`.
pub(crate) fn protocol(operation: &'static str, what: impl Into<String>) -> Error {
    Error::protocol(what)
        .with_store("redis")
        .with_operation(operation)
}

/// A TTL in whole milliseconds, rounded up.
pub(crate) fn ms_ceil(ttl: Duration) -> u64 {
    // Round up: the server must never expire the lease before the TTL the
    // elector computes its validity from.
    let ms = ttl.as_nanos().div_ceil(1_000_000);
    u64::try_from(ms).unwrap_or(u64::MAX)
}

pub(crate) fn as_text(op: &'static str, v: &Value, what: &str) -> Result<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b.clone())
            .map_err(|_| protocol(op, format!("the {what} is not UTF-8"))),
        Value::SimpleString(s) => Ok(s.clone()),
        Value::Int(i) => Ok(i.to_string()),
        _ => Err(protocol(op, format!("the {what} is not a string"))),
    }
}

pub(crate) fn as_int(op: &'static str, v: &Value, what: &str) -> Result<i64> {
    match v {
        Value::Int(i) => Ok(*i),
        other => as_text(op, other, what)?
            .parse()
            .map_err(|_| protocol(op, format!("the {what} is not an integer"))),
    }
}

/// A token read back from the term record; an empty string (a holder set by
/// something other than this library, e.g. `redis-cli SET`) reads as 0.
pub(crate) fn as_token(op: &'static str, v: &Value) -> Result<FencingToken> {
    let text = as_text(op, v, "fencing token")?;
    if text.is_empty() {
        return Ok(FencingToken(0));
    }
    text.parse::<u64>()
        .map(FencingToken)
        .map_err(|_| protocol(op, "the fencing token is not a non-negative integer"))
}

pub(crate) fn as_remaining(op: &'static str, v: &Value) -> Result<Option<Duration>> {
    let pttl = as_int(op, v, "remaining TTL")?;
    // -1: the key has no TTL (set by hand); never "expires".
    Ok(u64::try_from(pttl).ok().map(Duration::from_millis))
}

/// Parses `{holder, token, pttl, meta}` (the tail of acquire's reply, or
/// current's): all four were read in one script, so the metadata is the
/// token's term's.
pub(crate) fn as_info(op: &'static str, items: &[Value]) -> Result<LeaseInfo> {
    let [holder, token, pttl, meta] = items else {
        return Err(protocol(op, "expected holder, token, TTL and metadata"));
    };
    let holder = HolderId::new(as_text(op, holder, "holder id")?)
        .map_err(|e| protocol(op, "the stored holder id is not valid").with_source(e))?;
    Ok(
        LeaseInfo::new(holder, as_token(op, token)?, as_remaining(op, pttl)?)
            .with_metadata(metadata::decode(op, meta)?),
    )
}

/// A holder record that may be absent: an empty array means no holder
/// (the reply of `current` and `force_release`).
pub(crate) fn as_optional_info(op: &'static str, reply: Value) -> Result<Option<LeaseInfo>> {
    let items = as_array(op, reply)?;
    if items.is_empty() {
        return Ok(None);
    }
    as_info(op, &items).map(Some)
}

pub(crate) fn as_array(op: &'static str, v: Value) -> Result<Vec<Value>> {
    match v {
        Value::Array(items) => Ok(items),
        Value::Nil => Ok(Vec::new()),
        _ => Err(protocol(op, "expected an array reply")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttls_round_up_to_whole_milliseconds() {
        assert_eq!(ms_ceil(Duration::from_micros(1500)), 2);
        assert_eq!(ms_ceil(Duration::from_millis(30_000)), 30_000);
        assert_eq!(ms_ceil(Duration::from_nanos(1)), 1);
    }

    #[test]
    fn foreign_holders_without_a_term_read_as_token_zero() {
        let info = as_info(
            "current",
            &[
                Value::BulkString(b"someone".to_vec()),
                Value::BulkString(Vec::new()),
                Value::Int(-1),
                Value::BulkString(Vec::new()),
            ],
        )
        .expect("valid reply");
        assert_eq!(info.token, FencingToken(0));
        assert_eq!(info.remaining, None);
        assert_eq!(info.metadata, None);
    }

    #[test]
    fn garbage_replies_are_protocol_errors() {
        let err = as_info("current", &[Value::Int(1)]).expect_err("short reply");
        assert_eq!(err.kind(), leader_core::ErrorKind::Protocol);
        let err = as_token("current", &Value::BulkString(b"-3".to_vec())).expect_err("negative");
        assert_eq!(err.kind(), leader_core::ErrorKind::Protocol);
    }
}
