//! Connection settings for [`EtcdStore`](crate::EtcdStore): endpoints,
//! credentials, TLS and timeouts, built in code or parsed from a URL.
//!
//! # URL form
//!
//! ```text
//! etcd://[user[:password]@]host[:port][,host[:port]...][/][?option=value&...]
//! etcds://...                       (TLS)
//! http://host:port[,http://host:port...]
//! https://host:port[,https://host:port...]   (TLS)
//! ```
//!
//! A comma-separated host list is one cluster. The port defaults to 2379.
//! Options: `user`, `password`, `tls` (`true`/`false`), `ca` (a PEM file with
//! the CA certificate(s) to trust instead of the system's roots), `cert` and
//! `key` (a PEM client certificate and its key, for mutual TLS), `domain` (the
//! name to verify the server certificate against), `connect_timeout` and
//! `request_timeout` (`timeout` is an older alias). Durations are written as
//! in the election configuration: seconds (`2`, `0.5`) or units (`500ms`,
//! `2s`). Reserved characters in user names and passwords (`@ : , / ? & %`)
//! must be percent-encoded. Aliases kept from earlier versions: `username`
//! for `user`, `ssl` for `tls`, `ca_file`/`cacert` for `ca`, `cert_file` for
//! `cert`, `key_file` for `key`, `tls_domain` for `domain`, `timeout` for
//! `request_timeout`.
//!
//! Errors name the part that is wrong and never contain the password.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use leader_core::store_config::{
    Secret, check_timeout, decode_url_part, decode_url_password, parse_bool_option,
    parse_duration_option, unknown_option,
};
use leader_core::{Error, Result};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// The port used when an endpoint does not name one.
pub const DEFAULT_PORT: u16 = 2379;
/// The default bound on establishing a TCP (and TLS) connection.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// The default bound on one request; a request that runs longer has an
/// unknown outcome ([`ErrorKind::Indeterminate`](leader_core::ErrorKind::Indeterminate)).
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// The URL options understood, aliases last; anything else is refused.
const URL_OPTIONS: &[&str] = &[
    "user",
    "password",
    "tls",
    "ca",
    "cert",
    "key",
    "domain",
    "connect_timeout",
    "request_timeout",
    "username",
    "ssl",
    "ca_file",
    "cacert",
    "cert_file",
    "key_file",
    "tls_domain",
    "timeout",
];

/// TLS settings: the CA to trust, an optional client identity and the name
/// to verify.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct TlsConfig {
    ca_pem: Option<Vec<u8>>,
    identity: Option<(Vec<u8>, Vec<u8>)>,
    domain: Option<String>,
}

impl fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Certificates are public but long; the private key is secret.
        f.debug_struct("TlsConfig")
            .field("custom_ca", &self.ca_pem.is_some())
            .field("client_identity", &self.identity.is_some())
            .field("domain", &self.domain)
            .finish()
    }
}

impl TlsConfig {
    /// TLS that trusts the system's root certificates (as `rustls-native-certs`
    /// finds them, honouring `SSL_CERT_FILE` and `SSL_CERT_DIR`). A CA set with
    /// [`TlsConfig::with_ca_pem`] or [`TlsConfig::with_ca_file`] replaces them.
    pub fn new() -> Self {
        Self::default()
    }

    /// Trusts the CA certificate(s) in `pem`.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidConfig`](leader_core::ErrorKind::InvalidConfig) when `pem` holds no
    /// PEM certificate.
    pub fn with_ca_pem(mut self, pem: impl Into<Vec<u8>>) -> Result<Self> {
        let pem = pem.into();
        check_certs("the CA", &pem)?;
        self.ca_pem = Some(pem);
        Ok(self)
    }

    /// Trusts the CA certificate(s) in the PEM file at `path`.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidConfig`](leader_core::ErrorKind::InvalidConfig) naming the file when
    /// it cannot be read or holds no certificate.
    pub fn with_ca_file(self, path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let pem = read_file("ca", path)?;
        check_certs(&format!("ca file {}", path.display()), &pem)?;
        self.with_ca_pem(pem)
    }

