//! `GET /api/v1/events`: the gateway's event stream as server-sent events,
//! and `GET /api/v1/events/recent`.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::stream::{self, Stream};
use levee_proxy::events::{Event, RECENT};
use serde::Deserialize;
use tokio::sync::broadcast;
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;

use crate::AdminState;
use crate::api::{ApiQuery, error};

/// A comment line this often keeps proxies and load balancers from
/// closing a quiet stream.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// Events from the one after `Last-Event-ID` (when the reader reconnects
/// and the ring still has them), then live, until the admin listener stops.
pub(crate) async fn stream(State(state): State<AdminState>, headers: HeaderMap) -> impl IntoResponse {
    let events = state.gateway.events();
    let newest = events.last_id();
    // Ids start again at 1 with each process, and a browser's EventSource
    // resends the last id it saw when it reconnects on its own: an id
    // beyond the newest is from before a restart, so this process's ring
    // is all new to the reader.
    let after = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map_or(newest, |id| if id > newest { 0 } else { id });
    let (backlog, rx) = events.subscribe(after);
    let reader = Reader {
        backlog: backlog.into_iter(),
        rx,
        stop: state.shutdown.clone(),
        last: after,
    };
    let stream: std::pin::Pin<Box<dyn Stream<Item = Result<SseEvent, std::convert::Infallible>> + Send>> =
        Box::pin(stream::unfold(reader, |mut r| async move {
            let event = r.next().await?;
            Some((Ok(event), r))
        }));
    Sse::new(stream).keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
}

struct Reader {
    backlog: std::vec::IntoIter<Arc<Event>>,
    rx: broadcast::Receiver<Arc<Event>>,
    stop: CancellationToken,
    /// The id of the last event sent: the channel may repeat what the
    /// backlog already gave.
    last: u64,
}

impl Reader {
    async fn next(&mut self) -> Option<SseEvent> {
        if let Some(e) = self.backlog.next() {
            self.last = e.id;
            return Some(encode(&e));
        }
        loop {
            let received = tokio::select! {
                _ = self.stop.cancelled() => return None,
                r = self.rx.recv() => r,
            };
            match received {
                Ok(e) if e.id <= self.last => continue,
                Ok(e) => {
                    self.last = e.id;
                    return Some(encode(&e));
                }
                // Too slow to keep up: say how many were lost, go on.
                Err(RecvError::Lagged(missed)) => {
                    return Some(
                        SseEvent::default()
                            .event("lagged")
                            .data(format!("{{\"missed\":{missed}}}")),
                    );
                }
                Err(RecvError::Closed) => return None,
            }
        }
    }
}

fn encode(e: &Event) -> SseEvent {
    let data = serde_json::to_string(e).unwrap_or_default();
    SseEvent::default()
        .id(e.id.to_string())
        .event(e.kind.name())
        .data(data)
}

#[derive(Deserialize)]
pub(crate) struct Limit {
    /// Digits, of any size: more than the ring holds is the whole ring.
    limit: Option<String>,
}

pub(crate) async fn recent(State(state): State<AdminState>, ApiQuery(q): ApiQuery<Limit>) -> Response {
    let limit = match q.limit.as_deref() {
        None => RECENT,
        Some(digits) if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) => {
            digits.parse::<usize>().map_or(RECENT, |n| n.min(RECENT))
        }
        Some(other) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("limit must be a whole number, not {other:?}"),
            );
        }
    };
    let recent = state.gateway.events().recent(limit);
    Json(recent.iter().map(|e| &**e).collect::<Vec<&Event>>()).into_response()
}
