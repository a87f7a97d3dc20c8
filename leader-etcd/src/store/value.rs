//! The key's value: who holds the term and its metadata, and the
//! transaction guard that recognizes one term by it.
//!
//! A term started by `acquire` stores the holder id alone, exactly what
//! earlier versions of this library wrote. A term with metadata stores
//!
//! ```text
//! holder id, 0x00, token (8 bytes, big-endian), 0x01, metadata (0..=1024 bytes)
//! ```
//!
//! Holder ids never contain control characters, so the first NUL ends the
//! holder id. The token field is 0 in a value written by the transaction
//! that started the term: the term's token is that transaction's revision
//! (the key's mod revision), unknown before it runs. `update_metadata` puts
//! the term's token there, because its own put moves the mod revision on.
//! 0x01 is the record's format version; a value this version cannot read is
//! an [`ErrorKind::Protocol`](leader_core::ErrorKind::Protocol) error naming
//! what is wrong.

use etcd_client::{Compare, CompareOp, KeyValue, Txn, TxnOp, TxnOpResponse, TxnResponse};
use leader_core::{FencingToken, HolderId, Metadata, Result};

use crate::error::protocol;

/// Ends the holder id in a value with metadata.
const SEPARATOR: u8 = 0;
/// The format of the record after the holder id and token.
const FORMAT: u8 = 1;
/// The length of the token field.
const TOKEN_LEN: usize = 8;

/// What the key's value and revision say about the term.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Term {
    pub(crate) holder: HolderId,
    pub(crate) token: FencingToken,
    pub(crate) metadata: Option<Metadata>,
    /// Written by `update_metadata` (not by the transaction that started
    /// the term).
    pub(crate) updated: bool,
}

impl Term {
    /// Decodes a value written at `mod_revision`; the error says what is
    /// wrong with it.
    pub(crate) fn decode(value: &[u8], mod_revision: i64) -> std::result::Result<Term, Invalid> {
        let revision = u64::try_from(mod_revision)
            .ok()
            .filter(|r| *r > 0)
            .ok_or_else(|| {
                Invalid::new(format!("the key has an invalid revision {mod_revision}"))
            })?;
        let (holder, record) = match value.iter().position(|b| *b == SEPARATOR) {
            None => (value, None),
            Some(at) => (&value[..at], Some(&value[at + 1..])),
        };
        let holder = std::str::from_utf8(holder)
            .map_err(|_| Invalid::new("the key's value is not UTF-8, so not a holder id"))?;
        let holder = HolderId::new(holder)
            .map_err(|e| Invalid::new("the key's value is not a valid holder id").with_source(e))?;
        let Some(record) = record else {
            return Ok(Term {
                holder,
                token: FencingToken(revision),
                metadata: None,
                updated: false,
            });
        };
        let (token, rest) = record.split_at_checked(TOKEN_LEN).ok_or_else(|| {
            Invalid::new(format!(
                "the key's value is cut short: {} bytes after the holder id and its NUL, \
                 in the 8-byte token",
                record.len()
            ))
        })?;
        let token = u64::from_be_bytes(token.try_into().unwrap_or_default());
        match rest.first() {
            Some(&FORMAT) => {}
            Some(other) => {
                return Err(Invalid::new(format!(
                    "the key's value has record format {other}; this version reads format \
                     {FORMAT} (written by a newer version?)"
                )));
            }
            None => {
                return Err(Invalid::new(
                    "the key's value ends after the token, without a record format",
                ));
            }
        }
        let metadata = Metadata::new(&rest[1..])
            .map_err(|e| Invalid::new("the key's value holds invalid metadata").with_source(e))?;
        if token >= revision {
            return Err(Invalid::new(format!(
                "the key's value names token {token} but was written at revision {revision}"
            )));
        }
        Ok(Term {
            holder,
            token: FencingToken(if token == 0 { revision } else { token }),
            metadata: Some(metadata),
            updated: token != 0,
        })
    }
}

/// Why a value is not one this version reads.
#[derive(Debug)]
pub(crate) struct Invalid {
    message: String,
    source: Option<Box<leader_core::Error>>,
}

