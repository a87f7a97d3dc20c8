//! A private single-member `etcd`, and a private three-member cluster.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::binaries::find_binary;
use super::probe::{Probe, etcd_status};
use super::process::Spec;
use super::{Recipe, START_ATTEMPTS, Server, SpecFn, free_ports, server_dir, server_kind};
use crate::error::{Error, Result};

/// A private single-member `etcd` owned by the test (with fast heartbeat and
/// election flags: ready in about 30 ms), or an external one from
/// `LEADER_TEST_ETCD_URL`. Dereferences to [`Server`].
#[derive(Debug)]
pub struct EtcdServer(Server);

impl EtcdServer {
    const NAME: &'static str = "etcd";
}

server_kind!(EtcdServer, start_etcd, "LEADER_TEST_ETCD_URL", 2379);

/// Bound on the wait for a member (or a cluster) to answer `/health`.
const READY_WITHIN: Duration = Duration::from_secs(20);

/// The heartbeat and election timeout every member runs with (ms): a lost
/// etcd leader is replaced within about 100-200 ms.
const HEARTBEAT_MS: &str = "10";
const ELECTION_MS: &str = "100";

/// The command line of one member: `name` serving clients on `client` and
/// peers on `peer`, in a cluster of `initial` (`name=peer-url,...`).
fn member_spec(program: &Path, dir: &Path, name: &str, ports: &[u16], initial: &str) -> Spec {
    let client = format!("http://127.0.0.1:{}", ports[0]);
    let peer = format!("http://127.0.0.1:{}", ports[1]);
    let initial = initial.replace("{peer}", &peer);
    let args: Vec<OsString> = [
        "--name",
        name,
        "--listen-client-urls",
        &client,
        "--advertise-client-urls",
        &client,
        "--listen-peer-urls",
        &peer,
        "--initial-advertise-peer-urls",
        &peer,
        "--initial-cluster",
        &initial,
        "--initial-cluster-token",
        "leader-testkit",
        "--heartbeat-interval",
        HEARTBEAT_MS,
        "--election-timeout",
        ELECTION_MS,
        "--logger=zap",
        "--log-outputs=stderr",
        "--data-dir",
    ]
    .iter()
    .map(Into::into)
    .chain([dir.join("data").into_os_string()])
    .collect();
    Spec {
        program: program.to_owned(),
        args,
        run_as: None,
        cwd: dir.to_owned(),
        log: dir.join("etcd.log"),
    }
}

/// The recipe of a member whose command line comes from `spec`.
fn recipe(spec: SpecFn) -> Recipe {
    Recipe {
        name: EtcdServer::NAME,
        env_var: EtcdServer::ENV_VAR,
        probe: Probe::EtcdHealth,
        ready_within: READY_WITHIN,
        ports: 2,
        url: |port| format!("http://127.0.0.1:{port}"),
        spec,
    }
}

async fn start_etcd() -> Result<Server> {
    let program = find_binary("etcd", "etcd-server", EtcdServer::ENV_VAR)?;
    let dir = server_dir("etcd")?;
    let spec: SpecFn = Box::new(move |dir, ports, attempt| {
        // A fresh folder per attempt: the member's peer URL is written into
        // its data on first start.
        let attempt_dir = dir.join(format!("attempt-{attempt}"));
        std::fs::create_dir_all(&attempt_dir)
            .map_err(|e| Error::io(format!("creating {}", attempt_dir.display()), e))?;
        Ok(member_spec(
            &program,
            &attempt_dir,
            "n1",
            ports,
            "n1={peer}",
        ))
    });
    Server::launch(recipe(spec), dir).await
}

/// A private three-member etcd cluster on loopback, for failover tests:
/// members `n0`, `n1`, `n2`, each a [`Server`] of its own (own folder, own
/// process tree), so any of them can be killed, paused and restarted with
/// its data.
///
/// ```no_run
/// # async fn demo() -> leader_testkit::Result<()> {
/// use std::time::Duration;
/// use leader_testkit::servers::EtcdCluster;
///
/// let cluster = EtcdCluster::start().await?;
/// println!("connect to {}", cluster.url()); // etcd://127.0.0.1:P,127.0.0.1:Q,...
/// let leader = cluster.wait_for_leader(Duration::from_secs(10)).await?;
/// cluster.member(leader).kill().await?; // the others elect a new leader
/// cluster.member(leader).restart().await?; // rejoins with its data
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct EtcdCluster {
    members: Vec<Server>,
}

impl EtcdCluster {
    /// How many members the cluster has.
    pub const SIZE: usize = 3;

    /// Starts three members and waits until every one answers `/health`
    /// (the cluster has a leader). A start in which a member exits (another
    /// process took a port between choice and bind) is retried with fresh
    /// ports.
    ///
    /// # Errors
    ///
    /// [`Error::MissingBinary`] without `etcd`; [`Error::NotReady`] with
    /// the failing member's log tail.
    pub async fn start() -> Result<EtcdCluster> {
        let program = find_binary("etcd", "etcd-server", EtcdServer::ENV_VAR)?;
        let mut attempt = 0;
        loop {
            let cluster = Self::spawn(&program)?;
            let waits = cluster.members.iter().map(Server::wait_ready);
            let failed = futures::future::join_all(waits)
                .await
                .into_iter()
                .find_map(Result::err);
            match failed {
                None => return Ok(cluster),
                Some(e)
                    if attempt + 1 < START_ATTEMPTS
                        && cluster.members.iter().any(Server::exited) =>
                {
                    tracing::debug!(attempt, error = %e, "etcd member exited while starting; retrying");
                    attempt += 1;
                }
                Some(e) => return Err(e),
            }
        }
    }

