//! Building the redis crate's clients from a [`RedisConfig`], without
//! connecting: plain and TLS clients, the Sentinel client, the Cluster client.

use std::time::Duration;

use leader_core::{Error, Result};
use redis::aio::MultiplexedConnection;
use redis::cluster::ClusterClient;
use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use redis::{
    Client, ConnectionAddr, ConnectionInfo, IntoConnectionInfo, RedisConnectionInfo,
    TlsCertificates, TlsMode,
};
use tokio::sync::Mutex;

use crate::config::{Endpoint, RedisConfig, Topology};

/// What the store talks to.
pub(crate) enum Target {
    Single(Client),
    Sentinel {
        client: Mutex<SentinelClient>,
        /// Plain clients for the sentinels, for the master-change check.
        sentinels: Vec<Client>,
        service_name: String,
        /// The sentinel connection that answered last (reused by the check).
        cached: Mutex<Option<MultiplexedConnection>>,
    },
    Cluster {
        client: ClusterClient,
        /// Plain clients for the seed nodes, for the pub/sub connection
        /// (classic PUBLISH reaches every node of a cluster).
        seeds: Vec<Client>,
    },
}

fn invalid(message: impl Into<String>) -> Error {
    Error::invalid_config(message).with_store("redis")
}

fn redis_settings(config: &RedisConfig) -> RedisConnectionInfo {
    let mut info = RedisConnectionInfo::default().set_db(config.db());
    if let Some(user) = config.username() {
        info = info.set_username(user);
    }
    if let Some(password) = config.password() {
        info = info.set_password(password.expose());
    }
    info
}

fn addr(endpoint: &Endpoint, tls: bool) -> ConnectionAddr {
    if tls {
        ConnectionAddr::TcpTls {
            host: endpoint.host.clone(),
            port: endpoint.port,
            insecure: false,
            tls_params: None,
        }
    } else {
        ConnectionAddr::Tcp(endpoint.host.clone(), endpoint.port)
    }
}

fn connection_info(
    endpoint: &Endpoint,
    config: &RedisConfig,
) -> std::result::Result<ConnectionInfo, redis::RedisError> {
    Ok(addr(endpoint, config.tls())
        .into_connection_info()?
        .set_redis_settings(redis_settings(config)))
}

fn client_for(
    endpoint: &Endpoint,
    config: &RedisConfig,
    certs: &Option<TlsCertificates>,
) -> Result<Client> {
    let info = connection_info(endpoint, config).map_err(|e| build_error(e, endpoint))?;
    match certs {
        Some(certs) => Client::build_with_tls(info, certs.clone()),
        None => Client::open(info),
    }
    .map_err(|e| build_error(e, endpoint))
}

/// A plain client for one sentinel, with the sentinels' credentials.
fn sentinel_client_for(
    endpoint: &Endpoint,
    config: &RedisConfig,
    certs: &Option<TlsCertificates>,
) -> Result<Client> {
    let mut settings = RedisConnectionInfo::default();
    if let Some(user) = config.sentinel_username() {
        settings = settings.set_username(user);
    }
    if let Some(password) = config.sentinel_password() {
        settings = settings.set_password(password.expose());
    }
    let info = addr(endpoint, config.tls())
        .into_connection_info()
        .map_err(|e| build_error(e, endpoint))?
        .set_redis_settings(settings);
    match certs {
        Some(certs) => Client::build_with_tls(info, certs.clone()),
        None => Client::open(info),
    }
    .map_err(|e| build_error(e, endpoint))
}

fn build_error(e: redis::RedisError, endpoint: &Endpoint) -> Error {
    invalid(format!("cannot build a Redis client for {endpoint}")).with_source(e)
}

