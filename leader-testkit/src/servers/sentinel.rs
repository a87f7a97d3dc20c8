//! A private Redis Sentinel set: a master, one replica and three sentinels.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::binaries::find_binary;
use super::probe::Probe;
use super::process::Spec;
use super::redis::RedisServer;
use super::{Recipe, Server, server_dir};
use crate::error::{Error, Result};

/// The name the sentinels monitor the master under.
pub(crate) const SERVICE: &str = "mymaster";

/// How long a failover or the set's own start may take on a loaded machine.
const SETTLE_WITHIN: Duration = Duration::from_secs(20);

/// A master, one replica and three sentinels (quorum 2, down-after
/// 1000 ms, failover timeout 4 s), each a [`Server`] of its own, with an
/// optional password on the data nodes.
///
/// ```no_run
/// # async fn demo() -> leader_testkit::Result<()> {
/// use leader_testkit::servers::RedisSentinelSet;
///
/// let set = RedisSentinelSet::start(None).await?;
/// println!("{}", set.connection_string()); // 127.0.0.1:P,...,serviceName=mymaster
/// set.master.kill().await?; // the sentinels promote the replica
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct RedisSentinelSet {
    /// The master at start.
    pub master: RedisServer,
    /// Its replica (in sync when `start` returns).
    pub replica: RedisServer,
    /// Three sentinels.
    pub sentinels: Vec<Server>,
    password: Option<String>,
}

impl RedisSentinelSet {
    /// The name the sentinels monitor the master under.
    pub const SERVICE: &'static str = SERVICE;

    /// Starts the set and waits until every sentinel knows the replica and
    /// the other two sentinels, and the replica is in sync (so a failover
    /// can be agreed on and can promote it). With `password`, the data
    /// nodes require it (`requirepass`, `masterauth`) and the sentinels use
    /// it (`auth-pass`).
    ///
    /// # Errors
    ///
    /// A server does not start, or the set does not settle within 20 s.
    pub async fn start(password: Option<&str>) -> Result<RedisSentinelSet> {
        let auth: Vec<&str> = match password {
            Some(p) => vec!["--requirepass", p, "--masterauth", p],
            None => Vec::new(),
        };
        let master = RedisServer::start_with(&auth).await?;
        let master_port = master.addr().port().to_string();
        let mut replica_args = vec!["--replicaof", "127.0.0.1", &master_port];
        replica_args.extend(&auth);
        let replica = RedisServer::start_with(&replica_args).await?;
        let mut sentinels = Vec::new();
        for _ in 0..3 {
            sentinels.push(start_sentinel(master.addr().port(), password).await?);
        }
        let set = RedisSentinelSet {
            master,
            replica,
            sentinels,
            password: password.map(str::to_owned),
        };
        set.settle().await?;
        Ok(set)
    }

    async fn settle(&self) -> Result<()> {
        for sentinel in &self.sentinels {
            let url = sentinel.url().to_owned();
            settled("the sentinels to know the replica and each other", || {
                let url = url.clone();
                async move {
                    let info: HashMap<String, String> =
                        query(&url, redis::cmd("SENTINEL").arg("MASTER").arg(SERVICE)).await?;
                    let get = |k: &str| info.get(k).map(String::as_str);
                    Some(get("num-slaves") == Some("1") && get("num-other-sentinels") == Some("2"))
                }
            })
            .await?;
        }
        let replica = self.data_url(&self.replica);
        settled("the replica to be in sync", || {
            let url = replica.clone();
            async move {
                let info: String = query(&url, redis::cmd("INFO").arg("replication")).await?;
                Some(info.contains("master_link_status:up"))
            }
        })
        .await
    }

    /// The URL of data node `server`, with the password if there is one.
    pub fn data_url(&self, server: &Server) -> String {
        match &self.password {
            Some(p) => format!("redis://:{p}@{}", server.addr()),
            None => server.url().to_owned(),
        }
    }

    /// The card-style connection string: the sentinels and the service name.
    pub fn connection_string(&self) -> String {
        let list: Vec<String> = self
            .sentinels
            .iter()
            .map(|s| s.addr().to_string())
            .collect();
        format!("{},serviceName={SERVICE}", list.join(","))
    }

