//! levee's admin listener: liveness, readiness, metrics and the JSON API.
//!
//! It runs beside the data plane, never in its path: a slow scrape or API
//! call cannot delay a proxied request. It binds loopback by default.
//! Reloads requested here go to the binary's single reload loop, the same
//! one SIGHUP and the file watcher feed, so reloads never race.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use levee_proxy::Gateway;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

mod api;
mod auth;
pub mod dashboard;
mod events;

/// What asked for a reload, for logs and metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReloadSource {
    Api,
    Signal,
    FileWatch,
}

impl ReloadSource {
    pub fn as_str(self) -> &'static str {
        match self {
            ReloadSource::Api => "api",
            ReloadSource::Signal => "signal",
            ReloadSource::FileWatch => "file-watch",
        }
    }
}

/// The result of a reload, as reported to whoever asked.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum ReloadOutcome {
    /// The new config is serving. `warnings` name settings that only take
    /// effect at restart.
    Applied { warnings: Vec<String> },
    /// The new config was refused; the running one keeps serving.
    Rejected { errors: Vec<String> },
    /// There is no file to reload from (e.g. `levee demo`).
    Unavailable { reason: String },
}

/// A reload request with the channel its outcome is sent back on.
pub struct ReloadRequest {
    pub source: ReloadSource,
    pub reply: Option<oneshot::Sender<ReloadOutcome>>,
}

/// Alerts as the alert engine keeps them, for `GET /api/v1/alerts`.
pub trait AlertView: Send + Sync {
    /// Alerts pending or firing now (a JSON array).
    fn alerts(&self) -> serde_json::Value;
    /// The notifiers and how their deliveries go (a JSON array).
    fn notifiers(&self) -> serde_json::Value;
}

#[derive(Clone)]
pub struct AdminState {
    pub gateway: Arc<Gateway>,
    pub reload: mpsc::Sender<ReloadRequest>,
    pub alerts: Arc<dyn AlertView>,
    /// Fires when the admin listener stops: event streams end with it, so
    /// that the graceful shutdown does not wait on them forever.
    pub shutdown: CancellationToken,
    /// When the process started.
    pub started: std::time::SystemTime,
}

/// The admin API's routes: the dashboard, liveness, readiness, metrics and
/// the JSON API. Everything but liveness, readiness and the dashboard's
/// static files needs the bearer token when one is configured.
pub fn router(state: AdminState) -> Router {
    let api = Router::new()
        .route("/metrics", get(metrics))
        .route("/api/v1/status", get(api::status))
        .route("/api/v1/listeners", get(api::listeners))
        .route("/api/v1/routes", get(api::routes))
        .route(
            "/api/v1/routes/{route}/fault",
            get(api::route_fault)
                .put(api::put_route_fault)
                .delete(api::remove_route_fault),
        )
        .route("/api/v1/upstreams", get(api::upstreams))
        .route("/api/v1/upstreams/{upstream}", get(api::upstream))
        .route(
            "/api/v1/upstreams/{upstream}/endpoints/{endpoint}/drain",
            post(api::drain),
        )
        .route(
            "/api/v1/upstreams/{upstream}/endpoints/{endpoint}/undrain",
            post(api::undrain),
        )
        .route(
            "/api/v1/upstreams/{upstream}/endpoints/{endpoint}/weight",
            put(api::weight),
        )
        .route("/api/v1/history", get(api::history))
        .route("/api/v1/alerts", get(api::alerts))
        .route("/api/v1/notifiers", get(api::notifiers))
        .route("/api/v1/events", get(events::stream))
        .route("/api/v1/events/recent", get(events::recent))
        .route("/api/v1/config", get(api::config))
        .route("/api/v1/reload", post(reload))
        .route("/api/v1/openapi.json", get(api::openapi))
        .fallback(api::not_found)
        .layer(axum::middleware::from_fn_with_state(state.clone(), auth::require));
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .merge(api)
        .with_state(state)
        .merge(dashboard::dashboard())
}

/// Serves `router` on `listener` until `shutdown` fires.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, router)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}

/// Binds the admin address.
pub async fn bind(address: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(address).await
}

async fn healthz() -> &'static str {
    "ok\n"
}

/// Ready while serving; 503 once draining, so load balancers stop sending
/// new connections before levee stops accepting them.
async fn readyz(State(state): State<AdminState>) -> Response {
    if state.gateway.is_draining() {
        (StatusCode::SERVICE_UNAVAILABLE, "draining\n").into_response()
    } else {
        (StatusCode::OK, "ready\n").into_response()
    }
}

/// OpenMetrics for scrapers that ask for it (Prometheus does), else the
/// Prometheus text format, which every scraper and `promtool` reads.
async fn metrics(State(state): State<AdminState>, headers: axum::http::HeaderMap) -> Response {
    let metrics = state.gateway.metrics();
    let openmetrics = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/openmetrics-text"));
    if openmetrics {
        (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            metrics.encode(),
        )
            .into_response()
    } else {
        (
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
            metrics.encode_prometheus(),
        )
            .into_response()
    }
}

async fn reload(State(state): State<AdminState>) -> Response {
    let (tx, rx) = oneshot::channel();
    let request = ReloadRequest {
        source: ReloadSource::Api,
        reply: Some(tx),
    };
    if state.reload.send(request).await.is_err() {
        return unavailable("the reload loop has stopped");
    }
    match rx.await {
        Ok(outcome) => {
            let status = match outcome {
                ReloadOutcome::Applied { .. } => StatusCode::OK,
                ReloadOutcome::Rejected { .. } => StatusCode::UNPROCESSABLE_ENTITY,
                ReloadOutcome::Unavailable { .. } => StatusCode::CONFLICT,
            };
            (status, axum::Json(outcome)).into_response()
        }
        Err(_) => unavailable("the reload loop stopped before answering"),
    }
}

pub(crate) fn unavailable(reason: &str) -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        axum::Json(ReloadOutcome::Unavailable {
            reason: reason.to_string(),
        }),
    )
        .into_response()
}
