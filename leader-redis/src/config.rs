//! [`RedisConfig`]: where and how a [`RedisStore`](crate::RedisStore)
//! connects, parsed from `redis://` / `rediss://` URLs or the
//! StackExchange.Redis-style strings of the original service's card, plus
//! the store's own settings (timeouts, replica acknowledgement, watch and
//! Sentinel intervals).
//!
//! | form | topology |
//! |---|---|
//! | `redis://[user][:password@]host[:port][/db][?connect_timeout=..&request_timeout=..]` | one server |
//! | `rediss://...` | one server over TLS |
//! | `host:port[,password=...][,ssl=true][,abortConnect=false]` | one server |
//! | `s1:26379,s2:26379,serviceName=mymaster[,password=...]` | Sentinel |
//! | `n1:6379,n2:6379,n3:6379[,password=...]` | Cluster (several hosts, no `serviceName`) |
//!
//! Options of the comma-separated form are matched without regard to case,
//! as StackExchange.Redis does. Known options that only tune that client's
//! connection behaviour (`abortConnect`, `connectRetry`, `keepAlive`,
//! `allowAdmin`, `resolveDns`, `configCheckSeconds`, `name`, `tiebreaker`,
//! `version`) are accepted and ignored; this client never aborts on a failed
//! first connect. Every other unknown option is refused with an error naming
//! it, so that a typo in a security option (`sll=true`) cannot silently
//! downgrade the connection.
//!
//! URL options (`connect_timeout`, `request_timeout`) take durations as the
//! election configuration does: seconds (`2`, `0.5`) or units (`500ms`).
//! The comma-separated form keeps StackExchange.Redis's milliseconds
//! (`connectTimeout=1500`, `syncTimeout=250`).
//!
//! Errors name the part that is wrong (its position and what was expected)
//! but never echo values: a password misplaced into an endpoint position must
//! not end up in a log.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use crate::expiry::ExpiryNotifications;
use leader_core::store_config::{
    MAX_TIMEOUT, Secret, check_timeout, decode_url_part, decode_url_password,
    parse_duration_option, unknown_option,
};
use leader_core::{Error, Result};

/// The port used when an endpoint gives none.
pub const DEFAULT_PORT: u16 = 6379;
/// The port used for Sentinel endpoints that give none.
pub const DEFAULT_SENTINEL_PORT: u16 = 26379;
/// Default time to open a connection (and, for Sentinel, to ask the sentinels).
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Default time to wait for the reply to one operation.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// Default interval of the pub/sub connection's liveness ping.
pub const DEFAULT_WATCH_HEARTBEAT: Duration = Duration::from_secs(5);
/// Default interval of the Sentinel master-change check.
pub const DEFAULT_SENTINEL_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// The options of the URL form.
const URL_OPTIONS: &[&str] = &["connect_timeout", "request_timeout"];

/// StackExchange.Redis options that only tune that client's connection
/// behaviour; accepted and ignored.
const IGNORED_OPTIONS: &[&str] = &[
    "abortconnect",
    "connectretry",
    "keepalive",
    "allowadmin",
    "resolvedns",
    "configcheckseconds",
    "name",
    "tiebreaker",
    "version",
];

/// Options this crate understands in the comma-separated form.
const KNOWN_OPTIONS: &str = "password, user, ssl, sslCaFile, serviceName, defaultDatabase, \
     connectTimeout, syncTimeout, asyncTimeout, sentinelUser, sentinelPassword \
     (ignored: abortConnect, connectRetry, keepAlive, allowAdmin, resolveDns, \
     configCheckSeconds, name, tiebreaker, version)";

/// Replica acknowledgement after acquire: see [`RedisConfig::with_wait_replicas`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WaitReplicas {
    /// How many replicas must acknowledge the acquisition.
    pub replicas: u32,
    /// How long to wait for them.
    pub timeout: Duration,
}

/// A `host:port` pair.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Endpoint {
    /// Host name or IP address (IPv6 without brackets).
    pub host: String,
    /// TCP port.
    pub port: u16,
}

