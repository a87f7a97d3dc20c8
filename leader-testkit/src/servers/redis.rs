//! A private `redis-server`, plain or over TLS, with extra arguments.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::binaries::find_binary;
use super::probe::Probe;
use super::process::Spec;
use super::tls::TlsFiles;
use super::{Recipe, Server, server_dir, server_kind};
use crate::error::Result;

/// A private `redis-server` (no persistence) owned by the test, or an
/// external one from `LEADER_TEST_REDIS_URL`. Dereferences to [`Server`]
/// for `url()`, `kill()`, `pause()`, `restart()` and the rest.
#[derive(Debug)]
pub struct RedisServer(Server);

impl RedisServer {
    const NAME: &'static str = "redis";
}

server_kind!(RedisServer, start_redis, "LEADER_TEST_REDIS_URL", 6379);

/// Arguments that depend on the server's folder and ports.
pub(crate) type ArgsFn = Box<dyn Fn(&Path, &[u16]) -> Vec<OsString> + Send + Sync>;

impl RedisServer {
    /// A private server with `args` appended to the kit's own
    /// (`--requirepass p`, `--replicaof 127.0.0.1 P`, `--cluster-enabled yes`).
    ///
    /// # Errors
    ///
    /// As [`RedisServer::start`].
    pub async fn start_with(args: &[&str]) -> Result<RedisServer> {
        let args: Vec<OsString> = args.iter().map(Into::into).collect();
        launch(1, Box::new(move |_, _| args.clone()))
            .await
            .map(RedisServer)
    }

    /// A private server that also serves TLS on a second port
    /// ([`RedisServer::tls_port`]) with `tls`'s certificate, without asking
    /// clients for one; `args` are appended. Its plain port stays open for
    /// the readiness probe and for inspection. With `--tls-cluster yes` in
    /// `args` the cluster bus uses TLS too.
    ///
    /// # Errors
    ///
    /// As [`RedisServer::start`].
    pub async fn start_tls(tls: &TlsFiles, args: &[&str]) -> Result<RedisServer> {
        let files: [PathBuf; 3] = [tls.cert.clone(), tls.key.clone(), tls.ca.clone()];
        let args: Vec<OsString> = args.iter().map(Into::into).collect();
        let extra: ArgsFn = Box::new(move |_, ports| {
            let mut all: Vec<OsString> = vec!["--tls-port".into(), ports[1].to_string().into()];
            for (flag, file) in ["--tls-cert-file", "--tls-key-file", "--tls-ca-cert-file"]
                .iter()
                .zip(&files)
            {
                all.push(flag.into());
                all.push(file.into());
            }
            all.extend(["--tls-auth-clients".into(), "no".into()]);
            all.extend(args.iter().cloned());
            all
        });
        launch(2, extra).await.map(RedisServer)
    }

    /// The TLS client port of a server started with [`RedisServer::start_tls`].
    pub fn tls_port(&self) -> Option<u16> {
        self.ports().get(1).copied()
    }
}

async fn start_redis() -> Result<Server> {
    launch(1, Box::new(|_, _| Vec::new())).await
}

/// Starts `redis-server` on `ports` loopback ports (the first is the plain
/// client port) with the kit's arguments and then `extra`'s.
pub(crate) async fn launch(ports: usize, extra: ArgsFn) -> Result<Server> {
    let dir = server_dir("redis")?;
    Server::launch(recipe(ports, extra)?, dir).await
}

/// The recipe of a `redis-server` with the kit's arguments and `extra`'s.
pub(crate) fn recipe(ports: usize, extra: ArgsFn) -> Result<Recipe> {
    let program = find_binary("redis-server", "redis-server", RedisServer::ENV_VAR)?;
    Ok(Recipe {
        name: RedisServer::NAME,
        env_var: RedisServer::ENV_VAR,
        probe: Probe::RedisPing,
        ready_within: Duration::from_secs(15),
        ports,
        url: |port| format!("redis://127.0.0.1:{port}"),
        spec: Box::new(move |dir, ports, _attempt| {
            let args = [
                "--bind",
                "127.0.0.1",
                "--port",
                &ports[0].to_string(),
                "--save",
                "",
                "--appendonly",
                "no",
                "--daemonize",
                "no",
                // Replicas sync at once, without a disk round trip.
                "--repl-diskless-sync",
                "yes",
                "--repl-diskless-sync-delay",
                "0",
                "--dir",
            ];
            let mut args: Vec<OsString> = args.iter().map(Into::into).collect();
            args.push(dir.as_os_str().to_owned());
            args.extend(extra(dir, ports));
            Ok(Spec {
                program: program.clone(),
                args,
                run_as: None,
                cwd: dir.to_owned(),
                log: dir.join("redis.log"),
            })
        }),
    })
}
