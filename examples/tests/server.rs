//! The `server` example as users run it: separate processes, configured only
//! through the environment.
//!
//! * three instances on one Redis: exactly one reports `is_leader` on
//!   `/health`; kill it (SIGKILL); another does within the lease;
//! * one compiled binary runs against Redis, etcd and Postgres by changing
//!   only `Store__ConnectionString`.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use leader_testkit::servers::{EtcdServer, PostgresServer, RedisServer, free_port};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

const LEASE: Duration = Duration::from_secs(2);

/// The example binary: `cargo build --examples` builds it (scripts/test.sh
/// does, before running the tests).
fn server_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let dir = exe.parent().and_then(|d| d.parent()).expect("target dir");
    let bin = dir.join("examples").join("server");
    assert!(
        bin.exists(),
        "{} missing: run cargo test --all-targets",
        bin.display()
    );
    bin
}

struct Instance {
    port: u16,
    child: Child,
}

impl Drop for Instance {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn_server(store_url: &str, resource: &str) -> Instance {
    let port = free_port().expect("a free loopback port");
    let child = Command::new(server_binary())
        .env("PORT", port.to_string())
        .env("Store__ConnectionString", store_url)
        .env("LeaderElection__ResourceName", resource)
        .env(
            "LeaderElection__LeaseDurationSeconds",
            LEASE.as_secs_f64().to_string(),
        )
        .env("LeaderElection__RenewalIntervalSeconds", "0.5")
        .env("LeaderElection__RetryPeriodSeconds", "0.25")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .expect("the server example starts");
    Instance { port, child }
}

/// GET /health: (HTTP status, document), or None while the server is not up.
async fn health(port: u16) -> Option<(u16, Value)> {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    stream
        .write_all(b"GET /health HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .await
        .ok()?;
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut response))
        .await
        .ok()?
        .ok()?;
    let text = String::from_utf8(response).ok()?;
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text.split("\r\n\r\n").nth(1)?;
    Some((status, serde_json::from_str(body).ok()?))
}

/// The indices of instances reporting is_leader, once all of them answer.
/// All instances are asked at the same moment (one task each), so that two
/// leaders at once are seen as such.
async fn leaders(instances: &[&Instance]) -> Option<Vec<usize>> {
    let asked: Vec<_> = instances
        .iter()
        .map(|instance| tokio::spawn(health(instance.port)))
        .collect();
    let mut answers = Vec::with_capacity(asked.len());
    for answer in asked {
        answers.push(answer.await.ok()??);
    }
    let mut leading = Vec::new();
    for (i, (status, doc)) in answers.into_iter().enumerate() {
        let entry = &doc["results"]["leader_election"];
        let is_leader = entry["data"]["is_leader"].as_bool()?;
        let expected = if is_leader { "Healthy" } else { "Degraded" };
        if entry["status"] != expected || status != 200 {
            return None;
        }
        if is_leader {
            leading.push(i);
        }
    }
    Some(leading)
}

/// Waits until every instance answers and exactly one leads; returns it.
async fn one_leader(instances: &[&Instance], within: Duration) -> usize {
    let deadline = Instant::now() + within;
    loop {
        match leaders(instances).await {
            Some(l) if l.len() == 1 => return l[0],
            Some(l) if l.len() > 1 => panic!("two leaders reported at once: {l:?}"),
            _ => {}
        }
        assert!(
            Instant::now() < deadline,
            "no single leader within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_servers_elect_one_and_fail_over_within_the_lease() {
    let redis = RedisServer::from_env_or_start().await.expect("redis");
    let resource = format!("srv-{}", std::process::id());
    let mut instances: Vec<Instance> = (0..3)
        .map(|_| spawn_server(redis.url(), &resource))
        .collect();
    let refs: Vec<&Instance> = instances.iter().collect();
    let leader = one_leader(&refs, Duration::from_secs(20)).await;

    let killed = Instant::now();
    let mut dead = instances.remove(leader);
    dead.child.kill().expect("kill -9 the leader");
    let _ = dead.child.wait();
    let refs: Vec<&Instance> = instances.iter().collect();
    // The crashed lease expires after at most LEASE; followers retry every
    // 250 ms. Allow generous slack for a loaded machine.
    one_leader(&refs, LEASE * 4).await;
    println!(
        "failover after SIGKILL: {:?} (lease {LEASE:?})",
        killed.elapsed()
    );
}

async fn elect_on(store_url: &str, kind: &str) {
    let resource = format!("swap-{kind}-{}", std::process::id());
    let a = spawn_server(store_url, &resource);
    let b = spawn_server(store_url, &resource);
    let leader = one_leader(&[&a, &b], Duration::from_secs(20)).await;
    let port = [a.port, b.port][leader];
    let (_, doc) = health(port).await.expect("health");
    assert_eq!(doc["results"]["leader_election"]["data"]["store"], kind);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_binary_runs_on_every_store_by_configuration_alone() {
    let redis = RedisServer::from_env_or_start().await.expect("redis");
    elect_on(redis.url(), "redis").await;
    let etcd = EtcdServer::from_env_or_start().await.expect("etcd");
    elect_on(etcd.url(), "etcd").await;
    let postgres = PostgresServer::from_env_or_start().await.expect("postgres");
    elect_on(postgres.url(), "postgres").await;
}