impl Endpoint {
    /// A `host:port` pair.
    pub fn new(host: impl Into<String>, port: u16) -> Self {
        Endpoint {
            host: host.into(),
            port,
        }
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// Which kind of deployment the client talks to.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Topology {
    /// One server (possibly a primary with replicas the client never talks to).
    Single(Endpoint),
    /// A master found through Sentinel.
    Sentinel {
        /// The sentinels to ask.
        sentinels: Vec<Endpoint>,
        /// The master's name in Sentinel (`serviceName`).
        service_name: String,
    },
    /// A Redis Cluster, reached through any of these seed nodes.
    Cluster(Vec<Endpoint>),
}

impl Topology {
    /// A short name: `"single"`, `"sentinel"` or `"cluster"`.
    pub fn name(&self) -> &'static str {
        match self {
            Topology::Single(_) => "single",
            Topology::Sentinel { .. } => "sentinel",
            Topology::Cluster(_) => "cluster",
        }
    }
}

/// Everything a [`RedisStore`](crate::RedisStore) needs: where to connect
/// and how the store behaves.
///
/// Build it from a URL or connection string with [`RedisConfig::from_url`]
/// (or `str::parse`), or in code with [`RedisConfig::single`] /
/// [`RedisConfig::with_topology`]; adjust it with the `with_*` methods;
/// [`RedisStore::new`](crate::RedisStore::new) checks it with
/// [`RedisConfig::validate`]. Nothing connects until the store's first
/// operation.
///
/// `Debug` is written by hand and never shows a password.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisConfig {
    topology: Topology,
    username: Option<String>,
    password: Option<Secret>,
    sentinel_username: Option<String>,
    sentinel_password: Option<Secret>,
    db: i64,
    tls: bool,
    ca_file: Option<PathBuf>,
    connect_timeout: Duration,
    request_timeout: Duration,
    wait_replicas: Option<WaitReplicas>,
    watch_heartbeat: Duration,
    sentinel_check_interval: Duration,
    expiry_notifications: ExpiryNotifications,
}

impl fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisConfig")
            .field("topology", &self.topology)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("sentinel_username", &self.sentinel_username)
            .field(
                "sentinel_password",
                &self.sentinel_password.as_ref().map(|_| "<redacted>"),
            )
            .field("db", &self.db)
            .field("tls", &self.tls)
            .field("ca_file", &self.ca_file)
            .field("connect_timeout", &self.connect_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("wait_replicas", &self.wait_replicas)
            .field("watch_heartbeat", &self.watch_heartbeat)
            .field("sentinel_check_interval", &self.sentinel_check_interval)
            .field("expiry_notifications", &self.expiry_notifications)
            .finish()
    }
}

impl FromStr for RedisConfig {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        RedisConfig::from_url(s)
    }
}

impl RedisConfig {
    /// A plain connection to one server.
    pub fn single(host: impl Into<String>, port: u16) -> Self {
        Self::with_topology(Topology::Single(Endpoint::new(host, port)))
    }

    /// A configuration for `topology` with no credentials, no TLS, db 0 and
    /// the default timeouts.
    pub fn with_topology(topology: Topology) -> Self {
        RedisConfig {
            topology,
            username: None,
            password: None,
            sentinel_username: None,
            sentinel_password: None,
            db: 0,
            tls: false,
            ca_file: None,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            wait_replicas: None,
            watch_heartbeat: DEFAULT_WATCH_HEARTBEAT,
            sentinel_check_interval: DEFAULT_SENTINEL_CHECK_INTERVAL,
            expiry_notifications: ExpiryNotifications::default(),
        }
    }

    /// Parses a `redis://` / `rediss://` URL or a comma-separated
    /// StackExchange.Redis-style string (see the crate docs), then checks
    /// it as [`RedisConfig::validate`] does.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidConfig`](leader_core::ErrorKind::InvalidConfig)
    /// naming the part that is wrong; never echoing a password.
    pub fn from_url(input: &str) -> Result<Self> {
        let input = input.trim();
        let config = if input.is_empty() {
            Err(invalid("the connection string is empty"))
        } else if input.contains("://") {
            parse_url(input)
        } else {
            parse_options(input)
        }
        .map_err(|e| e.with_store("redis"))?;
        config.validate()?;
        Ok(config)
    }

