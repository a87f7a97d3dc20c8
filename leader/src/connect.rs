//! Building a store from a URL, each scheme behind its cargo feature.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use leader_core::{Error, LeaseStore, MemoryStore, Result};

/// A store URL or connection string. It may hold a password, so `Debug` and
/// `Display` show it redacted; [`StoreUrl::expose`] gives the real text.
#[derive(Clone, PartialEq, Eq)]
pub struct StoreUrl(String);

impl StoreUrl {
    /// Wraps a URL or connection string.
    pub fn new(url: impl Into<String>) -> Self {
        StoreUrl(url.into())
    }

    /// The real text, password included: pass it to a store, never to a log.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The store this URL selects, or `None` when the scheme is unknown.
    /// A string without `://` is one of the original service's
    /// StackExchange-style Redis strings (`host:6379,password=...`).
    pub fn kind(&self) -> Option<StoreKind> {
        let url = self.0.trim();
        match url.split_once("://") {
            Some((scheme, _)) => StoreKind::from_scheme(scheme),
            None if !url.is_empty() => Some(StoreKind::Redis),
            None => None,
        }
    }

    /// The text with any password replaced by `***`: userinfo passwords
    /// (`user:secret@`), and `password=` / `key=` style options.
    pub fn redacted(&self) -> String {
        redact(&self.0)
    }
}

fn redact(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let (scheme, rest) = match text.split_once("://") {
        Some((s, r)) => (Some(s), r),
        None => (None, text),
    };
    if let Some(s) = scheme {
        out.push_str(s);
        out.push_str("://");
    }
    // userinfo: everything before the LAST '@', even past a '/', '?' or '#'
    // (an unencoded one in a password would otherwise end the authority
    // early and leave the rest of the password in view). Over-redacting a
    // path that contains '@' is the safe mistake.
    let rest = match (scheme, rest.rfind('@')) {
        (Some(_), Some(at)) => {
            let userinfo = &rest[..at];
            match userinfo.split_once(':') {
                Some((user, _)) if !user.contains(['/', '?', '#', '=', '&']) => {
                    out.push_str(&format!("{user}:***@"));
                }
                _ if userinfo.contains(['/', '?', '#', '=', '&', ':']) => out.push_str("***@"),
                _ => out.push_str(&format!("{userinfo}@")),
            }
            &rest[at + 1..]
        }
        _ => rest,
    };
    // key=value options, separated by ',' (StackExchange) or '&' (URL query).
    for part in rest.split_inclusive([',', '&', '?']) {
        let (body, sep) = match part.char_indices().last() {
            Some((i, ',' | '&' | '?')) => (&part[..i], &part[i..]),
            _ => (part, ""),
        };
        match body.split_once('=') {
            Some((k, _)) if is_secret_key(k) => {
                out.push_str(k);
                out.push_str("=***");
            }
            _ => out.push_str(body),
        }
        out.push_str(sep);
    }
    out
}

fn is_secret_key(key: &str) -> bool {
    let key = key.trim().to_ascii_lowercase();
    matches!(
        key.as_str(),
        "password" | "pass" | "pwd" | "key" | "secret" | "token" | "sentinelpassword"
    ) || key.ends_with("password")
}

impl fmt::Debug for StoreUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StoreUrl({:?})", self.redacted())
    }
}

impl fmt::Display for StoreUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

/// Settings a caller can pass to any store built from a URL.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct StoreOptions {
    /// Bound on one store request. Set it from the election's timing (the
    /// [`Settings`](crate::Settings) do: the request timeout), so a hung
    /// renewal fails in time to be retried before the renew deadline.
    pub request_timeout: Option<Duration>,
}

impl StoreOptions {
    /// Options with the given request timeout.
    pub fn with_request_timeout(timeout: Duration) -> Self {
        StoreOptions {
            request_timeout: Some(timeout),
        }
    }
}

/// The stores a URL can select.
///
/// Adding a store to the facade is one variant here plus its row in the
/// private table `StoreKind::spec`: its schemes, cargo feature and builder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum StoreKind {
    /// The in-process [`MemoryStore`] (`memory://`, `memory://name`).
    Memory,
    /// Redis (`redis://`, `rediss://`, StackExchange-style strings).
    Redis,
    /// etcd (`etcd://`, `etcds://`; bare `http://` and `https://` are
    /// accepted as aliases because etcd's own tools print endpoints that way).
    Etcd,
    /// Postgres (`postgres://`, `postgresql://`).
    Postgres,
}

