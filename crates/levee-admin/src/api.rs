//! The JSON API under `/api/v1`. Errors are answered here, in one place,
//! as `{"error": "..."}` with the status that fits.

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use levee_proxy::status::ChangeError;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize};

use crate::AdminState;

/// The API's description, kept beside the code and checked against it by
/// the admin API tests.
pub const OPENAPI: &str = include_str!("openapi.json");

pub(crate) fn error(status: StatusCode, message: impl Into<String>) -> Response {
    #[derive(Serialize)]
    struct Body {
        error: String,
    }
    (
        status,
        Json(Body {
            error: message.into(),
        }),
    )
        .into_response()
}

/// axum's `Path`, refusing with a JSON error rather than axum's plain text
/// (an address that is not UTF-8 once percent-decoded, say).
pub(crate) struct ApiPath<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for ApiPath<T> {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Response> {
        match Path::<T>::from_request_parts(parts, state).await {
            Ok(Path(t)) => Ok(ApiPath(t)),
            Err(e) => Err(error(e.status(), e.body_text())),
        }
    }
}

/// axum's `Query`, refusing with a JSON error (`?limit=-1`, a repeated
/// parameter).
pub(crate) struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Response> {
        match Query::<T>::from_request_parts(parts, state).await {
            Ok(Query(t)) => Ok(ApiQuery(t)),
            Err(e) => Err(error(e.status(), e.body_text())),
        }
    }
}

fn change_error(e: ChangeError) -> Response {
    let status = match e {
        ChangeError::NoUpstream(_) | ChangeError::NoEndpoint { .. } => StatusCode::NOT_FOUND,
        ChangeError::Weight | ChangeError::Fault(_) => StatusCode::BAD_REQUEST,
        ChangeError::NoRoute(_) => StatusCode::NOT_FOUND,
        ChangeError::Gateway(_) => StatusCode::SERVICE_UNAVAILABLE,
    };
    error(status, e.to_string())
}

pub(crate) async fn not_found(uri: Uri) -> Response {
    error(StatusCode::NOT_FOUND, format!("no such resource: {}", uri.path()))
}

#[derive(Serialize)]
struct Status {
    version: &'static str,
    started_ms: u64,
    uptime_seconds: f64,
    draining: bool,
    last_reload: Option<levee_proxy::ReloadRecord>,
}

pub(crate) async fn status(State(state): State<AdminState>) -> Response {
    let started_ms = levee_core::calendar::unix_millis(state.started);
    let uptime = state.started.elapsed().map_or(0.0, |d| d.as_secs_f64());
    Json(Status {
        version: env!("CARGO_PKG_VERSION"),
        started_ms,
        uptime_seconds: uptime,
        draining: state.gateway.is_draining(),
        last_reload: state.gateway.last_reload(),
    })
    .into_response()
}

pub(crate) async fn listeners(State(state): State<AdminState>) -> Response {
    Json(state.gateway.listeners()).into_response()
}

pub(crate) async fn routes(State(state): State<AdminState>) -> Response {
    Json(state.gateway.routes()).into_response()
}

pub(crate) async fn upstreams(State(state): State<AdminState>) -> Response {
    Json(state.gateway.upstreams()).into_response()
}

pub(crate) async fn upstream(State(state): State<AdminState>, ApiPath(name): ApiPath<String>) -> Response {
    match state.gateway.upstream(&name) {
        Some(u) => Json(u).into_response(),
        None => change_error(ChangeError::NoUpstream(name)),
    }
}

#[derive(Deserialize)]
pub(crate) struct RegionQuery {
    region: Option<String>,
}

pub(crate) async fn drain(
    state: State<AdminState>,
    path: ApiPath<(String, String)>,
    query: ApiQuery<RegionQuery>,
) -> Response {
    set_drained(state, path, query, true)
}

pub(crate) async fn undrain(
    state: State<AdminState>,
    path: ApiPath<(String, String)>,
    query: ApiQuery<RegionQuery>,
) -> Response {
    set_drained(state, path, query, false)
}

