//! Private store servers owned by the test: `redis-server`, `etcd` and
//! Postgres run as child processes of the test binary, on free loopback
//! ports, in temporary folders.
//!
//! ```no_run
//! # async fn demo() -> leader_testkit::Result<()> {
//! use leader_testkit::servers::RedisServer;
//!
//! let redis = RedisServer::from_env_or_start().await?;
//! println!("connect to {}", redis.url()); // redis://127.0.0.1:PORT
//! redis.pause()?; // SIGSTOP: a hung server
//! redis.resume()?; // SIGCONT
//! redis.kill().await?; // SIGKILL: a crash
//! redis.restart().await?; // same port, same data folder
//! # Ok(()) }
//! ```
//!
//! Every server:
//!
//! * runs in the foreground (never daemonized) as a child of the test, in its
//!   own process group (away from the terminal's Ctrl-C); [`Server::pause`]
//!   and [`Server::kill`] signal its whole process tree (Postgres backends,
//!   which run in sessions of their own, included);
//! * is SIGKILLed, waited for and its folder removed when the handle drops,
//!   and is killed by the kernel if the test binary dies without dropping it
//!   (`setpriv --pdeathsig KILL`; the signal follows the *thread* that
//!   started the server, so start servers inside the test, not in a static
//!   shared by several tests);
//! * is ready when `start` returns: the kit waits until the server answers
//!   its own protocol (RESP `PING`, a Postgres startup handshake, etcd
//!   `/health`), within a bounded deadline, and reports the server log's last
//!   lines if it does not.
//!
//! With `LEADER_TEST_REDIS_URL`, `LEADER_TEST_POSTGRES_URL` or
//! `LEADER_TEST_ETCD_URL` set, `from_env_or_start` returns a handle on that
//! external server instead; it cannot be killed or paused (those calls return
//! [`Error::External`]).

mod binaries;
mod etcd;
mod postgres;
mod probe;
mod process;
mod redis;
mod redis_cluster;
mod sentinel;
mod tls;

use std::fmt;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use tempfile::TempDir;

pub use etcd::{EtcdCluster, EtcdServer};
pub use postgres::PostgresServer;
pub use redis::RedisServer;
pub use redis_cluster::RedisCluster;
pub use sentinel::RedisSentinelSet;
pub use tls::TlsFiles;

use crate::error::{Error, Result};
use probe::Probe;
use process::{ChildProcess, Spec, log_tail};

/// How many times a start is retried with fresh ports when the server exits
/// while starting (another process took a port between choice and bind).
const START_ATTEMPTS: usize = 3;

/// Builds a command line from the server folder, its ports and the attempt.
pub(crate) type SpecFn = Box<dyn Fn(&Path, &[u16], usize) -> Result<Spec> + Send + Sync>;

/// What a server kind needs to be started.
pub(crate) struct Recipe {
    /// `"redis"`, `"postgres"`, `"etcd"`.
    pub(crate) name: &'static str,
    /// The environment variable naming an external server of this kind.
    pub(crate) env_var: &'static str,
    pub(crate) probe: Probe,
    /// Bound on the wait for readiness (generous: loaded 2-core CI).
    pub(crate) ready_within: Duration,
    /// How many loopback ports the server needs; the first is the client port.
    pub(crate) ports: usize,
    /// The client URL for a client port.
    pub(crate) url: fn(u16) -> String,
    /// The command line for a folder, ports and attempt number.
    pub(crate) spec: SpecFn,
}

struct Owned {
    spec: Spec,
    probe: Probe,
    ready_within: Duration,
    child: Mutex<Option<ChildProcess>>,
    // Dropped after the child is killed (see `Drop for Server`).
    dir: TempDir,
}

/// A handle on a test server: one the kit started (and controls) or an
/// external one named by an environment variable.
///
/// [`RedisServer`], [`PostgresServer`] and [`EtcdServer`] dereference to it.
/// Dropping an owned server SIGKILLs its process tree, reaps it and
/// removes its folder.
pub struct Server {
    name: &'static str,
    env_var: &'static str,
    url: String,
    addr: SocketAddr,
    ports: Vec<u16>,
    owned: Option<Owned>,
}