/// What the facade knows about one store.
struct Spec {
    /// The name [`LeaseStore::kind`] reports.
    name: &'static str,
    /// URL schemes, compared without case.
    schemes: &'static [&'static str],
    /// The cargo feature that compiles the store in (`None`: always there).
    feature: Option<&'static str>,
    build: fn(&str, &StoreOptions) -> Result<Arc<dyn LeaseStore>>,
}

impl StoreKind {
    /// Every store, in the order error messages list them.
    pub const ALL: [StoreKind; 4] = [
        StoreKind::Redis,
        StoreKind::Etcd,
        StoreKind::Postgres,
        StoreKind::Memory,
    ];

    /// The one table of the facade's stores.
    fn spec(self) -> Spec {
        match self {
            StoreKind::Memory => Spec {
                name: "memory",
                schemes: &["memory"],
                feature: None,
                build: |url, _| Ok(memory_store(url)),
            },
            StoreKind::Redis => Spec {
                name: "redis",
                schemes: &["redis", "rediss"],
                feature: Some("redis"),
                build: redis_store,
            },
            StoreKind::Etcd => Spec {
                name: "etcd",
                schemes: &["etcd", "etcds", "http", "https"],
                feature: Some("etcd"),
                build: etcd_store,
            },
            StoreKind::Postgres => Spec {
                name: "postgres",
                schemes: &["postgres", "postgresql"],
                feature: Some("postgres"),
                build: postgres_store,
            },
        }
    }

