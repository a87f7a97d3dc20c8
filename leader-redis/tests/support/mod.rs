//! Helpers shared by leader-redis's tests. The servers themselves (TLS,
//! Sentinel, Cluster) come from `leader_testkit::servers`.

#![allow(dead_code, unreachable_pub)]

pub mod election;

/// A raw connection for inspecting and tampering with keys.
pub async fn raw(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .expect("client")
        .get_multiplexed_async_connection()
        .await
        .expect("raw connection")
}
