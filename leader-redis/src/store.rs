//! [`RedisStore`]: the [`LeaseStore`] on Redis (single server, TLS,
//! Sentinel, Cluster).

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use leader_core::turns::Turns;
use leader_core::{
    Acquire, Capabilities, Error, FencingSource, FencingToken, HolderId, Lease, LeaseEvents,
    LeaseInfo, LeaseKey, LeaseStore, Metadata, NotificationSupport, Result, check_ttl,
};
use redis::{RedisResult, Value};

use crate::config::{RedisConfig, WaitReplicas};
use crate::conn::{Conn, Connector};
use crate::keys::KeyLayout;
use crate::metadata;
use crate::reply::{as_array, as_info, as_int, as_optional_info, as_token, ms_ceil, protocol};
use crate::scripts;
use crate::subscriptions::Subscriptions;

/// The shared state of a store and its clones.
struct Inner {
    connector: Arc<Connector>,
    config: RedisConfig,
    /// The one pub/sub connection every watch of this store shares.
    subscriptions: Subscriptions,
    /// One acquisition per lease key at a time; followers woken together
    /// share the answer of the one in flight (see [`leader_core::turns`]).
    turns: Turns,
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
            .field("request_timeout", &self.inner.config.request_timeout())
            .field("wait_replicas", &self.inner.config.wait_replicas())
            .finish_non_exhaustive()
    }
}

impl RedisStore {
    /// A store for `config`. Does not connect: the connection is made on
    /// first use, so this succeeds while Redis is down.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidConfig`](leader_core::ErrorKind::InvalidConfig)
    /// as [`RedisConfig::validate`] reports it, or for an unreadable CA
    /// file. Never an error because Redis is down.
    pub fn new(config: RedisConfig) -> Result<Self> {
        config.validate()?;
        let connector = Arc::new(Connector::new(
            &config,
            config.connect_timeout(),
            config.request_timeout(),
            config.sentinel_check_interval(),
        )?);
        let subscriptions = Subscriptions::new(
            connector.clone(),
            config.request_timeout(),
            config.watch_heartbeat(),
            config.expiry_notifications(),
            config.db(),
        );
        Ok(RedisStore {
            inner: Arc::new(Inner {
                connector,
                config,
                subscriptions,
                turns: Turns::new(),
            }),
        })
    }

