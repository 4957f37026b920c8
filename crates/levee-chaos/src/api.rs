//! Toxiproxy's HTTP API over the registry: the same paths, methods,
//! statuses and bodies, so Toxiproxy's clients work unchanged.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Serialize;

use crate::error::ApiError;
use crate::registry::Registry;

/// The Toxiproxy release whose API this one follows; `GET /version`
/// reports it, as clients that check a version expect a 2.x.
pub const TOXIPROXY_VERSION: &str = "2.12.0";

/// A request's whole time, body included (Toxiproxy's is 25 s too), so a
/// client that stops sending mid-body does not hold a task forever.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(25);

type Shared = State<Arc<Registry>>;

/// The API's routes over `registry`.
pub fn router(registry: Arc<Registry>) -> Router {
    Router::new()
        .route("/version", get(version))
        .route("/reset", post(reset))
        .route("/populate", post(populate))
        .route("/proxies", get(list).post(create))
        .route(
            "/proxies/{proxy}",
            get(show).post(update).patch(update).delete(delete),
        )
        .route("/proxies/{proxy}/toxics", get(toxics).post(add_toxic))
        .route(
            "/proxies/{proxy}/toxics/{toxic}",
            get(show_toxic)
                .post(update_toxic)
                .patch(update_toxic)
                .delete(remove_toxic),
        )
        .layer(middleware::from_fn(guard))
        .with_state(registry)
}

/// Refuses browsers, as Toxiproxy does: the API has no authentication,
/// so a web page must not be able to drive it from a developer's browser
/// (a cross-site POST needs no CORS preflight). And bounds each request.
async fn guard(request: Request, next: Next) -> Response {
    let browser = request
        .headers()
        .get(header::USER_AGENT)
        .is_some_and(|ua| ua.as_bytes().starts_with(b"Mozilla/"));
    if browser {
        return (StatusCode::FORBIDDEN, "User agent not allowed\n").into_response();
    }
    match tokio::time::timeout(REQUEST_TIMEOUT, next.run(request)).await {
        Ok(response) => response,
        Err(_) => StatusCode::SERVICE_UNAVAILABLE.into_response(),
    }
}

fn json<T: Serialize>(status: StatusCode, body: &T) -> Response {
    match serde_json::to_vec(body) {
        Ok(bytes) => {
            let ct = HeaderValue::from_static("application/json");
            (status, [(header::CONTENT_TYPE, ct)], bytes).into_response()
        }
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

fn error(e: &ApiError) -> Response {
    let status = StatusCode::from_u16(e.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    json(status, e)
}

/// `status` with `body`, or the error.
fn answer<T: Serialize>(status: StatusCode, r: Result<T, ApiError>) -> Response {
    match r {
        Ok(body) => json(status, &body),
        Err(e) => error(&e),
    }
}

fn no_content(r: Result<(), ApiError>) -> Response {
    match r {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => error(&e),
    }
}

async fn version() -> Response {
    let ct = HeaderValue::from_static("application/json;charset=utf-8");
    let body = format!("{{\"version\": \"{TOXIPROXY_VERSION}\"}}\n");
    ([(header::CONTENT_TYPE, ct)], body).into_response()
}

async fn reset(State(r): Shared) -> Response {
    no_content(r.reset().await)
}

async fn populate(State(r): Shared, body: Bytes) -> Response {
    let populated = r.populate(&body).await;
    let status = populated.error.as_ref().map_or(StatusCode::CREATED, |e| {
        StatusCode::from_u16(e.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    });
    json(status, &populated)
}

async fn list(State(r): Shared) -> Response {
    json(StatusCode::OK, &r.list().await)
}

async fn create(State(r): Shared, body: Bytes) -> Response {
    answer(StatusCode::CREATED, r.create(&body).await)
}

async fn show(State(r): Shared, Path(proxy): Path<String>) -> Response {
    answer(StatusCode::OK, r.get(&proxy).await)
}

async fn update(State(r): Shared, Path(proxy): Path<String>, body: Bytes) -> Response {
    answer(StatusCode::OK, r.update(&proxy, &body).await)
}

async fn delete(State(r): Shared, Path(proxy): Path<String>) -> Response {
    no_content(r.delete(&proxy).await)
}

async fn toxics(State(r): Shared, Path(proxy): Path<String>) -> Response {
    answer(StatusCode::OK, r.toxics(&proxy).await)
}

/// 200, not 201: Toxiproxy answers a new toxic with 200.
async fn add_toxic(State(r): Shared, Path(proxy): Path<String>, body: Bytes) -> Response {
    answer(StatusCode::OK, r.add_toxic(&proxy, &body).await)
}

async fn show_toxic(State(r): Shared, Path((proxy, toxic)): Path<(String, String)>) -> Response {
    answer(StatusCode::OK, r.toxic(&proxy, &toxic).await)
}

async fn update_toxic(
    State(r): Shared,
    Path((proxy, toxic)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    answer(StatusCode::OK, r.update_toxic(&proxy, &toxic, &body).await)
}

async fn remove_toxic(State(r): Shared, Path((proxy, toxic)): Path<(String, String)>) -> Response {
    no_content(r.remove_toxic(&proxy, &toxic).await)
}