impl fmt::Debug for Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Server")
            .field("name", &self.name)
            .field("url", &redact(&self.url))
            .field("addr", &self.addr)
            .field("external", &self.is_external())
            .field("pid", &self.pid())
            .finish()
    }
}

/// `url` with any password replaced by `***`.
pub(crate) fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) => {
            if parsed.password().is_some() {
                let _ = parsed.set_password(Some("***"));
            }
            parsed.to_string()
        }
        Err(_) => "(unparseable url)".to_owned(),
    }
}

/// A free loopback port for a test server, chosen BELOW the kernel's
/// ephemeral range (`net.ipv4.ip_local_port_range`). Servers that tests stop
/// and start again on the same port would otherwise race every outgoing
/// connection on the machine: the kernel may hand the freed port to a
/// client socket as its local port, and the restarted server's bind then
/// fails with "Address already in use" (seen on Redis over TLS).
///
/// # Errors
///
/// No free port found after many attempts.
pub fn free_port() -> std::io::Result<u16> {
    free_ports(1).map(|ports| ports[0])
}

/// `n` distinct free ports, as [`free_port`].
pub(crate) fn free_ports(n: usize) -> std::io::Result<Vec<u16>> {
    let below = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    // Well above the registered ports most daemons use, below the
    // ephemeral range; a kernel configured without room falls back to it.
    let (low, high) = if below > 20_000 {
        (10_000, below)
    } else {
        (below, u16::MAX)
    };
    let mut held = Vec::with_capacity(n);
    for _ in 0..1000 {
        if held.len() == n {
            break;
        }
        let port = rand::random_range(low..high);
        // Held until all are chosen, so the n ports are distinct.
        if let Ok(listener) = TcpListener::bind(("127.0.0.1", port)) {
            held.push(listener);
        }
    }
    if held.len() < n {
        return Err(std::io::Error::new(
            std::io::ErrorKind::AddrNotAvailable,
            format!("no {n} free loopback ports in {low}..{high}"),
        ));
    }
    held.iter()
        .map(|l| l.local_addr().map(|a| a.port()))
        .collect()
}