    /// A store for a `redis://` / `rediss://` URL or a comma-separated
    /// connection string; see [`RedisConfig::from_url`].
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidConfig`](leader_core::ErrorKind::InvalidConfig)
    /// naming the bad part (never the password).
    pub fn from_url(url: &str) -> Result<Self> {
        Self::new(RedisConfig::from_url(url)?)
    }

    /// The settings this store was built with.
    pub fn config(&self) -> &RedisConfig {
        &self.inner.config
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
        self.run_for(op, key, self.inner.config.request_timeout(), f)
            .await
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
        self.inner
            .connector
            .run(op, limit, f)
            .await
            .map_err(|e| e.with_key(key.as_str()))
    }

    /// One acquire script: takes the lease with `metadata` (or none, which
    /// clears the last term's) in the same step.
    async fn take(
        &self,
        key: &LeaseKey,
        holder: &HolderId,
        ttl: Duration,
        metadata: Option<&Metadata>,
    ) -> Result<Acquire> {
        check_ttl(ttl)?;
        let op = if metadata.is_some() {
            "acquire_with_metadata"
        } else {
            "acquire"
        };
        let layout = self.checked_layout(key, op)?;
        // Followers woken together by a release take turns: the first takes
        // the seat, the next finds it taken, the others share that answer.
        let turn = self.inner.turns.take(&layout.lease, holder).await;
        if let Some(info) = turn.shared() {
            return Ok(Acquire::Held(info));
        }
        let reply: Value = {
            let (lease_key, term, counter) = (
                layout.lease.clone(),
                layout.term.clone(),
                layout.counter.clone(),
            );
            let (holder, ms) = (holder.as_str().to_owned(), ms_ceil(ttl));
            let meta = metadata::encode(metadata);
            self.run(op, key, |mut conn| async move {
                scripts::acquire()
                    .key(lease_key)
                    .key(term)
                    .key(counter)
                    .arg(holder)
                    .arg(ms)
                    .arg(meta)
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
                let [token] = rest else {
                    return Err(protocol(op, "expected the token of the new term"));
                };
                let token = as_token(op, token)?;
                if token.0 == 0 {
                    return Err(protocol(op, "the acquire script minted token 0"));
                }
                let lease = Lease::new(key.clone(), holder.clone(), token, ttl);
                if let Some(wait) = self.inner.config.wait_replicas() {
                    self.replicate(&lease, &layout, wait).await?;
                }
                Ok(Acquire::Acquired(lease))
            }
            0 => Ok(turn.held(as_info(op, rest)?)),
            _ => Err(protocol(op, "unknown acquire flag")),
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
                wait.timeout + self.inner.config.request_timeout(),
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
        // Expiries are pushed only while the shared subscription is up on a
        // server that publishes them (see `ExpiryNotifications`).
        let notifications = if self.inner.subscriptions.pushes_expiries() {
            NotificationSupport::ReleaseAndExpiry
        } else {
            NotificationSupport::Release
        };
        Capabilities::new(FencingSource::Counter)
            .with_notifications(notifications)
            .with_metadata()
            .with_resign_requests()
    }

    async fn acquire(&self, key: &LeaseKey, holder: &HolderId, ttl: Duration) -> Result<Acquire> {
        self.take(key, holder, ttl, None).await
    }

    async fn acquire_with_metadata(
        &self,
        key: &LeaseKey,
        holder: &HolderId,
        ttl: Duration,
        metadata: &Metadata,
    ) -> Result<Acquire> {
        self.take(key, holder, ttl, Some(metadata)).await
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
            0 => Err(not_holder(lease, op)),
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

    async fn update_metadata(&self, lease: &Lease, metadata: &Metadata) -> Result<()> {
        let op = "update_metadata";
        let layout = self.checked_layout(&lease.key, op)?;
        let (holder, token, meta) = (
            lease.holder.as_str().to_owned(),
            lease.token.0,
            metadata::encode(Some(metadata)),
        );
        let reply: Value = self
            .run(op, &lease.key, |mut conn| async move {
                scripts::update_metadata()
                    .key(layout.lease)
                    .key(layout.term)
                    .key(layout.counter)
                    .arg(holder)
                    .arg(token)
                    .arg(meta)
                    .arg(layout.channel)
                    .invoke_async(&mut conn)
                    .await
            })
            .await?;
        match as_int(op, &reply, "update_metadata result")? {
            1 => Ok(()),
            0 => Err(not_holder(lease, op)),
            _ => Err(protocol(op, "unknown update_metadata result")),
        }
    }

    async fn request_resign(&self, key: &LeaseKey, token: FencingToken) -> Result<bool> {
        let op = "request_resign";
        let layout = self.checked_layout(key, op)?;
        let reply: Value = self
            .run(op, key, |mut conn| async move {
                scripts::request_resign()
                    .key(layout.lease)
                    .key(layout.term)
                    .key(layout.counter)
                    .arg(token.0)
                    .arg(layout.channel)
                    .invoke_async(&mut conn)
                    .await
            })
            .await?;
        match as_int(op, &reply, "request_resign result")? {
            1 => Ok(true),
            0 => Ok(false),
            _ => Err(protocol(op, "unknown request_resign result")),
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
        as_optional_info(op, reply)
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
        as_optional_info(op, reply)
    }

    async fn watch(&self, key: &LeaseKey) -> Result<LeaseEvents> {
        let layout = self.checked_layout(key, "watch")?;
        self.inner
            .subscriptions
            .watch(&layout)
            .await
            .map_err(|e| e.with_key(key.as_str()))
    }
}

/// The lost-lease error of renew and update_metadata.
fn not_holder(lease: &Lease, op: &'static str) -> Error {
    Error::not_holder(format!(
        "lease with token {} is no longer held by {}",
        lease.token, lease.holder
    ))
    .with_store("redis")
    .with_operation(op)
    .with_key(lease.key.as_str())
}
