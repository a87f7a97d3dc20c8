//! Test fixtures for topologies the testkit does not start: TLS, Sentinel
//! (master + replica + 3 sentinels) and a 3-master Cluster. Every process is
//! a child of the test on a free loopback port in a temporary folder, and is
//! SIGKILLed and waited for when its handle drops.
//!
//! A missing `redis-server` / `redis-cli` is a test failure with a message
//! naming the Debian package, never a skip.

#![allow(dead_code, unreachable_pub)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use leader_testkit::wait::eventually;
use tempfile::TempDir;
use tokio::time::Instant;

/// A free loopback port (the listener is closed before the server binds it).
pub fn free_port() -> u16 {
    // Below the ephemeral range: see `leader_testkit::servers::free_port`.
    leader_testkit::servers::free_port().expect("a free loopback port")
}

fn binary(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/bin")])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "{name} is not installed: apt-get install redis-server redis-sentinel redis-tools"
            )
        })
}

/// One `redis-server` process (server or sentinel).
pub struct RedisProc {
    pub port: u16,
    args: Vec<String>,
    dir: PathBuf,
    child: Option<Child>,
    _tmp: Option<TempDir>,
}

impl RedisProc {
    /// Starts `redis-server` on `port` in a new temporary folder with `args`
    /// appended to the common ones, and waits until it answers PING.
    pub async fn start(port: u16, args: &[&str]) -> RedisProc {
        let tmp = tempfile::tempdir().expect("temp dir");
        let dir = tmp.path().to_owned();
        let mut common: Vec<String> = [
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--daemonize",
            "no",
            "--repl-diskless-sync",
            "yes",
            "--repl-diskless-sync-delay",
            "0",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        common.extend(["--dir".into(), dir.display().to_string()]);
        common.extend([
            "--logfile".into(),
            dir.join("redis.log").display().to_string(),
        ]);
        if !args.contains(&"--port") {
            common.extend(["--port".into(), port.to_string()]);
        }
        common.extend(args.iter().map(|s| s.to_string()));
        let mut proc = RedisProc {
            port,
            args: common,
            dir,
            child: None,
            _tmp: Some(tmp),
        };
        proc.spawn();
        let password = args
            .iter()
            .position(|a| *a == "--requirepass")
            .map(|i| args[i + 1].to_owned());
        proc.wait_ready(password.as_deref()).await;
        proc
    }

    /// Starts a sentinel on `port` monitoring `master_port` as `mymaster`
    /// (quorum 2, down-after 1000 ms).
    pub async fn sentinel(port: u16, master_port: u16) -> RedisProc {
        Self::sentinel_with_auth(port, master_port, None).await
    }

    /// A sentinel as [`RedisProc::sentinel`] that authenticates to the
    /// master and replicas with `password`.
    pub async fn sentinel_with_auth(
        port: u16,
        master_port: u16,
        password: Option<&str>,
    ) -> RedisProc {
        let tmp = tempfile::tempdir().expect("temp dir");
        let dir = tmp.path().to_owned();
        let conf = dir.join("sentinel.conf");
        std::fs::write(
            &conf,
            format!(
                "port {port}\nbind 127.0.0.1\ndir {dir}\nlogfile {log}\n\
                 sentinel monitor mymaster 127.0.0.1 {master_port} 2\n\
                 sentinel down-after-milliseconds mymaster 1000\n\
                 sentinel failover-timeout mymaster 4000\n\
                 sentinel parallel-syncs mymaster 1\n{auth}",
                dir = dir.display(),
                log = dir.join("sentinel.log").display(),
                auth = password
                    .map(|p| format!("sentinel auth-pass mymaster {p}\n"))
                    .unwrap_or_default(),
            ),
        )
        .expect("write sentinel.conf");
        let mut proc = RedisProc {
            port,
            args: vec![conf.display().to_string(), "--sentinel".into()],
            dir,
            child: None,
            _tmp: Some(tmp),
        };
        proc.spawn();
        proc.wait_ready(None).await;
        proc
    }

    fn spawn(&mut self) {
        let child = Command::new(binary("redis-server"))
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server");
        self.child = Some(child);
    }

    /// The server's log (for assertion messages).
    pub fn log(&self) -> String {
        let read = |name: &str| std::fs::read_to_string(self.dir.join(name)).unwrap_or_default();
        let log = read("redis.log") + &read("sentinel.log");
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// Waits until the server answers PING (with `password` if given).
    pub async fn wait_ready(&mut self, password: Option<&str>) {
        let url = match password {
            Some(p) => format!("redis://:{p}@127.0.0.1:{}", self.port),
            None => format!("redis://127.0.0.1:{}", self.port),
        };
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                panic!(
                    "redis-server exited while starting ({status}):\n{}",
                    self.log()
                );
            }
            if ping(&url).await {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "redis on {} not ready:\n{}",
                self.port,
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGKILL and wait: a crash.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the same command again (same port, same folder) without
    /// waiting for readiness (TLS-only servers cannot be PINGed in clear).
    pub fn respawn(&mut self) {
        self.kill();
        self.spawn();
    }

    /// The process id while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The folder of the server.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for RedisProc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Whether a plain connection to `url` answers PING within 1 s.
pub async fn ping(url: &str) -> bool {
    let Ok(client) = redis::Client::open(url) else {
        return false;
    };
    let attempt = async {
        let mut conn = client.get_multiplexed_async_connection().await.ok()?;
        redis::cmd("PING")
            .query_async::<String>(&mut conn)
            .await
            .ok()
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(1), attempt).await,
        Ok(Some(_))
    )
}

/// A raw connection for inspecting and tampering with keys.
pub async fn raw(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .expect("client")
        .get_multiplexed_async_connection()
        .await
        .expect("raw connection")
}

/// A CA and a server certificate for 127.0.0.1 / localhost, as PEM files.
pub struct TlsFiles {
    pub dir: TempDir,
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Generates a throwaway CA and a server certificate signed by it.
pub fn tls_files() -> TlsFiles {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let ca_key = KeyPair::generate().expect("ca key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "leader-redis test CA");
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca_params.self_signed(&ca_key).expect("self-sign CA");
    let issuer = Issuer::new(ca_params, ca_key);
    let server_key = KeyPair::generate().expect("server key");
    let mut params = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
        .expect("server params");
    params
        .distinguished_name
        .push(DnType::CommonName, "127.0.0.1");
    let server_cert = params
        .signed_by(&server_key, &issuer)
        .expect("sign server cert");
    let write = |name: &str, pem: String| {
        let path = dir.path().join(name);
        std::fs::write(&path, pem).expect("write pem");
        path
    };
    TlsFiles {
        ca: write("ca.pem", ca_cert.pem()),
        cert: write("server.pem", server_cert.pem()),
        key: write("server.key", server_key.serialize_pem()),
        dir,
    }
}

/// A TLS-only redis-server (`--port 0 --tls-port P`).
pub struct TlsRedis {
    pub proc: RedisProc,
    pub files: TlsFiles,
}

impl TlsRedis {
    /// Starts it. Redis serves a plain port as well, used only for the
    /// readiness probe and for inspection; stores under test use the TLS port.
    pub async fn start() -> TlsRedis {
        let files = tls_files();
        let plain = free_port();
        let tls_port = free_port().to_string();
        let (cert, key, ca) = (
            files.cert.display().to_string(),
            files.key.display().to_string(),
            files.ca.display().to_string(),
        );
        let proc = RedisProc::start(
            plain,
            &[
                "--tls-port",
                &tls_port,
                "--tls-cert-file",
                &cert,
                "--tls-key-file",
                &key,
                "--tls-ca-cert-file",
                &ca,
                "--tls-auth-clients",
                "no",
            ],
        )
        .await;
        TlsRedis { proc, files }
    }

    /// The `rediss://` URL of the TLS port.
    pub fn tls_port(&self) -> u16 {
        let i = self
            .proc
            .args
            .iter()
            .position(|a| a == "--tls-port")
            .expect("tls port arg");
        self.proc.args[i + 1].parse().expect("port")
    }

    /// `redis://` on the plain port (for inspection only).
    pub fn plain_url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.proc.port)
    }
}

/// Master, one replica and three sentinels (quorum 2).
pub struct SentinelSet {
    pub master: RedisProc,
    pub replica: RedisProc,
    pub sentinels: Vec<RedisProc>,
}

impl SentinelSet {
    /// Starts the set and waits until every sentinel knows the replica and
    /// the other sentinels (so a failover can be agreed on).
    pub async fn start() -> SentinelSet {
        Self::start_with_password(None).await
    }

    /// As [`SentinelSet::start`], with `requirepass`/`masterauth` on the
    /// data nodes and `auth-pass` in the sentinels when `password` is given.
    pub async fn start_with_password(password: Option<&str>) -> SentinelSet {
        let auth: Vec<&str> = match password {
            Some(p) => vec!["--requirepass", p, "--masterauth", p],
            None => Vec::new(),
        };
        let master = RedisProc::start(free_port(), &auth).await;
        let mport = master.port.to_string();
        let mut replica_args = vec!["--replicaof", "127.0.0.1", &mport];
        replica_args.extend(&auth);
        let replica = RedisProc::start(free_port(), &replica_args).await;
        let mut sentinels = Vec::new();
        for _ in 0..3 {
            sentinels.push(RedisProc::sentinel_with_auth(free_port(), master.port, password).await);
        }
        let set = SentinelSet {
            master,
            replica,
            sentinels,
        };
        for s in &set.sentinels {
            let url = format!("redis://127.0.0.1:{}", s.port);
            eventually(
                Duration::from_secs(20),
                "sentinels to discover each other",
                || {
                    let url = url.clone();
                    async move {
                        let mut c = raw(&url).await;
                        let info: Vec<(String, String)> = redis::cmd("SENTINEL")
                            .arg("MASTER")
                            .arg("mymaster")
                            .query_async::<std::collections::HashMap<String, String>>(&mut c)
                            .await
                            .ok()?
                            .into_iter()
                            .collect();
                        let get = |k: &str| {
                            info.iter()
                                .find(|(n, _)| n == k)
                                .map(|(_, v)| v.clone())
                                .unwrap_or_default()
                        };
                        (get("num-slaves") == "1" && get("num-other-sentinels") == "2")
                            .then_some(())
                    }
                },
            )
            .await;
        }
        // The replica must be in sync before a failover can promote it.
        let replica_url = match password {
            Some(p) => format!("redis://:{p}@127.0.0.1:{}", set.replica.port),
            None => format!("redis://127.0.0.1:{}", set.replica.port),
        };
        eventually(Duration::from_secs(20), "replica in sync", || {
            let url = replica_url.clone();
            async move {
                let mut c = raw(&url).await;
                let info: String = redis::cmd("INFO")
                    .arg("replication")
                    .query_async(&mut c)
                    .await
                    .ok()?;
                info.contains("master_link_status:up").then_some(())
            }
        })
        .await;
        set
    }

    /// SIGKILLs every process of the set (a whole-site crash).
    pub fn kill_all(&mut self) {
        self.master.kill();
        self.replica.kill();
        for s in &mut self.sentinels {
            s.kill();
        }
    }

    /// Starts every process again (same ports; the sentinels keep their
    /// rewritten configuration, the data nodes lose their data) and waits
    /// until each answers. Assumes no password.
    pub async fn restart_all(&mut self) {
        self.master.respawn();
        self.replica.respawn();
        for s in &mut self.sentinels {
            s.respawn();
        }
        self.master.wait_ready(None).await;
        self.replica.wait_ready(None).await;
        for s in &mut self.sentinels {
            s.wait_ready(None).await;
        }
    }

    /// The card-style connection string for the sentinels.
    pub fn connection_string(&self) -> String {
        let list: Vec<String> = self
            .sentinels
            .iter()
            .map(|s| format!("127.0.0.1:{}", s.port))
            .collect();
        format!("{},serviceName=mymaster", list.join(","))
    }

    /// The master's port as the sentinels report it now.
    pub async fn master_port(&self) -> Option<u16> {
        for s in &self.sentinels {
            let url = format!("redis://127.0.0.1:{}", s.port);
            let Ok(client) = redis::Client::open(url) else {
                continue;
            };
            let attempt = async {
                let mut c = client.get_multiplexed_async_connection().await.ok()?;
                redis::cmd("SENTINEL")
                    .arg("get-master-addr-by-name")
                    .arg("mymaster")
                    .query_async::<(String, u16)>(&mut c)
                    .await
                    .ok()
            };
            if let Ok(Some((_, port))) = tokio::time::timeout(Duration::from_secs(1), attempt).await
            {
                return Some(port);
            }
        }
        None
    }
}

/// Three cluster masters covering all slots.
pub struct Cluster {
    pub nodes: Vec<RedisProc>,
    /// The TLS client ports, when started with TLS.
    pub tls_ports: Vec<u16>,
}

impl Cluster {
    /// Starts three nodes, creates the cluster with `redis-cli --cluster
    /// create` and waits until every node reports `cluster_state:ok`.
    pub async fn start() -> Cluster {
        Self::start_with(None).await
    }

    /// As [`Cluster::start`], with TLS client and bus connections using
    /// `tls` (each node keeps a plain port for the readiness probe and for
    /// `redis-cli`; clients connecting over TLS are told the TLS ports).
    pub async fn start_with(tls: Option<&TlsFiles>) -> Cluster {
        Self::start_nodes(tls, 0).await
    }

    /// Three masters with one replica each (six nodes).
    pub async fn start_with_replicas() -> Cluster {
        Self::start_nodes(None, 1).await
    }

    async fn start_nodes(tls: Option<&TlsFiles>, replicas: usize) -> Cluster {
        let mut nodes = Vec::new();
        let mut tls_ports = Vec::new();
        for _ in 0..3 * (1 + replicas) {
            let mut args: Vec<String> =
                ["--cluster-enabled", "yes", "--cluster-node-timeout", "2000"]
                    .iter()
                    .map(|s| s.to_string())
                    .collect();
            if let Some(files) = tls {
                let port = free_port();
                tls_ports.push(port);
                args.extend([
                    "--tls-port".to_string(),
                    port.to_string(),
                    "--tls-cluster".into(),
                    "yes".into(),
                    "--tls-cert-file".into(),
                    files.cert.display().to_string(),
                    "--tls-key-file".into(),
                    files.key.display().to_string(),
                    "--tls-ca-cert-file".into(),
                    files.ca.display().to_string(),
                    "--tls-auth-clients".into(),
                    "no".into(),
                ]);
            }
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            nodes.push(RedisProc::start(free_port(), &args).await);
        }
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let mut cli = Command::new(binary("redis-cli"));
        if let Some(files) = tls {
            cli.arg("--tls").arg("--cacert").arg(&files.ca);
            let tls_addrs: Vec<String> =
                tls_ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
            cli.arg("--cluster").arg("create").args(&tls_addrs);
        } else {
            cli.arg("--cluster").arg("create").args(&addrs);
        }
        let out = cli
            .arg("--cluster-replicas")
            .arg(replicas.to_string())
            .arg("--cluster-yes")
            .output()
            .expect("run redis-cli --cluster create");
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let cluster = Cluster { nodes, tls_ports };
        cluster.wait_ok().await;
        cluster
    }

    /// Waits until every node reports `cluster_state:ok`.
    pub async fn wait_ok(&self) {
        for n in &self.nodes {
            let url = format!("redis://127.0.0.1:{}", n.port);
            eventually(Duration::from_secs(20), "cluster_state:ok", || {
                let url = url.clone();
                async move {
                    let client = redis::Client::open(url).ok()?;
                    let mut c = client.get_multiplexed_async_connection().await.ok()?;
                    let info: String = redis::cmd("CLUSTER")
                        .arg("INFO")
                        .query_async(&mut c)
                        .await
                        .ok()?;
                    info.contains("cluster_state:ok").then_some(())
                }
            })
            .await;
        }
    }

    /// SIGKILLs every node (the whole cluster crashes).
    pub fn kill_all(&mut self) {
        for n in &mut self.nodes {
            n.kill();
        }
    }

    /// Starts every node again (same ports and folders: each rejoins with
    /// its saved `nodes.conf`, without data) and waits for `cluster_state:ok`.
    pub async fn restart_all(&mut self) {
        for n in &mut self.nodes {
            n.respawn();
        }
        for n in &mut self.nodes {
            n.wait_ready(None).await;
        }
        self.wait_ok().await;
    }

    /// The card-style connection string (several hosts, no serviceName);
    /// over TLS with `ssl=true` and the TLS ports when started with TLS.
    pub fn connection_string(&self) -> String {
        let ports: Vec<u16> = if self.tls_ports.is_empty() {
            self.nodes.iter().map(|n| n.port).collect()
        } else {
            self.tls_ports.clone()
        };
        let addrs: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        if self.tls_ports.is_empty() {
            addrs.join(",")
        } else {
            format!("{},ssl=true", addrs.join(","))
        }
    }
}