    /// The master's port as the first sentinel that answers names it now.
    pub async fn master_port(&self) -> Option<u16> {
        for sentinel in &self.sentinels {
            let cmd = redis::cmd("SENTINEL")
                .arg("get-master-addr-by-name")
                .arg(SERVICE)
                .to_owned();
            if let Some((_, port)) = query::<(String, u16)>(sentinel.url(), &cmd).await {
                return Some(port);
            }
        }
        None
    }

    /// SIGKILLs every process of the set (a whole-site crash).
    ///
    /// # Errors
    ///
    /// As [`Server::kill`].
    pub async fn kill_all(&self) -> Result<()> {
        for server in self.servers() {
            server.kill().await?;
        }
        Ok(())
    }

    /// Starts every process again (same ports and folders: the sentinels
    /// keep their rewritten configuration, the data nodes lose their data)
    /// and waits until each answers.
    ///
    /// # Errors
    ///
    /// As [`Server::restart`].
    pub async fn restart_all(&self) -> Result<()> {
        for server in self.servers() {
            server.restart().await?;
        }
        Ok(())
    }

    /// One more sentinel, on its own, monitoring the master on
    /// `master_port` under [`RedisSentinelSet::SERVICE`] (quorum 2, so it
    /// never fails over alone), authenticating with `password` if given.
    ///
    /// # Errors
    ///
    /// As [`RedisServer::start`].
    pub async fn start_sentinel(master_port: u16, password: Option<&str>) -> Result<Server> {
        start_sentinel(master_port, password).await
    }

    fn servers(&self) -> impl Iterator<Item = &Server> {
        [self.master.server(), self.replica.server()]
            .into_iter()
            .chain(&self.sentinels)
    }
}

/// Starts a sentinel monitoring the master on `master_port`.
async fn start_sentinel(master_port: u16, password: Option<&str>) -> Result<Server> {
    let program = find_binary("redis-server", "redis-server", RedisServer::ENV_VAR)?;
    let auth = password
        .map(|p| format!("sentinel auth-pass {SERVICE} {p}\n"))
        .unwrap_or_default();
    let recipe = Recipe {
        name: "redis",
        env_var: RedisServer::ENV_VAR,
        probe: Probe::RedisPing,
        ready_within: Duration::from_secs(15),
        ports: 1,
        url: |port| format!("redis://127.0.0.1:{port}"),
        spec: Box::new(move |dir, ports, _attempt| {
            // Sentinel rewrites this file as it learns; a restart reads it back.
            let conf = dir.join("sentinel.conf");
            let text = format!(
                "port {port}\nbind 127.0.0.1\ndir {dir}\n\
                 sentinel monitor {SERVICE} 127.0.0.1 {master_port} 2\n\
                 sentinel down-after-milliseconds {SERVICE} 1000\n\
                 sentinel failover-timeout {SERVICE} 4000\n\
                 sentinel parallel-syncs {SERVICE} 1\n{auth}",
                port = ports[0],
                dir = dir.display(),
            );
            std::fs::write(&conf, text)
                .map_err(|e| Error::io(format!("writing {}", conf.display()), e))?;
            Ok(Spec {
                program: program.clone(),
                args: vec![conf.into_os_string(), "--sentinel".into()],
                run_as: None,
                cwd: dir.to_owned(),
                log: dir.join("sentinel.log"),
            })
        }),
    };
    Server::launch(recipe, server_dir("redis-sentinel")?).await
}

/// Runs `cmd` on a fresh connection to `url` (at most 1 s); `None` when it
/// fails or its reply does not convert to `T`.
pub(crate) async fn query<T: redis::FromRedisValue>(url: &str, cmd: &redis::Cmd) -> Option<T> {
    let attempt = async {
        let client = redis::Client::open(url).ok()?;
        let mut conn = client.get_multiplexed_async_connection().await.ok()?;
        cmd.query_async::<T>(&mut conn).await.ok()
    };
    tokio::time::timeout(Duration::from_secs(1), attempt)
        .await
        .ok()
        .flatten()
}

/// Polls `check` every 20 ms until it answers `Some(true)`, for at most
/// [`SETTLE_WITHIN`] (real time).
pub(crate) async fn settled<F, Fut>(what: &str, mut check: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<bool>>,
{
    let started = Instant::now();
    while check().await != Some(true) {
        if started.elapsed() > SETTLE_WITHIN {
            return Err(Error::Timeout {
                what: what.to_owned(),
                waited: SETTLE_WITHIN,
            });
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}
