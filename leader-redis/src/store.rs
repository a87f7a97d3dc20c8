//! [`RedisStore`]: the [`LeaseStore`] on Redis (single server, TLS,
//! Sentinel, Cluster).

use std::fmt;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use leader_core::{
    Acquire, Capabilities, Error, FencingSource, FencingToken, HolderId, Lease, LeaseEvents,
    LeaseInfo, LeaseKey, LeaseStore, NotificationSupport, Result, check_ttl,
};
use redis::{RedisResult, Value};

use crate::config::RedisConfig;
use crate::conn::{Conn, Connector};
use crate::keys::KeyLayout;
use crate::scripts;
use crate::watch;

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
    pub fn wait_replicas(mut self, replicas: u32, timeout: Duration) -> Self {
        self.wait_replicas = Some(WaitReplicas { replicas, timeout });
        self
    }

    /// Trusts the CA certificates in this PEM file for TLS (implies TLS).
    pub fn ca_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.ca_file = Some(path.into());
        self
    }

    /// Interval at which a watch's pub/sub connection is pinged; a failed
    /// ping ends the watch (`recv()` returns `None`). Default 5 s.
    pub fn watch_heartbeat(mut self, interval: Duration) -> Self {
        self.watch_heartbeat = interval;
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
    /// for a malformed connection string, zero timeouts or an unreadable CA
    /// file. Never an error because Redis is down.
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
        let connector = Arc::new(Connector::new(
            &config,
            connect_timeout,
            response_timeout,
            self.sentinel_check,
        )?);
        Ok(RedisStore {
            inner: Arc::new(Inner {
                connector,
                response_timeout,
                wait_replicas: self.wait_replicas,
                watch_heartbeat: self.watch_heartbeat,
            }),
        })
    }
}

struct Inner {
    connector: Arc<Connector>,
    response_timeout: Duration,
    wait_replicas: Option<WaitReplicas>,
    watch_heartbeat: Duration,
}

/// Leases on Redis. Cheap to clone; clones share connections.
///
/// See the crate documentation for the key layout and the guarantees.
#[derive(Clone)]
pub struct RedisStore {
    inner: Arc<Inner>,
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("target", &self.inner.connector.description())
            .field("response_timeout", &self.inner.response_timeout)
            .field("wait_replicas", &self.inner.wait_replicas)
            .finish_non_exhaustive()
    }
}

/// Marks the connection as abandoned when dropped while armed.
struct InFlight<'a> {
    connector: &'a Connector,
    generation: u64,
    armed: bool,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.connector.abandon(self.generation);
        }
    }
}

fn protocol(operation: &'static str, what: impl Into<String>) -> Error {
    Error::protocol(what)
        .with_store("redis")
        .with_operation(operation)
}

fn ms_ceil(ttl: Duration) -> u64 {
    // Round up: the server must never expire the lease before the TTL the
    // elector computes its validity from.
    let ms = ttl.as_nanos().div_ceil(1_000_000);
    u64::try_from(ms).unwrap_or(u64::MAX)
}

fn as_text(op: &'static str, v: &Value, what: &str) -> Result<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b.clone())
            .map_err(|_| protocol(op, format!("the {what} is not UTF-8"))),
        Value::SimpleString(s) => Ok(s.clone()),
        Value::Int(i) => Ok(i.to_string()),
        _ => Err(protocol(op, format!("the {what} is not a string"))),
    }
}

fn as_int(op: &'static str, v: &Value, what: &str) -> Result<i64> {
    match v {
        Value::Int(i) => Ok(*i),
        other => as_text(op, other, what)?
            .parse()
            .map_err(|_| protocol(op, format!("the {what} is not an integer"))),
    }
}

/// A token read back from the term record; an empty string (a holder set by
/// something other than this library, e.g. `redis-cli SET`) reads as 0.
fn as_token(op: &'static str, v: &Value) -> Result<FencingToken> {
    let text = as_text(op, v, "fencing token")?;
    if text.is_empty() {
        return Ok(FencingToken(0));
    }
    text.parse::<u64>()
        .map(FencingToken)
        .map_err(|_| protocol(op, "the fencing token is not a non-negative integer"))
}

