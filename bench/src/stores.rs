//! The stores under test: private servers and how to open a client on each.

use std::sync::Arc;
use std::time::Duration;

use leader_core::{LeaseStore, MemoryStore};
use leader_etcd::EtcdStore;
use leader_postgres::{PostgresConfig, PostgresStore};
use leader_redis::RedisStore;
use leader_testkit::servers::{EtcdServer, PostgresServer, RedisServer};

use crate::Result;

/// A store kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The in-process reference store.
    Memory,
    /// Redis.
    Redis,
    /// etcd.
    Etcd,
    /// Postgres advisory locks.
    Postgres,
}

impl Kind {
    /// Every kind, in table order.
    pub const ALL: [Kind; 4] = [Kind::Memory, Kind::Redis, Kind::Etcd, Kind::Postgres];

    /// `"memory"`, `"redis"`, `"etcd"`, `"postgres"`.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Memory => "memory",
            Kind::Redis => "redis",
            Kind::Etcd => "etcd",
            Kind::Postgres => "postgres",
        }
    }

    /// The kind named `name`.
    ///
    /// # Errors
    ///
    /// An unknown name.
    pub fn parse(name: &str) -> Result<Kind> {
        Kind::ALL
            .into_iter()
            .find(|k| k.name() == name)
            .ok_or_else(|| format!("unknown store {name:?}").into())
    }
}

/// The private servers of one run (children of this process).
#[derive(Debug)]
pub struct Servers {
    /// A private redis-server that publishes expired-key events
    /// (`notify-keyspace-events Ex`).
    pub redis: RedisServer,
    /// A private single-member etcd.
    pub etcd: EtcdServer,
    /// A private Postgres.
    pub postgres: PostgresServer,
}

impl Servers {
    /// Starts the three servers on free loopback ports. Call from the main
    /// thread: the servers are killed when the thread that started them dies.
    ///
    /// # Errors
    ///
    /// A missing binary (run `scripts/install-deps.sh`) or a server that does
    /// not come up.
    pub async fn start() -> Result<Servers> {
        Ok(Servers {
            // Publishing expired-key events: Redis followers are then told
            // of a crashed leader's expiry instead of polling for it.
            redis: RedisServer::start_with(&["--notify-keyspace-events", "Ex"]).await?,
            etcd: EtcdServer::start().await?,
            postgres: PostgresServer::start().await?,
        })
    }

    /// The client URL for `kind` (`memory://` for the memory store).
    pub fn url(&self, kind: Kind) -> String {
        match kind {
            Kind::Memory => "memory://".to_owned(),
            Kind::Redis => self.redis.url().to_owned(),
            Kind::Etcd => self.etcd.url().to_owned(),
            Kind::Postgres => self.postgres.url().to_owned(),
        }
    }
}

/// Opens clients of one store. Every `open` is a new client (its own
/// connections), as a separate instance of a service would have; the memory
/// store is shared, since it lives in this process.
#[derive(Debug, Clone)]
pub struct Factory {
    /// Which store.
    pub kind: Kind,
    /// Its URL.
    pub url: String,
    memory: Arc<MemoryStore>,
    lock_delay: bool,
}

impl Factory {
    /// A factory for `kind` at `url`.
    pub fn new(kind: Kind, url: impl Into<String>) -> Self {
        Factory {
            kind,
            url: url.into(),
            memory: Arc::new(MemoryStore::new()),
            lock_delay: true,
        }
    }

    /// Postgres only: whether the lock delay after an unreleased term is on
    /// (the store's default) or off.
    pub fn with_lock_delay(mut self, on: bool) -> Self {
        self.lock_delay = on;
        self
    }

    /// A new client.
    ///
    /// # Errors
    ///
    /// A malformed URL.
    pub fn open(&self) -> Result<Arc<dyn LeaseStore>> {
        Ok(match self.kind {
            Kind::Memory => self.memory.clone(),
            Kind::Redis => Arc::new(RedisStore::from_url(&self.url)?),
            Kind::Etcd => Arc::new(EtcdStore::from_url(&self.url)?),
            Kind::Postgres => Arc::new(PostgresStore::new(
                PostgresConfig::from_url(&self.url)?.with_lock_delay(self.lock_delay),
            )?),
        })
    }
}

/// Looks at one store server from the outside: how many connections it
/// serves, how many operations it has done, how much CPU it has used. The
/// scale section reads it before and during a window.
pub struct ServerProbe {
    kind: Kind,
    pid: Option<u32>,
    port: u16,
    redis: Option<redis::aio::MultiplexedConnection>,
    postgres: Option<sqlx::PgConnection>,
    etcd_metrics: Option<std::net::SocketAddr>,
}

impl std::fmt::Debug for ServerProbe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerProbe")
            .field("kind", &self.kind)
            .field("port", &self.port)
            .finish_non_exhaustive()
    }
}

/// Figures a [`ServerProbe`] reads at one moment.
#[derive(Debug, Clone, Copy, Default)]
pub struct ServerSample {
    /// Client connections the server serves now (Redis `CLIENT LIST`, less
    /// the probe's own; Postgres client backends in `pg_stat_activity`, less
    /// the probe's own; etcd: TCP connections of this process to its port).
    pub connections: u64,
    /// Operations done so far: Redis `total_commands_processed`, etcd gRPC
    /// messages received (every method), Postgres transactions committed or
    /// rolled back in the database.
    pub ops: u64,
    /// CPU time of the server (for Postgres: the postmaster and its
    /// children, the backends), if readable.
    pub cpu: Option<Duration>,
    /// etcd only: watch streams, watchers and lease keep-alive streams the
    /// server has open.
    pub etcd_streams: Option<(u64, u64, u64)>,
}

