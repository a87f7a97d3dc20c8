//! The testkit's conformance suite (store-level and election-level cases)
//! against a private redis-server, a TLS-only server, Sentinel (master,
//! replica, three sentinels) and a three-master Cluster.
//!
//! Single server and TLS run one test per case (each with its own cheap
//! server); Sentinel and Cluster run every case on one topology (starting a
//! topology takes seconds), reporting all failures at the end.

use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use leader_core::LeaseStore;
use leader_redis::{RedisConfig, RedisStore};
use leader_testkit::proxy::FaultProxy;
use leader_testkit::servers::{RedisCluster, RedisSentinelSet, RedisServer};
use leader_testkit::suite::{Fixture, LinkedClient, Profile, ResourceCounts, ServerControl};

/// A store client as the suite's electors use it: the request timeout is
/// the profile's interval (the electors' request timeout).
fn client(connection: &str, ca: Option<&PathBuf>) -> leader_core::Result<Arc<dyn LeaseStore>> {
    // Connecting may take longer than one request (TLS handshakes of many
    // clients at once on a loaded machine); a failed connect is Unavailable
    // either way, and the electors bound each call by their own timeout.
    let profile = Profile::real_server();
    let mut config = RedisConfig::from_url(connection)?
        .with_request_timeout(profile.interval())
        .with_connect_timeout(profile.lease);
    if let Some(ca) = ca {
        config = config.with_ca_file(ca);
    }
    Ok(Arc::new(RedisStore::new(config)?) as Arc<dyn LeaseStore>)
}

/// Redis's server-side resources a client could leak: connections
/// (`CLIENT LIST`, this counting connection included) and keys (`DBSIZE`).
async fn count_resources(url: String) -> leader_core::Result<ResourceCounts> {
    let failed = |e: redis::RedisError| {
        leader_core::Error::unavailable(format!("counting Redis resources: {e}"))
    };
    let client = redis::Client::open(url).map_err(failed)?;
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .map_err(failed)?;
    let clients: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query_async(&mut conn)
        .await
        .map_err(failed)?;
    let keys: u64 = redis::cmd("DBSIZE")
        .query_async(&mut conn)
        .await
        .map_err(failed)?;
    Ok(ResourceCounts::from([
        ("connections".to_owned(), clients.lines().count() as u64),
        ("keys".to_owned(), keys),
    ]))
}

/// Sentinel and Cluster clients learn node addresses from the servers (no
/// fault proxy fits between), their servers are not frozen, and their
/// resources are not counted.
const NOT_APPLICABLE_ON_TOPOLOGIES: &[&str] = &[
    "session_loss_frees_the_resource",
    "watch_unsupported_is_typed",
    "no_leaks_over_many_cycles",
    "hung_store_calls_time_out",
    "election_partitioned_leader_steps_down",
    "election_slow_store_keeps_one_leader",
    "election_shutdown_during_renewal_releases",
];

mod single {
    use leader_testkit::servers::RedisServer;
    use leader_testkit::suite::ServerFixture;

    async fn fixture() -> ServerFixture<RedisServer> {
        let server = RedisServer::from_env_or_start()
            .await
            .expect("redis-server");
        ServerFixture::new(
            "redis",
            server,
            |url| async move { super::client(&url, None) },
        )
        .with_resource_counter(super::count_resources)
    }

    // Redis is not session-bound, and it notifies.
    leader_testkit::conformance_tests!(
        fixture().await,
        not_applicable = [session_loss_frees_the_resource, watch_unsupported_is_typed]
    );
}

/// A fixture over one of this crate's test topologies.
struct Topology<T: Send + Sync + 'static> {
    name: &'static str,
    connection: String,
    ca: Option<PathBuf>,
    control: Option<Box<dyn ServerControl>>,
    /// The single server's address, when clients may be put behind a fault
    /// proxy (not for Sentinel or Cluster: they learn real node addresses
    /// from the servers and would bypass it).
    linkable: Option<std::net::SocketAddr>,
    _servers: T,
}