impl Invalid {
    fn new(message: impl Into<String>) -> Self {
        Invalid {
            message: message.into(),
            source: None,
        }
    }

    fn with_source(mut self, source: leader_core::Error) -> Self {
        self.source = Some(Box::new(source));
        self
    }
}

/// The term on `kv`, or a protocol error naming what is wrong with it.
pub(super) fn term_of(op: &'static str, key: &str, kv: &KeyValue) -> Result<Term> {
    Term::decode(kv.value(), kv.mod_revision()).map_err(|invalid| {
        let e = protocol(op, key, invalid.message);
        match invalid.source {
            Some(source) => e.with_source(*source),
            None => e,
        }
    })
}

/// Whether `value` names `holder` (with or without metadata).
pub(super) fn names_holder(value: &[u8], holder: &HolderId) -> bool {
    let h = holder.as_str().as_bytes();
    value
        .strip_prefix(h)
        .is_some_and(|rest| rest.first().is_none_or(|b| *b == SEPARATOR))
}

/// The value the transaction starting a term writes: the holder id alone,
/// or the record with `metadata` and token 0.
pub(super) fn start_value(holder: &HolderId, metadata: Option<&Metadata>) -> Vec<u8> {
    match metadata {
        None => holder.as_str().as_bytes().to_vec(),
        Some(m) => record(holder, 0, Some(m)),
    }
}

/// The value `update_metadata` writes: the record with the term's token.
pub(super) fn updated_value(
    holder: &HolderId,
    token: FencingToken,
    metadata: &Metadata,
) -> Vec<u8> {
    record(holder, token.0, Some(metadata))
}

/// The record for `holder` and `token`, up to its format byte, followed by
/// `metadata` if any.
fn record(holder: &HolderId, token: u64, metadata: Option<&Metadata>) -> Vec<u8> {
    let h = holder.as_str().as_bytes();
    let m = metadata.map_or(&[][..], Metadata::as_bytes);
    let mut v = Vec::with_capacity(h.len() + 2 + TOKEN_LEN + m.len());
    v.extend_from_slice(h);
    v.push(SEPARATOR);
    v.extend_from_slice(&token.to_be_bytes());
    v.push(FORMAT);
    v.extend_from_slice(m);
    v
}

/// Compares true exactly for records of `holder` and token field `token`:
/// their values lie strictly between `prefix 0x00` and `prefix 0x02`
/// (`prefix` = holder, NUL, token), which holds only for `prefix 0x01 …`
/// (format 1) and for `prefix 0x00 …`, a format no version writes. etcd
/// compares values byte-wise and has no "greater or equal", hence the
/// bracket.
fn record_of(k: &str, holder: &HolderId, token: u64) -> [Compare; 2] {
    let mut low = record(holder, token, None);
    let mut high = low.clone();
    low.pop();
    low.push(FORMAT - 1);
    high.pop();
    high.push(FORMAT + 1);
    [
        Compare::value(k, CompareOp::Greater, low),
        Compare::value(k, CompareOp::Less, high),
    ]
}

/// A transaction that runs `ops` only while `k` still holds the term of
/// `holder` with `token` (holder id **and** token, under etcd lease `id`),
/// in one round trip:
///
/// 1. written by the plain acquisition that started the term: mod revision
///    == token, value == holder id;
/// 2. written by the acquisition with metadata that started it: mod revision
///    == token, value a record of the holder with token field 0;
/// 3. metadata replaced since: value a record of the holder with the token.
///
/// etcd transactions have no "or", so 2 and 3 are nested transactions in
/// the else branch of the one before; [`held`] tells whether one ran.
/// `None` when `token` cannot be a term's (0, or beyond etcd's revisions):
/// nothing can match it.
pub(super) fn while_held(
    k: &str,
    holder: &HolderId,
    token: FencingToken,
    id: i64,
    ops: &[TxnOp],
) -> Option<Txn> {
    let revision = i64::try_from(token.0).ok().filter(|t| *t > 0)?;
    let term_start = |value: Vec<Compare>| {
        let mut c = vec![
            Compare::mod_revision(k, CompareOp::Equal, revision),
            Compare::lease(k, CompareOp::Equal, id),
        ];
        c.extend(value);
        c
    };
    let branches = [
        term_start(vec![Compare::value(k, CompareOp::Equal, holder.as_str())]),
        term_start(record_of(k, holder, 0).to_vec()),
        [
            vec![Compare::lease(k, CompareOp::Equal, id)],
            record_of(k, holder, token.0).to_vec(),
        ]
        .concat(),
    ];
    branches.into_iter().rev().fold(None, |inner, compares| {
        let txn = Txn::new().when(compares).and_then(ops.to_vec());
        Some(match inner {
            Some(inner) => txn.or_else([TxnOp::txn(inner)]),
            None => txn,
        })
    })
}