impl ServerProbe {
    /// A probe of `kind`'s server in `servers`.
    ///
    /// # Errors
    ///
    /// The memory store (no server), or a server the probe cannot reach.
    pub async fn connect(kind: Kind, servers: &Servers) -> Result<ServerProbe> {
        let mut probe = ServerProbe {
            kind,
            pid: None,
            port: 0,
            redis: None,
            postgres: None,
            etcd_metrics: None,
        };
        match kind {
            Kind::Memory => return Err("the memory store has no server to probe".into()),
            Kind::Redis => {
                probe.pid = servers.redis.pid();
                probe.port = servers.redis.addr().port();
                probe.redis = Some(
                    redis::Client::open(servers.redis.url())?
                        .get_multiplexed_async_connection()
                        .await?,
                );
            }
            Kind::Etcd => {
                probe.pid = servers.etcd.pid();
                probe.port = servers.etcd.addr().port();
                probe.etcd_metrics = Some(servers.etcd.addr());
            }
            Kind::Postgres => {
                use sqlx::Connection;
                probe.pid = servers.postgres.pid();
                probe.port = servers.postgres.addr().port();
                probe.postgres = Some(sqlx::PgConnection::connect(servers.postgres.url()).await?);
            }
        }
        Ok(probe)
    }

    /// The figures now.
    ///
    /// # Errors
    ///
    /// The server does not answer the probe.
    pub async fn sample(&mut self) -> Result<ServerSample> {
        let mut s = ServerSample {
            cpu: self.pid.and_then(|pid| match self.kind {
                Kind::Postgres => process_tree_cpu(pid),
                _ => crate::sys::process_cpu(pid),
            }),
            ..ServerSample::default()
        };
        if let Some(conn) = &mut self.redis {
            let info: String = redis::cmd("INFO").arg("stats").query_async(conn).await?;
            s.ops = info
                .lines()
                .find_map(|l| l.strip_prefix("total_commands_processed:"))
                .and_then(|v| v.trim().parse().ok())
                .ok_or("INFO stats has no total_commands_processed")?;
            let list: String = redis::cmd("CLIENT").arg("LIST").query_async(conn).await?;
            s.connections = (list.lines().count() as u64).saturating_sub(1);
        }
        if let Some(conn) = &mut self.postgres {
            let (ops, connections): (i64, i64) = sqlx::query_as(
                "SELECT (SELECT xact_commit + xact_rollback FROM pg_stat_database \
                         WHERE datname = current_database()), \
                        (SELECT count(*) FROM pg_stat_activity \
                         WHERE backend_type = 'client backend' AND pid <> pg_backend_pid())",
            )
            .fetch_one(&mut *conn)
            .await?;
            s.ops = u64::try_from(ops).unwrap_or(0);
            s.connections = u64::try_from(connections).unwrap_or(0);
        }
        if let Some(addr) = self.etcd_metrics {
            let m = leader_testkit::metrics::Metrics::scrape(addr).await?;
            s.ops = m.sum("grpc_server_msg_received_total", &[]) as u64;
            let keep_alive = [("grpc_method", "LeaseKeepAlive")];
            s.etcd_streams = Some((
                m.sum("etcd_debugging_mvcc_watch_stream_total", &[]) as u64,
                m.sum("etcd_debugging_mvcc_watcher_total", &[]) as u64,
                (m.sum("grpc_server_started_total", &keep_alive)
                    - m.sum("grpc_server_handled_total", &keep_alive)) as u64,
            ));
            s.connections = tcp_connections_to(self.port) as u64;
        }
        Ok(s)
    }
}

/// CPU time of process `pid` and its direct children (Postgres backends are
/// children of the postmaster).
fn process_tree_cpu(pid: u32) -> Option<Duration> {
    let mut total = crate::sys::process_cpu(pid)?;
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(child) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let parent = std::fs::read_to_string(format!("/proc/{child}/stat"))
            .ok()
            .and_then(|stat| {
                let rest = stat.rsplit_once(')')?.1.to_owned();
                rest.split_whitespace().nth(1)?.parse::<u32>().ok()
            });
        if parent == Some(pid) {
            total += crate::sys::process_cpu(child).unwrap_or_default();
        }
    }
    Some(total)
}

/// Established TCP connections of this process to a loopback `port` (from
/// `/proc/net/tcp{,6}`, matched with this process's socket inodes).
pub fn tcp_connections_to(port: u16) -> usize {
    let inodes: std::collections::HashSet<String> = std::fs::read_dir("/proc/self/fd")
        .map(|dir| {
            dir.flatten()
                .filter_map(|fd| std::fs::read_link(fd.path()).ok())
                .filter_map(|target| {
                    let t = target.to_string_lossy();
                    t.strip_prefix("socket:[")
                        .and_then(|s| s.strip_suffix(']'))
                        .map(str::to_owned)
                })
                .collect()
        })
        .unwrap_or_default();
    let port_hex = format!(":{port:04X}");
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|path| std::fs::read_to_string(path).ok())
        .flat_map(|table| table.lines().skip(1).map(str::to_owned).collect::<Vec<_>>())
        .filter(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            // remote address, state 01 = ESTABLISHED, inode.
            f.len() > 9 && f[2].ends_with(&port_hex) && f[3] == "01" && inodes.contains(f[9])
        })
        .count()
}
