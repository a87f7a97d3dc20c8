//! Opening connections, keeping a few lock-free ones for reuse, and turning
//! sqlx errors into classified [`leader_core::Error`]s.
//!
//! This is deliberately not an sqlx `Pool`: a pool connection dropped in the
//! middle of a statement (a cancelled future) goes back to the pool, and a
//! connection that took an advisory lock must never go back anywhere. Here a
//! connection is owned by exactly one operation at a time; dropping it closes
//! the socket, and the server then frees every lock the session held.

use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use leader_core::{Error, ErrorKind};
use sqlx::Connection;
use sqlx::postgres::{PgConnectOptions, PgConnection};

/// A connection that holds no advisory lock.
pub(crate) struct Conn {
    pub(crate) inner: PgConnection,
    /// Whether a lock taken on it was seen again by a second statement (the
    /// connection reaches one stable session, not a transaction pooler).
    pub(crate) verified: bool,
    /// Whether the server has `idle_session_timeout` (PostgreSQL 14+).
    pub(crate) idle_timeout: bool,
}

/// `server_version_num` of the first server with `idle_session_timeout`.
pub(crate) const IDLE_SESSION_TIMEOUT_SINCE: u32 = 140_000;

/// Opens connections and keeps up to `max_idle` lock-free ones.
pub(crate) struct Connector {
    options: PgConnectOptions,
    connect_timeout: Duration,
    max_idle: usize,
    idle: Mutex<Vec<Conn>>,
}

impl Connector {
    pub(crate) fn new(
        options: PgConnectOptions,
        connect_timeout: Duration,
        max_idle: usize,
    ) -> Self {
        Connector {
            options,
            connect_timeout,
            max_idle,
            idle: Mutex::new(Vec::new()),
        }
    }

    fn idle(&self) -> MutexGuard<'_, Vec<Conn>> {
        // Pushing or popping a Vec cannot be left half-done by a panic.
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn options(&self) -> &PgConnectOptions {
        &self.options
    }

    pub(crate) fn connect_timeout(&self) -> Duration {
        self.connect_timeout
    }

    /// A fresh connection, bounded by the connect timeout.
    pub(crate) async fn open(&self) -> Result<Conn, Error> {
        match tokio::time::timeout(
            self.connect_timeout,
            PgConnection::connect_with(&self.options),
        )
        .await
        {
            Ok(Ok(inner)) => {
                // Reported by the server at startup; an unknown version is
                // taken as a current one (set_config would then say so).
                let idle_timeout = inner
                    .server_version_num()
                    .is_none_or(|v| v >= IDLE_SESSION_TIMEOUT_SINCE);
                Ok(Conn {
                    inner,
                    verified: false,
                    idle_timeout,
                })
            }
            Ok(Err(e)) => Err(classify(e, true, "could not connect to postgres")),
            Err(_) => Err(Error::unavailable(format!(
                "could not connect to postgres within {:?}",
                self.connect_timeout
            ))),
        }
    }

    /// An idle connection if there is one (`true`), else a fresh one (`false`).
    pub(crate) async fn take(&self) -> Result<(Conn, bool), Error> {
        let spare = self.idle().pop();
        match spare {
            Some(conn) => Ok((conn, true)),
            None => Ok((self.open().await?, false)),
        }
    }

    /// Closes every idle connection (after one of them turned out dead, the
    /// others probably are too: the server restarted).
    pub(crate) fn clear(&self) {
        self.idle().clear();
    }

    /// Returns a connection that holds no lock; closes it if enough are idle.
    pub(crate) fn put_back(&self, conn: Conn) {
        let mut idle = self.idle();
        if idle.len() < self.max_idle {
            idle.push(conn);
        }
    }
}

/// Whether `e` means the connection itself failed (as opposed to the server
/// refusing the statement).
pub(crate) fn is_connection_error(e: &sqlx::Error) -> bool {
    matches!(
        e,
        sqlx::Error::Io(_) | sqlx::Error::Tls(_) | sqlx::Error::Protocol(_)
    ) || matches!(e, sqlx::Error::Database(db) if db.code().is_some_and(|c| c.starts_with("57P") || c.starts_with("08")))
}

/// SQLSTATE 26000 (prepared statement does not exist) and 42P05 (prepared
/// statement already exists): on one session these cannot happen, so they
/// mean statements are spread over several server sessions by a pooler.
const POOLER_SIGNATURE_1: &str = "26000";
const POOLER_SIGNATURE_2: &str = "42P05";

/// Classifies an sqlx error. `connecting`: nothing was sent yet, so an I/O
/// failure means the store is unavailable; during a statement it means the
/// outcome is unknown.
pub(crate) fn classify(e: sqlx::Error, connecting: bool, message: &str) -> Error {
    if let sqlx::Error::Database(db) = &e
        && matches!(
            db.code().as_deref(),
            Some(POOLER_SIGNATURE_1 | POOLER_SIGNATURE_2)
        )
    {
        return Error::invalid_config(format!(
            "{message}: a prepared statement of this connection vanished or reappeared, the \
             signature of a connection pooler in transaction or statement mode (e.g. PgBouncer) \
             between this process and Postgres; session advisory locks cannot work through \
             it: connect to Postgres directly or use session pooling"
        ))
        .with_source(e);
    }
    let kind = match &e {
        sqlx::Error::Io(_) | sqlx::Error::Tls(_) if connecting => ErrorKind::Unavailable,
        sqlx::Error::Io(_) => ErrorKind::Indeterminate,
        sqlx::Error::Tls(_) => ErrorKind::Unavailable,
        sqlx::Error::Configuration(_) => ErrorKind::InvalidConfig,
        sqlx::Error::Database(db) => match db.code().as_deref() {
            Some("28P01" | "28000" | "42501") => ErrorKind::Auth,
            Some("3D000") => ErrorKind::InvalidConfig,
            Some(c) if c.starts_with("08") || c.starts_with("53") || c.starts_with("57P") => {
                ErrorKind::Unavailable
            }
            _ => ErrorKind::Protocol,
        },
        sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed => ErrorKind::Unavailable,
        _ => ErrorKind::Protocol,
    };
    // sqlx's Display holds server messages and I/O errors, never the
    // connect options (we never let sqlx parse a URL), so no password.
    Error::new(kind, message.to_owned()).with_source(e)
}
