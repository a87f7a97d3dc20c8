//! The stores under test: private servers and how to open a client on each.

use std::sync::Arc;

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
    /// A private redis-server.
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
            redis: RedisServer::start().await?,
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