    /// Presents a client certificate (PEM chain) and its private key (PEM).
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidConfig`](leader_core::ErrorKind::InvalidConfig) when either does not
    /// parse.
    pub fn with_identity_pem(
        mut self,
        cert_pem: impl Into<Vec<u8>>,
        key_pem: impl Into<Vec<u8>>,
    ) -> Result<Self> {
        let (cert_pem, key_pem) = (cert_pem.into(), key_pem.into());
        check_certs("the client certificate", &cert_pem)?;
        if PrivateKeyDer::from_pem_slice(&key_pem).is_err() {
            return Err(Error::invalid_config(
                "the client key holds no PEM private key",
            ));
        }
        self.identity = Some((cert_pem, key_pem));
        Ok(self)
    }

    /// Presents the client certificate and key in the PEM files at the given paths.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidConfig`](leader_core::ErrorKind::InvalidConfig) naming the file that
    /// cannot be read or parsed.
    pub fn with_identity_files(
        self,
        cert_path: impl AsRef<Path>,
        key_path: impl AsRef<Path>,
    ) -> Result<Self> {
        let (cert_path, key_path) = (cert_path.as_ref(), key_path.as_ref());
        let cert = read_file("cert", cert_path)?;
        let key = read_file("key", key_path)?;
        check_certs(&format!("cert file {}", cert_path.display()), &cert)?;
        if PrivateKeyDer::from_pem_slice(&key).is_err() {
            return Err(Error::invalid_config(format!(
                "key file {} holds no PEM private key",
                key_path.display()
            )));
        }
        self.with_identity_pem(cert, key)
    }

    /// Verifies the server certificate against `domain` instead of the host
    /// name in the endpoint (useful with IP endpoints).
    pub fn with_domain(mut self, domain: impl Into<String>) -> Self {
        self.domain = Some(domain.into());
        self
    }

    pub(crate) fn to_tonic(&self) -> etcd_client::TlsOptions {
        let mut tls = etcd_client::TlsOptions::new();
        tls = match &self.ca_pem {
            Some(ca) => tls.ca_certificate(etcd_client::Certificate::from_pem(ca)),
            None => tls.with_native_roots(),
        };
        if let Some((cert, key)) = &self.identity {
            tls = tls.identity(etcd_client::Identity::from_pem(cert, key));
        }
        if let Some(domain) = &self.domain {
            tls = tls.domain_name(domain.clone());
        }
        tls
    }
}

fn read_file(what: &str, path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| {
        Error::invalid_config(format!("cannot read {what} file {}: {e}", path.display()))
    })
}

fn check_certs(what: &str, pem: &[u8]) -> Result<()> {
    let mut count = 0usize;
    for cert in CertificateDer::pem_slice_iter(pem) {
        if cert.is_err() {
            return Err(Error::invalid_config(format!(
                "{what} holds a malformed PEM certificate"
            )));
        }
        count += 1;
    }
    if count == 0 {
        return Err(Error::invalid_config(format!(
            "{what} holds no PEM certificate"
        )));
    }
    Ok(())
}

/// How to reach etcd: endpoints (several = one cluster), optional
/// user/password, optional TLS and timeouts.
///
/// Build it from a URL with [`EtcdConfig::from_url`] (or `str::parse`), or
/// from endpoints with [`EtcdConfig::new`]; adjust it with the `with_*`
/// methods; [`EtcdStore::new`](crate::EtcdStore::new) checks it with
/// [`EtcdConfig::validate`]. `Debug` never shows the password.
#[derive(Clone, PartialEq, Eq)]
pub struct EtcdConfig {
    endpoints: Vec<String>,
    user: Option<(String, Secret)>,
    tls: Option<TlsConfig>,
    connect_timeout: Duration,
    request_timeout: Duration,
}

impl fmt::Debug for EtcdConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdConfig")
            .field("endpoints", &self.endpoints)
            .field("user", &self.user.as_ref().map(|(u, _)| u))
            .field("password", &self.user.as_ref().map(|(_, p)| p))
            .field("tls", &self.tls)
            .field("connect_timeout", &self.connect_timeout)
            .field("request_timeout", &self.request_timeout)
            .finish()
    }
}

