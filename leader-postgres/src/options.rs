//! Connection and store options: `postgres://` URLs plus the store's own
//! settings (counter table, explicit lock keys, timeouts).
//!
//! The password is kept only inside the sqlx connect options and is never
//! printed: [`PostgresOptions`] has a hand-written `Debug`, and every error
//! names the offending part of the URL without echoing its value when that
//! value could be a secret.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use leader_core::{Error, Result};
use percent_encoding::percent_decode_str;
use sqlx::postgres::{PgConnectOptions, PgSslMode};
use url::Url;

/// The default name of the fencing counter table.
pub const DEFAULT_TABLE: &str = "leader_fencing";
/// The default `application_name` of connections that hold no lease.
pub const DEFAULT_APPLICATION_NAME: &str = "leader-postgres";
/// The default bound on opening one connection.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The default bound on one statement (a renewal is also bounded by its TTL).
pub const DEFAULT_OPERATION_TIMEOUT: Duration = Duration::from_secs(5);
/// The default number of pinned sessions the leases of one store share
/// (see [`PostgresOptions::pinned_sessions`]).
pub const DEFAULT_PINNED_SESSIONS: usize = 4;

/// The URL query parameters understood; anything else is refused.
const URL_PARAMETERS: &[&str] = &[
    "sslmode",
    "sslrootcert",
    "sslcert",
    "sslkey",
    "connect_timeout",
    "application_name",
    "host",
    "port",
    "user",
    "dbname",
    "password",
];

/// A validated, possibly schema-qualified SQL identifier for the counter
/// table: one or two parts of `[a-z_][a-z0-9_]*`, each at most 63 bytes.
///
/// The parts are always double-quoted in SQL, so reserved words are safe, and
/// lowercase-only means the quoted and unquoted spellings name the same table.
#[derive(Clone, PartialEq, Eq)]
pub struct TableName {
    schema: Option<String>,
    table: String,
}