    /// Spawns the three members on fresh ports, each in a fresh folder.
    fn spawn(program: &Path) -> Result<EtcdCluster> {
        let ports =
            free_ports(2 * Self::SIZE).map_err(|e| Error::io("choosing free loopback ports", e))?;
        let names: Vec<String> = (0..Self::SIZE).map(|i| format!("n{i}")).collect();
        let initial: Vec<String> = names
            .iter()
            .zip(ports.chunks(2))
            .map(|(name, p)| format!("{name}=http://127.0.0.1:{}", p[1]))
            .collect();
        let initial = initial.join(",");
        let mut members = Vec::with_capacity(Self::SIZE);
        for (name, member_ports) in names.into_iter().zip(ports.chunks(2)) {
            let (program, initial): (PathBuf, String) = (program.to_owned(), initial.clone());
            let spec: SpecFn = Box::new(move |dir, ports, _attempt| {
                Ok(member_spec(&program, dir, &name, ports, &initial))
            });
            let dir = server_dir("etcd-member")?;
            members.push(Server::spawn(&recipe(spec), dir, member_ports, 0)?);
        }
        Ok(EtcdCluster { members })
    }

    /// Member `i` (`0..SIZE`), to kill, pause, resume or restart. A member
    /// restarted while no other runs cannot answer `/health` alone: restart
    /// members so that a majority runs.
    ///
    /// # Panics
    ///
    /// When `i >= SIZE`.
    pub fn member(&self, i: usize) -> &Server {
        &self.members[i]
    }

    /// Every member, in order.
    pub fn members(&self) -> &[Server] {
        &self.members
    }

    /// The member's name (`n0`..`n2`).
    pub fn name(&self, i: usize) -> String {
        format!("n{i}")
    }

    /// The members' client addresses.
    pub fn addrs(&self) -> Vec<SocketAddr> {
        self.members.iter().map(|m| m.addr()).collect()
    }

    /// An `etcd://` URL naming all three members.
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self.addrs().iter().map(ToString::to_string).collect();
        format!("etcd://{}", hosts.join(","))
    }

    /// The index of the member that leads now, asking each running member
    /// (at most 1 s each); `None` when no running member is the leader.
    pub async fn leader(&self) -> Option<usize> {
        for (i, member) in self.members.iter().enumerate() {
            if !member.is_running() {
                continue;
            }
            if let Some(status) = etcd_status(member.addr()).await
                && status.leader != 0
                && status.leader == status.member
            {
                return Some(i);
            }
        }
        None
    }

    /// Waits until some running member leads, for at most `within`.
    ///
    /// # Errors
    ///
    /// [`Error::Timeout`] when no member leads within `within`.
    pub async fn wait_for_leader(&self, within: Duration) -> Result<usize> {
        // Real time: paused tokio time must not make the bound pass at once.
        let started = Instant::now();
        loop {
            if let Some(i) = self.leader().await {
                return Ok(i);
            }
            if started.elapsed() > within {
                return Err(Error::Timeout {
                    what: "an etcd cluster leader".to_owned(),
                    waited: within,
                });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits (at most `within`) for the member that leads now and SIGKILLs
    /// it; returns its index. The others elect a new leader on their own.
    ///
    /// # Errors
    ///
    /// As [`EtcdCluster::wait_for_leader`] and [`Server::kill`].
    pub async fn kill_leader(&self, within: Duration) -> Result<usize> {
        let leader = self.wait_for_leader(within).await?;
        self.members[leader].kill().await?;
        Ok(leader)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WITHIN: Duration = Duration::from_secs(20);

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_cluster_elects_replaces_a_killed_leader_and_takes_it_back() {
        let cluster = EtcdCluster::start().await.expect("etcd cluster");
        assert!(cluster.members().iter().all(Server::is_running));
        let killed = cluster.kill_leader(WITHIN).await.expect("kill the leader");
        assert!(!cluster.member(killed).is_running());
        let next = cluster.wait_for_leader(WITHIN).await.expect("a new leader");
        assert_ne!(next, killed, "a killed member cannot lead");
        cluster.member(killed).restart().await.expect("restart");
        assert!(
            cluster.member(killed).answers().await,
            "the restarted member rejoined the cluster"
        );
        let url = cluster.url();
        for addr in cluster.addrs() {
            assert!(url.contains(&addr.to_string()), "{url} names {addr}");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_cluster_without_a_majority_has_no_leader() {
        let cluster = EtcdCluster::start().await.expect("etcd cluster");
        let leader = cluster.kill_leader(WITHIN).await.expect("kill the leader");
        cluster
            .member((leader + 1) % EtcdCluster::SIZE)
            .kill()
            .await
            .expect("kill a second member");
        let err = cluster
            .wait_for_leader(Duration::from_secs(1))
            .await
            .expect_err("one member of three cannot lead");
        assert!(matches!(err, Error::Timeout { .. }), "{err}");
    }
}