/// Whether a [`while_held`] transaction found the term and ran its ops.
pub(super) fn held(resp: &TxnResponse) -> bool {
    resp.succeeded()
        || resp.op_responses().iter().any(|r| match r {
            TxnOpResponse::Txn(nested) => held(nested),
            _ => false,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn holder(s: &str) -> HolderId {
        HolderId::new(s).expect("holder")
    }

    fn meta(b: &[u8]) -> Metadata {
        Metadata::new(b.to_vec()).expect("metadata")
    }

    #[test]
    fn values_round_trip_and_plain_values_stay_the_holder_id() {
        let h = holder("pod-a/1f");
        assert_eq!(start_value(&h, None), b"pod-a/1f");
        let plain = Term::decode(b"pod-a/1f", 7).expect("plain");
        assert_eq!(
            plain,
            Term {
                holder: h.clone(),
                token: FencingToken(7),
                metadata: None,
                updated: false
            }
        );
        for m in [
            &b""[..],
            b"10.0.0.7:8080",
            &[0xff, 0, 1, 0xfe],
            &[0u8; 1024],
        ] {
            let started = Term::decode(&start_value(&h, Some(&meta(m))), 9).expect("start");
            assert_eq!(started.token, FencingToken(9));
            assert_eq!(started.metadata, Some(meta(m)));
            assert!(!started.updated);
            let updated =
                Term::decode(&updated_value(&h, FencingToken(9), &meta(m)), 12).expect("update");
            assert_eq!(
                (updated.holder, updated.token),
                (h.clone(), FencingToken(9))
            );
            assert_eq!(updated.metadata, Some(meta(m)));
            assert!(updated.updated);
        }
    }

    #[test]
    fn unreadable_values_say_what_is_wrong() {
        let h = holder("a");
        let long = [&record(&h, 0, None)[..], &[b'x'; 1025][..]].concat();
        let mut newer = record(&h, 0, None);
        *newer.last_mut().expect("format byte") = 2;
        for (value, revision, needle) in [
            (&b"\xff\xfe"[..], 5, "not UTF-8"),
            (b" ", 5, "not a valid holder id"),
            (b"a\0\0\0", 5, "cut short: 2 bytes"),
            (b"a\0\0\0\0\0\0\0\0\0", 5, "without a record format"),
            (&newer, 5, "record format 2"),
            (&long, 5, "invalid metadata"),
            (
                &updated_value(&h, FencingToken(5), &meta(b"")),
                5,
                "names token 5",
            ),
            (b"a", 0, "invalid revision 0"),
        ] {
            let e = Term::decode(value, revision).expect_err(needle);
            let source = e.source.map(|s| s.to_string()).unwrap_or_default();
            assert!(
                e.message.contains(needle),
                "{needle}: {} ({source})",
                e.message
            );
        }
    }

    #[test]
    fn holder_names_are_matched_whole() {
        let a = holder("a");
        assert!(names_holder(b"a", &a));
        assert!(names_holder(&start_value(&a, Some(&meta(b"x"))), &a));
        assert!(!names_holder(b"ab", &a));
        assert!(!names_holder(
            &start_value(&holder("ab"), Some(&meta(b"x"))),
            &a
        ));
        assert!(!names_holder(b"", &a));
    }
}