    /// The deployment kind and its endpoints.
    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    /// The ACL user, if any.
    pub fn username(&self) -> Option<&str> {
        self.username.as_deref()
    }

    /// The password, if any.
    pub fn password(&self) -> Option<&Secret> {
        self.password.as_ref()
    }

    /// The ACL user for the sentinels, if any.
    pub fn sentinel_username(&self) -> Option<&str> {
        self.sentinel_username.as_deref()
    }

    /// The sentinels' password, if any.
    pub fn sentinel_password(&self) -> Option<&Secret> {
        self.sentinel_password.as_ref()
    }

    /// The logical database (always 0 for Cluster).
    pub fn db(&self) -> i64 {
        self.db
    }

    /// Whether connections use TLS.
    pub fn tls(&self) -> bool {
        self.tls
    }

    /// A PEM file of CA certificates to trust instead of the system roots.
    pub fn ca_file(&self) -> Option<&Path> {
        self.ca_file.as_deref()
    }

    /// Time allowed to open a connection.
    pub fn connect_timeout(&self) -> Duration {
        self.connect_timeout
    }

    /// Time allowed for the reply to one operation.
    pub fn request_timeout(&self) -> Duration {
        self.request_timeout
    }

    /// The replica acknowledgement waited for after each acquire, if any.
    pub fn wait_replicas(&self) -> Option<WaitReplicas> {
        self.wait_replicas
    }

    /// Interval of the shared pub/sub connection's liveness ping.
    pub fn watch_heartbeat(&self) -> Duration {
        self.watch_heartbeat
    }

    /// Whether followers use the server's expired-key events.
    pub fn expiry_notifications(&self) -> ExpiryNotifications {
        self.expiry_notifications
    }

    /// With Sentinel: how often the sentinels are asked whether the master moved.
    pub fn sentinel_check_interval(&self) -> Duration {
        self.sentinel_check_interval
    }

    /// Sets the ACL user and password.
    pub fn with_credentials(mut self, username: Option<&str>, password: Option<&str>) -> Self {
        self.username = username.map(str::to_owned);
        self.password = password.map(Secret::new);
        self
    }

    /// Sets the logical database.
    pub fn with_db(mut self, db: i64) -> Self {
        self.db = db;
        self
    }

    /// Turns TLS on or off.
    pub fn with_tls(mut self, tls: bool) -> Self {
        self.tls = tls;
        self
    }

    /// Sets the ACL user and password for the sentinels.
    pub fn with_sentinel_credentials(
        mut self,
        username: Option<&str>,
        password: Option<&str>,
    ) -> Self {
        self.sentinel_username = username.map(str::to_owned);
        self.sentinel_password = password.map(Secret::new);
        self
    }

