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

    /// The store kind this URL selects (`"redis"`, `"etcd"`, `"postgres"`,
    /// `"memory"`), or `None` when the scheme is unknown.
    pub fn kind(&self) -> Option<&'static str> {
        let url = self.0.trim();
        let scheme = url.split_once("://").map(|(s, _)| s.to_ascii_lowercase());
        match scheme.as_deref() {
            Some("memory") => Some("memory"),
            Some("redis" | "rediss") => Some("redis"),
            Some("etcd" | "etcds" | "http" | "https") => Some("etcd"),
            Some("postgres" | "postgresql") => Some("postgres"),
            Some(_) => None,
            // No scheme: the card's StackExchange-style Redis strings.
            None if !url.is_empty() => Some("redis"),
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
        Some("memory") => Ok(memory_store(text)),
        Some("redis") => redis_store(text, options),
        Some("etcd") => etcd_store(text, options),
        Some("postgres") => postgres_store(text, options),
        _ if text.is_empty() => Err(Error::invalid_config(
            "store URL is empty; expected redis://, rediss://, etcd://, http(s)://, postgres:// or memory://",
        )),
        _ => Err(Error::unsupported(format!(
            "unknown store URL scheme in {}; expected redis://, rediss://, etcd://, http(s)://, postgres:// or memory://",
            url.redacted()
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
fn feature_off(store: &str, feature: &str) -> Error {
    Error::unsupported(format!(
        "this build has no {store} store: enable the `{feature}` cargo feature of the `leader` crate"
    ))
}

#[cfg(feature = "redis")]
fn redis_store(url: &str, options: &StoreOptions) -> Result<Arc<dyn LeaseStore>> {
    let mut builder = leader_redis::RedisStore::builder(url);
    if let Some(t) = options.request_timeout {
        builder = builder.response_timeout(t);
    }
    Ok(Arc::new(builder.build()?))
}

#[cfg(not(feature = "redis"))]
fn redis_store(_: &str, _: &StoreOptions) -> Result<Arc<dyn LeaseStore>> {
    Err(feature_off("Redis", "redis"))
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
    Err(feature_off("etcd", "etcd"))
}

#[cfg(feature = "postgres")]
fn postgres_store(url: &str, options: &StoreOptions) -> Result<Arc<dyn LeaseStore>> {
    let mut opts = leader_postgres::PostgresOptions::from_url(url)?;
    if let Some(t) = options.request_timeout {
        opts = opts.operation_timeout(t)?;
    }
    Ok(Arc::new(leader_postgres::PostgresStore::new(opts)))
}

#[cfg(not(feature = "postgres"))]
fn postgres_store(_: &str, _: &StoreOptions) -> Result<Arc<dyn LeaseStore>> {
    Err(feature_off("Postgres", "postgres"))
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
            assert_eq!(StoreUrl::new(input).kind(), kind, "{input}");
        }
    }
}
