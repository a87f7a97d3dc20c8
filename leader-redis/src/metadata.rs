//! How a term's [`Metadata`] is kept in the `meta` field of its term record.
//!
//! Every acquisition writes the field in the same `HSET` as `holder` and
//! `token`, so a plain acquire clears the previous term's value without an
//! extra command: the empty string means "no metadata", and a value is
//! stored behind a one-byte marker (`=`), so that empty metadata stays
//! distinct from none. A term record without the field (written by an older
//! version of this library) reads as no metadata.

use leader_core::{Metadata, Result};
use redis::Value;

use crate::reply::protocol;

/// Marks a stored value; what follows it is the metadata, byte for byte.
const MARKER: u8 = b'=';

/// The `meta` field for `metadata`: empty for none.
pub(crate) fn encode(metadata: Option<&Metadata>) -> Vec<u8> {
    match metadata {
        None => Vec::new(),
        Some(m) => {
            let mut field = Vec::with_capacity(m.len() + 1);
            field.push(MARKER);
            field.extend_from_slice(m.as_bytes());
            field
        }
    }
}

/// Reads a `meta` field back (the scripts send `''` for a missing one).
pub(crate) fn decode(op: &'static str, v: &Value) -> Result<Option<Metadata>> {
    let bytes: &[u8] = match v {
        Value::BulkString(b) => b,
        Value::SimpleString(s) => s.as_bytes(),
        Value::Nil => return Ok(None),
        _ => return Err(protocol(op, "the stored metadata is not a string")),
    };
    match bytes.split_first() {
        None => Ok(None),
        Some((&MARKER, value)) => Metadata::new(value)
            .map(Some)
            .map_err(|e| protocol(op, "the stored metadata is too long").with_source(e)),
        Some(_) => Err(protocol(
            op,
            "the stored metadata lacks its '=' marker (written by something else)",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use leader_core::{ErrorKind, MAX_METADATA_LEN};

    fn round_trip(m: Option<&Metadata>) -> Option<Metadata> {
        decode("current", &Value::BulkString(encode(m))).expect("decodes")
    }

    #[test]
    fn none_empty_and_arbitrary_bytes_round_trip() {
        assert_eq!(round_trip(None), None);
        let empty = Metadata::new(Vec::new()).expect("empty");
        assert_eq!(round_trip(Some(&empty)), Some(empty), "empty is not none");
        let bytes = Metadata::new(vec![0, 0xff, b'=', b' ', 0x80]).expect("bytes");
        assert_eq!(round_trip(Some(&bytes)), Some(bytes));
        let full = Metadata::new(vec![b'x'; MAX_METADATA_LEN]).expect("at the limit");
        assert_eq!(round_trip(Some(&full)), Some(full));
    }

    #[test]
    fn foreign_fields_are_protocol_errors() {
        for bad in [
            Value::BulkString(b"no-marker".to_vec()),
            Value::BulkString([&[MARKER][..], &[b'x'; MAX_METADATA_LEN + 1]].concat()),
            Value::Int(3),
        ] {
            let e = decode("current", &bad).expect_err("not ours");
            assert_eq!(e.kind(), ErrorKind::Protocol, "{e}");
        }
    }
}