    /// Trusts the CA certificates in this PEM file instead of the system's
    /// roots (implies TLS). The file is read when the store is built.
    pub fn with_ca_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.ca_file = Some(path.into());
        self.tls = true;
        self
    }

    /// Time allowed to open a connection (default
    /// [`DEFAULT_CONNECT_TIMEOUT`], or the string's `connectTimeout`). A
    /// connect failure is `Unavailable`.
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Time allowed for the reply to one operation (default
    /// [`DEFAULT_REQUEST_TIMEOUT`], or the string's `syncTimeout`). Past it
    /// the outcome is unknown: the call fails `Indeterminate` and the
    /// connection is replaced.
    ///
    /// Set it below the elector's renewal interval (the facade passes the
    /// election's `RequestTimeoutSeconds`), so that a hung renewal fails in
    /// time to be retried before the deadline.
    pub fn with_request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// After each successful acquire, run `WAIT replicas timeout` and fail
    /// the acquire (releasing the lease first) if fewer replicas
    /// acknowledged it.
    ///
    /// What it protects: a failover right after the acquisition. Once `n`
    /// replicas have the lease key, a replica promoted by Sentinel (or
    /// Cluster) has it too, so a second candidate cannot take the seat at
    /// once. What it does not protect: renewals are not waited for (a
    /// failover can still roll the TTL back to the acquisition's), `WAIT`
    /// does not make replication synchronous (an acknowledged write can
    /// still be lost if the promoted replica is not one that acknowledged),
    /// and it does nothing against split brain where an isolated old master
    /// keeps accepting writes. Use fencing tokens for safety; this only
    /// narrows the window. `WAIT` also holds the shared connection for up to
    /// `timeout`, delaying other operations of this store.
    ///
    /// `timeout` must be below the request timeout (the elector bounds each
    /// acquire by it); [`RedisConfig::validate`] refuses it otherwise.
    pub fn with_wait_replicas(mut self, replicas: u32, timeout: Duration) -> Self {
        self.wait_replicas = Some(WaitReplicas { replicas, timeout });
        self
    }

    /// Interval at which the store's shared pub/sub connection is pinged
    /// (and channels nobody watches any more are unsubscribed); a failed
    /// ping ends every watch (`recv()` returns `None`). Default
    /// [`DEFAULT_WATCH_HEARTBEAT`].
    pub fn with_watch_heartbeat(mut self, interval: Duration) -> Self {
        self.watch_heartbeat = interval;
        self
    }

    /// Whether followers use the server's expired-key events instead of
    /// polling for a crashed leader's lease to run out (default
    /// [`ExpiryNotifications::Detect`]: when `CONFIG GET
    /// notify-keyspace-events` shows them enabled). The library never
    /// changes the server's configuration.
    pub fn with_expiry_notifications(mut self, mode: ExpiryNotifications) -> Self {
        self.expiry_notifications = mode;
        self
    }

    /// With Sentinel: how often the sentinels are asked whether the master
    /// moved while the connection to the old one still works (default
    /// [`DEFAULT_SENTINEL_CHECK_INTERVAL`]). Connection errors and
    /// `READONLY` replies re-resolve at once anyway.
    pub fn with_sentinel_check_interval(mut self, interval: Duration) -> Self {
        self.sentinel_check_interval = interval;
        self
    }

    /// Checks every rule the `with_*` methods do not: combinations (db with
    /// Cluster, CA without TLS, a `WAIT` timeout not below the request
    /// timeout) and ranges (timeouts and intervals above zero and at most
    /// an hour). [`RedisStore::new`](crate::RedisStore::new) calls it.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidConfig`](leader_core::ErrorKind::InvalidConfig) naming the setting.
    pub fn validate(&self) -> Result<()> {
        self.check().map_err(|e| e.with_store("redis"))
    }

    fn check(&self) -> Result<()> {
        for (name, value) in [
            ("connect_timeout", self.connect_timeout),
            ("request_timeout", self.request_timeout),
            ("watch_heartbeat", self.watch_heartbeat),
            ("sentinel_check_interval", self.sentinel_check_interval),
        ] {
            check_timeout(name, value)?;
        }
        if let Some(w) = self.wait_replicas {
            if w.replicas == 0 || w.timeout.is_zero() {
                return Err(invalid(
                    "wait_replicas needs at least one replica and a non-zero timeout",
                ));
            }
            // The caller bounds the whole acquire (script and WAIT) by its
            // request timeout: a WAIT as long would be cut off before it
            // could answer or release.
            if w.timeout >= self.request_timeout {
                return Err(invalid(format!(
                    "wait_replicas: the WAIT timeout ({:?}) must be below the request timeout \
                     ({:?}; RequestTimeoutSeconds when built through the facade)",
                    w.timeout, self.request_timeout
                )));
            }
        }
        if self.db < 0 {
            return Err(invalid("the database number must not be negative"));
        }
        if matches!(self.topology, Topology::Cluster(_)) && self.db != 0 {
            return Err(invalid(
                "Redis Cluster has only database 0; remove defaultDatabase (or give one host \
                 for a single server)",
            ));
        }
        if self.ca_file.is_some() && !self.tls {
            return Err(invalid(
                "a CA file is given but TLS is off (set ssl=true or use rediss://)",
            ));
        }
        Ok(())
    }
}

fn invalid(message: impl Into<String>) -> Error {
    Error::invalid_config(message).with_store("redis")
}

