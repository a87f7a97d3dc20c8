//! The axum health routes answer with the status codes Kubernetes probes
//! expect. Run with `cargo test -p leader --features axum --test http`.
#![cfg(feature = "axum")]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use leader::http::health_routes;
use leader::{ElectionConfig, Elector, LeaseStore, MemoryStore, Readiness};
use leader_testkit::wait::eventually;
use leader_testkit::wrap::{Fault, Faults, Op, Wrapped};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const LEASE: Duration = Duration::from_secs(3);

fn start(store: Arc<dyn LeaseStore>, instance: &str) -> Elector {
    let mut config = ElectionConfig::new("http").with_timing(LEASE, Duration::from_secs(1));
    config.instance_id = Some(instance.to_owned());
    config.key_prefix = "test:".to_owned();
    Elector::start(store, config).expect("valid config")
}

/// Serves `elector`'s health routes on a free loopback port.
async fn serve(elector: Elector, readiness: Readiness) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let address = listener.local_addr().expect("bound");
    let app: axum::Router = health_routes(elector, readiness);
    tokio::spawn(async move { axum::serve(listener, app).await });
    address
}

/// GET `path`: the status code and the JSON body (Null when not JSON).
async fn get(address: SocketAddr, path: &str) -> (u16, Value) {
    let mut stream = tokio::net::TcpStream::connect(address)
        .await
        .expect("connect");
    let request = format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .expect("send request");
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .await
        .expect("read response");
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {response:?}"));
    let body = response.split("\r\n\r\n").nth(1).unwrap_or_default();
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    eventually(LEASE * 5, what, || std::future::ready(cond())).await;
}

#[tokio::test]
async fn leader_and_follower_answer_health_live_and_ready() {
    let memory = MemoryStore::new();
    let a = start(Arc::new(memory.clone()), "a");
    wait_until("a leads", || a.is_leader()).await;
    let b = start(Arc::new(memory), "b");
    wait_until("b knows a", || b.subscribe().borrow().leader_id.is_some()).await;
    let leader = serve(a.clone(), Readiness::WhenLeader).await;
    let follower = serve(b.clone(), Readiness::WhenLeader).await;

    let (code, doc) = get(leader, "/health").await;
    assert_eq!(code, 200);
    assert_eq!(doc["results"]["leader_election"]["status"], "Healthy");
    assert_eq!(doc["results"]["leader_election"]["data"]["is_leader"], true);
    assert_eq!(get(leader, "/health/live").await.0, 200);
    let (code, doc) = get(leader, "/health/ready").await;
    assert_eq!((code, &doc["status"]), (200, &Value::from("pass")));

    let (code, doc) = get(follower, "/health").await;
    assert_eq!(code, 200, "a follower is Degraded, which is fine");
    assert_eq!(doc["results"]["leader_election"]["status"], "Degraded");
    let (code, doc) = get(follower, "/health/live").await;
    assert_eq!((code, &doc["status"]), (200, &Value::from("pass")));
    let (code, doc) = get(follower, "/health/ready").await;
    assert_eq!((code, &doc["status"]), (503, &Value::from("fail")), "{doc}");

    assert_eq!(get(leader, "/health/other").await.0, 404);
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn a_dead_elector_task_fails_health_and_liveness_but_not_readiness() {
    // `acquire` panics: the elector task dies on its first call.
    let panicking = Wrapped::new(Arc::new(MemoryStore::new()), Faults::new());
    panicking.set(Op::Acquire, Some(Fault::Panic));
    let dead = start(Arc::new(panicking), "dead");
    let address = serve(dead.clone(), Readiness::Always).await;
    wait_until("the task died", || !dead.liveness().pass).await;

    let (code, doc) = get(address, "/health").await;
    assert_eq!(code, 503);
    assert_eq!(doc["results"]["leader_election"]["status"], "Unhealthy");
    let (code, doc) = get(address, "/health/live").await;
    assert_eq!((code, &doc["status"]), (503, &Value::from("fail")), "{doc}");
    assert!(
        doc["reason"].as_str().is_some_and(|r| r.contains("ended")),
        "{doc}"
    );
    assert_eq!(get(address, "/health/ready").await.0, 200, "Always ready");
}