impl Server {
    /// Starts a server from `recipe` in `dir`, retrying with fresh ports when
    /// it exits while starting (a port taken between choice and bind).
    pub(crate) async fn launch(recipe: Recipe, mut dir: TempDir) -> Result<Server> {
        let mut attempt = 0;
        loop {
            let ports = free_ports(recipe.ports)
                .map_err(|e| Error::io("choosing free loopback ports", e))?;
            let server = Server::spawn(&recipe, dir, &ports, attempt)?;
            match server.wait_ready().await {
                Ok(()) => return Ok(server),
                Err(e) if attempt + 1 < START_ATTEMPTS && server.exited() => {
                    tracing::debug!(server = recipe.name, attempt, error = %e, "server exited while starting; retrying");
                    dir = server.into_dir().ok_or(e)?;
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Starts the process of `recipe` on `ports` without waiting for it to
    /// answer (members of a cluster only answer once enough of them run).
    pub(crate) fn spawn(
        recipe: &Recipe,
        dir: TempDir,
        ports: &[u16],
        attempt: usize,
    ) -> Result<Server> {
        let spec = (recipe.spec)(dir.path(), ports, attempt)?;
        let child = ChildProcess::spawn(&spec, recipe.env_var)?;
        Ok(Server {
            name: recipe.name,
            env_var: recipe.env_var,
            url: (recipe.url)(ports[0]),
            addr: SocketAddr::from(([127, 0, 0, 1], ports[0])),
            ports: ports.to_vec(),
            owned: Some(Owned {
                spec,
                probe: recipe.probe,
                ready_within: recipe.ready_within,
                child: Mutex::new(Some(child)),
                dir,
            }),
        })
    }

    /// Kills the process (if it runs) and hands back the server's folder,
    /// for a new attempt in the same place.
    fn into_dir(mut self) -> Option<TempDir> {
        let owned = self.owned.take()?;
        if let Some(mut child) = owned.child.into_inner().ok().flatten() {
            child.kill_blocking();
        }
        Some(owned.dir)
    }

    /// A handle on an external server at `url` (from `env_var`).
    pub(crate) async fn external(
        name: &'static str,
        env_var: &'static str,
        url: String,
        default_port: u16,
    ) -> Result<Server> {
        let bad = |problem: String| Error::BadUrl {
            env_var,
            url: redact(&url),
            problem,
        };
        // etcd accepts a comma-separated endpoint list; the first one is probed.
        let first = url.split(',').next().unwrap_or_default().trim();
        let parsed = url::Url::parse(first).map_err(|e| bad(e.to_string()))?;
        let host = parsed
            .host_str()
            .ok_or_else(|| bad("it has no host".to_owned()))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = parsed.port().unwrap_or(default_port);
        let addr = tokio::net::lookup_host((host.as_str(), port))
            .await
            .map_err(|e| bad(format!("cannot resolve {host}: {e}")))?
            .next()
            .ok_or_else(|| bad(format!("{host} resolves to no address")))?;
        // A server that is not up (docker compose not started) is reported
        // once, here, rather than by every case.
        match tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(addr))
            .await
        {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(bad(format!("cannot connect to {addr}: {e}"))),
            Err(_) => return Err(bad(format!("no answer from {addr} within 5s"))),
        }
        Ok(Server {
            name,
            env_var,
            url,
            addr,
            ports: vec![addr.port()],
            owned: None,
        })
    }

    /// The URL clients connect with: `redis://127.0.0.1:P`,
    /// `postgres://postgres@127.0.0.1:P/postgres`, `http://127.0.0.1:P`, or
    /// the external server's URL as given.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// This server's URL with its host and port replaced by `addr`: the URL
    /// to give a client that must go through a
    /// [`FaultProxy`](crate::proxy::FaultProxy) (`server.url_via(proxy.addr())`).
    /// User, password, database and query are kept.
    pub fn url_via(&self, addr: SocketAddr) -> String {
        let first = self.url.split(',').next().unwrap_or_default().trim();
        let replaced = url::Url::parse(first).ok().and_then(|mut url| {
            url.set_ip_host(addr.ip()).ok()?;
            url.set_port(Some(addr.port())).ok()?;
            let text = url.to_string();
            // `Url` adds a trailing slash to an empty path; keep the original form.
            Some(if !first.ends_with('/') && url.path() == "/" {
                text.trim_end_matches('/').to_owned()
            } else {
                text
            })
        });
        replaced.unwrap_or_else(|| self.url.replace(&self.addr.to_string(), &addr.to_string()))
    }

    /// The client address (for an external server, its first resolved address).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Every loopback port of the server, the client port first (then, for
    /// etcd, the peer port; for Redis over TLS, the TLS port).
    pub fn ports(&self) -> &[u16] {
        &self.ports
    }

    /// `"redis"`, `"postgres"` or `"etcd"`.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Whether this is an external server the kit cannot control.
    pub fn is_external(&self) -> bool {
        self.owned.is_none()
    }

    /// The server's process id, while it runs (`None` when external or killed).
    pub fn pid(&self) -> Option<u32> {
        let owned = self.owned.as_ref()?;
        lock(&owned.child).as_ref().map(ChildProcess::pid)
    }

    /// Whether the server process is running (always `true` for an external
    /// server, which the kit cannot observe).
    pub fn is_running(&self) -> bool {
        match &self.owned {
            None => true,
            Some(owned) => lock(&owned.child)
                .as_mut()
                .is_some_and(|c| c.try_wait().is_none()),
        }
    }

    /// The server's folder (data and log), for an owned server.
    pub fn dir(&self) -> Option<&Path> {
        self.owned.as_ref().map(|o| o.dir.path())
    }

    /// The last `lines` lines of the server's log (empty for an external
    /// server), to print when a test fails.
    pub fn log_tail(&self, lines: usize) -> String {
        self.owned
            .as_ref()
            .map(|o| log_tail(&o.spec.log, lines))
            .unwrap_or_default()
    }

    /// The server's log file, for an owned server.
    pub fn log_path(&self) -> Option<PathBuf> {
        self.owned.as_ref().map(|o| o.spec.log.clone())
    }

    fn owned(&self, operation: &'static str) -> Result<&Owned> {
        self.owned.as_ref().ok_or_else(|| Error::External {
            operation,
            server: self.name,
            url: redact(&self.url),
            env_var: self.env_var,
        })
    }

    pub(crate) fn exited(&self) -> bool {
        self.owned.as_ref().is_some_and(|o| {
            lock(&o.child)
                .as_mut()
                .is_none_or(|c| c.try_wait().is_some())
        })
    }

    /// One readiness probe (at most 1 s): whether the server answers its
    /// protocol now (RESP `PING`, a Postgres startup handshake, etcd
    /// `/health`). Works for external servers too, when they need no password.
    pub async fn answers(&self) -> bool {
        self.probe().check(self.addr).await
    }

    fn probe(&self) -> Probe {
        match self.name {
            "postgres" => Probe::PostgresStartup,
            "etcd" => Probe::EtcdHealth,
            _ => Probe::RedisPing,
        }
    }

    /// Kills the server with SIGKILL (a crash: no shutdown, no release) and
    /// waits until every process of it is gone. Does nothing if it is not
    /// running.
    ///
    /// # Errors
    ///
    /// [`Error::External`] for an external server; [`Error::Timeout`] if the
    /// processes are not gone within 10 s.
    pub async fn kill(&self) -> Result<()> {
        let owned = self.owned("kill")?;
        let child = lock(&owned.child).take();
        if let Some(child) = child {
            child.kill().await?;
        }
        Ok(())
    }

    /// Stops every process of the server with SIGSTOP: it keeps its
    /// connections and port but answers nothing (a hung server).
    ///
    /// # Errors
    ///
    /// [`Error::External`] for an external server, [`Error::NotRunning`]
    /// after [`Server::kill`].
    pub fn pause(&self) -> Result<()> {
        self.signal("pause", Signal::SIGSTOP)
    }

    /// Continues a paused server with SIGCONT.
    ///
    /// # Errors
    ///
    /// As for [`Server::pause`].
    pub fn resume(&self) -> Result<()> {
        self.signal("resume", Signal::SIGCONT)
    }

    fn signal(&self, operation: &'static str, signal: Signal) -> Result<()> {
        let owned = self.owned(operation)?;
        match lock(&owned.child).as_ref() {
            Some(child) => child.signal(signal),
            None => Err(Error::NotRunning {
                operation,
                server: self.name,
            }),
        }
    }

    /// Starts the server again on the same port with the same data folder
    /// (after [`Server::kill`], or SIGKILLing it first if it still runs), and
    /// waits until it answers.
    ///
    /// # Errors
    ///
    /// [`Error::External`] for an external server; [`Error::NotReady`] with
    /// the log's tail if it does not come back within its bound.
    pub async fn restart(&self) -> Result<()> {
        let owned = self.owned("restart")?;
        self.kill().await?;
        let child = ChildProcess::spawn(&owned.spec, self.env_var)?;
        *lock(&owned.child) = Some(child);
        self.wait_ready().await
    }

    /// Waits until the server answers its protocol, or fails with the log
    /// tail once it exited or `ready_within` passed.
    pub(crate) async fn wait_ready(&self) -> Result<()> {
        let owned = self.owned("wait for")?;
        // Real time, not tokio time: a test with paused time must not make
        // the deadline pass instantly.
        let started = Instant::now();
        loop {
            let status = lock(&owned.child).as_mut().map(ChildProcess::try_wait);
            let problem = match status {
                None => Some("is not running".to_owned()),
                Some(Some(status)) => Some(format!("exited while starting ({status})")),
                Some(None) if owned.probe.check(self.addr).await => return Ok(()),
                Some(None) if started.elapsed() > owned.ready_within => {
                    Some(format!("did not answer within {:?}", owned.ready_within))
                }
                Some(None) => None,
            };
            if let Some(problem) = problem {
                return Err(Error::NotReady {
                    server: self.name,
                    addr: self.addr.to_string(),
                    problem,
                    log: owned.spec.log.clone(),
                    log_tail: log_tail(&owned.spec.log, 20),
                });
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The guarded values stay consistent across a panic (single assignments).
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(owned) = &self.owned
            && let Some(mut child) = lock(&owned.child).take()
        {
            child.kill_blocking();
        }
        // `owned.dir` (a TempDir) is removed after this, with the process gone.
    }
}

/// Reads `env_var`; `None` when unset or blank.
pub(crate) fn env_url(env_var: &str) -> Option<String> {
    std::env::var(env_var)
        .ok()
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
}

/// Where server folders go: `LEADER_TEST_TMPDIR` when set, else `/dev/shm`
/// when it is a tmpfs with at least 1 GiB free (fsync and copies cost
/// nothing there, which keeps etcd and Postgres fast on a loaded machine;
/// a container's 64 MiB `/dev/shm` is skipped), else the system temp dir.
pub fn scratch_root() -> PathBuf {
    if let Some(dir) = std::env::var_os("LEADER_TEST_TMPDIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    let shm = Path::new("/dev/shm");
    let roomy = nix::sys::statvfs::statvfs(shm).is_ok_and(|st| {
        let free = st.blocks_available().saturating_mul(st.fragment_size());
        free >= 1 << 30
    });
    let writable = nix::unistd::access(shm, nix::unistd::AccessFlags::W_OK).is_ok();
    if roomy && writable {
        shm.to_owned()
    } else {
        std::env::temp_dir()
    }
}

/// A fresh folder for one server under [`scratch_root`].
pub(crate) fn server_dir(name: &str) -> Result<TempDir> {
    let root = scratch_root();
    tempfile::Builder::new()
        .prefix(&format!("leader-testkit-{name}-"))
        .tempdir_in(&root)
        .map_err(|e| {
            Error::io(
                format!("creating a folder for a test server in {}", root.display()),
                e,
            )
        })
}

/// Implements `Deref<Target = Server>` and the constructors shared by every
/// server kind.
macro_rules! server_kind {
    ($ty:ident, $recipe:path, $env:expr, $port:expr) => {
        impl std::ops::Deref for $ty {
            type Target = $crate::servers::Server;
            fn deref(&self) -> &Self::Target {
                &self.0
            }
        }

        impl $ty {
            /// The environment variable that names an external server of this kind.
            pub const ENV_VAR: &'static str = $env;

            /// Starts a private server on a free loopback port in a temporary
            /// folder and waits until it answers.
            ///
            /// # Errors
            ///
            /// [`Error::MissingBinary`](crate::Error::MissingBinary) naming the
            /// binary and its Debian package; [`Error::NotReady`](crate::Error::NotReady)
            /// with the server log's tail if it does not answer in time.
            pub async fn start() -> $crate::Result<Self> {
                $recipe().await.map($ty)
            }

            /// A handle on the external server named by the environment
            /// variable [`Self::ENV_VAR`] when it is set, else [`Self::start`].
            ///
            /// # Errors
            ///
            /// As [`Self::start`], or [`Error::BadUrl`](crate::Error::BadUrl)
            /// when the variable's URL cannot be used.
            pub async fn from_env_or_start() -> $crate::Result<Self> {
                match $crate::servers::env_url($env) {
                    Some(url) => Self::external(url).await,
                    None => Self::start().await,
                }
            }

            /// A handle on an external server at `url`: the kit neither
            /// starts nor controls it.
            ///
            /// # Errors
            ///
            /// [`Error::BadUrl`](crate::Error::BadUrl) when the URL has no
            /// host or the host does not resolve.
            pub async fn external(url: impl Into<String>) -> $crate::Result<Self> {
                $crate::servers::Server::external(<$ty>::NAME, $env, url.into(), $port)
                    .await
                    .map($ty)
            }

            /// The server handle (also reachable through `Deref`).
            pub fn server(&self) -> &$crate::servers::Server {
                &self.0
            }
        }
    };
}
pub(crate) use server_kind;
