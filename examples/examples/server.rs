//! An HTTP service with the card's health and metrics endpoints:
//!
//! * `GET /health`: `{"status": ..., "results": {"leader_election": {"status":
//!   "Healthy"|"Degraded"|"Unhealthy", "data": {"is_leader": ..., ...}}}}`;
//!   Healthy and Degraded answer 200, Unhealthy 503.
//! * `GET /health/live`: the liveness probe (503 when the elector task is dead
//!   or stuck), `{"status": "pass"|"fail", "reason": ...}`.
//! * `GET /health/ready`: the readiness probe under the policy in `READINESS`
//!   (`always`, the default; `leader`; `store`).
//! * `GET /metrics`: Prometheus text format, with `# HELP` lines and
//!   histogram buckets from 25 us to 15 s.
//!
//! ```text
//! Store__ConnectionString=redis://127.0.0.1:6379 LeaderElection__ResourceName=honua-server \
//!     PORT=8081 cargo run --example server
//! ```
//!
//! Reads `LEADER_SETTINGS` (a JSON file), `LeaderElection__*`,
//! `Store__ConnectionString` / `Redis__ConnectionString` / `LEADER_STORE`,
//! `PORT` (default 8080), `BIND_ADDRESS` (default 127.0.0.1: the card says
//! the health endpoint must not be public) and `READINESS`.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use leader::http::health_routes;
use leader::{Error, Readiness, Result};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Buckets (seconds) of the store round-trip histograms
/// (`*_acquire_duration_seconds`, `*_renew_duration_seconds`): loopback calls
/// take 24 us (Redis renew) to 0.8 ms (etcd acquire) at p50 and a few ms at
/// p99 (docs/benchmarks.md), remote stores milliseconds, and no call outlives
/// the request timeout (by default the renewal interval: 10 s in Production,
/// 15 s in HighLoad). The exporter's default buckets start at 5 ms and would
/// put every loopback call in the first one.
const STORE_CALL_BUCKETS: [f64; 19] = [
    0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1,
    0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0,
];

async fn render_metrics(State(metrics): State<PrometheusHandle>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        metrics.render(),
    )
}

/// The readiness policy named by `READINESS` (default `always`).
fn readiness() -> Result<Readiness> {
    match std::env::var("READINESS") {
        Err(_) => Ok(Readiness::Always),
        Ok(v) => match v.trim().to_ascii_lowercase().as_str() {
            "" | "always" => Ok(Readiness::Always),
            "leader" => Ok(Readiness::WhenLeader),
            "store" => Ok(Readiness::WhenStoreHealthy),
            _ => Err(Error::invalid_config(format!(
                "READINESS: {v:?} is not one of always, leader, store"
            ))),
        },
    }
}

fn listen_address() -> Result<SocketAddr> {
    let port = match std::env::var("PORT") {
        Ok(p) => p
            .trim()
            .parse::<u16>()
            .map_err(|_| Error::invalid_config(format!("PORT: {p:?} is not a port number")))?,
        Err(_) => 8080,
    };
    let ip = match std::env::var("BIND_ADDRESS") {
        Ok(a) => a.trim().parse::<IpAddr>().map_err(|_| {
            Error::invalid_config(format!("BIND_ADDRESS: {a:?} is not an IP address"))
        })?,
        Err(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
    };
    Ok(SocketAddr::new(ip, port))
}

async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(term) => term,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    leader_examples::init_logging();
    let settings = leader_examples::settings()?;
    let address = listen_address()?;
    let readiness = readiness()?;
    // The recorder must be installed before the elector registers its metrics.
    let metrics = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Suffix("_duration_seconds".to_owned()),
            &STORE_CALL_BUCKETS,
        )
        .and_then(|builder| builder.install_recorder())
        .map_err(|e| Error::unsupported(format!("cannot install the metrics recorder: {e}")))?;
    let elector = settings.start_elector()?;
    let router = Router::new()
        .route("/metrics", get(render_metrics))
        .with_state(metrics)
        .merge(health_routes(elector.clone(), readiness));
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .map_err(|e| Error::unavailable(format!("cannot listen on {address}: {e}")))?;
    tracing::info!(%address, instance = %elector.instance_id(), key = %elector.key(),
        store = ?settings.store, ?readiness, "serving /health, /health/live, /health/ready and /metrics");
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown_signal())
        .await
        .map_err(|e| Error::unavailable(format!("HTTP server failed: {e}")))?;
    elector.shutdown().await;
    Ok(())
}