    /// The store's name, as [`LeaseStore::kind`] reports it (`"redis"`, ...).
    pub fn name(self) -> &'static str {
        self.spec().name
    }

    /// The cargo feature of the `leader` crate that compiles this store in;
    /// `None` for the in-memory store, which is always there.
    pub fn feature(self) -> Option<&'static str> {
        self.spec().feature
    }

    /// The store a URL scheme selects (case-insensitive).
    pub fn from_scheme(scheme: &str) -> Option<StoreKind> {
        StoreKind::ALL.into_iter().find(|kind| {
            kind.spec()
                .schemes
                .iter()
                .any(|s| s.eq_ignore_ascii_case(scheme))
        })
    }

    /// Every scheme of every store, for error messages.
    fn all_schemes() -> String {
        StoreKind::ALL
            .iter()
            .flat_map(|kind| kind.spec().schemes)
            .map(|s| format!("{s}://"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

impl fmt::Display for StoreKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Builds the store `url` selects, with default options. Nothing is
/// contacted yet: a store that is down at startup does not fail here.
///
/// # Errors
///
/// [`ErrorKind::Unsupported`](leader_core::ErrorKind::Unsupported) for an
/// unknown scheme or a store whose cargo feature is off;
/// [`ErrorKind::InvalidConfig`](leader_core::ErrorKind::InvalidConfig) for a
/// malformed URL (the message names the part, never the password).
pub fn connect(url: &str) -> Result<Arc<dyn LeaseStore>> {
    connect_with(&StoreUrl::new(url), &StoreOptions::default())
}

/// Builds the store `url` selects, with `options`.
///
/// # Errors
///
/// As [`connect`].
pub fn connect_with(url: &StoreUrl, options: &StoreOptions) -> Result<Arc<dyn LeaseStore>> {
    let text = url.expose().trim();
    match url.kind() {
        Some(kind) => (kind.spec().build)(text, options),
        None if text.is_empty() => Err(Error::invalid_config(format!(
            "store URL is empty; expected one of {}",
            StoreKind::all_schemes()
        ))),
        None => Err(Error::unsupported(format!(
            "unknown store URL scheme in {}; expected one of {}",
            url.redacted(),
            StoreKind::all_schemes()
        ))),
    }
}

/// `memory://name` names a store shared by everything in this process that
/// uses the same name; `memory://` is a fresh private store.
fn memory_store(url: &str) -> Arc<dyn LeaseStore> {
    static NAMED: OnceLock<Mutex<HashMap<String, MemoryStore>>> = OnceLock::new();
    let name = url.split_once("://").map(|(_, n)| n).unwrap_or("");
    if name.is_empty() {
        return Arc::new(MemoryStore::new());
    }
    let mut named = NAMED
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    Arc::new(named.entry(name.to_owned()).or_default().clone())
}

#[cfg(not(all(feature = "redis", feature = "etcd", feature = "postgres")))]
fn feature_off(kind: StoreKind) -> Error {
    Error::unsupported(format!(
        "this build has no {kind} store: enable the `{}` cargo feature of the `leader` crate",
        kind.feature().unwrap_or_default()
    ))
}

#[cfg(feature = "redis")]
fn redis_store(url: &str, options: &StoreOptions) -> Result<Arc<dyn LeaseStore>> {
    let mut config = leader_redis::RedisConfig::from_url(url)?;
    if let Some(t) = options.request_timeout {
        config = config.with_request_timeout(t);
    }
    Ok(Arc::new(leader_redis::RedisStore::new(config)?))
}

#[cfg(not(feature = "redis"))]
fn redis_store(_: &str, _: &StoreOptions) -> Result<Arc<dyn LeaseStore>> {
    Err(feature_off(StoreKind::Redis))
}

#[cfg(feature = "etcd")]
fn etcd_store(url: &str, options: &StoreOptions) -> Result<Arc<dyn LeaseStore>> {
    let mut config = leader_etcd::EtcdConfig::from_url(url)?;
    if let Some(t) = options.request_timeout {
        config = config.with_request_timeout(t);
    }
    Ok(Arc::new(leader_etcd::EtcdStore::new(config)?))
}

#[cfg(not(feature = "etcd"))]
fn etcd_store(_: &str, _: &StoreOptions) -> Result<Arc<dyn LeaseStore>> {
    Err(feature_off(StoreKind::Etcd))
}

#[cfg(feature = "postgres")]
fn postgres_store(url: &str, options: &StoreOptions) -> Result<Arc<dyn LeaseStore>> {
    let mut config = leader_postgres::PostgresConfig::from_url(url)?;
    if let Some(t) = options.request_timeout {
        config = config.with_request_timeout(t);
    }
    Ok(Arc::new(leader_postgres::PostgresStore::new(config)?))
}

#[cfg(not(feature = "postgres"))]
fn postgres_store(_: &str, _: &StoreOptions) -> Result<Arc<dyn LeaseStore>> {
    Err(feature_off(StoreKind::Postgres))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redaction_hides_every_form_of_password() {
        for (input, shown) in [
            ("redis://:s3cret@h:6379/0", "redis://:***@h:6379/0"),
            ("rediss://user:s3cret@h:6380", "rediss://user:***@h:6380"),
            (
                "postgres://app:s3cret@db/app?sslmode=require",
                "postgres://app:***@db/app?sslmode=require",
            ),
            (
                "h:6380,password=s3cret,ssl=true",
                "h:6380,password=***,ssl=true",
            ),
            (
                "s1:26379,serviceName=m,password=s3cret",
                "s1:26379,serviceName=m,password=***",
            ),
            (
                "etcd://root:s3cret@h1:2379,h2:2379",
                "etcd://root:***@h1:2379,h2:2379",
            ),
            (
                "postgres://db/app?password=s3cret&user=x",
                "postgres://db/app?password=***&user=x",
            ),
            ("redis://h:6379", "redis://h:6379"),
            // Unencoded '/', '?', '#', '@' inside a password.
            ("redis://user:s3cret/x@h:6379", "redis://user:***@h:6379"),
            ("redis://:s3cret?x@h", "redis://:***@h"),
            (
                "etcd://root:s3#cret@h1:2379,h2:2379",
                "etcd://root:***@h1:2379,h2:2379",
            ),
            ("postgres://u:s3cret@x@db/app", "postgres://u:***@db/app"),
            (
                "postgres://db/app?password=s3cret&user=a@b",
                "postgres://***@b",
            ),
        ] {
            let url = StoreUrl::new(input);
            assert_eq!(url.redacted(), shown);
            assert!(!format!("{url:?} {url}").contains("s3cret"));
        }
    }

    #[test]
    fn kinds_by_scheme() {
        for (input, kind) in [
            ("memory://", Some("memory")),
            ("redis://h", Some("redis")),
            ("REDISS://h", Some("redis")),
            ("h:6379,ssl=true", Some("redis")),
            ("etcd://h:2379", Some("etcd")),
            ("https://h:2379", Some("etcd")),
            ("postgresql://h/db", Some("postgres")),
            ("mongodb://h", None),
            ("", None),
        ] {
            assert_eq!(
                StoreUrl::new(input).kind().map(StoreKind::name),
                kind,
                "{input}"
            );
        }
    }
}