fn as_remaining(op: &'static str, v: &Value) -> Result<Option<Duration>> {
    let pttl = as_int(op, v, "remaining TTL")?;
    // -1: the key has no TTL (set by hand); never "expires".
    Ok(u64::try_from(pttl).ok().map(Duration::from_millis))
}

/// Parses `{holder, token, pttl}` (the tail of acquire's reply, or current's).
fn as_info(op: &'static str, items: &[Value]) -> Result<LeaseInfo> {
    let [holder, token, pttl] = items else {
        return Err(protocol(op, "expected holder, token and TTL"));
    };
    let holder = HolderId::new(as_text(op, holder, "holder id")?)
        .map_err(|e| protocol(op, "the stored holder id is not valid").with_source(e))?;
    Ok(LeaseInfo::new(
        holder,
        as_token(op, token)?,
        as_remaining(op, pttl)?,
    ))
}

fn as_array(op: &'static str, v: Value) -> Result<Vec<Value>> {
    match v {
        Value::Array(items) => Ok(items),
        Value::Nil => Ok(Vec::new()),
        _ => Err(protocol(op, "expected an array reply")),
    }
}

impl RedisStore {
    /// A store for `connection` (a `redis://` URL or a comma-separated
    /// string, see [`RedisConfig`]) with default settings. Does not connect.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidConfig`](leader_core::ErrorKind::InvalidConfig)
    /// for a malformed connection string.
    pub fn new(connection: &str) -> Result<Self> {
        Self::builder(connection).build()
    }

    /// A builder for `connection`; parse errors surface from `build`.
    pub fn builder(connection: &str) -> RedisStoreBuilder {
        Self::builder_from_config(RedisConfig::parse(connection))
    }

    /// A builder from an already parsed configuration.
    pub fn builder_from(config: RedisConfig) -> RedisStoreBuilder {
        Self::builder_from_config(Ok(config))
    }

    fn builder_from_config(config: Result<RedisConfig>) -> RedisStoreBuilder {
        RedisStoreBuilder {
            config,
            connect_timeout: None,
            response_timeout: None,
            wait_replicas: None,
            ca_file: None,
            watch_heartbeat: DEFAULT_WATCH_HEARTBEAT,
            sentinel_check: DEFAULT_SENTINEL_CHECK,
        }
    }

    /// The response timeout in effect.
    pub fn response_timeout(&self) -> Duration {
        self.inner.response_timeout
    }

    /// The keys a lease on `key` uses.
    pub fn layout(&self, key: &LeaseKey) -> KeyLayout {
        KeyLayout::new(key.as_str())
    }

    fn checked_layout(&self, key: &LeaseKey, op: &'static str) -> Result<KeyLayout> {
        let layout = KeyLayout::new(key.as_str());
        if self.inner.connector.is_cluster() && !layout.same_slot {
            return Err(Error::invalid_name(
                "on Redis Cluster a lease key containing '}' needs a non-empty hash tag \
                 ({tag}) so that its token counter can share its slot",
            )
            .with_store("redis")
            .with_operation(op)
            .with_key(key.as_str()));
        }
        Ok(layout)
    }

    /// Runs one command exchange under the response timeout, classifying
    /// failures and replacing broken connections.
    async fn run<T, F, Fut>(&self, op: &'static str, key: &LeaseKey, f: F) -> Result<T>
    where
        F: FnOnce(Conn) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        self.run_for(op, key, self.inner.response_timeout, f).await
    }

