//! The testkit's error type: what went wrong with a test server or fixture.

use std::path::PathBuf;
use std::time::Duration;

/// `Result` with the testkit's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong while starting or controlling a test server.
///
/// Messages name the binary, the Debian package, the environment variable or
/// the server log, so that a CI failure says what to fix. URLs in messages
/// have their passwords redacted.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A server binary is not installed. In CI this is a failure, never a skip.
    #[error(
        "`{binary}` was not found on PATH{extra}; install the Debian package `{package}` \
         (apt-get install -y {package}) or set {env_var} to use an external server"
    )]
    MissingBinary {
        /// The binary that was looked for.
        binary: &'static str,
        /// The Debian package that provides it.
        package: &'static str,
        /// Where else it was looked for, as text (may be empty).
        extra: String,
        /// The environment variable that points the kit at an external server.
        env_var: &'static str,
    },
    /// A control operation (kill, pause, restart) on a server the kit does
    /// not own.
    #[error(
        "cannot {operation} the {server} server at {url}: it is external (set by {env_var}); \
         only servers started by the testkit can be controlled"
    )]
    External {
        /// What was asked (`"kill"`, `"pause"`, ...).
        operation: &'static str,
        /// Which server (`"redis"`, ...).
        server: &'static str,
        /// The server's URL, password redacted.
        url: String,
        /// The environment variable it came from.
        env_var: &'static str,
    },
    /// A server process did not answer in time, or exited while starting.
    #[error("{server} server on {addr} {problem}; log {log}:\n{log_tail}")]
    NotReady {
        /// Which server.
        server: &'static str,
        /// The address it should listen on.
        addr: String,
        /// What happened (`"exited with status 1"`, `"did not answer within 10s"`).
        problem: String,
        /// The server's log file.
        log: PathBuf,
        /// The last lines of that log.
        log_tail: String,
    },
    /// An external server URL from the environment cannot be used.
    #[error("{env_var}={url} is not usable: {problem}")]
    BadUrl {
        /// The environment variable.
        env_var: &'static str,
        /// The URL, password redacted.
        url: String,
        /// What is wrong with it.
        problem: String,
    },
    /// A command the kit runs (initdb, cp) failed.
    #[error("`{command}` failed: {problem}")]
    Command {
        /// The command line, shortened.
        command: String,
        /// Its exit status and output.
        problem: String,
    },
    /// An operating-system call failed.
    #[error("{context}: {source}")]
    Io {
        /// What the kit was doing.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A control operation on a server that is not running (killed and not
    /// restarted).
    #[error("cannot {operation} the {server} server: it is not running (restart it first)")]
    NotRunning {
        /// What was asked.
        operation: &'static str,
        /// Which server.
        server: &'static str,
    },
    /// Waiting for something took longer than its bound.
    #[error("{what} did not happen within {waited:?}")]
    Timeout {
        /// What was awaited.
        what: String,
        /// How long the kit waited.
        waited: Duration,
    },
}

impl Error {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }
}
