//! A private Redis Cluster: three masters, optionally with a replica each,
//! optionally over TLS.

use std::process::Command;

use super::binaries::find_binary;
use super::redis::RedisServer;
use super::sentinel::{query, settled};
use super::tls::TlsFiles;
use crate::error::{Error, Result};

/// Three masters covering every slot, created with `redis-cli --cluster
/// create` (node timeout 2 s), each node a [`RedisServer`] of its own.
///
/// ```no_run
/// # async fn demo() -> leader_testkit::Result<()> {
/// use leader_testkit::servers::RedisCluster;
///
/// let cluster = RedisCluster::start(0, None).await?;
/// println!("{}", cluster.connection_string()); // 127.0.0.1:P,127.0.0.1:Q,...
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct RedisCluster {
    /// The nodes, in creation order (`redis-cli` makes the first three the
    /// masters).
    pub nodes: Vec<RedisServer>,
    tls: bool,
}

impl RedisCluster {
    /// Starts `3 * (1 + replicas)` nodes, creates the cluster and waits
    /// until every node reports `cluster_state:ok`. With `tls`, clients and
    /// the cluster bus use TLS (each node keeps a plain port for the
    /// readiness probe and for `redis-cli`; clients connecting over TLS are
    /// told the TLS ports).
    ///
    /// # Errors
    ///
    /// A node does not start, `redis-cli` (Debian package redis-tools) is
    /// missing or fails, or the cluster is not ok within 20 s.
    pub async fn start(replicas: usize, tls: Option<&TlsFiles>) -> Result<RedisCluster> {
        let mut nodes = Vec::new();
        let args = ["--cluster-enabled", "yes", "--cluster-node-timeout", "2000"];
        for _ in 0..3 * (1 + replicas) {
            nodes.push(match tls {
                Some(files) => {
                    let mut tls_args = args.to_vec();
                    tls_args.extend(["--tls-cluster", "yes"]);
                    RedisServer::start_tls(files, &tls_args).await?
                }
                None => RedisServer::start_with(&args).await?,
            });
        }
        let cluster = RedisCluster {
            nodes,
            tls: tls.is_some(),
        };
        let cli = find_binary("redis-cli", "redis-tools", RedisServer::ENV_VAR)?;
        let mut command = Command::new(cli);
        if let Some(files) = tls {
            command.arg("--tls").arg("--cacert").arg(&files.ca);
        }
        let out = command
            .arg("--cluster")
            .arg("create")
            .args(cluster.client_addrs())
            .arg("--cluster-replicas")
            .arg(replicas.to_string())
            .arg("--cluster-yes")
            .output()
            .map_err(|e| Error::io("running redis-cli --cluster create", e))?;
        if !out.status.success() {
            return Err(Error::Command {
                command: "redis-cli --cluster create".to_owned(),
                problem: format!(
                    "{}: {}{}",
                    out.status,
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                ),
            });
        }
        cluster.wait_ok().await?;
        Ok(cluster)
    }

    /// `host:port` of every node's client port (the TLS one over TLS).
    fn client_addrs(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|n| {
                let port = if self.tls { n.tls_port() } else { None };
                format!("127.0.0.1:{}", port.unwrap_or(n.addr().port()))
            })
            .collect()
    }

    /// Waits until every running node reports `cluster_state:ok`.
    ///
    /// # Errors
    ///
    /// [`Error::Timeout`] after 20 s.
    pub async fn wait_ok(&self) -> Result<()> {
        for node in self.nodes.iter().filter(|n| n.is_running()) {
            let url = node.url().to_owned();
            settled("cluster_state:ok", || {
                let url = url.clone();
                async move {
                    let info: String = query(&url, redis::cmd("CLUSTER").arg("INFO")).await?;
                    Some(info.contains("cluster_state:ok"))
                }
            })
            .await?;
        }
        Ok(())
    }

    /// SIGKILLs every node (the whole cluster crashes).
    ///
    /// # Errors
    ///
    /// As [`Server::kill`](super::Server::kill).
    pub async fn kill_all(&self) -> Result<()> {
        for node in &self.nodes {
            node.kill().await?;
        }
        Ok(())
    }

    /// Starts every node again (same ports and folders: each rejoins with
    /// its saved `nodes.conf`, without data) and waits for `cluster_state:ok`.
    ///
    /// # Errors
    ///
    /// As [`Server::restart`](super::Server::restart) and
    /// [`RedisCluster::wait_ok`].
    pub async fn restart_all(&self) -> Result<()> {
        for node in &self.nodes {
            node.restart().await?;
        }
        self.wait_ok().await
    }

    /// The card-style connection string (several hosts, no serviceName);
    /// over TLS with `ssl=true` and the TLS ports.
    pub fn connection_string(&self) -> String {
        let addrs = self.client_addrs().join(",");
        if self.tls {
            format!("{addrs},ssl=true")
        } else {
            addrs
        }
    }
}