fn parse_url(input: &str) -> Result<RedisConfig> {
    let url = url::Url::parse(input)
        // The url crate's messages describe the problem without echoing input.
        .map_err(|e| invalid(format!("malformed URL: {e}")))?;
    let tls = match url.scheme() {
        "redis" => false,
        "rediss" => true,
        other => {
            let shown: String = other.chars().take(16).collect();
            return Err(invalid(format!(
                "unsupported URL scheme '{shown}' (expected redis:// or rediss://; Sentinel and \
                 Cluster use the comma-separated form)"
            )));
        }
    };
    let host = match url.host_str() {
        Some(h) if !h.is_empty() => h.trim_start_matches('[').trim_end_matches(']').to_owned(),
        _ => return Err(invalid("the URL has no host")),
    };
    let port = url.port().unwrap_or(DEFAULT_PORT);
    if port == 0 {
        return Err(invalid("the URL port must be between 1 and 65535"));
    }
    let username = match url.username() {
        "" => None,
        u => Some(decode_url_part("user name", u)?),
    };
    let password = match url.password() {
        None | Some("") => None,
        Some(p) => Some(decode_url_password(p)?),
    };
    let path = url.path().trim_start_matches('/');
    let db = if path.is_empty() {
        0
    } else {
        path.parse::<i64>()
            .ok()
            .filter(|db| *db >= 0)
            .ok_or_else(|| invalid("the URL path must be a database number such as /0"))?
    };
    if url.fragment().is_some() {
        return Err(invalid(
            "URL fragments (such as #insecure) are not supported",
        ));
    }
    let mut config = RedisConfig {
        username,
        password,
        db,
        tls,
        ..RedisConfig::with_topology(Topology::Single(Endpoint::new(host, port)))
    };
    for (name, value) in url.query_pairs() {
        match &*name {
            "connect_timeout" => config.connect_timeout = parse_duration_option(&name, &value)?,
            "request_timeout" => config.request_timeout = parse_duration_option(&name, &value)?,
            other => return Err(unknown_option(other, URL_OPTIONS)),
        }
    }
    Ok(config)
}

/// Parses `host`, `host:port` or `[v6]:port`. `n` is the 1-based part number.
fn parse_endpoint(n: usize, part: &str, default_port: u16) -> Result<Endpoint> {
    let bad = |why: &str| invalid(format!("connection string part {n}: {why}"));
    let (host, port) = if let Some(rest) = part.strip_prefix('[') {
        let (host, after) = rest
            .split_once(']')
            .ok_or_else(|| bad("an IPv6 address opened with '[' is not closed with ']'"))?;
        match after {
            "" => (host, None),
            p => (
                host,
                Some(
                    p.strip_prefix(':')
                        .ok_or_else(|| bad("expected ':port' after the IPv6 address"))?,
                ),
            ),
        }
    } else {
        match part.split_once(':') {
            None => (part, None),
            Some((h, p)) if !p.contains(':') => (h, Some(p)),
            Some(_) => {
                return Err(bad(
                    "an IPv6 address must be written in brackets: [::1]:6379",
                ));
            }
        }
    };
    if host.is_empty() {
        return Err(bad("the host is empty (expected host:port)"));
    }
    let host_ok = host
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':'));
    if !host_ok {
        return Err(bad(
            "not a host name, IP address or key=value option (expected host:port)",
        ));
    }
    let port = match port {
        None => default_port,
        Some(p) => p
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| bad("the port must be a number between 1 and 65535"))?,
    };
    Ok(Endpoint::new(host, port))
}

fn parse_bool(n: usize, key: &str, value: &str) -> Result<bool> {
    match value.to_ascii_lowercase().as_str() {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(invalid(format!(
            "connection string part {n}: option {key} must be true or false"
        ))),
    }
}

fn parse_millis(n: usize, key: &str, value: &str) -> Result<Duration> {
    // StackExchange.Redis's grammar (whole milliseconds), the store's range.
    value
        .parse::<u64>()
        .ok()
        .map(Duration::from_millis)
        .filter(|d| !d.is_zero() && *d <= MAX_TIMEOUT)
        .ok_or_else(|| {
            invalid(format!(
                "connection string part {n}: option {key} must be a number of milliseconds \
                 between 1 and {}",
                MAX_TIMEOUT.as_millis()
            ))
        })
}

