//! A private `redis-server`.

use std::time::Duration;

use super::binaries::find_binary;
use super::probe::Probe;
use super::process::Spec;
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

async fn start_redis() -> Result<Server> {
    let program = find_binary("redis-server", "redis-server", RedisServer::ENV_VAR)?;
    let dir = server_dir("redis")?;
    let recipe = Recipe {
        name: RedisServer::NAME,
        env_var: RedisServer::ENV_VAR,
        probe: Probe::RedisPing,
        ready_within: Duration::from_secs(15),
        ports: 1,
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
                "--dir",
            ];
            let mut args: Vec<_> = args.iter().map(Into::into).collect();
            args.push(dir.as_os_str().to_owned());
            Ok(Spec {
                program: program.clone(),
                args,
                run_as: None,
                cwd: dir.to_owned(),
                log: dir.join("redis.log"),
            })
        }),
    };
    Server::launch(recipe, dir).await
}
