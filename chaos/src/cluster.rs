//! A private three-member etcd cluster on loopback, whose leader member a
//! chaos run can kill or pause (the store's own failover under the
//! electors).

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

struct Member {
    name: String,
    client: u16,
    args: Vec<String>,
    child: Option<Child>,
}

/// A running three-member cluster; members are SIGKILLed on drop.
pub struct EtcdCluster {
    members: Vec<Member>,
    dir: tempfile::TempDir,
}

impl std::fmt::Debug for EtcdCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdCluster")
            .field("clients", &self.addrs())
            .finish()
    }
}

fn find(binary: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(binary))
        .find(|p| p.is_file())
}

fn free_ports(n: usize) -> std::io::Result<Vec<u16>> {
    let held = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<std::io::Result<Vec<_>>>()?;
    held.iter()
        .map(|l| l.local_addr().map(|a| a.port()))
        .collect()
}

impl EtcdCluster {
    /// Starts three members with fast heartbeat and election flags and
    /// waits until the cluster has a leader (three attempts with fresh
    /// ports).
    ///
    /// # Errors
    ///
    /// No `etcd` binary (Debian: etcd-server), or no leader within 30 s.
    pub async fn start() -> Result<EtcdCluster, String> {
        let mut last = String::new();
        for _ in 0..3 {
            let mut cluster = Self::launch()?;
            match cluster.wait_leader(Duration::from_secs(30)).await {
                Some(_) => return Ok(cluster),
                None => {
                    last = format!(
                        "the etcd cluster elected no leader within 30 s; logs in {}",
                        cluster.dir.path().display()
                    );
                    cluster.kill_all();
                }
            }
        }
        Err(last)
    }

    fn launch() -> Result<EtcdCluster, String> {
        let etcd = find("etcd").ok_or("no etcd binary on PATH (Debian: etcd-server)")?;
        let dir = tempfile::Builder::new()
            .prefix("leader-chaos-etcd-cluster-")
            .tempdir()
            .map_err(|e| format!("temporary folder: {e}"))?;
        let ports = free_ports(6).map_err(|e| format!("free ports: {e}"))?;
        let names = ["m1", "m2", "m3"];
        let initial: Vec<String> = names
            .iter()
            .zip(&ports[3..])
            .map(|(n, p)| format!("{n}=http://127.0.0.1:{p}"))
            .collect();
        let mut members = Vec::new();
        for (i, name) in names.iter().enumerate() {
            let client = format!("http://127.0.0.1:{}", ports[i]);
            let peer = format!("http://127.0.0.1:{}", ports[3 + i]);
            let mut args = vec![etcd.to_string_lossy().into_owned()];
            args.extend(
                [
                    "--name",
                    name,
                    "--data-dir",
                    &dir.path().join(name).to_string_lossy(),
                    "--listen-client-urls",
                    &client,
                    "--advertise-client-urls",
                    &client,
                    "--listen-peer-urls",
                    &peer,
                    "--initial-advertise-peer-urls",
                    &peer,
                    "--initial-cluster",
                    &initial.join(","),
                    "--initial-cluster-token",
                    "leader-chaos",
                    "--heartbeat-interval",
                    "10",
                    "--election-timeout",
                    "100",
                    "--logger=zap",
                    "--log-outputs=stderr",
                ]
                .map(str::to_owned),
            );
            let mut member = Member {
                name: (*name).to_owned(),
                client: ports[i],
                args,
                child: None,
            };
            Self::spawn(&dir, &mut member)?;
            members.push(member);
        }
        Ok(EtcdCluster { members, dir })
    }

    fn spawn(dir: &tempfile::TempDir, member: &mut Member) -> Result<(), String> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.path().join(format!("{}.log", member.name)))
            .map_err(|e| format!("member log: {e}"))?;
        // The kernel kills a member when this process dies.
        let mut command = match find("setpriv") {
            Some(setpriv) => {
                let mut c = Command::new(setpriv);
                c.args(["--pdeathsig", "KILL", "--"]).args(&member.args);
                c
            }
            None => {
                let mut c = Command::new(&member.args[0]);
                c.args(&member.args[1..]);
                c
            }
        };
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .map_err(|e| format!("starting etcd member {}: {e}", member.name))?;
        member.child = Some(child);
        Ok(())
    }

    /// The members' client addresses.
    pub fn addrs(&self) -> Vec<SocketAddr> {
        self.members
            .iter()
            .map(|m| SocketAddr::from(([127, 0, 0, 1], m.client)))
            .collect()
    }

    /// Which member leads now, asking each running member (bounded).
    pub async fn leader(&self) -> Option<usize> {
        for m in self.members.iter().filter(|m| m.child.is_some()) {
            let endpoint = format!("http://127.0.0.1:{}", m.client);
            let options = etcd_client::ConnectOptions::new()
                .with_connect_timeout(Duration::from_millis(500))
                .with_timeout(Duration::from_millis(500));
            let Ok(Ok(mut client)) = tokio::time::timeout(
                Duration::from_secs(1),
                etcd_client::Client::connect([endpoint], Some(options)),
            )
            .await
            else {
                continue;
            };
            let Ok(Ok(status)) =
                tokio::time::timeout(Duration::from_secs(1), client.status()).await
            else {
                continue;
            };
            let me = status.header().map(|h| h.member_id());
            if status.leader() != 0 && Some(status.leader()) == me {
                return self.members.iter().position(|x| x.client == m.client);
            }
        }
        None
    }

    /// Waits up to `within` for a leader.
    pub async fn wait_leader(&mut self, within: Duration) -> Option<usize> {
        let start = Instant::now();
        while start.elapsed() < within {
            if let Some(i) = self.leader().await {
                return Some(i);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        None
    }

    /// The member's name.
    pub fn name(&self, index: usize) -> &str {
        self.members.get(index).map_or("?", |m| m.name.as_str())
    }

    fn signal(&self, index: usize, signal: Signal) -> Result<(), String> {
        let child = self
            .members
            .get(index)
            .and_then(|m| m.child.as_ref())
            .ok_or("member not running")?;
        let pid = i32::try_from(child.id()).map_err(|e| e.to_string())?;
        kill(Pid::from_raw(pid), signal).map_err(|e| e.to_string())
    }

    /// SIGSTOPs a member.
    ///
    /// # Errors
    ///
    /// When it is not running.
    pub fn pause(&self, index: usize) -> Result<(), String> {
        self.signal(index, Signal::SIGSTOP)
    }

    /// SIGCONTs a member.
    ///
    /// # Errors
    ///
    /// When it is not running.
    pub fn resume(&self, index: usize) -> Result<(), String> {
        self.signal(index, Signal::SIGCONT)
    }

    /// SIGKILLs a member and waits for it.
    pub fn kill(&mut self, index: usize) {
        if let Some(mut child) = self.members.get_mut(index).and_then(|m| m.child.take()) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts a killed member again with its data folder.
    ///
    /// # Errors
    ///
    /// When it cannot be spawned.
    pub fn restart(&mut self, index: usize) -> Result<(), String> {
        self.kill(index);
        let member = self.members.get_mut(index).ok_or("no such member")?;
        Self::spawn(&self.dir, member)
    }

    /// Resumes and SIGKILLs every member.
    pub fn kill_all(&mut self) {
        for i in 0..self.members.len() {
            let _ = self.resume(i);
            self.kill(i);
        }
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        self.kill_all();
    }
}
