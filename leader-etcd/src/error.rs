//! Turning etcd-client errors into classified [`leader_core::Error`]s.
//!
//! The classification decides what the elector does next, so it errs on the
//! side of "indeterminate" whenever a request may have reached the server:
//!
//! * never sent (connection refused, no route, DNS, etcd without a leader):
//!   [`ErrorKind::Unavailable`];
//! * sent but no answer (our deadline, gRPC deadline or cancel, connection
//!   lost mid-request, etcd's "request timed out" / "leader changed"):
//!   [`ErrorKind::Indeterminate`];
//! * bad credentials or missing permission: [`ErrorKind::Auth`];
//! * "requested lease not found" (expired or revoked): [`ErrorKind::NotHolder`];
//! * anything else etcd answers: [`ErrorKind::Protocol`].
//!
//! etcd never echoes passwords in its messages, so the source's text is safe
//! to keep.

use std::error::Error as StdError;
use std::time::Duration;

use etcd_client::Error as EtcdError;
use leader_core::{Error, ErrorKind};

// gRPC status codes (stable numbers from the gRPC spec), so that we need no
// direct tonic dependency to match on them.
const CANCELLED: i32 = 1;
const INVALID_ARGUMENT: i32 = 3;
const DEADLINE_EXCEEDED: i32 = 4;
const PERMISSION_DENIED: i32 = 7;
const RESOURCE_EXHAUSTED: i32 = 8;
const UNAVAILABLE: i32 = 14;
const UNAUTHENTICATED: i32 = 16;

/// Whether anything in the error's source chain says the connection could
/// not be established (so the request never left this process).
fn is_connect_failure(err: &(dyn StdError + 'static)) -> bool {
    if is_tls_failure(err) {
        return true;
    }
    let mut cur = Some(err);
    while let Some(e) = cur {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind as K;
            if matches!(
                io.kind(),
                K::ConnectionRefused | K::AddrNotAvailable | K::NotFound | K::HostUnreachable
            ) {
                return true;
            }
        }
        let text = e.to_string();
        if text.contains("tcp connect error")
            || text.contains("error trying to connect")
            || text.contains("dns error")
            || text.contains("Connection refused")
        {
            return true;
        }
        cur = e.source();
    }
    false
}