fn load_certs(config: &RedisConfig) -> Result<Option<TlsCertificates>> {
    if !config.tls() {
        return Ok(None);
    }
    // rustls needs one process-wide crypto provider; if several are linked
    // (ring and aws-lc-rs through other crates) it cannot pick one and a
    // TLS connect panics. Installing ring is a no-op when one is set.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let Some(path) = config.ca_file() else {
        return Ok(None);
    };
    let pem = std::fs::read(path).map_err(|e| {
        invalid(format!("cannot read the CA file {}", path.display())).with_source(e)
    })?;
    if !pem.windows(27).any(|w| w == b"-----BEGIN CERTIFICATE-----") {
        return Err(invalid(format!(
            "the CA file {} holds no PEM certificate",
            path.display()
        )));
    }
    Ok(Some(TlsCertificates {
        client_tls: None,
        root_cert: Some(pem),
    }))
}

/// Builds the clients for `config` and a description of the target
/// (endpoints only, never credentials).
pub(crate) fn build_target(
    config: &RedisConfig,
    connect_timeout: Duration,
    request_timeout: Duration,
) -> Result<(Target, String)> {
    config.validate()?;
    let certs = load_certs(config)?;
    let built = match config.topology() {
        Topology::Single(endpoint) => (
            Target::Single(client_for(endpoint, config, &certs)?),
            format!("redis {endpoint}"),
        ),
        Topology::Sentinel {
            sentinels,
            service_name,
        } => {
            let mut builder = SentinelClientBuilder::new(
                sentinels.iter().map(|e| addr(e, config.tls())),
                service_name,
                SentinelServerType::Master,
            )
            .map_err(|e| invalid("cannot build the Sentinel client").with_source(e))?
            .set_client_to_redis_db(config.db());
            if let Some(user) = config.username() {
                builder = builder.set_client_to_redis_username(user);
            }
            if let Some(password) = config.password() {
                builder = builder.set_client_to_redis_password(password.expose());
            }
            if let Some(user) = config.sentinel_username() {
                builder = builder.set_client_to_sentinel_username(user);
            }
            if let Some(password) = config.sentinel_password() {
                builder = builder.set_client_to_sentinel_password(password.expose());
            }
            if config.tls() {
                builder = builder
                    .set_client_to_redis_tls_mode(TlsMode::Secure)
                    .set_client_to_sentinel_tls_mode(TlsMode::Secure);
            }
            if let Some(certs) = &certs {
                builder = builder
                    .set_client_to_redis_certificates(certs.clone())
                    .set_client_to_sentinel_certificates(certs.clone());
            }
            let client = builder
                .build()
                .map_err(|e| invalid("cannot build the Sentinel client").with_source(e))?;
            let sentinel_clients = sentinels
                .iter()
                .map(|e| sentinel_client_for(e, config, &certs))
                .collect::<Result<Vec<_>>>()?;
            let list: Vec<String> = sentinels.iter().map(Endpoint::to_string).collect();
            (
                Target::Sentinel {
                    client: Mutex::new(client),
                    sentinels: sentinel_clients,
                    service_name: service_name.clone(),
                    cached: Mutex::new(None),
                },
                format!("redis sentinel {service_name}@{}", list.join(",")),
            )
        }
        Topology::Cluster(nodes) => {
            let infos = nodes
                .iter()
                .map(|e| connection_info(e, config))
                .collect::<std::result::Result<Vec<_>, _>>()
                .map_err(|e| invalid("cannot build the cluster client").with_source(e))?;
            let mut builder = ClusterClient::builder(infos)
                .connection_timeout(connect_timeout)
                .response_timeout(request_timeout);
            if let Some(certs) = &certs {
                builder = builder.certs(certs.clone());
            }
            let client = builder
                .build()
                .map_err(|e| invalid("cannot build the cluster client").with_source(e))?;
            let seeds = nodes
                .iter()
                .map(|e| client_for(e, config, &certs))
                .collect::<Result<Vec<_>>>()?;
            let list: Vec<String> = nodes.iter().map(Endpoint::to_string).collect();
            (
                Target::Cluster { client, seeds },
                format!("redis cluster {}", list.join(",")),
            )
        }
    };
    Ok(built)
}