fn set_drained(
    State(state): State<AdminState>,
    ApiPath((upstream, endpoint)): ApiPath<(String, String)>,
    ApiQuery(q): ApiQuery<RegionQuery>,
    drained: bool,
) -> Response {
    match state
        .gateway
        .drain(&upstream, &endpoint, q.region.as_deref(), drained)
    {
        Ok(e) => Json(e).into_response(),
        Err(e) => change_error(e),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct WeightBody {
    /// `null`: back to the configured weight. Required all the same: a body
    /// of `{}` is a mistake, not a request to undo the operator's change.
    #[serde(deserialize_with = "required_weight")]
    weight: Option<u32>,
}

/// An `Option` that must be present (serde makes a missing `Option` `None`
/// unless the field has its own deserializer). A whole number written as a
/// float (`5.0`) is an integer to JSON Schema, so it is one here too.
fn required_weight<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    use serde::de::Error;
    match Option::<serde_json::Number>::deserialize(d)? {
        None => Ok(None),
        Some(n) => n
            .as_u64()
            .or_else(|| {
                n.as_f64()
                    .filter(|f| f.fract() == 0.0 && *f >= 0.0)
                    .map(|f| f as u64)
            })
            .and_then(|w| u32::try_from(w).ok())
            .map(Some)
            .ok_or_else(|| D::Error::custom(format!("weight {n} is not a whole number from 1 to 1000"))),
    }
}

pub(crate) async fn weight(
    State(state): State<AdminState>,
    ApiPath((upstream, endpoint)): ApiPath<(String, String)>,
    ApiQuery(q): ApiQuery<RegionQuery>,
    body: Result<Json<WeightBody>, JsonRejection>,
) -> Response {
    let body = match body {
        Ok(Json(b)) => b,
        Err(JsonRejection::MissingJsonContentType(e)) => {
            return error(StatusCode::UNSUPPORTED_MEDIA_TYPE, e.body_text());
        }
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!(
                    "the body must be {{\"weight\": 1 to 1000 or null}}: {}",
                    e.body_text()
                ),
            );
        }
    };
    // The balancers are rebuilt: off the async workers, like a reload.
    let gateway = state.gateway.clone();
    let region = q.region;
    let changed = tokio::task::spawn_blocking(move || {
        gateway.set_weight(&upstream, &endpoint, region.as_deref(), body.weight)
    })
    .await;
    match changed {
        Ok(Ok(e)) => Json(e).into_response(),
        Ok(Err(e)) => change_error(e),
        Err(_) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the weight change did not finish",
        ),
    }
}

pub(crate) async fn route_fault(
    State(state): State<AdminState>,
    ApiPath(route): ApiPath<String>,
) -> Response {
    match state.gateway.route_fault(&route) {
        Ok(f) => Json(f).into_response(),
        Err(e) => change_error(e),
    }
}

/// Sets a route's faults: the body has the keys of `[route.fault]`.
pub(crate) async fn put_route_fault(
    State(state): State<AdminState>,
    ApiPath(route): ApiPath<String>,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let json = (headers.get(header::CONTENT_TYPE))
        .and_then(|t| t.to_str().ok())
        .is_some_and(|t| t.starts_with("application/json"));
    if !json {
        return error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "the body must be JSON (content-type: application/json)",
        );
    }
    let mut body = serde_json::Deserializer::from_slice(&body);
    match state.gateway.put_route_fault(&route, &mut body) {
        Ok(f) => Json(f).into_response(),
        Err(e) => change_error(e),
    }
}

pub(crate) async fn remove_route_fault(
    State(state): State<AdminState>,
    ApiPath(route): ApiPath<String>,
) -> Response {
    match state.gateway.remove_route_fault(&route) {
        Ok(f) => Json(f).into_response(),
        Err(e) => change_error(e),
    }
}

#[derive(Serialize)]
struct History {
    interval_ms: u64,
    upstreams: Vec<levee_proxy::status::UpstreamHistory>,
}

pub(crate) async fn history(State(state): State<AdminState>) -> Response {
    Json(History {
        interval_ms: 1000,
        upstreams: state.gateway.history_points(),
    })
    .into_response()
}

pub(crate) async fn alerts(State(state): State<AdminState>) -> Response {
    Json(state.alerts.alerts()).into_response()
}

pub(crate) async fn notifiers(State(state): State<AdminState>) -> Response {
    Json(state.alerts.notifiers()).into_response()
}

pub(crate) async fn config(State(state): State<AdminState>) -> Response {
    Json(&*state.gateway.config().document).into_response()
}

pub(crate) async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}