    async fn run_for<T, F, Fut>(
        &self,
        op: &'static str,
        key: &LeaseKey,
        limit: Duration,
        f: F,
    ) -> Result<T>
    where
        F: FnOnce(Conn) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        let connector = &self.inner.connector;
        let (generation, conn) = connector
            .get(op)
            .await
            .map_err(|e| e.with_key(key.as_str()))?;
        // If the caller drops this future before the reply (its own
        // timeout), the connection may be hung: have the next call replace it.
        let mut in_flight = InFlight {
            connector,
            generation,
            armed: true,
        };
        let outcome = tokio::time::timeout(limit, f(conn)).await;
        in_flight.armed = false;
        match outcome {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(connector
                .fail(generation, e, op)
                .await
                .with_key(key.as_str())),
            Err(_) => Err(connector
                .timed_out(generation, op, limit)
                .await
                .with_key(key.as_str())),
        }
    }

    async fn replicate(&self, lease: &Lease, layout: &KeyLayout, wait: WaitReplicas) -> Result<()> {
        let op = "acquire";
        let timeout_ms = ms_ceil(wait.timeout);
        let lease_key = layout.lease.clone();
        let acked = self
            .run_for(
                op,
                &lease.key,
                wait.timeout + self.inner.response_timeout,
                |conn| async move {
                    let mut cmd = redis::cmd("WAIT");
                    cmd.arg(wait.replicas).arg(timeout_ms);
                    match conn {
                        Conn::Single(mut c) => cmd.query_async::<i64>(&mut c).await,
                        Conn::Cluster(mut c) => {
                            use redis::cluster_routing::{
                                Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr,
                            };
                            // WAIT counts the acknowledgements of the node that
                            // took the write: route it by the lease key.
                            let route =
                                RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(
                                    Route::with_key(lease_key.as_bytes(), SlotAddr::Master),
                                ));
                            let v = c.route_command(cmd, route).await?;
                            redis::from_redis_value::<i64>(v).map_err(Into::into)
                        }
                    }
                },
            )
            .await?;
        if acked >= i64::from(wait.replicas) {
            return Ok(());
        }
        tracing::warn!(
            target: "leader_redis",
            key = %lease.key, acked, wanted = wait.replicas,
            "too few replicas acknowledged the acquisition; releasing it"
        );
        match self.release(lease).await {
            Ok(_) => Err(Error::unavailable(format!(
                "only {acked} of {} replicas acknowledged the acquisition within {:?}; \
                 the lease was released",
                wait.replicas, wait.timeout
            ))
            .with_store("redis")
            .with_operation(op)
            .with_key(lease.key.as_str())),
            Err(e) => Err(Error::indeterminate(format!(
                "only {acked} of {} replicas acknowledged the acquisition and releasing it \
                 failed; the lease may be held until it expires",
                wait.replicas
            ))
            .with_store("redis")
            .with_operation(op)
            .with_key(lease.key.as_str())
            .with_source(e)),
        }
    }
}