impl TableName {
    /// Validates `name` (`table` or `schema.table`).
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidConfig`](leader_core::ErrorKind::InvalidConfig) naming
    /// the part that is not a plain lowercase identifier.
    pub fn new(name: &str) -> Result<Self> {
        let parts: Vec<&str> = name.split('.').collect();
        let (schema, table) = match parts.as_slice() {
            [table] => (None, *table),
            [schema, table] => (Some(*schema), *table),
            _ => {
                return Err(Error::invalid_config(format!(
                    "counter table name {name:?} must be `table` or `schema.table`"
                )));
            }
        };
        if let Some(schema) = schema {
            check_identifier("counter table schema", schema)?;
        }
        check_identifier("counter table name", table)?;
        Ok(TableName {
            schema: schema.map(str::to_owned),
            table: table.to_owned(),
        })
    }

    /// The name quoted for use in SQL: `"schema"."table"` or `"table"`.
    pub fn quoted(&self) -> String {
        match &self.schema {
            Some(schema) => format!("\"{schema}\".\"{}\"", self.table),
            None => format!("\"{}\"", self.table),
        }
    }

    /// The name as written: `schema.table` or `table`.
    pub fn as_written(&self) -> String {
        match &self.schema {
            Some(schema) => format!("{schema}.{}", self.table),
            None => self.table.clone(),
        }
    }
}

impl fmt::Debug for TableName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.as_written(), f)
    }
}

fn check_identifier(what: &str, part: &str) -> Result<()> {
    let mut chars = part.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_');
    let rest_ok = chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if !first_ok || !rest_ok {
        return Err(Error::invalid_config(format!(
            "{what} {part:?} is not a plain SQL identifier: use lowercase letters, digits and \
             underscores, not starting with a digit"
        )));
    }
    if part.len() > 63 {
        return Err(Error::invalid_config(format!(
            "{what} {part:?} is {} bytes long; Postgres identifiers are at most 63",
            part.len()
        )));
    }
    Ok(())
}

/// Everything [`PostgresStore`](crate::PostgresStore) needs: where to connect
/// and how the store behaves.
///
/// Build it from a URL with [`PostgresOptions::from_url`] and adjust it with
/// the builder methods. `Debug` never shows the password.
#[derive(Clone)]
pub struct PostgresOptions {
    pub(crate) connect: PgConnectOptions,
    has_password: bool,
    pub(crate) table: TableName,
    pub(crate) lock_keys: BTreeMap<String, i64>,
    pub(crate) connect_timeout: Duration,
    pub(crate) operation_timeout: Duration,
    pub(crate) application_name: String,
    pub(crate) max_idle_connections: usize,
    pub(crate) lock_delay: bool,
    pub(crate) pinned_sessions: usize,
}

impl PostgresOptions {
    /// Parses a `postgres://` or `postgresql://` URL:
    /// `postgres://user:password@host:port/database?sslmode=require&connect_timeout=5`.
    ///
    /// Understood query parameters: `sslmode`, `sslrootcert`, `sslcert`,
    /// `sslkey`, `connect_timeout` (seconds, as in libpq), `application_name`
    /// (for connections that hold no lease), `host` (a socket directory when it
    /// starts with `/`), `port`, `user`, `dbname`, `password`. Anything else is
    /// refused so that a typo does not silently change behaviour. Parts the URL
    /// leaves out fall back to sqlx's defaults, which read the libpq
    /// environment variables (`PGUSER`, `PGPASSWORD`, `PGSSLMODE`, ...).
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidConfig`](leader_core::ErrorKind::InvalidConfig) naming
    /// the bad part (scheme, port, parameter name, ...). The password is never
    /// part of a message.
    pub fn from_url(url: &str) -> Result<Self> {
        let parsed = Url::parse(url).map_err(|e| {
            // url's error text never contains the input, so it is safe.
            Error::invalid_config(format!("postgres URL cannot be parsed: {e}"))
        })?;
        match parsed.scheme() {
            "postgres" | "postgresql" => {}
            other => {
                return Err(Error::unsupported(format!(
                    "URL scheme {other:?} is not a postgres URL; use postgres:// or postgresql://"
                )));
            }
        }
        let mut connect = PgConnectOptions::new_without_pgpass();
        let mut has_password = false;
        let mut connect_timeout = DEFAULT_CONNECT_TIMEOUT;
        let mut application_name = DEFAULT_APPLICATION_NAME.to_owned();

        if let Some(host) = parsed.host_str().filter(|h| !h.is_empty()) {
            let host = decode("host", host)?;
            connect = if host.starts_with('/') {
                connect.socket(&host)
            } else {
                connect.host(host.trim_start_matches('[').trim_end_matches(']'))
            };
        }
        if let Some(port) = parsed.port() {
            connect = connect.port(port);
        }
        if !parsed.username().is_empty() {
            connect = connect.username(&decode("user name", parsed.username())?);
        }
        if let Some(password) = parsed.password() {
            // Never include the value (or a decoding error quoting it).
            let password = percent_decode_str(password).decode_utf8().map_err(|_| {
                Error::invalid_config("the password in the URL is not valid percent-encoded UTF-8")
            })?;
            connect = connect.password(&password);
            has_password = true;
        }
        let path = parsed.path().trim_start_matches('/');
        if !path.is_empty() {
            connect = connect.database(&decode("database name", path)?);
        }

        for (name, value) in parsed.query_pairs() {
            match &*name {
                "sslmode" => {
                    let mode: PgSslMode = value.parse().map_err(|_| {
                        Error::invalid_config(format!(
                            "URL parameter sslmode={value:?} is not one of disable, allow, \
                             prefer, require, verify-ca, verify-full"
                        ))
                    })?;
                    connect = connect.ssl_mode(mode);
                }
                "sslrootcert" => connect = connect.ssl_root_cert(&*value),
                "sslcert" => connect = connect.ssl_client_cert(&*value),
                "sslkey" => connect = connect.ssl_client_key(&*value),
                "connect_timeout" => {
                    let secs: u64 = value.parse().ok().filter(|s| *s > 0).ok_or_else(|| {
                        Error::invalid_config(format!(
                            "URL parameter connect_timeout={value:?} must be a whole number of \
                             seconds above zero"
                        ))
                    })?;
                    connect_timeout = Duration::from_secs(secs);
                }
                "application_name" => application_name = value.into_owned(),
                "host" => {
                    connect = if value.starts_with('/') {
                        connect.socket(&*value)
                    } else {
                        connect.host(&value)
                    };
                }
                "port" => {
                    let port: u16 = value.parse().map_err(|_| {
                        Error::invalid_config(format!(
                            "URL parameter port={value:?} is not a port number"
                        ))
                    })?;
                    connect = connect.port(port);
                }
                "user" => connect = connect.username(&value),
                "dbname" => connect = connect.database(&value),
                "password" => {
                    connect = connect.password(&value);
                    has_password = true;
                }
                other => {
                    return Err(Error::invalid_config(format!(
                        "unknown postgres URL parameter {other:?}; supported: {}",
                        URL_PARAMETERS.join(", ")
                    )));
                }
            }
        }
        let connect = connect
            .application_name(&crate::keys::application_name(&application_name))
            // Tokens must survive a server crash: a lost commit would let a
            // token repeat. Stronger server settings (remote_apply) are
            // replaced by `on`, which still waits for synchronous standbys.
            .options([("synchronous_commit", "on")]);
        Ok(PostgresOptions {
            connect,
            has_password,
            table: TableName::new(DEFAULT_TABLE)?,
            lock_keys: BTreeMap::new(),
            connect_timeout,
            operation_timeout: DEFAULT_OPERATION_TIMEOUT,
            application_name,
            max_idle_connections: 2,
            lock_delay: true,
            pinned_sessions: DEFAULT_PINNED_SESSIONS,
        })
    }

    /// Uses `name` (`table` or `schema.table`, lowercase identifiers) as the
    /// fencing counter table instead of [`DEFAULT_TABLE`].
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidConfig`](leader_core::ErrorKind::InvalidConfig) when the
    /// name is not a plain identifier.
    pub fn table(mut self, name: &str) -> Result<Self> {
        self.table = TableName::new(name)?;
        Ok(self)
    }

    /// Pins the advisory lock key of one lease instead of hashing its name.
    ///
    /// `name` is matched against the full lease key (prefix + resource) first,
    /// then against the resource name alone. Use this to share a lock with
    /// other software that uses a known key, or to resolve a hash collision.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidConfig`](leader_core::ErrorKind::InvalidConfig) when
    /// the name is blank or another name already uses `key` (two names on one
    /// key would share one lock).
    pub fn lock_key(mut self, name: &str, key: i64) -> Result<Self> {
        if name.trim().is_empty() {
            return Err(Error::invalid_config(
                "an explicit lock key needs a non-blank lease key or resource name",
            ));
        }
        if let Some((other, _)) = self
            .lock_keys
            .iter()
            .find(|(other, k)| **k == key && other.as_str() != name)
        {
            return Err(Error::invalid_config(format!(
                "explicit lock key {key} is given to both {other:?} and {name:?}; each name needs \
                 its own key"
            )));
        }
        self.lock_keys.insert(name.to_owned(), key);
        Ok(self)
    }

    /// Bounds opening one connection (default [`DEFAULT_CONNECT_TIMEOUT`]).
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidConfig`](leader_core::ErrorKind::InvalidConfig) for zero.
    pub fn connect_timeout(mut self, timeout: Duration) -> Result<Self> {
        if timeout.is_zero() {
            return Err(Error::invalid_config("connect timeout must be above zero"));
        }
        self.connect_timeout = timeout;
        Ok(self)
    }

    /// Bounds one statement (default [`DEFAULT_OPERATION_TIMEOUT`]). A renewal
    /// is bounded by the smaller of this and the lease TTL.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidConfig`](leader_core::ErrorKind::InvalidConfig) for zero.
    pub fn operation_timeout(mut self, timeout: Duration) -> Result<Self> {
        if timeout.is_zero() {
            return Err(Error::invalid_config(
                "operation timeout must be above zero",
            ));
        }
        self.operation_timeout = timeout;
        Ok(self)
    }

    /// How many lock-free connections the store keeps open for the next
    /// acquisition or query (default 2; 0 closes each one after use).
    pub fn max_idle_connections(mut self, count: usize) -> Self {
        self.max_idle_connections = count;
        self
    }

    /// Whether a term that ended without a release keeps the seat empty for
    /// one lease TTL (default `true`).
    ///
    /// A session lock ends the moment its session ends. When that happens
    /// without a release (the holder crashed, an operator or
    /// `idle_session_timeout` terminated the session, the network failed),
    /// the holder may still believe it leads until its next renewal fails.
    /// With the delay on, an acquirer that finds such a term's lock free
    /// waits until one TTL has passed, on its own monotonic clock, since it
    /// first found it so (it gets
    /// [`Acquire::Held`](leader_core::Acquire::Held) with `remaining` set), so
    /// two instances never believe they lead at once. The price: after a
    /// crash a new leader takes over one TTL later instead of at once.
    /// Graceful releases (and leases this store expires itself) are not
    /// delayed. Turn it off only if fast failover after a crash matters more
    /// than a short overlap after a session is killed.
    pub fn lock_delay(mut self, enabled: bool) -> Self {
        self.lock_delay = enabled;
        self
    }

    /// How many pinned sessions (server connections) the leases of this
    /// store share at most (default [`DEFAULT_PINNED_SESSIONS`]).
    ///
    /// A session holds the advisory locks of many leases, so a process
    /// holding 10,000 leases needs this many connections, not 10,000. The
    /// price of sharing: a session's loss (a network failure, a terminated
    /// backend, a statement without an answer) ends every lease on it, and
    /// statements on one session run one after another. Sessions are opened
    /// as leases need them, up to this bound.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidConfig`](leader_core::ErrorKind::InvalidConfig) for zero.
    pub fn pinned_sessions(mut self, count: usize) -> Result<Self> {
        if count == 0 {
            return Err(Error::invalid_config(
                "pinned_sessions must be at least 1: leases need a session to hold their locks",
            ));
        }
        self.pinned_sessions = count;
        Ok(self)
    }

    /// The counter table in use.
    pub fn table_name(&self) -> &TableName {
        &self.table
    }

    /// The explicit lock key configured for a lease key or resource name.
    pub fn explicit_lock_key(&self, full_key: &str, resource: &str) -> Option<i64> {
        self.lock_keys
            .get(full_key)
            .or_else(|| self.lock_keys.get(resource))
            .copied()
    }

    /// The connect timeout in use.
    pub fn get_connect_timeout(&self) -> Duration {
        self.connect_timeout
    }

    /// The operation timeout in use.
    pub fn get_operation_timeout(&self) -> Duration {
        self.operation_timeout
    }
}

