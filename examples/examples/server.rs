//! An HTTP service with the card's health and metrics endpoints:
//!
//! * `GET /health`: `{"status": ..., "results": {"leader_election": {"status":
//!   "Healthy"|"Degraded"|"Unhealthy", "data": {"is_leader": ..., ...}}}}`;
//!   Healthy and Degraded answer 200, Unhealthy 503.
//! * `GET /metrics`: Prometheus text format.
//!
//! ```text
//! Store__ConnectionString=redis://127.0.0.1:6379 LeaderElection__ResourceName=honua-server \
//!     PORT=8081 cargo run --example server
//! ```
//!
//! Reads `LEADER_SETTINGS` (a JSON file), `LeaderElection__*`,
//! `Store__ConnectionString` / `Redis__ConnectionString` / `LEADER_STORE`,
//! `PORT` (default 8080) and `BIND_ADDRESS` (default 127.0.0.1: the card says
//! the health endpoint must not be public).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use leader::{Elector, Error, Result};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

#[derive(Clone)]
struct App {
    elector: Elector,
    metrics: PrometheusHandle,
}

async fn health(State(app): State<App>) -> impl IntoResponse {
    let report = app.elector.health();
    let status = StatusCode::from_u16(report.status.http_status()).unwrap_or(StatusCode::OK);
    (status, axum::Json(report.to_document()))
}

async fn metrics(State(app): State<App>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        app.metrics.render(),
    )
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
    // The recorder must be installed before the elector registers its metrics.
    let metrics = PrometheusBuilder::new()
        .install_recorder()
        .map_err(|e| Error::unsupported(format!("cannot install the metrics recorder: {e}")))?;
    let elector = settings.start_elector()?;
    let app = App {
        elector: elector.clone(),
        metrics,
    };
    let router = Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics_handler))
        .with_state(app);
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .map_err(|e| Error::unavailable(format!("cannot listen on {address}: {e}")))?;
    tracing::info!(%address, instance = %elector.instance_id(), key = %elector.key(),
        store = ?settings.store, "serving /health and /metrics");
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown_signal())
        .await
        .map_err(|e| Error::unavailable(format!("HTTP server failed: {e}")))?;
    elector.shutdown().await;
    Ok(())
}

async fn metrics_handler(state: State<App>) -> impl IntoResponse {
    metrics(state).await
}