impl EtcdConfig {
    /// Settings for the given endpoints: `host:port`, `http://host:port` or
    /// `https://host:port` (all of one scheme; `https` turns TLS on).
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidConfig`](leader_core::ErrorKind::InvalidConfig) naming the bad endpoint.
    pub fn new<I, S>(endpoints: I) -> Result<Self>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        Self::from_endpoints(endpoints).map_err(in_store)
    }

    fn from_endpoints<I, S>(endpoints: I) -> Result<Self>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut tls = None;
        let mut parsed = Vec::new();
        for (i, endpoint) in endpoints.into_iter().enumerate() {
            let endpoint = endpoint.as_ref().trim();
            let (scheme_tls, rest) = if let Some(rest) = endpoint.strip_prefix("https://") {
                (Some(true), rest)
            } else if let Some(rest) = endpoint.strip_prefix("http://") {
                (Some(false), rest)
            } else {
                (None, endpoint)
            };
            if let Some(t) = scheme_tls {
                if tls.is_some_and(|prev| prev != t) {
                    return Err(Error::invalid_config(format!(
                        "endpoint {} ({endpoint:?}) mixes http and https with the other endpoints",
                        i + 1
                    )));
                }
                tls = Some(t);
            }
            parsed.push(parse_host(i, rest.trim_end_matches('/'))?);
        }
        if parsed.is_empty() {
            return Err(Error::invalid_config("no etcd endpoint given"));
        }
        Ok(EtcdConfig {
            endpoints: parsed,
            user: None,
            tls: tls.unwrap_or(false).then(TlsConfig::new),
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
        })
    }

    /// Parses an `etcd://`, `etcds://`, `http://` or `https://` URL (see the
    /// crate docs for the options).
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidConfig`](leader_core::ErrorKind::InvalidConfig) naming the bad part
    /// (scheme, host, port, option); never containing the password.
    pub fn from_url(url: &str) -> Result<Self> {
        Self::parse_url(url).map_err(in_store)
    }

    fn parse_url(url: &str) -> Result<Self> {
        let url = url.trim();
        let Some((scheme, rest)) = url.split_once("://") else {
            return Err(Error::invalid_config(
                "etcd url has no scheme: expected etcd://, etcds://, http:// or https://",
            ));
        };
        let (tls, strip): (bool, &[&str]) = match scheme.to_ascii_lowercase().as_str() {
            "etcd" => (false, &[]),
            "etcds" => (true, &[]),
            "http" => (false, &["http://"]),
            "https" => (true, &["https://"]),
            other => {
                return Err(Error::invalid_config(format!(
                    "unknown etcd url scheme {other:?}: expected etcd, etcds, http or https"
                )));
            }
        };
        let (authority, query) = match rest.split_once('?') {
            Some((a, q)) => (a, Some(q)),
            None => (rest, None),
        };
        let authority = authority.strip_suffix('/').unwrap_or(authority);
        // Credentials belong to the first host: look for '@' before the first comma.
        let first_end = authority.find(',').unwrap_or(authority.len());
        let (userinfo, hosts) = match authority[..first_end].rfind('@') {
            Some(at) => (Some(&authority[..at]), &authority[at + 1..]),
            None => (None, authority),
        };
        let mut endpoints = Vec::new();
        for (i, item) in hosts.split(',').enumerate() {
            let mut item = item.trim();
            for prefix in strip {
                item = item.strip_prefix(prefix).unwrap_or(item);
            }
            if item.contains("://") {
                return Err(Error::invalid_config(format!(
                    "endpoint {} in the etcd url has a different scheme than the first",
                    i + 1
                )));
            }
            if item.contains('@') {
                return Err(Error::invalid_config(format!(
                    "endpoint {} in the etcd url has credentials: put them before the first host",
                    i + 1
                )));
            }
            let item = item.strip_suffix('/').unwrap_or(item);
            if item.contains('/') {
                return Err(Error::invalid_config(format!(
                    "endpoint {} in the etcd url has a path; etcd urls take none",
                    i + 1
                )));
            }
            endpoints.push(parse_host(i, item)?);
        }
        let mut config = EtcdConfig {
            endpoints,
            user: None,
            tls: tls.then(TlsConfig::new),
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
        };
        if let Some(userinfo) = userinfo {
            let (user, password) = match userinfo.split_once(':') {
                Some((u, p)) => (u, Some(p)),
                None => (userinfo, None),
            };
            let user = decode_url_part("user name", user)?;
            let password = match password {
                Some(p) => decode_url_password(p)?,
                None => Secret::new(""),
            };
            if user.is_empty() {
                return Err(Error::invalid_config("the etcd url has an empty user name"));
            }
            config.user = Some((user, password));
        }
        if let Some(query) = query {
            config.apply_query(query)?;
        }
        Ok(config)
    }

    fn apply_query(&mut self, query: &str) -> Result<()> {
        let mut user = None;
        let mut password = None;
        let mut tls_on = self.tls.is_some();
        let mut ca = None;
        let mut cert = None;
        let mut key = None;
        let mut domain = None;
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (name, raw) = pair.split_once('=').unwrap_or((pair, ""));
            let name = decode_url_part("option name", name)?;
            if name == "password" {
                // Never echo a password value, not even in a decoding error.
                password = Some(decode_url_password(raw)?);
                continue;
            }
            let value = decode_url_part(&format!("option {name}"), raw)?;
            match name.as_str() {
                "user" | "username" => user = Some(value),
                "tls" | "ssl" => tls_on = parse_bool_option(&name, &value)?,
                "ca" | "ca_file" | "cacert" => ca = Some(PathBuf::from(value)),
                "cert" | "cert_file" => cert = Some(PathBuf::from(value)),
                "key" | "key_file" => key = Some(PathBuf::from(value)),
                "domain" | "tls_domain" => domain = Some(value),
                "connect_timeout" => {
                    self.connect_timeout = parse_duration_option(&name, &value)?;
                }
                "request_timeout" | "timeout" => {
                    self.request_timeout = parse_duration_option(&name, &value)?;
                }
                _ => return Err(unknown_option(&name, URL_OPTIONS)),
            }
        }
        match (user, password) {
            (Some(u), p) => {
                if self.user.is_some() {
                    return Err(Error::invalid_config(
                        "the etcd url names a user both before the host and as an option",
                    ));
                }
                if u.is_empty() {
                    return Err(Error::invalid_config("option user is empty"));
                }
                self.user = Some((u, p.unwrap_or_else(|| Secret::new(""))));
            }
            (None, Some(p)) => match &mut self.user {
                Some((_, secret)) if secret.is_empty() => *secret = p,
                Some(_) => {
                    return Err(Error::invalid_config(
                        "the etcd url gives a password both before the host and as an option",
                    ));
                }
                None => {
                    return Err(Error::invalid_config(
                        "the etcd url has a password option but no user",
                    ));
                }
            },
            (None, None) => {}
        }
        let tls_wanted = tls_on || ca.is_some() || cert.is_some() || domain.is_some();
        if !tls_wanted {
            self.tls = None;
            return Ok(());
        }
        let mut tls = TlsConfig::new();
        if let Some(ca) = ca {
            tls = tls.with_ca_file(ca)?;
        }
        match (cert, key) {
            (Some(c), Some(k)) => tls = tls.with_identity_files(c, k)?,
            (None, None) => {}
            (Some(_), None) => {
                return Err(Error::invalid_config(
                    "option cert is set without option key",
                ));
            }
            (None, Some(_)) => {
                return Err(Error::invalid_config(
                    "option key is set without option cert",
                ));
            }
        }
        if let Some(d) = domain {
            tls = tls.with_domain(d);
        }
        self.tls = Some(tls);
        Ok(())
    }

    /// Authenticates as `user` with `password`.
    pub fn with_user(mut self, user: impl Into<String>, password: impl Into<String>) -> Self {
        self.user = Some((user.into(), Secret::new(password)));
        self
    }

    /// Connects with TLS using `tls`.
    pub fn with_tls(mut self, tls: TlsConfig) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Bounds establishing a connection (default [`DEFAULT_CONNECT_TIMEOUT`]).
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Bounds each request (default [`DEFAULT_REQUEST_TIMEOUT`]). A request
    /// that runs out of time has an unknown outcome.
    pub fn with_request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// The endpoints as `host:port`.
    pub fn endpoints(&self) -> &[String] {
        &self.endpoints
    }

    /// The user name, if any (the password has no getter).
    pub fn user(&self) -> Option<&str> {
        self.user.as_ref().map(|(u, _)| u.as_str())
    }

    /// The TLS settings, if TLS is on.
    pub fn tls(&self) -> Option<&TlsConfig> {
        self.tls.as_ref()
    }

    /// The connect timeout.
    pub fn connect_timeout(&self) -> Duration {
        self.connect_timeout
    }

    /// The request timeout.
    pub fn request_timeout(&self) -> Duration {
        self.request_timeout
    }

    /// Checks the settings that the `with_*` methods accept unchecked (the
    /// timeouts); [`EtcdStore::new`](crate::EtcdStore::new) calls it.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidConfig`](leader_core::ErrorKind::InvalidConfig)
    /// naming the setting.
    pub fn validate(&self) -> Result<()> {
        check_timeout("connect_timeout", self.connect_timeout)
            .and_then(|()| check_timeout("request_timeout", self.request_timeout))
            .map_err(in_store)
    }

    /// The endpoint URLs for etcd-client, with the scheme that matches TLS.
    pub(crate) fn endpoint_urls(&self) -> Vec<String> {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        self.endpoints
            .iter()
            .map(|e| format!("{scheme}://{e}"))
            .collect()
    }

    pub(crate) fn connect_options(&self) -> etcd_client::ConnectOptions {
        let mut options = etcd_client::ConnectOptions::new()
            .with_connect_timeout(self.connect_timeout)
            .with_timeout(self.request_timeout)
            // HTTP/2 pings find a dead or hung server on an idle watch or
            // keep-alive stream within about one request timeout.
            .with_keep_alive(self.request_timeout, self.request_timeout)
            .with_keep_alive_while_idle(true)
            // A member cut off from its cluster refuses requests (and cancels
            // watches) instead of serving stale data or hanging.
            .with_require_leader(true);
        if let Some((user, password)) = &self.user {
            options = options
                .with_user(user.clone(), password.expose().to_owned())
                .with_auto_token_refresh(true);
        }
        if let Some(tls) = &self.tls {
            options = options.with_tls(tls.to_tonic());
        }
        options
    }
}

