//! A private three-member etcd cluster on loopback, for failover tests.
//!
//! Members run as children of the test with the fast heartbeat/election
//! flags, are SIGKILLed and waited for on drop, and live in one temporary
//! folder. `kill_leader` SIGKILLs whichever member leads now.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::{PATIENCE, free_port};

struct Member {
    name: String,
    client_port: u16,
    child: Option<Child>,
}

/// A running three-member cluster.
pub struct EtcdCluster {
    members: Mutex<Vec<Member>>,
    dir: tempfile::TempDir,
}

fn etcd_binary() -> PathBuf {
    let found = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|d| d.join("etcd"))
            .find(|p| p.is_file())
    });
    // A missing binary is a failure, never a skip (CI installs etcd-server).
    found.expect("the etcd binary (Debian package etcd-server) is not on PATH")
}

impl EtcdCluster {
    /// Starts three members and waits until the cluster has a leader. A
    /// start whose member exits at once (another process took a port between
    /// choosing and binding it) is retried with fresh ports, three times.
    pub async fn start() -> EtcdCluster {
        for attempt in 1..=3 {
            let cluster = Self::launch();
            if cluster.start_up().await {
                return cluster;
            }
            eprintln!(
                "etcd cluster start attempt {attempt} failed; logs in {}",
                cluster.dir.path().display()
            );
        }
        panic!("the etcd cluster did not start in three attempts");
    }

    /// Waits for a leader; false if a member exited meanwhile.
    async fn start_up(&self) -> bool {
        let start = Instant::now();
        loop {
            let exited = self.lock().iter_mut().any(|m| {
                m.child
                    .as_mut()
                    .is_some_and(|c| !matches!(c.try_wait(), Ok(None)))
            });
            if exited {
                return false;
            }
            if self.leader().await.is_some() {
                return true;
            }
            assert!(
                start.elapsed() < PATIENCE,
                "the etcd cluster elected no leader within {PATIENCE:?}; logs in {}",
                self.dir.path().display()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn launch() -> EtcdCluster {
        let program = etcd_binary();
        let dir = tempfile::Builder::new()
            .prefix("leader-etcd-cluster-")
            .tempdir()
            .expect("cluster folder");
        let ports: Vec<(u16, u16)> = (0..3).map(|_| (free_port(), free_port())).collect();
        let initial: Vec<String> = ports
            .iter()
            .enumerate()
            .map(|(i, (_, peer))| format!("n{i}=http://127.0.0.1:{peer}"))
            .collect();
        let initial = initial.join(",");
        let mut members = Vec::new();
        for (i, (client, peer)) in ports.iter().enumerate() {
            let name = format!("n{i}");
            let log = std::fs::File::create(dir.path().join(format!("{name}.log")))
                .expect("member log file");
            let child = Command::new(&program)
                .args(["--name", &name])
                .arg("--data-dir")
                .arg(dir.path().join(&name))
                .args([
                    "--listen-client-urls",
                    &format!("http://127.0.0.1:{client}"),
                ])
                .args([
                    "--advertise-client-urls",
                    &format!("http://127.0.0.1:{client}"),
                ])
                .args(["--listen-peer-urls", &format!("http://127.0.0.1:{peer}")])
                .args([
                    "--initial-advertise-peer-urls",
                    &format!("http://127.0.0.1:{peer}"),
                ])
                .args(["--initial-cluster", &initial])
                .args(["--initial-cluster-state", "new"])
                .args(["--initial-cluster-token", "leader-etcd-test"])
                .args(["--heartbeat-interval", "10", "--election-timeout", "100"])
                .args(["--logger=zap", "--log-outputs=stderr"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("spawn an etcd member");
            members.push(Member {
                name,
                client_port: *client,
                child: Some(child),
            });
        }
        EtcdCluster {
            members: Mutex::new(members),
            dir,
        }
    }

    /// `host:port` of every member's client URL.
    pub fn endpoints(&self) -> Vec<String> {
        self.lock()
            .iter()
            .map(|m| format!("127.0.0.1:{}", m.client_port))
            .collect()
    }

    /// An `etcd://` URL naming all three members.
    pub fn url(&self) -> String {
        format!("etcd://{}", self.endpoints().join(","))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Member>> {
        self.members.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The index of the member that leads now, asking each live member.
    pub async fn leader(&self) -> Option<usize> {
        let live: Vec<(usize, u16)> = self
            .lock()
            .iter()
            .enumerate()
            .filter(|(_, m)| m.child.is_some())
            .map(|(i, m)| (i, m.client_port))
            .collect();
        for (i, port) in live {
            let connect = etcd_client::Client::connect(
                [format!("http://127.0.0.1:{port}")],
                Some(
                    etcd_client::ConnectOptions::new()
                        .with_timeout(Duration::from_millis(500))
                        .with_connect_timeout(Duration::from_millis(500)),
                ),
            );
            let Ok(Ok(mut client)) = tokio::time::timeout(Duration::from_secs(1), connect).await
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
                return Some(i);
            }
        }
        None
    }

    /// Waits until some live member leads.
    pub async fn wait_for_leader(&self) -> usize {
        let start = Instant::now();
        loop {
            if let Some(i) = self.leader().await {
                return i;
            }
            assert!(
                start.elapsed() < PATIENCE,
                "the etcd cluster elected no leader within {PATIENCE:?}; logs in {}",
                self.dir.path().display()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGKILLs member `i` and waits for it.
    pub fn kill(&self, i: usize) {
        let mut members = self.lock();
        if let Some(mut child) = members[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGKILLs the current leader; returns its index.
    pub async fn kill_leader(&self) -> usize {
        let leader = self.wait_for_leader().await;
        self.kill(leader);
        leader
    }

    /// The member's name (`n0`..`n2`).
    pub fn name(&self, i: usize) -> String {
        self.lock()[i].name.clone()
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for member in self.lock().iter_mut() {
            if let Some(mut child) = member.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}
