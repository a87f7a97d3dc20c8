//! Connection and store settings: `postgres://` URLs plus the store's own
//! settings (counter table, explicit lock keys, timeouts).
//!
//! The password is kept only inside the sqlx connect options and is never
//! printed: [`PostgresConfig`] has a hand-written `Debug`, and every error
//! names the offending part of the URL without echoing its value when that
//! value could be a secret.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use leader_core::store_config::{
    check_timeout, decode_url_part, decode_url_password, parse_duration_option, unknown_option,
};
use leader_core::{Error, Result};
use sqlx::postgres::{PgConnectOptions, PgSslMode};
use url::Url;

/// The default name of the fencing counter table.
pub const DEFAULT_TABLE: &str = "leader_fencing";
/// The default `application_name` of connections that hold no lease.
pub const DEFAULT_APPLICATION_NAME: &str = "leader-postgres";
/// The default bound on opening one connection.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The default bound on one statement (a renewal is also bounded by its TTL).
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// The default number of pinned sessions the leases of one store share
/// (see [`PostgresConfig::with_pinned_sessions`]).
pub const DEFAULT_PINNED_SESSIONS: usize = 4;

/// The URL query parameters understood; anything else is refused.
const URL_PARAMETERS: &[&str] = &[
    "sslmode",
    "sslrootcert",
    "sslcert",
    "sslkey",
    "connect_timeout",
    "request_timeout",
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
/// Build it from a URL with [`PostgresConfig::from_url`] (or `str::parse`)
/// and adjust it with the `with_*` methods;
/// [`PostgresStore::new`](crate::PostgresStore::new) checks it with
/// [`PostgresConfig::validate`]. `Debug` never shows the password.
#[derive(Clone)]
pub struct PostgresConfig {
    pub(crate) connect: PgConnectOptions,
    has_password: bool,
    table: String,
    lock_keys: BTreeMap<String, i64>,
    pub(crate) connect_timeout: Duration,
    pub(crate) request_timeout: Duration,
    application_name: String,
    pub(crate) max_idle_connections: usize,
    pub(crate) lock_delay: bool,
    pub(crate) pinned_sessions: usize,
}

impl PostgresConfig {
    /// Parses a `postgres://` or `postgresql://` URL:
    /// `postgres://user:password@host:port/database?sslmode=require&connect_timeout=5`.
    ///
    /// Understood query parameters: `sslmode`, `sslrootcert`, `sslcert`,
    /// `sslkey`, `connect_timeout` and `request_timeout` (seconds as in libpq,
    /// or with units: `500ms`), `application_name` (for connections that hold
    /// no lease), `host` (a socket directory when it starts with `/`),
    /// `port`, `user`, `dbname`, `password`. Anything else is refused so that
    /// a typo does not silently change behaviour. Parts the URL leaves out
    /// fall back to sqlx's defaults, which read the libpq environment
    /// variables (`PGUSER`, `PGPASSWORD`, `PGSSLMODE`, ...).
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidConfig`](leader_core::ErrorKind::InvalidConfig) naming
    /// the bad part (scheme, port, parameter name, ...). The password is never
    /// part of a message.
    pub fn from_url(url: &str) -> Result<Self> {
        Self::parse_url(url)
            .and_then(|config| config.validate().map(|()| config))
            .map_err(in_store)
    }

    fn parse_url(url: &str) -> Result<Self> {
        let parsed = Url::parse(url).map_err(|e| {
            // url's error text never contains the input, so it is safe.
            Error::invalid_config(format!("postgres URL cannot be parsed: {e}"))
        })?;
        match parsed.scheme() {
            "postgres" | "postgresql" => {}
            other => {
                let shown: String = other.chars().take(16).collect();
                return Err(Error::invalid_config(format!(
                    "URL scheme {shown:?} is not a postgres URL; use postgres:// or postgresql://"
                )));
            }
        }
        let mut connect = PgConnectOptions::new_without_pgpass();
        let mut has_password = false;
        let mut connect_timeout = DEFAULT_CONNECT_TIMEOUT;
        let mut request_timeout = DEFAULT_REQUEST_TIMEOUT;
        let mut application_name = DEFAULT_APPLICATION_NAME.to_owned();

        if let Some(host) = parsed.host_str().filter(|h| !h.is_empty()) {
            let host = decode_url_part("host", host)?;
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
            connect = connect.username(&decode_url_part("user name", parsed.username())?);
        }
        if let Some(password) = parsed.password() {
            connect = connect.password(decode_url_password(password)?.expose());
            has_password = true;
        }
        let path = parsed.path().trim_start_matches('/');
        if !path.is_empty() {
            connect = connect.database(&decode_url_part("database name", path)?);
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
                "connect_timeout" => connect_timeout = parse_duration_option(&name, &value)?,
                "request_timeout" => request_timeout = parse_duration_option(&name, &value)?,
                "application_name" => application_name = value.into_owned(),
                "host" => {
                    connect = if value.starts_with('/') {
                        connect.socket(&*value)
                    } else {
                        connect.host(&value)
                    };
                }
                "port" => {
                    let port: u16 = value.parse().ok().filter(|p| *p != 0).ok_or_else(|| {
                        Error::invalid_config(format!(
                            "option port={value:?} is not a port number (1-65535)"
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
                other => return Err(unknown_option(other, URL_PARAMETERS)),
            }
        }
        let connect = connect
            .application_name(&crate::keys::application_name(&application_name))
            // Tokens must survive a server crash: a lost commit would let a
            // token repeat. Stronger server settings (remote_apply) are
            // replaced by `on`, which still waits for synchronous standbys.
            .options([("synchronous_commit", "on")]);
        Ok(PostgresConfig {
            connect,
            has_password,
            table: DEFAULT_TABLE.to_owned(),
            lock_keys: BTreeMap::new(),
            connect_timeout,
            request_timeout,
            application_name,
            max_idle_connections: 2,
            lock_delay: true,
            pinned_sessions: DEFAULT_PINNED_SESSIONS,
        })
    }

    /// Uses `name` (`table` or `schema.table`, lowercase identifiers) as the
    /// fencing counter table instead of [`DEFAULT_TABLE`].
    pub fn with_table(mut self, name: impl Into<String>) -> Self {
        self.table = name.into();
        self
    }

    /// Pins the advisory lock key of one lease instead of hashing its name.
    ///
    /// `name` is matched against the full lease key (prefix + resource) first,
    /// then against the resource name alone. Use this to share a lock with
    /// other software that uses a known key, or to resolve a hash collision.
    /// A blank name, or one key given to two names (they would share one
    /// lock), is refused by [`PostgresConfig::validate`].
    pub fn with_lock_key(mut self, name: impl Into<String>, key: i64) -> Self {
        self.lock_keys.insert(name.into(), key);
        self
    }

    /// Bounds opening one connection (default [`DEFAULT_CONNECT_TIMEOUT`]).
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Bounds one statement (default [`DEFAULT_REQUEST_TIMEOUT`]). A renewal
    /// is bounded by the smaller of this and the lease TTL.
    pub fn with_request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// How many lock-free connections the store keeps open for the next
    /// acquisition or query (default 2; 0 closes each one after use).
    pub fn with_max_idle_connections(mut self, count: usize) -> Self {
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
    pub fn with_lock_delay(mut self, enabled: bool) -> Self {
        self.lock_delay = enabled;
        self
    }

    /// How many pinned sessions (server connections) the leases of this
    /// store share at most (default [`DEFAULT_PINNED_SESSIONS`]; at least 1,
    /// checked by [`PostgresConfig::validate`]).
    ///
    /// A session holds the advisory locks of many leases, so a process
    /// holding 10,000 leases needs this many connections, not 10,000. The
    /// price of sharing: a session's loss (a network failure, a terminated
    /// backend, a statement without an answer) ends every lease on it, and
    /// statements on one session run one after another. Sessions are opened
    /// as leases need them, up to this bound.
    pub fn with_pinned_sessions(mut self, count: usize) -> Self {
        self.pinned_sessions = count;
        self
    }

    /// How many pinned sessions the leases of this store share at most.
    pub fn pinned_sessions(&self) -> usize {
        self.pinned_sessions
    }

    /// Checks what the `with_*` methods accept unchecked: the counter table
    /// name, the explicit lock keys and the timeouts.
    /// [`PostgresStore::new`](crate::PostgresStore::new) calls it.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidConfig`](leader_core::ErrorKind::InvalidConfig)
    /// naming the setting.
    pub fn validate(&self) -> Result<()> {
        self.check().map_err(in_store)
    }

    fn check(&self) -> Result<()> {
        self.table_name()?;
        for (name, key) in &self.lock_keys {
            if name.trim().is_empty() {
                return Err(Error::invalid_config(
                    "an explicit lock key needs a non-blank lease key or resource name",
                ));
            }
            if let Some((other, _)) = self
                .lock_keys
                .iter()
                .find(|(other, k)| *k == key && *other != name)
            {
                return Err(Error::invalid_config(format!(
                    "explicit lock key {key} is given to both {other:?} and {name:?}; each name \
                     needs its own key"
                )));
            }
        }
        if self.pinned_sessions == 0 {
            return Err(Error::invalid_config(
                "pinned_sessions must be at least 1: leases need a session to hold their locks",
            ));
        }
        check_timeout("connect_timeout", self.connect_timeout)?;
        check_timeout("request_timeout", self.request_timeout)
    }

    /// The counter table as configured (`table` or `schema.table`).
    pub fn table(&self) -> &str {
        &self.table
    }

    /// The counter table as a checked identifier.
    pub(crate) fn table_name(&self) -> Result<TableName> {
        TableName::new(&self.table)
    }

    /// The explicit lock key configured for a lease key or resource name.
    pub fn explicit_lock_key(&self, full_key: &str, resource: &str) -> Option<i64> {
        self.lock_keys
            .get(full_key)
            .or_else(|| self.lock_keys.get(resource))
            .copied()
    }

    /// The connect timeout.
    pub fn connect_timeout(&self) -> Duration {
        self.connect_timeout
    }

    /// The bound on one statement.
    pub fn request_timeout(&self) -> Duration {
        self.request_timeout
    }

    /// How many lock-free connections are kept open.
    pub fn max_idle_connections(&self) -> usize {
        self.max_idle_connections
    }

    /// Whether the lock delay is on.
    pub fn lock_delay(&self) -> bool {
        self.lock_delay
    }

    /// The `application_name` of connections that hold no lease.
    pub fn application_name(&self) -> &str {
        &self.application_name
    }
}

