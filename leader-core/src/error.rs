//! One classifiable error type for every store and for configuration.

use std::fmt;

/// What went wrong, in terms a caller can act on.
///
/// The kind, not the message, is the stable contract: match on it to decide
/// whether to retry, step down or report a configuration problem.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The store could not be reached or refused to serve (connection refused,
    /// reset, cluster without quorum). The operation did not take effect.
    Unavailable,
    /// The operation did not complete in time. Its outcome is unknown: it may
    /// or may not have taken effect on the store.
    Indeterminate,
    /// The caller does not hold the lease it tried to renew or release (it
    /// expired, was released, or someone else holds it now).
    NotHolder,
    /// Configuration or a connection string is invalid; the message names the
    /// field or part that is wrong.
    InvalidConfig,
    /// A resource name, key prefix or holder id is not acceptable to the store.
    InvalidName,
    /// A duration or other argument is out of range (zero or absurd TTLs).
    InvalidArgument,
    /// The store answered something the library does not understand.
    Protocol,
    /// Authentication or authorization with the store failed.
    Auth,
    /// The operation is not supported by this store or build (a cargo feature
    /// is off, a URL scheme is unknown).
    Unsupported,
    /// Called outside a tokio runtime: the elector and lock guards run
    /// background tasks and need one.
    NoRuntime,
}

impl ErrorKind {
    /// A short, stable, lowercase name (used in metric labels and logs).
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::Indeterminate => "indeterminate",
            ErrorKind::NotHolder => "not_holder",
            ErrorKind::InvalidConfig => "invalid_config",
            ErrorKind::InvalidName => "invalid_name",
            ErrorKind::InvalidArgument => "invalid_argument",
            ErrorKind::Protocol => "protocol",
            ErrorKind::Auth => "auth",
            ErrorKind::Unsupported => "unsupported",
            ErrorKind::NoRuntime => "no_runtime",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ErrorKind::Unavailable => "store unavailable",
            ErrorKind::Indeterminate => "outcome unknown (timed out)",
            ErrorKind::NotHolder => "not the lease holder",
            ErrorKind::InvalidConfig => "invalid configuration",
            ErrorKind::InvalidName => "invalid name",
            ErrorKind::InvalidArgument => "invalid argument",
            ErrorKind::Protocol => "unexpected answer from the store",
            ErrorKind::Auth => "authentication failed",
            ErrorKind::Unsupported => "unsupported",
            ErrorKind::NoRuntime => "no tokio runtime",
        })
    }
}

type Source = Box<dyn std::error::Error + Send + Sync + 'static>;

/// The error returned by stores, the elector, locks and config loading.
///
/// It carries a [`ErrorKind`], a message that says what was wrong, optional
/// context (store kind, operation, key) and an optional source. Messages never
/// contain secrets: stores redact passwords before building an error.
pub struct Error {
    kind: ErrorKind,
    message: String,
    store: Option<&'static str>,
    operation: Option<&'static str>,
    key: Option<String>,
    source: Option<Source>,
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// A new error of `kind` with a message saying what was wrong.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error {
            kind,
            message: message.into(),
            store: None,
            operation: None,
            key: None,
            source: None,
        }
    }

    /// Shorthand for [`ErrorKind::Unavailable`].
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Unavailable, message)
    }

    /// Shorthand for [`ErrorKind::Indeterminate`].
    pub fn indeterminate(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Indeterminate, message)
    }

    /// Shorthand for [`ErrorKind::NotHolder`].
    pub fn not_holder(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::NotHolder, message)
    }

    /// Shorthand for [`ErrorKind::InvalidConfig`].
    pub fn invalid_config(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidConfig, message)
    }

    /// Shorthand for [`ErrorKind::InvalidName`].
    pub fn invalid_name(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidName, message)
    }

    /// Shorthand for [`ErrorKind::InvalidArgument`].
    pub fn invalid_argument(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidArgument, message)
    }

    /// Shorthand for [`ErrorKind::Protocol`].
    pub fn protocol(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Protocol, message)
    }

    /// Shorthand for [`ErrorKind::Unsupported`].
    pub fn unsupported(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Unsupported, message)
    }

    /// Shorthand for [`ErrorKind::NoRuntime`]; `what` names the call.
    pub fn no_runtime(what: &str) -> Self {
        Self::new(
            ErrorKind::NoRuntime,
            format!("{what} must be called inside a tokio runtime"),
        )
    }

    /// Attach the store kind (`"redis"`, `"etcd"`, ...).
    pub fn with_store(mut self, store: &'static str) -> Self {
        self.store = Some(store);
        self
    }

    /// Attach the operation (`"acquire"`, `"renew"`, ...).
    pub fn with_operation(mut self, operation: &'static str) -> Self {
        self.operation = Some(operation);
        self
    }

    /// Attach the lease key the operation was about.
    pub fn with_key(mut self, key: impl Into<String>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// Attach an underlying cause. The caller must make sure the source's
    /// `Display` holds no secret.
    pub fn with_source(mut self, source: impl Into<Source>) -> Self {
        self.source = Some(source.into());
        self
    }

    /// What kind of failure this is.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The message, without context.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The store kind, when known.
    pub fn store(&self) -> Option<&'static str> {
        self.store
    }

    /// The operation, when known.
    pub fn operation(&self) -> Option<&'static str> {
        self.operation
    }

    /// Whether trying again later may succeed (the store was unreachable or
    /// the outcome was unknown).
    pub fn is_retryable(&self) -> bool {
        matches!(self.kind, ErrorKind::Unavailable | ErrorKind::Indeterminate)
    }

    /// Whether the operation may have taken effect even though it failed.
    /// A renewal with this outcome must never be counted as a success.
    pub fn is_indeterminate(&self) -> bool {
        self.kind == ErrorKind::Indeterminate
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.store, self.operation) {
            (Some(s), Some(o)) => write!(f, "{s} {o}")?,
            (Some(s), None) => write!(f, "{s}")?,
            (None, Some(o)) => write!(f, "{o}")?,
            (None, None) => {}
        }
        if let Some(key) = &self.key {
            write!(f, " on {key:?}")?;
        }
        if self.store.is_some() || self.operation.is_some() || self.key.is_some() {
            f.write_str(": ")?;
        }
        write!(f, "{}: {}", self.kind, self.message)?;
        if let Some(source) = &self.source {
            write!(f, ": {source}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Debug shows the same redacted text as Display plus the kind, so that
        // `{:?}` in user logs can never reveal more than the message does.
        f.debug_struct("Error")
            .field("kind", &self.kind)
            .field("message", &self.to_string())
            .finish()
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|s| s as &(dyn std::error::Error + 'static))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_names_store_operation_key_and_kind() {
        let e = Error::unavailable("connection refused")
            .with_store("redis")
            .with_operation("acquire")
            .with_key("honua:leader:x");
        assert_eq!(
            e.to_string(),
            "redis acquire on \"honua:leader:x\": store unavailable: connection refused"
        );
        assert!(e.is_retryable());
        assert!(!e.is_indeterminate());
    }

    #[test]
    fn indeterminate_is_retryable_and_flagged() {
        let e = Error::indeterminate("renew timed out after 2s");
        assert!(e.is_retryable());
        assert!(e.is_indeterminate());
        assert!(!Error::not_holder("gone").is_retryable());
    }
}