fn parse_options(input: &str) -> Result<RedisConfig> {
    let mut endpoints: Vec<(usize, &str)> = Vec::new();
    let mut seen: Vec<String> = Vec::new();
    let mut config = RedisConfig::with_topology(Topology::Cluster(Vec::new()));
    let mut service_name = None;
    for (i, part) in input.split(',').enumerate() {
        let n = i + 1;
        let part = part.trim();
        if part.is_empty() {
            return Err(invalid(format!("connection string part {n} is empty")));
        }
        let Some((key, value)) = part.split_once('=') else {
            endpoints.push((n, part));
            continue;
        };
        let key = key.trim();
        let value = value.trim();
        let lower = key.to_ascii_lowercase();
        if key.is_empty() {
            return Err(invalid(format!(
                "connection string part {n}: option name is empty"
            )));
        }
        if seen.contains(&lower) {
            return Err(invalid(format!(
                "connection string part {n}: option {key} is given twice"
            )));
        }
        seen.push(lower.clone());
        let empty = |what: &str| {
            invalid(format!(
                "connection string part {n}: option {key} needs a {what}"
            ))
        };
        match lower.as_str() {
            "password" => config.password = (!value.is_empty()).then(|| Secret::new(value)),
            "user" => {
                if value.is_empty() {
                    return Err(empty("user name"));
                }
                config.username = Some(value.to_owned());
            }
            "sentinelpassword" => {
                config.sentinel_password = (!value.is_empty()).then(|| Secret::new(value));
            }
            "sentineluser" => {
                if value.is_empty() {
                    return Err(empty("user name"));
                }
                config.sentinel_username = Some(value.to_owned());
            }
            "ssl" => config.tls = parse_bool(n, key, value)?,
            "sslcafile" => {
                if value.is_empty() {
                    return Err(empty("file path"));
                }
                config.ca_file = Some(PathBuf::from(value));
            }
            "servicename" => {
                if value.is_empty() {
                    return Err(empty("master name"));
                }
                service_name = Some(value.to_owned());
            }
            "defaultdatabase" => {
                config.db = value
                    .parse::<i64>()
                    .ok()
                    .filter(|db| *db >= 0)
                    .ok_or_else(|| {
                        invalid(format!(
                            "connection string part {n}: option {key} must be a non-negative \
                             integer"
                        ))
                    })?;
            }
            "connecttimeout" => config.connect_timeout = parse_millis(n, key, value)?,
            "synctimeout" | "asynctimeout" => {
                config.request_timeout = parse_millis(n, key, value)?;
            }
            "abortconnect" | "allowadmin" | "resolvedns" => {
                parse_bool(n, key, value)?;
            }
            ignored if IGNORED_OPTIONS.contains(&ignored) => {}
            _ => {
                let shown: String = key.chars().take(32).collect();
                return Err(invalid(format!(
                    "connection string part {n}: unknown option '{shown}' (known: {KNOWN_OPTIONS})"
                )));
            }
        }
    }
    if endpoints.is_empty() {
        return Err(invalid("the connection string names no host:port endpoint"));
    }
    let default_port = if service_name.is_some() {
        DEFAULT_SENTINEL_PORT
    } else {
        DEFAULT_PORT
    };
    let mut parsed = Vec::with_capacity(endpoints.len());
    for (n, part) in endpoints {
        let endpoint = parse_endpoint(n, part, default_port)?;
        if parsed.contains(&endpoint) {
            return Err(invalid(format!(
                "connection string part {n}: endpoint {endpoint} is given twice"
            )));
        }
        parsed.push(endpoint);
    }
    config.topology = match service_name {
        Some(service_name) => Topology::Sentinel {
            sentinels: parsed,
            service_name,
        },
        None if parsed.len() == 1 => Topology::Single(parsed.remove(0)),
        None => Topology::Cluster(parsed),
    };
    if (config.sentinel_password.is_some() || config.sentinel_username.is_some())
        && !matches!(config.topology, Topology::Sentinel { .. })
    {
        return Err(invalid(
            "sentinelUser/sentinelPassword are only valid with serviceName (Sentinel)",
        ));
    }
    Ok(config)
}