impl FromStr for PostgresConfig {
    type Err = Error;

    fn from_str(url: &str) -> Result<Self> {
        PostgresConfig::from_url(url)
    }
}

/// Marks a configuration error as the Postgres store's.
fn in_store(e: Error) -> Error {
    e.with_store("postgres")
}

impl fmt::Debug for PostgresConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Hand-written: PgConnectOptions' own Debug prints the password.
        let c = &self.connect;
        f.debug_struct("PostgresConfig")
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
            .field("request_timeout", &self.request_timeout)
            .field("application_name", &self.application_name)
            .field("max_idle_connections", &self.max_idle_connections)
            .field("lock_delay", &self.lock_delay)
            .field("pinned_sessions", &self.pinned_sessions)
            .finish()
    }
}

impl fmt::Display for PostgresConfig {
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
            let o = PostgresConfig::from_url(&url).expect("valid URL");
            assert_eq!(o.connect.get_host(), "db.example");
            assert_eq!(o.connect.get_port(), 6543);
            assert_eq!(o.connect.get_username(), "alice");
            assert_eq!(o.connect.get_database(), Some("app"));
            assert!(matches!(o.connect.get_ssl_mode(), PgSslMode::Require));
            assert_eq!(o.connect_timeout(), Duration::from_secs(7));
            assert_eq!(o.request_timeout(), DEFAULT_REQUEST_TIMEOUT);
            assert_eq!(o.to_string(), "postgres://alice@db.example:6543/app");
        }
        let o: PostgresConfig = "postgres://h/db?connect_timeout=1.5&request_timeout=250ms"
            .parse()
            .expect("the election grammar for durations");
        assert_eq!(o.connect_timeout(), Duration::from_millis(1500));
        assert_eq!(o.request_timeout(), Duration::from_millis(250));
    }

    #[test]
    fn socket_directory_via_host_parameter() {
        let o = PostgresConfig::from_url("postgres:///db?host=/var/run/pg&port=5555&user=u")
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
        let o = PostgresConfig::from_url(&url).expect("valid URL");
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
            format!("postgres://alice:{SECRET}@h/db?request_timeout=soon"),
            format!("mysql://alice:{SECRET}@h/db"),
            format!("postgres://alice:{SECRET}@h/db?password={SECRET}&port=x"),
            "postgres://alice:%FF%FE@h/db".to_owned(),
        ];
        for url in bad {
            let err = PostgresConfig::from_url(&url).expect_err(&url);
            let text = format!("{err} {err:?}");
            for needle in [SECRET, DECODED_SECRET, "s3cr", "%FF"] {
                assert!(!text.contains(needle), "password leaked in {text}");
            }
        }
    }

    #[test]
    fn errors_name_the_bad_part() {
        for (url, needle) in [
            ("mysql://h/db", "\"mysql\" is not a postgres URL"),
            ("postgres://h/db?nope=1", "unknown option 'nope'"),
            ("postgres://h/db?sslmode=x", "sslmode"),
            (
                "postgres://h/db?connect_timeout=-1",
                "option connect_timeout",
            ),
            (
                "postgres://h/db?connect_timeout=0",
                "connect_timeout must be above zero",
            ),
            (
                "postgres://h/db?request_timeout=soon",
                "option request_timeout",
            ),
            ("postgres://h/db?port=abc", "option port=\"abc\""),
            ("postgres://h/db?port=0", "option port=\"0\""),
            ("postgres://h:99999/db", "invalid port number"),
            ("not a url", "cannot be parsed"),
        ] {
            let err = PostgresConfig::from_url(url).expect_err(url);
            assert_eq!(err.kind(), ErrorKind::InvalidConfig, "{url}: {err}");
            assert_eq!(err.store(), Some("postgres"), "{url}");
            assert!(
                err.to_string().contains(needle),
                "{url}: {err} lacks {needle}"
            );
        }
    }

    #[test]
    fn table_names_are_validated_identifiers() {
        let o = PostgresConfig::from_url("postgres://h/db").expect("valid URL");
        assert_eq!(o.table(), DEFAULT_TABLE);
        assert_eq!(
            o.table_name().expect("default").quoted(),
            "\"leader_fencing\""
        );
        let o = o.with_table("ops.leader_tokens_2");
        o.validate().expect("valid table");
        assert_eq!(
            o.table_name().expect("valid").quoted(),
            "\"ops\".\"leader_tokens_2\""
        );
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
            let err = o.clone().with_table(bad).validate().expect_err(bad);
            assert_eq!(err.kind(), ErrorKind::InvalidConfig, "{bad}");
            assert!(err.to_string().contains("counter table"), "{err}");
        }
    }

    #[test]
    fn explicit_lock_keys_match_full_key_then_resource() {
        let o = PostgresConfig::from_url("postgres://h/db")
            .expect("valid URL")
            .with_lock_key("svc", 7)
            .with_lock_key("p:svc", 8);
        o.validate().expect("valid keys");
        assert_eq!(o.explicit_lock_key("p:svc", "svc"), Some(8));
        assert_eq!(o.explicit_lock_key("q:svc", "svc"), Some(7));
        assert_eq!(o.explicit_lock_key("q:other", "other"), None);
        let err = o
            .clone()
            .with_lock_key("other", 7)
            .validate()
            .expect_err("duplicate key");
        assert_eq!(err.kind(), ErrorKind::InvalidConfig);
        assert!(err.to_string().contains("lock key 7"), "{err}");
        let err = o.with_lock_key(" ", 9).validate().expect_err("blank name");
        assert!(err.to_string().contains("non-blank"), "{err}");
    }

    #[test]
    fn zero_timeouts_are_refused() {
        let o = PostgresConfig::from_url("postgres://h/db").expect("valid URL");
        let err = o
            .clone()
            .with_connect_timeout(Duration::ZERO)
            .validate()
            .expect_err("zero connect timeout");
        assert!(err.to_string().contains("connect_timeout"), "{err}");
        let err = o
            .with_request_timeout(Duration::ZERO)
            .validate()
            .expect_err("zero request timeout");
        assert!(err.to_string().contains("request_timeout"), "{err}");
    }

    #[test]
    fn pinned_sessions_must_be_at_least_one() {
        let o = PostgresConfig::from_url("postgres://h/db").expect("valid URL");
        assert_eq!(o.pinned_sessions(), DEFAULT_PINNED_SESSIONS);
        let err = o
            .clone()
            .with_pinned_sessions(0)
            .validate()
            .expect_err("zero sessions");
        assert_eq!(err.kind(), ErrorKind::InvalidConfig);
        assert!(err.to_string().contains("pinned_sessions"), "{err}");
        let one = o.with_pinned_sessions(1);
        one.validate().expect("one session is enough");
        assert_eq!(one.pinned_sessions(), 1);
    }
}
