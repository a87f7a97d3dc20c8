//! Health endpoints for [axum](https://docs.rs/axum) (feature `axum`).
//!
//! [`health_routes`] serves, for one [`Elector`]:
//!
//! | route | answers | status |
//! |---|---|---|
//! | `GET /health` | the card's document (`{"status", "results": {"leader_election": ...}}`) | 200 Healthy or Degraded, 503 Unhealthy |
//! | `GET /health/live` | `{"status": "pass"\|"fail", "reason"}` from [`Elector::liveness`] | 200 / 503 |
//! | `GET /health/ready` | the same shape, from the [`Readiness`] policy you pass | 200 / 503 |
//!
//! Point the Kubernetes `livenessProbe` at `/health/live` and the
//! `readinessProbe` at `/health/ready`; keep `/health` for people and
//! dashboards. The card says the endpoint must not be public: serve it on a
//! private address or port.
//!
//! ```no_run
//! # async fn run(elector: leader::Elector) -> std::io::Result<()> {
//! use leader::Readiness;
//! use leader::http::health_routes;
//!
//! let app = axum::Router::new().merge(health_routes(elector, Readiness::Always));
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! axum::serve(listener, app).await
//! # }
//! ```

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use leader_core::{Elector, Probe, Readiness};

/// What the health routes serve.
#[derive(Debug, Clone)]
struct Probes {
    elector: Elector,
    readiness: Readiness,
}

/// The routes `/health`, `/health/live` and `/health/ready` for `elector`,
/// with readiness decided by `readiness`. Merge them into your router; they
/// carry their own state, so they fit a router of any state type.
pub fn health_routes<S>(elector: Elector, readiness: Readiness) -> Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    Router::new()
        .route("/health", get(card))
        .route("/health/live", get(live))
        .route("/health/ready", get(ready))
        .with_state(Probes { elector, readiness })
}

fn status(code: u16) -> StatusCode {
    StatusCode::from_u16(code).unwrap_or(StatusCode::SERVICE_UNAVAILABLE)
}

async fn card(State(probes): State<Probes>) -> Response {
    let report = probes.elector.health();
    (
        status(report.status.http_status()),
        Json(report.to_document()),
    )
        .into_response()
}

fn probe(probe: Probe) -> Response {
    (status(probe.http_status()), Json(probe.to_document())).into_response()
}

async fn live(State(probes): State<Probes>) -> Response {
    probe(probes.elector.liveness())
}

async fn ready(State(probes): State<Probes>) -> Response {
    probe(probes.readiness.check(&probes.elector))
}
