//! Mapping redis crate errors onto [`leader_core::ErrorKind`].
//!
//! The rule that matters for safety: once a command may have reached the
//! server, a failure whose outcome is unknown (timeout, connection dropped) is
//! `Indeterminate`, never `Unavailable`, so a renewal is never counted as
//! done or as cleanly failed when it might have been either.

use leader_core::{Error, ErrorKind};
use redis::{RedisError, ServerErrorKind};

/// Where in an operation an error happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Opening a connection: nothing was sent, so nothing took effect.
    Connect,
    /// A command was handed to the connection.
    Command,
}

/// What the caller should do with the connection after an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ConnAction {
    /// Keep using it.
    Keep,
    /// Drop it and connect again (and re-resolve a Sentinel master).
    Reconnect,
}

/// Classifies `err` and says whether the connection is still usable.
pub(crate) fn classify(err: &RedisError, phase: Phase) -> (ErrorKind, ConnAction) {
    use redis::ErrorKind as K;
    let kind = err.kind();
    match kind {
        K::AuthenticationFailed | K::Server(ServerErrorKind::NoPerm) => {
            (ErrorKind::Auth, ConnAction::Reconnect)
        }
        K::InvalidClientConfig | K::EmptySentinelList => {
            (ErrorKind::InvalidConfig, ConnAction::Keep)
        }
        K::Server(ServerErrorKind::ReadOnly) => {
            // A write reached a replica: the Sentinel master moved. The
            // script failed at its first write, so nothing took effect.
            (ErrorKind::Unavailable, ConnAction::Reconnect)
        }
        K::Server(
            ServerErrorKind::MasterDown
            | ServerErrorKind::ClusterDown
            | ServerErrorKind::TryAgain
            | ServerErrorKind::BusyLoading,
        ) => (ErrorKind::Unavailable, ConnAction::Keep),
        K::MasterNameNotFoundBySentinel
        | K::NoValidReplicasFoundBySentinel
        | K::ClusterConnectionNotFound => (ErrorKind::Unavailable, ConnAction::Reconnect),
        K::Parse => (ErrorKind::Protocol, ConnAction::Reconnect),
        K::UnexpectedReturnType => (ErrorKind::Protocol, ConnAction::Keep),
        K::Io => match phase {
            Phase::Connect => (ErrorKind::Unavailable, ConnAction::Reconnect),
            Phase::Command => (ErrorKind::Indeterminate, ConnAction::Reconnect),
        },
        _ if phase == Phase::Connect => (ErrorKind::Unavailable, ConnAction::Reconnect),
        // Script errors (WRONGTYPE on a foreign key), NOSCRIPT after reload,
        // and anything the library does not know.
        _ => (ErrorKind::Protocol, ConnAction::Keep),
    }
}

/// Builds a [`leader_core::Error`] for a redis crate error.
///
/// The redis crate's messages do not contain credentials (it never formats
/// the connection info into errors), so it is kept as the source.
pub(crate) fn to_error(err: RedisError, kind: ErrorKind, operation: &'static str) -> Error {
    let message = match kind {
        ErrorKind::Indeterminate => {
            "the connection failed after the command was sent; its outcome is unknown"
        }
        ErrorKind::Unavailable => "Redis could not be reached or refused to serve",
        ErrorKind::Auth => "Redis refused the credentials",
        ErrorKind::Protocol => "unexpected reply from Redis",
        ErrorKind::InvalidConfig => "the Redis client configuration is invalid",
        _ => "Redis error",
    };
    Error::new(kind, message)
        .with_store("redis")
        .with_operation(operation)
        .with_source(err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io;

    #[test]
    fn io_errors_are_unavailable_before_sending_and_indeterminate_after() {
        let refused = RedisError::from(io::Error::from(io::ErrorKind::ConnectionRefused));
        assert_eq!(
            classify(&refused, Phase::Connect),
            (ErrorKind::Unavailable, ConnAction::Reconnect)
        );
        let dropped = RedisError::from(io::Error::from(io::ErrorKind::BrokenPipe));
        assert_eq!(
            classify(&dropped, Phase::Command),
            (ErrorKind::Indeterminate, ConnAction::Reconnect)
        );
        let timeout = RedisError::from(io::Error::from(io::ErrorKind::TimedOut));
        assert_eq!(
            classify(&timeout, Phase::Command).0,
            ErrorKind::Indeterminate
        );
    }

    #[test]
    fn type_mismatches_are_protocol_errors() {
        let e = RedisError::from((redis::ErrorKind::UnexpectedReturnType, "bad"));
        assert_eq!(classify(&e, Phase::Command).0, ErrorKind::Protocol);
        let e = RedisError::from((redis::ErrorKind::AuthenticationFailed, "no"));
        assert_eq!(classify(&e, Phase::Connect).0, ErrorKind::Auth);
    }
}