fn decode(what: &str, raw: &str) -> Result<String> {
    percent_decode_str(raw)
        .decode_utf8()
        .map(|s| s.into_owned())
        .map_err(|_| Error::invalid_config(format!("the {what} in the URL is not valid UTF-8")))
}

impl fmt::Debug for PostgresOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Hand-written: PgConnectOptions' own Debug prints the password.
        let c = &self.connect;
        f.debug_struct("PostgresOptions")
            .field("host", &c.get_host())
            .field("port", &c.get_port())
            .field("socket", &c.get_socket())
            .field("user", &c.get_username())
            .field(
                "password",
                &if self.has_password {
                    "<redacted>"
                } else {
                    "<none>"
                },
            )
            .field("database", &c.get_database())
            .field("ssl_mode", &c.get_ssl_mode())
            .field("table", &self.table)
            .field("lock_keys", &self.lock_keys)
            .field("connect_timeout", &self.connect_timeout)
            .field("operation_timeout", &self.operation_timeout)
            .field("application_name", &self.application_name)
            .field("max_idle_connections", &self.max_idle_connections)
            .field("lock_delay", &self.lock_delay)
            .field("pinned_sessions", &self.pinned_sessions)
            .finish()
    }
}

impl fmt::Display for PostgresOptions {
    /// `postgres://user@host:port/database`, without the password.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.connect;
        write!(f, "postgres://{}@", c.get_username())?;
        match c.get_socket() {
            Some(dir) => write!(f, "[{}]", dir.display())?,
            None => write!(f, "{}:{}", c.get_host(), c.get_port())?,
        }
        if let Some(db) = c.get_database() {
            write!(f, "/{db}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use leader_core::ErrorKind;

    const SECRET: &str = "s3cr%3Et-pass";
    const DECODED_SECRET: &str = "s3cr>t-pass";

    #[test]
    fn parses_both_schemes_with_all_parts() {
        for scheme in ["postgres", "postgresql"] {
            let url = format!(
                "{scheme}://alice:{SECRET}@db.example:6543/app?sslmode=require&connect_timeout=7"
            );
            let o = PostgresOptions::from_url(&url).expect("valid URL");
            assert_eq!(o.connect.get_host(), "db.example");
            assert_eq!(o.connect.get_port(), 6543);
            assert_eq!(o.connect.get_username(), "alice");
            assert_eq!(o.connect.get_database(), Some("app"));
            assert!(matches!(o.connect.get_ssl_mode(), PgSslMode::Require));
            assert_eq!(o.connect_timeout, Duration::from_secs(7));
            assert_eq!(o.to_string(), "postgres://alice@db.example:6543/app");
        }
    }

    #[test]
    fn socket_directory_via_host_parameter() {
        let o = PostgresOptions::from_url("postgres:///db?host=/var/run/pg&port=5555&user=u")
            .expect("valid URL");
        assert_eq!(
            o.connect.get_socket().map(|p| p.display().to_string()),
            Some("/var/run/pg".to_owned())
        );
        assert_eq!(o.connect.get_port(), 5555);
    }

    #[test]
    fn password_never_appears_in_debug_display_or_errors() {
        let url = format!("postgres://alice:{SECRET}@h/db");
        let o = PostgresOptions::from_url(&url).expect("valid URL");
        let shown = format!("{o:?} {o} {o:#?}");
        for needle in [SECRET, DECODED_SECRET, "s3cr"] {
            assert!(!shown.contains(needle), "password leaked: {shown}");
        }
        assert!(shown.contains("<redacted>"));

        let bad = [
            format!("postgres://alice:{SECRET}@h/db?nope=1"),
            format!("postgres://alice:{SECRET}@h:99999/db"),
            format!("postgres://alice:{SECRET}@h/db?sslmode=sometimes"),
            format!("postgres://alice:{SECRET}@h/db?connect_timeout=0"),
            format!("mysql://alice:{SECRET}@h/db"),
            format!("postgres://alice:{SECRET}@h/db?password={SECRET}&port=x"),
            "postgres://alice:%FF%FE@h/db".to_owned(),
        ];
        for url in bad {
            let err = PostgresOptions::from_url(&url).expect_err(&url);
            let text = format!("{err} {err:?}");
            for needle in [SECRET, DECODED_SECRET, "s3cr", "%FF"] {
                assert!(!text.contains(needle), "password leaked in {text}");
            }
        }
    }

    #[test]
    fn errors_name_the_bad_part() {
        for (url, kind, needle) in [
            ("mysql://h/db", ErrorKind::Unsupported, "mysql"),
            (
                "postgres://h/db?nope=1",
                ErrorKind::InvalidConfig,
                "\"nope\"",
            ),
            (
                "postgres://h/db?sslmode=x",
                ErrorKind::InvalidConfig,
                "sslmode",
            ),
            (
                "postgres://h/db?connect_timeout=-1",
                ErrorKind::InvalidConfig,
                "connect_timeout",
            ),
            ("postgres://h/db?port=abc", ErrorKind::InvalidConfig, "port"),
            ("postgres://h:99999/db", ErrorKind::InvalidConfig, "port"),
            ("not a url", ErrorKind::InvalidConfig, "cannot be parsed"),
        ] {
            let err = PostgresOptions::from_url(url).expect_err(url);
            assert_eq!(err.kind(), kind, "{url}: {err}");
            assert!(
                err.to_string().contains(needle),
                "{url}: {err} lacks {needle}"
            );
        }
    }

    #[test]
    fn table_names_are_validated_identifiers() {
        let o = PostgresOptions::from_url("postgres://h/db").expect("valid URL");
        assert_eq!(o.table_name().quoted(), "\"leader_fencing\"");
        let o = o.table("ops.leader_tokens_2").expect("valid table");
        assert_eq!(o.table_name().quoted(), "\"ops\".\"leader_tokens_2\"");
        for bad in [
            "",
            "Leader",
            "1abc",
            "a.b.c",
            "x; drop table y",
            "t\"x",
            "sch.",
            &"a".repeat(64),
        ] {
            let err = PostgresOptions::from_url("postgres://h/db")
                .and_then(|o| o.table(bad))
                .expect_err(bad);
            assert_eq!(err.kind(), ErrorKind::InvalidConfig, "{bad}");
            assert!(err.to_string().contains("counter table"), "{err}");
        }
    }

    #[test]
    fn explicit_lock_keys_match_full_key_then_resource() {
        let o = PostgresOptions::from_url("postgres://h/db")
            .and_then(|o| o.lock_key("svc", 7))
            .and_then(|o| o.lock_key("p:svc", 8))
            .expect("valid keys");
        assert_eq!(o.explicit_lock_key("p:svc", "svc"), Some(8));
        assert_eq!(o.explicit_lock_key("q:svc", "svc"), Some(7));
        assert_eq!(o.explicit_lock_key("q:other", "other"), None);
        let err = o.lock_key("other", 7).expect_err("duplicate key");
        assert_eq!(err.kind(), ErrorKind::InvalidConfig);
        assert!(err.to_string().contains("7"), "{err}");
    }

    #[test]
    fn zero_timeouts_are_refused() {
        let o = PostgresOptions::from_url("postgres://h/db").expect("valid URL");
        assert!(o.clone().connect_timeout(Duration::ZERO).is_err());
        assert!(o.operation_timeout(Duration::ZERO).is_err());
    }

    #[test]
    fn pinned_sessions_must_be_at_least_one() {
        let o = PostgresOptions::from_url("postgres://h/db").expect("valid URL");
        assert_eq!(o.pinned_sessions, DEFAULT_PINNED_SESSIONS);
        let err = o.clone().pinned_sessions(0).expect_err("zero sessions");
        assert_eq!(err.kind(), ErrorKind::InvalidConfig);
        assert!(err.to_string().contains("pinned_sessions"), "{err}");
        assert_eq!(o.pinned_sessions(1).expect("one").pinned_sessions, 1);
    }
}