/// Whether an I/O or transport error is in the source chain.
fn is_transport_failure(err: &(dyn StdError + 'static)) -> bool {
    let mut cur = Some(err);
    while let Some(e) = cur {
        if e.downcast_ref::<std::io::Error>().is_some() || e.to_string() == "transport error" {
            return true;
        }
        cur = e.source();
    }
    false
}

/// Whether the TLS handshake failed (an untrusted or mismatched server
/// certificate, a refused client certificate): nothing was sent.
fn is_tls_failure(err: &(dyn StdError + 'static)) -> bool {
    let mut cur = Some(err);
    while let Some(e) = cur {
        if e.downcast_ref::<rustls::Error>().is_some() {
            return true;
        }
        // `io::Error::source` skips its own payload: look inside.
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && io
                .get_ref()
                .is_some_and(|inner| inner.downcast_ref::<rustls::Error>().is_some())
        {
            return true;
        }
        cur = e.source();
    }
    false
}

/// The source chain of an etcd-client error, for the checks above.
fn chain(err: &EtcdError) -> Option<&(dyn StdError + 'static)> {
    match err {
        EtcdError::GRpcStatus(s) => Some(s),
        EtcdError::TransportError(e) => Some(e),
        EtcdError::IoError(e) => Some(e),
        _ => None,
    }
}

/// The kind for an etcd-client error.
pub(crate) fn classify(err: &EtcdError) -> ErrorKind {
    if is_lease_not_found(err) {
        // The etcd lease expired or was revoked: whoever held it lost it.
        return ErrorKind::NotHolder;
    }
    match err {
        EtcdError::GRpcStatus(status) => {
            let msg = status.message();
            match status.code() as i32 {
                CANCELLED | DEADLINE_EXCEEDED => ErrorKind::Indeterminate,
                UNAVAILABLE => {
                    if is_connect_failure(status)
                        || msg.contains("no leader")
                        || msg.contains("not capable")
                        || msg.contains("too many requests")
                        || msg.contains("tcp connect error")
                    {
                        ErrorKind::Unavailable
                    } else {
                        // "request timed out", "leader changed", a reset
                        // connection: the request may have been applied.
                        ErrorKind::Indeterminate
                    }
                }
                RESOURCE_EXHAUSTED => ErrorKind::Unavailable,
                UNAUTHENTICATED | PERMISSION_DENIED => ErrorKind::Auth,
                // A transport failure surfaced without a gRPC code (a broken
                // pipe or reset while sending): maybe sent, maybe not.
                _ if is_transport_failure(status) => {
                    if is_connect_failure(status) {
                        ErrorKind::Unavailable
                    } else {
                        ErrorKind::Indeterminate
                    }
                }
                INVALID_ARGUMENT if msg.contains("authentication failed") => ErrorKind::Auth,
                INVALID_ARGUMENT if msg.contains("user name") => ErrorKind::Auth,
                _ => ErrorKind::Protocol,
            }
        }
        EtcdError::TransportError(e) => {
            if is_connect_failure(e) {
                ErrorKind::Unavailable
            } else {
                ErrorKind::Indeterminate
            }
        }
        EtcdError::IoError(e) => {
            if is_connect_failure(e) {
                ErrorKind::Unavailable
            } else {
                ErrorKind::Indeterminate
            }
        }
        EtcdError::InvalidArgs(_) | EtcdError::InvalidUri(_) | EtcdError::EndpointError(_) => {
            ErrorKind::InvalidConfig
        }
        // A stream (watch, keep-alive) that broke or ended before answering.
        EtcdError::WatchError(_) | EtcdError::LeaseKeepAliveError(_) => ErrorKind::Indeterminate,
        _ => ErrorKind::Protocol,
    }
}

/// Whether etcd said the lease does not exist (expired or revoked).
pub(crate) fn is_lease_not_found(err: &EtcdError) -> bool {
    match err {
        EtcdError::GRpcStatus(s) => s.message().contains("requested lease not found"),
        EtcdError::LeaseKeepAliveError(m) => m.contains("lease not found"),
        _ => false,
    }
}

/// Builds the store error for an etcd-client error.
pub(crate) fn from_etcd(op: &'static str, key: &str, err: EtcdError) -> Error {
    let kind = classify(&err);
    let what = match kind {
        ErrorKind::Unavailable if chain(&err).is_some_and(is_tls_failure) => {
            "the TLS handshake with etcd failed (check the CA, client certificate and domain)"
        }
        ErrorKind::Unavailable => "etcd could not be reached",
        ErrorKind::Indeterminate => "the request to etcd did not complete",
        ErrorKind::Auth => "etcd refused the credentials or permission",
        ErrorKind::InvalidConfig => "etcd client configuration refused",
        ErrorKind::NotHolder => "the etcd lease expired or was revoked",
        _ => "etcd answered with an error",
    };
    Error::new(kind, what)
        .with_store("etcd")
        .with_operation(op)
        .with_key(key)
        .with_source(err)
}

/// The error for a request that ran out of our own deadline.
pub(crate) fn timed_out(op: &'static str, key: &str, after: Duration) -> Error {
    Error::indeterminate(format!("no answer from etcd within {after:?}"))
        .with_store("etcd")
        .with_operation(op)
        .with_key(key)
}

/// The error for an answer that does not make sense.
pub(crate) fn protocol(op: &'static str, key: &str, message: impl Into<String>) -> Error {
    Error::protocol(message)
        .with_store("etcd")
        .with_operation(op)
        .with_key(key)
}
