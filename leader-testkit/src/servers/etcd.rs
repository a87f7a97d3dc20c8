//! A private single-member `etcd`.

use std::time::Duration;

use super::binaries::find_binary;
use super::probe::Probe;
use super::process::Spec;
use super::{Recipe, Server, server_dir, server_kind};
use crate::error::Result;

/// A private single-member `etcd` owned by the test (with fast heartbeat and
/// election flags: ready in about 30 ms), or an external one from
/// `LEADER_TEST_ETCD_URL`. Dereferences to [`Server`].
#[derive(Debug)]
pub struct EtcdServer(Server);

impl EtcdServer {
    const NAME: &'static str = "etcd";
}

server_kind!(EtcdServer, start_etcd, "LEADER_TEST_ETCD_URL", 2379);

async fn start_etcd() -> Result<Server> {
    let program = find_binary("etcd", "etcd-server", EtcdServer::ENV_VAR)?;
    let dir = server_dir("etcd")?;
    let recipe = Recipe {
        name: EtcdServer::NAME,
        env_var: EtcdServer::ENV_VAR,
        probe: Probe::EtcdHealth,
        ready_within: Duration::from_secs(20),
        ports: 2,
        url: |port| format!("http://127.0.0.1:{port}"),
        spec: Box::new(move |dir, ports, attempt| {
            let client = format!("http://127.0.0.1:{}", ports[0]);
            let peer = format!("http://127.0.0.1:{}", ports[1]);
            // A fresh data folder per attempt: the member's peer URL is
            // written into it on first start.
            let data = dir.join(format!("data-{attempt}"));
            let args: Vec<String> = vec![
                "--name".into(),
                "n1".into(),
                "--data-dir".into(),
                data.to_string_lossy().into_owned(),
                "--listen-client-urls".into(),
                client.clone(),
                "--advertise-client-urls".into(),
                client,
                "--listen-peer-urls".into(),
                peer.clone(),
                "--initial-advertise-peer-urls".into(),
                peer.clone(),
                "--initial-cluster".into(),
                format!("n1={peer}"),
                "--heartbeat-interval".into(),
                "10".into(),
                "--election-timeout".into(),
                "100".into(),
                "--logger=zap".into(),
                "--log-outputs=stderr".into(),
            ];
            Ok(Spec {
                program: program.clone(),
                args: args.into_iter().map(Into::into).collect(),
                run_as: None,
                cwd: dir.to_owned(),
                log: dir.join("etcd.log"),
            })
        }),
    };
    Server::launch(recipe, dir).await
}