impl FromStr for EtcdConfig {
    type Err = Error;

    fn from_str(url: &str) -> Result<Self> {
        EtcdConfig::from_url(url)
    }
}

/// Marks a configuration error as the etcd store's.
fn in_store(e: Error) -> Error {
    e.with_store("etcd")
}

/// Validates `host[:port]` (IPv6 in brackets) and returns `host:port`.
fn parse_host(index: usize, item: &str) -> Result<String> {
    let n = index + 1;
    if item.is_empty() {
        return Err(Error::invalid_config(format!(
            "endpoint {n} in the etcd url is empty"
        )));
    }
    let (host, port) = if let Some(rest) = item.strip_prefix('[') {
        let Some((v6, after)) = rest.split_once(']') else {
            return Err(Error::invalid_config(format!(
                "endpoint {n} ({item:?}) has an unclosed IPv6 bracket"
            )));
        };
        if v6.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(Error::invalid_config(format!(
                "endpoint {n} ({item:?}) has an invalid IPv6 address"
            )));
        }
        let port = match after {
            "" => None,
            p => match p.strip_prefix(':') {
                Some(p) => Some(p),
                None => {
                    return Err(Error::invalid_config(format!(
                        "endpoint {n} ({item:?}) has junk after the IPv6 address"
                    )));
                }
            },
        };
        (format!("[{v6}]"), port)
    } else {
        match item.rsplit_once(':') {
            Some((h, p)) => (h.to_owned(), Some(p)),
            None => (item.to_owned(), None),
        }
    };
    if !host.starts_with('[') {
        let ok = !host.is_empty()
            && host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'));
        if !ok {
            return Err(Error::invalid_config(format!(
                "endpoint {n} ({item:?}) has an invalid host name {host:?}"
            )));
        }
    }
    let port = match port {
        None => DEFAULT_PORT,
        Some(p) => match p.parse::<u16>() {
            Ok(p) if p != 0 => p,
            _ => {
                return Err(Error::invalid_config(format!(
                    "endpoint {n} ({item:?}) has an invalid port {p:?} (expected 1-65535)"
                )));
            }
        },
    };
    Ok(format!("{host}:{port}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use leader_core::ErrorKind;

    #[test]
    fn parses_single_and_cluster_urls() {
        let c = EtcdConfig::from_url("etcd://127.0.0.1:2379").expect("single");
        assert_eq!(c.endpoints(), ["127.0.0.1:2379"]);
        assert!(c.tls().is_none());
        assert_eq!(c.endpoint_urls(), ["http://127.0.0.1:2379"]);

        let c = EtcdConfig::from_url("etcd://a:1,b:2,c").expect("cluster");
        assert_eq!(c.endpoints(), ["a:1", "b:2", "c:2379"]);

        let c = EtcdConfig::from_url("http://a:1,http://b:2/").expect("http list");
        assert_eq!(c.endpoints(), ["a:1", "b:2"]);

        let c = EtcdConfig::from_url("https://[::1]:2379").expect("https v6");
        assert_eq!(c.endpoints(), ["[::1]:2379"]);
        assert!(c.tls().is_some());
        assert_eq!(c.endpoint_urls(), ["https://[::1]:2379"]);

        let c =
            EtcdConfig::from_url("etcd://h:1?tls=true&connect_timeout=250ms&request_timeout=3s")
                .expect("options");
        assert!(c.tls().is_some());
        assert_eq!(c.connect_timeout(), Duration::from_millis(250));
        assert_eq!(c.request_timeout(), Duration::from_secs(3));

        // The election configuration's grammar: bare seconds, fractions; and
        // the older `timeout` alias.
        let c = EtcdConfig::from_url("etcd://h:1?connect_timeout=0.5&timeout=2")
            .expect("seconds and the alias");
        assert_eq!(c.connect_timeout(), Duration::from_millis(500));
        assert_eq!(c.request_timeout(), Duration::from_secs(2));
        let c: EtcdConfig = "etcd://h:1".parse().expect("FromStr");
        assert_eq!(c.request_timeout(), DEFAULT_REQUEST_TIMEOUT);
    }

    #[test]
    fn parses_credentials_in_userinfo_and_options() {
        let c = EtcdConfig::from_url("etcd://root:p%40ss%2Cw:rd@h1:1,h2:2").expect("userinfo");
        assert_eq!(c.user(), Some("root"));
        assert_eq!(c.user.as_ref().map(|(_, p)| p.expose()), Some("p@ss,w:rd"));
        assert_eq!(c.endpoints(), ["h1:1", "h2:2"]);

        let c = EtcdConfig::from_url("etcd://h:1?user=alice&password=s3cr%26t").expect("options");
        assert_eq!(c.user(), Some("alice"));
        assert_eq!(c.user.as_ref().map(|(_, p)| p.expose()), Some("s3cr&t"));

        let c = EtcdConfig::from_url("etcd://bob@h:1?password=pw").expect("user + password option");
        assert_eq!(c.user.as_ref().map(|(_, p)| p.expose()), Some("pw"));
    }

    #[test]
    fn bad_urls_name_the_bad_part() {
        for (url, needle) in [
            ("127.0.0.1:2379", "no scheme"),
            ("redis://h:1", "unknown etcd url scheme \"redis\""),
            ("etcd://", "endpoint 1 in the etcd url is empty"),
            ("etcd://a:1,,b:2", "endpoint 2 in the etcd url is empty"),
            (
                "etcd://a:1,b:99999",
                "endpoint 2 (\"b:99999\") has an invalid port \"99999\"",
            ),
            ("etcd://a:0", "invalid port \"0\""),
            ("etcd://a:x", "invalid port \"x\""),
            ("etcd://a b:1", "invalid host name \"a b\""),
            ("etcd://[::1:1", "unclosed IPv6 bracket"),
            ("etcd://[zz]:1", "invalid IPv6 address"),
            ("etcd://a:1/path", "has a path"),
            ("etcd://a:1,https://b:2", "different scheme"),
            ("http://a:1,https://b:2", "different scheme"),
            ("etcd://a:1?bogus=1", "unknown option 'bogus'"),
            (
                "etcd://a:1?tls=maybe",
                "option tls=\"maybe\" is not a boolean",
            ),
            (
                "etcd://a:1?request_timeout=soon",
                "option request_timeout: \"soon\" is not a duration",
            ),
            (
                "etcd://a:1?ca=/nonexistent/ca.pem",
                "cannot read ca file /nonexistent/ca.pem",
            ),
            (
                "etcd://a:1?cert=/x.pem",
                "option cert is set without option key",
            ),
            ("etcd://a:1?password=pw", "password option but no user"),
            ("etcd://a:1,u:p@b:2", "credentials"),
            ("etcd://:pw@a:1", "empty user name"),
        ] {
            let err = EtcdConfig::from_url(url).expect_err(url);
            assert_eq!(err.kind(), ErrorKind::InvalidConfig, "{url}");
            assert_eq!(err.store(), Some("etcd"), "{url}");
            assert!(
                err.to_string().contains(needle),
                "error for {url:?} should contain {needle:?}: {err}"
            );
        }
    }

    #[test]
    fn endpoint_lists_are_validated() {
        let c = EtcdConfig::new(["http://a:1", "b:2"]).expect("list");
        assert_eq!(c.endpoints(), ["a:1", "b:2"]);
        assert!(c.tls().is_none());
        let c = EtcdConfig::new(["https://a:1"]).expect("https");
        assert!(c.tls().is_some());
        let err = EtcdConfig::new(["http://a:1", "https://b:2"]).expect_err("mixed");
        assert!(err.to_string().contains("mixes http and https"), "{err}");
        let err = EtcdConfig::new(Vec::<String>::new()).expect_err("empty");
        assert!(err.to_string().contains("no etcd endpoint"), "{err}");
        let err = EtcdConfig::new(["a:1", "b:-3"]).expect_err("bad port");
        assert!(err.to_string().contains("endpoint 2"), "{err}");
    }

    #[test]
    fn passwords_never_show_in_debug_or_errors() {
        const PW: &str = "hunter2-very-secret";
        let c = EtcdConfig::from_url(&format!("etcd://root:{PW}@h:1")).expect("url");
        let dbg = format!("{c:?}");
        assert!(!dbg.contains(PW), "{dbg}");
        assert!(dbg.contains("root") && dbg.contains("redacted"), "{dbg}");
        let c = EtcdConfig::new(["h:1"]).expect("cfg").with_user("u", PW);
        assert!(!format!("{c:?}").contains(PW));
        assert!(!format!("{:#?}", c).contains(PW));

        // Errors about other parts of a URL with a password never echo it.
        for url in [
            format!("etcd://root:{PW}@h:99999"),
            format!("etcd://root:{PW}@h:1?bogus=1"),
            format!("etcd://h:1?user=u&password={PW}&tls=maybe"),
            format!("etcd://root:{PW}@h:1/path"),
            format!("etcd://u:{PW}@h:1?password=again"),
            format!("etcd://root:{PW}%ff@h:1"),
            format!("etcd://h:1?user=u&password={PW}%ff"),
            format!("mongodb://root:{PW}@h:1"),
            format!("etcd://root:{PW}@h:1?request_timeout=soon"),
        ] {
            let err = EtcdConfig::from_url(&url).expect_err(&url);
            assert!(!err.to_string().contains(PW), "{err}");
            assert!(!format!("{err:?}").contains(PW), "{err:?}");
        }
    }

    #[test]
    fn tls_files_are_checked_when_parsed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "not a certificate").expect("write");
        let err = EtcdConfig::from_url(&format!("etcds://h:1?ca={}", junk.display()))
            .expect_err("junk ca");
        assert_eq!(err.kind(), ErrorKind::InvalidConfig);
        assert!(
            err.to_string().contains("holds no PEM certificate"),
            "{err}"
        );
    }

    #[test]
    fn timeouts_are_validated() {
        let c = EtcdConfig::new(["h:1"]).expect("cfg");
        assert!(c.validate().is_ok());
        let err = c
            .clone()
            .with_request_timeout(Duration::ZERO)
            .validate()
            .expect_err("zero");
        assert!(err.to_string().contains("request_timeout"), "{err}");
        assert_eq!(err.store(), Some("etcd"));
        let err = c
            .with_connect_timeout(Duration::from_secs(7200))
            .validate()
            .expect_err("two hours");
        assert!(err.to_string().contains("connect_timeout"), "{err}");
        let err = EtcdConfig::from_url("etcd://h:1?request_timeout=0")
            .and_then(crate::EtcdStore::new)
            .expect_err("zero through the URL");
        assert!(err.to_string().contains("request_timeout"), "{err}");
    }
}