#[async_trait]
impl<T: Send + Sync + 'static> Fixture for Topology<T> {
    fn name(&self) -> String {
        self.name.to_owned()
    }

    async fn store(&self) -> leader_core::Result<Arc<dyn LeaseStore>> {
        client(&self.connection, self.ca.as_ref())
    }

    fn control(&self) -> Option<&dyn ServerControl> {
        self.control.as_deref()
    }

    fn links(&self) -> bool {
        self.linkable.is_some()
    }

    async fn linked_client(&self) -> leader_core::Result<Option<LinkedClient>> {
        let Some(server) = self.linkable else {
            return Ok(None);
        };
        let proxy = FaultProxy::start(server).await.map_err(|e| {
            leader_core::Error::unavailable(format!("cannot start a fault proxy: {e}"))
        })?;
        let scheme = if self.ca.is_some() { "rediss" } else { "redis" };
        let client = client(&format!("{scheme}://{}", proxy.addr()), self.ca.as_ref())?;
        Ok(Some((client, Box::new(proxy))))
    }
}

/// Kill / restart of a TLS server (same ports, same certificates).
struct TlsControl(RedisServer);

#[async_trait]
impl ServerControl for TlsControl {
    async fn stop(&self) -> leader_testkit::Result<()> {
        self.0.kill().await
    }

    async fn start(&self) -> leader_testkit::Result<()> {
        self.0.restart().await
    }
}

mod tls {
    use super::Topology;
    use leader_testkit::servers::{RedisServer, TlsFiles};

    async fn fixture() -> Topology<TlsFiles> {
        let files = TlsFiles::generate().expect("TLS files");
        let server = RedisServer::start_tls(&files, &[])
            .await
            .expect("redis over TLS");
        let tls_port = server.tls_port().expect("a TLS port");
        let connection = format!("rediss://127.0.0.1:{tls_port}");
        let linkable = Some(([127, 0, 0, 1], tls_port).into());
        Topology {
            name: "redis over TLS",
            connection,
            ca: Some(files.ca.clone()),
            linkable,
            control: Some(Box::new(super::TlsControl(server))),
            _servers: files,
        }
    }

    // The TLS server is not frozen (no pause control) and its resources are
    // not counted (the single server's case covers leaks).
    leader_testkit::conformance_tests!(
        fixture().await,
        not_applicable = [
            session_loss_frees_the_resource,
            watch_unsupported_is_typed,
            hung_store_calls_time_out,
            no_leaks_over_many_cycles,
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_passes_the_conformance_suite() {
    let set = RedisSentinelSet::start(None).await.expect("sentinel set");
    let fixture = Topology {
        name: "redis sentinel",
        connection: set.connection_string(),
        ca: None,
        // Stopping crashes the whole set (master, replica, sentinels);
        // a failover is covered in tests/sentinel.rs.
        control: Some(Box::new(SentinelControl(set))),
        linkable: None,
        _servers: (),
    };
    leader_testkit::suite::run_all(Arc::new(fixture))
        .await
        .assert_passed_with(NOT_APPLICABLE_ON_TOPOLOGIES);
}

/// Crash / restart of a whole Sentinel set.
struct SentinelControl(RedisSentinelSet);

#[async_trait]
impl ServerControl for SentinelControl {
    async fn stop(&self) -> leader_testkit::Result<()> {
        self.0.kill_all().await
    }

    async fn start(&self) -> leader_testkit::Result<()> {
        self.0.restart_all().await
    }
}

/// Crash / restart of every node of a cluster.
struct ClusterControl(RedisCluster);

#[async_trait]
impl ServerControl for ClusterControl {
    async fn stop(&self) -> leader_testkit::Result<()> {
        self.0.kill_all().await
    }

    async fn start(&self) -> leader_testkit::Result<()> {
        self.0.restart_all().await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_passes_the_conformance_suite() {
    let cluster = RedisCluster::start(0, None).await.expect("redis cluster");
    let fixture = Topology {
        name: "redis cluster",
        connection: cluster.connection_string(),
        ca: None,
        control: Some(Box::new(ClusterControl(cluster))),
        linkable: None,
        _servers: (),
    };
    leader_testkit::suite::run_all(Arc::new(fixture))
        .await
        .assert_passed_with(NOT_APPLICABLE_ON_TOPOLOGIES);
}