#[async_trait]
impl LeaseStore for RedisStore {
    fn kind(&self) -> &'static str {
        "redis"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::new(FencingSource::Counter).with_notifications(NotificationSupport::Release)
    }

    async fn acquire(&self, key: &LeaseKey, holder: &HolderId, ttl: Duration) -> Result<Acquire> {
        check_ttl(ttl)?;
        let op = "acquire";
        let layout = self.checked_layout(key, op)?;
        let reply: Value = {
            let (lease_key, term, counter) = (
                layout.lease.clone(),
                layout.term.clone(),
                layout.counter.clone(),
            );
            let (holder, ms) = (holder.as_str().to_owned(), ms_ceil(ttl));
            self.run(op, key, |mut conn| async move {
                scripts::acquire()
                    .key(lease_key)
                    .key(term)
                    .key(counter)
                    .arg(holder)
                    .arg(ms)
                    .invoke_async(&mut conn)
                    .await
            })
            .await?
        };
        let items = as_array(op, reply)?;
        let Some((flag, rest)) = items.split_first() else {
            return Err(protocol(op, "empty reply from the acquire script"));
        };
        match as_int(op, flag, "acquire flag")? {
            1 => {
                let info = as_info(op, rest)?;
                if &info.holder != holder || info.token.0 == 0 {
                    return Err(protocol(op, "the acquire script returned a foreign term"));
                }
                let lease = Lease::new(key.clone(), holder.clone(), info.token, ttl);
                if let Some(wait) = self.inner.wait_replicas {
                    self.replicate(&lease, &layout, wait).await?;
                }
                Ok(Acquire::Acquired(lease))
            }
            0 => Ok(Acquire::Held(as_info(op, rest)?)),
            _ => Err(protocol(op, "unknown acquire flag")),
        }
    }

    async fn renew(&self, lease: &Lease) -> Result<()> {
        check_ttl(lease.ttl)?;
        let op = "renew";
        let layout = self.checked_layout(&lease.key, op)?;
        let (holder, ms, token) = (
            lease.holder.as_str().to_owned(),
            ms_ceil(lease.ttl),
            lease.token.0,
        );
        let reply: Value = self
            .run(op, &lease.key, |mut conn| async move {
                scripts::renew()
                    .key(layout.lease)
                    .key(layout.term)
                    .key(layout.counter)
                    .arg(holder)
                    .arg(ms)
                    .arg(token)
                    .invoke_async(&mut conn)
                    .await
            })
            .await?;
        match as_int(op, &reply, "renew result")? {
            1 => Ok(()),
            0 => Err(Error::not_holder(format!(
                "lease with token {} is no longer held by {}",
                lease.token, lease.holder
            ))
            .with_store("redis")
            .with_operation(op)
            .with_key(lease.key.as_str())),
            _ => Err(protocol(op, "unknown renew result")),
        }
    }

    async fn release(&self, lease: &Lease) -> Result<bool> {
        let op = "release";
        let layout = self.checked_layout(&lease.key, op)?;
        let (holder, token) = (lease.holder.as_str().to_owned(), lease.token.0);
        let reply: Value = self
            .run(op, &lease.key, |mut conn| async move {
                scripts::release()
                    .key(layout.lease)
                    .key(layout.term)
                    .key(layout.counter)
                    .arg(holder)
                    .arg(token)
                    .arg(layout.channel)
                    .invoke_async(&mut conn)
                    .await
            })
            .await?;
        match as_int(op, &reply, "release result")? {
            1 => Ok(true),
            0 => Ok(false),
            _ => Err(protocol(op, "unknown release result")),
        }
    }

    async fn current(&self, key: &LeaseKey) -> Result<Option<LeaseInfo>> {
        let op = "current";
        let layout = self.checked_layout(key, op)?;
        let reply: Value = self
            .run(op, key, |mut conn| async move {
                scripts::current()
                    .key(layout.lease)
                    .key(layout.term)
                    .key(layout.counter)
                    .invoke_async(&mut conn)
                    .await
            })
            .await?;
        let items = as_array(op, reply)?;
        if items.is_empty() {
            return Ok(None);
        }
        as_info(op, &items).map(Some)
    }

    async fn force_release(&self, key: &LeaseKey) -> Result<Option<LeaseInfo>> {
        let op = "force_release";
        let layout = self.checked_layout(key, op)?;
        let reply: Value = self
            .run(op, key, |mut conn| async move {
                scripts::force_release()
                    .key(layout.lease)
                    .key(layout.term)
                    .key(layout.counter)
                    .arg(layout.channel)
                    .invoke_async(&mut conn)
                    .await
            })
            .await?;
        let items = as_array(op, reply)?;
        if items.is_empty() {
            return Ok(None);
        }
        as_info(op, &items).map(Some)
    }

    async fn watch(&self, key: &LeaseKey) -> Result<LeaseEvents> {
        let layout = self.checked_layout(key, "watch")?;
        watch::subscribe(
            &self.inner.connector,
            layout.channel,
            self.inner.response_timeout,
            self.inner.watch_heartbeat,
        )
        .await
        .map_err(|e| e.with_key(key.as_str()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttls_round_up_to_whole_milliseconds() {
        assert_eq!(ms_ceil(Duration::from_micros(1500)), 2);
        assert_eq!(ms_ceil(Duration::from_millis(30_000)), 30_000);
        assert_eq!(ms_ceil(Duration::from_nanos(1)), 1);
    }

    #[test]
    fn foreign_holders_without_a_term_read_as_token_zero() {
        let info = as_info(
            "current",
            &[
                Value::BulkString(b"someone".to_vec()),
                Value::BulkString(Vec::new()),
                Value::Int(-1),
            ],
        )
        .expect("valid reply");
        assert_eq!(info.token, FencingToken(0));
        assert_eq!(info.remaining, None);
    }

    #[test]
    fn garbage_replies_are_protocol_errors() {
        let err = as_info("current", &[Value::Int(1)]).expect_err("short reply");
        assert_eq!(err.kind(), leader_core::ErrorKind::Protocol);
        let err = as_token("current", &Value::BulkString(b"-3".to_vec())).expect_err("negative");
        assert_eq!(err.kind(), leader_core::ErrorKind::Protocol);
    }
}
