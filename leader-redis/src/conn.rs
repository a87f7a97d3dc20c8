//! Lazy, self-healing connections for the three topologies.
//!
//! Nothing connects when the store is built, so an application starts while
//! Redis is down. The first operation connects; an operation that finds the
//! connection broken (I/O error, timeout, `READONLY` from a demoted master)
//! drops it, and the next operation connects again, re-resolving the master
//! through the sentinels first. We do this ourselves rather than with
//! `ConnectionManager` so that a failure to connect (nothing sent:
//! `Unavailable`) stays distinguishable from a failure after sending
//! (`Indeterminate`), and so that Sentinel re-resolution happens at all.

use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use leader_core::{Error, ErrorKind, Result};
use redis::aio::{ConnectionLike, MultiplexedConnection, PubSub};
use redis::cluster_async::ClusterConnection;
use redis::{AsyncConnectionConfig, Cmd, RedisFuture, RedisResult, Value};
use tokio::sync::Mutex;

use crate::clients::{Target, build_target};
use crate::config::RedisConfig;
use crate::error::{ConnAction, Phase, classify, to_error};

/// One live connection: a multiplexed connection to a server (single or
/// Sentinel master) or a cluster connection. Cheap to clone.
#[derive(Clone)]
pub(crate) enum Conn {
    Single(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

struct Live {
    generation: u64,
    conn: Conn,
    /// For Sentinel: the master this connection goes to, as `host:port`.
    master: Option<String>,
}

/// Connects on demand and reconnects after failures.
pub(crate) struct Connector {
    target: Target,
    description: String,
    connect_timeout: Duration,
    live: Mutex<Option<Live>>,
    next_generation: AtomicU64,
    /// How often the sentinels are asked whether the master moved.
    sentinel_check: Duration,
    /// Whether the master-change check task runs.
    checking: AtomicBool,
    /// Bumped whenever the Sentinel master changes, so that subscriptions
    /// on the old master end (their publisher is gone).
    master_epoch: tokio::sync::watch::Sender<u64>,
    /// A connection generation whose command was abandoned mid-flight (the
    /// caller's future was dropped, e.g. by the elector's own timeout); the
    /// next `get` replaces it. 0: none (generations start at 1).
    abandoned: AtomicU64,
}

impl fmt::Debug for Connector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The description holds endpoints only; the redis crate's clients
        // (which hold the password) are deliberately not printed.
        f.debug_struct("Connector")
            .field("target", &self.description)
            .field("connect_timeout", &self.connect_timeout)
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

impl Connector {
    /// Builds clients without connecting.
    pub(crate) fn new(
        config: &RedisConfig,
        connect_timeout: Duration,
        request_timeout: Duration,
        sentinel_check: Duration,
    ) -> Result<Self> {
        let (target, description) = build_target(config, connect_timeout, request_timeout)?;
        Ok(Connector {
            target,
            description,
            connect_timeout,
            live: Mutex::new(None),
            next_generation: AtomicU64::new(1),
            sentinel_check,
            checking: AtomicBool::new(false),
            master_epoch: tokio::sync::watch::Sender::new(0),
            abandoned: AtomicU64::new(0),
        })
    }

    /// A receiver that changes whenever the Sentinel master changes.
    pub(crate) fn master_changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.master_epoch.subscribe()
    }

    /// Whether this is a cluster (keys must share a hash slot).
    pub(crate) fn is_cluster(&self) -> bool {
        matches!(self.target, Target::Cluster { .. })
    }

    /// A human description of the target (endpoints only, no credentials).
    pub(crate) fn description(&self) -> &str {
        &self.description
    }

    fn config(&self) -> AsyncConnectionConfig {
        // Response timeouts are applied by the store around each operation,
        // so the connection itself never times a command out.
        AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.connect_timeout))
            .set_response_timeout(None)
    }

    /// The current connection, connecting first if there is none.
    ///
    /// The lock is held while connecting so that concurrent callers share one
    /// attempt instead of stampeding a recovering server.
    pub(crate) async fn get(self: &Arc<Self>, operation: &'static str) -> Result<(u64, Conn)> {
        let mut live = self.live.lock().await;
        if let Some(l) = live.as_ref() {
            if self.abandoned.load(Ordering::SeqCst) != l.generation {
                return Ok((l.generation, l.conn.clone()));
            }
            tracing::debug!(target: "leader_redis", target_desc = %self.description, "replacing a connection with an abandoned command");
            *live = None;
        }
        let (conn, master) = match tokio::time::timeout(self.connect_timeout, self.connect()).await
        {
            Ok(Ok(conn)) => conn,
            Ok(Err(e)) => {
                let (kind, _) = classify(&e, Phase::Connect);
                return Err(to_error(e, kind, operation));
            }
            Err(_) => {
                return Err(Error::unavailable(format!(
                    "connecting to {} timed out after {:?}",
                    self.description, self.connect_timeout
                ))
                .with_store("redis")
                .with_operation(operation));
            }
        };
        let generation = self.next_generation.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(target: "leader_redis", target_desc = %self.description, "connected");
        if master.is_some() && !self.checking.swap(true, Ordering::SeqCst) {
            tokio::spawn(check_master(Arc::downgrade(self), self.sentinel_check));
        }
        *live = Some(Live {
            generation,
            conn: conn.clone(),
            master,
        });
        Ok((generation, conn))
    }

    /// Runs one command exchange on the current connection under `limit`,
    /// classifying failures and replacing broken connections.
    pub(crate) async fn run<T, F, Fut>(
        self: &Arc<Self>,
        op: &'static str,
        limit: Duration,
        f: F,
    ) -> Result<T>
    where
        F: FnOnce(Conn) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        let (generation, conn) = self.get(op).await?;
        // If the caller drops this future before the reply (its own
        // timeout), the connection may be hung: have the next call replace it.
        let mut in_flight = InFlight {
            connector: self,
            generation,
            armed: true,
        };
        let outcome = tokio::time::timeout(limit, f(conn)).await;
        in_flight.armed = false;
        match outcome {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(self.fail(generation, e, op).await),
            Err(_) => Err(self.timed_out(generation, op, limit).await),
        }
    }

    /// Connects; for Sentinel also returns the master's `host:port`.
    async fn connect(&self) -> std::result::Result<(Conn, Option<String>), redis::RedisError> {
        match &self.target {
            Target::Single(client) => Ok((
                Conn::Single(
                    client
                        .get_multiplexed_async_connection_with_config(&self.config())
                        .await?,
                ),
                None,
            )),
            Target::Sentinel { client, .. } => {
                // Asks the sentinels every time: after a failover the old
                // address is wrong, and the crate does not follow it.
                let client = client.lock().await.async_get_client().await?;
                let master = client.get_connection_info().addr().to_string();
                Ok((
                    Conn::Single(
                        client
                            .get_multiplexed_async_connection_with_config(&self.config())
                            .await?,
                    ),
                    Some(master),
                ))
            }
            Target::Cluster { client, .. } => {
                Ok((Conn::Cluster(client.get_async_connection().await?), None))
            }
        }
    }

    /// The master's `host:port` according to the first sentinel that
    /// answers, or `None` when none does.
    async fn reported_master(&self) -> Option<String> {
        let Target::Sentinel {
            sentinels,
            service_name,
            cached,
            ..
        } = &self.target
        else {
            return None;
        };
        let mut cached = cached.lock().await;
        let ask = |mut conn: MultiplexedConnection| async move {
            let mut cmd = redis::cmd("SENTINEL");
            cmd.arg("get-master-addr-by-name").arg(service_name);
            let query = cmd.query_async::<Option<(String, u16)>>(&mut conn);
            match tokio::time::timeout(self.connect_timeout, query).await {
                Ok(Ok(Some((host, port)))) => Some((conn, format!("{host}:{port}"))),
                _ => None,
            }
        };
        if let Some(conn) = cached.take()
            && let Some((conn, master)) = ask(conn).await
        {
            *cached = Some(conn);
            return Some(master);
        }
        for sentinel in sentinels {
            let config = self.config();
            let connect = sentinel.get_multiplexed_async_connection_with_config(&config);
            let Ok(Ok(conn)) = tokio::time::timeout(self.connect_timeout, connect).await else {
                continue;
            };
            if let Some((conn, master)) = ask(conn).await {
                *cached = Some(conn);
                return Some(master);
            }
        }
        None
    }

    /// Marks connection `generation` as suspect: a command on it was
    /// abandoned before its reply (the connection may be hung). Synchronous,
    /// for use in `Drop`.
    pub(crate) fn abandon(&self, generation: u64) {
        self.abandoned.store(generation, Ordering::SeqCst);
    }

    /// Drops connection `generation` if it is still the current one, so the
    /// next operation connects (and re-resolves) again.
    pub(crate) async fn invalidate(&self, generation: u64) {
        let mut live = self.live.lock().await;
        if live.as_ref().is_some_and(|l| l.generation == generation) {
            tracing::debug!(target: "leader_redis", target_desc = %self.description, "dropping broken connection");
            *live = None;
        }
    }

    /// Handles a command error: drops the connection when it is broken and
    /// returns the classified error.
    pub(crate) async fn fail(
        &self,
        generation: u64,
        err: redis::RedisError,
        operation: &'static str,
    ) -> Error {
        let (kind, action) = classify(&err, Phase::Command);
        if action == ConnAction::Reconnect {
            self.invalidate(generation).await;
        }
        to_error(err, kind, operation)
    }

    /// Handles an operation that exceeded its response timeout: the outcome
    /// is unknown, and the connection may be hung, so it is dropped.
    pub(crate) async fn timed_out(
        &self,
        generation: u64,
        operation: &'static str,
        after: Duration,
    ) -> Error {
        self.invalidate(generation).await;
        Error::indeterminate(format!("no reply within {after:?}; the outcome is unknown"))
            .with_store("redis")
            .with_operation(operation)
    }

    /// A new dedicated pub/sub connection: to the server, the current
    /// Sentinel master, or the first cluster seed node that answers.
    pub(crate) async fn pubsub(&self) -> Result<PubSub> {
        let attempt = async {
            match &self.target {
                Target::Single(client) => client.get_async_pubsub().await,
                Target::Sentinel { client, .. } => {
                    let client = client.lock().await.async_get_client().await?;
                    client.get_async_pubsub().await
                }
                Target::Cluster { seeds, .. } => {
                    let mut last = None;
                    for seed in seeds {
                        match seed.get_async_pubsub().await {
                            Ok(p) => return Ok(p),
                            Err(e) => last = Some(e),
                        }
                    }
                    Err(last.unwrap_or_else(|| {
                        redis::RedisError::from((
                            redis::ErrorKind::ClusterConnectionNotFound,
                            "no cluster seed node",
                        ))
                    }))
                }
            }
        };
        match tokio::time::timeout(self.connect_timeout, attempt).await {
            Ok(Ok(p)) => Ok(p),
            Ok(Err(e)) => {
                let (kind, _) = classify(&e, Phase::Connect);
                Err(to_error(e, kind, "watch"))
            }
            Err(_) => Err(Error::new(
                ErrorKind::Unavailable,
                format!(
                    "opening a pub/sub connection to {} timed out after {:?}",
                    self.description, self.connect_timeout
                ),
            )
            .with_store("redis")
            .with_operation("watch")),
        }
    }
}

/// Asks the sentinels every `interval` where the master is, and drops the
/// connection when they name another one. This catches a master change that
/// leaves our connection open and writable (a partitioned old master that
/// has not been demoted yet), which no command error would reveal. Ends when
/// the store is dropped.
async fn check_master(connector: Weak<Connector>, interval: Duration) {
    loop {
        tokio::time::sleep(interval).await;
        let Some(connector) = connector.upgrade() else {
            return;
        };
        let current = connector
            .live
            .lock()
            .await
            .as_ref()
            .and_then(|l| Some((l.generation, l.master.clone()?)));
        if let Some((generation, master)) = current
            && let Some(reported) = connector.reported_master().await
            && reported != master
        {
            tracing::warn!(
                target: "leader_redis",
                old = %master, new = %reported,
                "the sentinels report a new master; reconnecting"
            );
            connector.invalidate(generation).await;
            connector.master_epoch.send_modify(|e| *e += 1);
        }
    }
}
