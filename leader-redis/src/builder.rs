//! [`RedisStoreBuilder`]: timeouts, replica acknowledgement, TLS CA and
//! watch settings for a [`RedisStore`].

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use leader_core::{Error, Result};

use crate::config::RedisConfig;
use crate::conn::Connector;
use crate::expiry::ExpiryNotifications;
use crate::store::{Inner, RedisStore};
use crate::subscriptions::Subscriptions;

/// Default time to open a connection (and, for Sentinel, to ask the sentinels).
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Default time to wait for the reply to one operation.
pub const DEFAULT_RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);
/// Default interval of the pub/sub connection's liveness ping.
pub const DEFAULT_WATCH_HEARTBEAT: Duration = Duration::from_secs(5);

/// Default interval of the Sentinel master-change check.
pub const DEFAULT_SENTINEL_CHECK: Duration = Duration::from_secs(1);

/// Replica acknowledgement after acquire: see [`RedisStoreBuilder::wait_replicas`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WaitReplicas {
    /// How many replicas must acknowledge the acquisition.
    pub replicas: u32,
    /// How long to wait for them.
    pub timeout: Duration,
}

/// Builds a [`RedisStore`]. Nothing connects until the first operation.
#[must_use]
pub struct RedisStoreBuilder {
    config: Result<RedisConfig>,
    connect_timeout: Option<Duration>,
    response_timeout: Option<Duration>,
    wait_replicas: Option<WaitReplicas>,
    ca_file: Option<PathBuf>,
    watch_heartbeat: Duration,
    sentinel_check: Duration,
    expiry_notifications: ExpiryNotifications,
}

impl fmt::Debug for RedisStoreBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStoreBuilder")
            .field("config", &self.config.as_ref().ok())
            .field("connect_timeout", &self.connect_timeout)
            .field("response_timeout", &self.response_timeout)
            .field("wait_replicas", &self.wait_replicas)
            .field("ca_file", &self.ca_file)
            .finish_non_exhaustive()
    }
}

impl RedisStoreBuilder {
    /// A builder with default settings for `config` (a parse error is
    /// reported by [`RedisStoreBuilder::build`]).
    pub(crate) fn new(config: Result<RedisConfig>) -> Self {
        RedisStoreBuilder {
            config,
            connect_timeout: None,
            response_timeout: None,
            wait_replicas: None,
            ca_file: None,
            watch_heartbeat: DEFAULT_WATCH_HEARTBEAT,
            sentinel_check: DEFAULT_SENTINEL_CHECK,
            expiry_notifications: ExpiryNotifications::default(),
        }
    }

    /// Time allowed to open a connection (default 2 s, or the string's
    /// `connectTimeout`). A connect failure is `Unavailable`.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = Some(timeout);
        self
    }

    /// Time allowed for the reply to one operation (default 2 s, or the
    /// string's `syncTimeout`). Past it the outcome is unknown: the call
    /// fails `Indeterminate` and the connection is replaced.
    ///
    /// Set it below the elector's renewal interval (the facade passes the
    /// renewal interval, or a fraction of the renew deadline), so that a
    /// hung renewal fails in time to be retried before the deadline.
    pub fn response_timeout(mut self, timeout: Duration) -> Self {
        self.response_timeout = Some(timeout);
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
    /// `timeout` must be below the response timeout (the request timeout the
    /// elector bounds each acquire by); [`RedisStoreBuilder::build`] refuses
    /// it otherwise.
    pub fn wait_replicas(mut self, replicas: u32, timeout: Duration) -> Self {
        self.wait_replicas = Some(WaitReplicas { replicas, timeout });
        self
    }

    /// Trusts the CA certificates in this PEM file for TLS (implies TLS).
    pub fn ca_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.ca_file = Some(path.into());
        self
    }

    /// Interval at which the store's shared pub/sub connection is pinged
    /// (and channels nobody watches any more are unsubscribed); a failed
    /// ping ends every watch (`recv()` returns `None`). Default 5 s.
    pub fn watch_heartbeat(mut self, interval: Duration) -> Self {
        self.watch_heartbeat = interval;
        self
    }

    /// Whether followers use the server's expired-key events instead of
    /// polling for a crashed leader's lease to run out (default
    /// [`ExpiryNotifications::Detect`]: when `CONFIG GET
    /// notify-keyspace-events` shows them enabled). The library never
    /// changes the server's configuration.
    pub fn expiry_notifications(mut self, mode: ExpiryNotifications) -> Self {
        self.expiry_notifications = mode;
        self
    }

    /// With Sentinel: how often the sentinels are asked whether the master
    /// moved while the connection to the old one still works (default 1 s).
    /// Connection errors and `READONLY` replies re-resolve at once anyway.
    pub fn sentinel_check_interval(mut self, interval: Duration) -> Self {
        self.sentinel_check = interval;
        self
    }

    /// Builds the store without connecting.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidConfig`](leader_core::ErrorKind::InvalidConfig)
    /// for a malformed connection string, zero timeouts, a `WAIT` timeout not
    /// below the response timeout or an unreadable CA file. Never an error
    /// because Redis is down.
    pub fn build(self) -> Result<RedisStore> {
        let mut config = self.config?;
        if let Some(path) = self.ca_file {
            config = config.with_ca_file(path);
        }
        let connect_timeout = self
            .connect_timeout
            .or(config.connect_timeout())
            .unwrap_or(DEFAULT_CONNECT_TIMEOUT);
        let response_timeout = self
            .response_timeout
            .or(config.response_timeout())
            .unwrap_or(DEFAULT_RESPONSE_TIMEOUT);
        for (name, value) in [
            ("connect timeout", connect_timeout),
            ("response timeout", response_timeout),
            ("watch heartbeat", self.watch_heartbeat),
            ("sentinel check interval", self.sentinel_check),
        ] {
            if value.is_zero() {
                return Err(
                    Error::invalid_config(format!("the {name} must not be zero"))
                        .with_store("redis"),
                );
            }
        }
        if let Some(w) = self.wait_replicas
            && (w.replicas == 0 || w.timeout.is_zero())
        {
            return Err(Error::invalid_config(
                "wait_replicas needs at least one replica and a non-zero timeout",
            )
            .with_store("redis"));
        }
        // The caller bounds the whole acquire (script and WAIT) by its
        // request timeout, which the response timeout is set to: a WAIT as
        // long would be cut off before it could answer or release.
        if let Some(w) = self.wait_replicas
            && w.timeout >= response_timeout
        {
            return Err(Error::invalid_config(format!(
                "wait_replicas: the WAIT timeout ({:?}) must be below the response timeout \
                 ({response_timeout:?}; RequestTimeoutSeconds when built through the facade)",
                w.timeout
            ))
            .with_store("redis"));
        }
        let connector = Arc::new(Connector::new(
            &config,
            connect_timeout,
            response_timeout,
            self.sentinel_check,
        )?);
        let subscriptions = Subscriptions::new(
            connector.clone(),
            response_timeout,
            self.watch_heartbeat,
            self.expiry_notifications,
            config.db(),
        );
        Ok(RedisStore::from_inner(Inner {
            connector,
            response_timeout,
            wait_replicas: self.wait_replicas,
            subscriptions,
        }))
    }
}
