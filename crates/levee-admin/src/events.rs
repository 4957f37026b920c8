//! `GET /api/v1/events`: the gateway's event stream as server-sent events,
//! and `GET /api/v1/events/recent`.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::IntoResponse;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use futures_util::stream::{self, Stream};
use levee_proxy::events::{Event, RECENT};
use serde::Deserialize;
use tokio::sync::broadcast;
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;

use crate::AdminState;

/// A comment line this often keeps proxies and load balancers from
/// closing a quiet stream.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// Events from the one after `Last-Event-ID` (when the reader reconnects
/// and the ring still has them), then live, until the admin listener stops.
pub(crate) async fn stream(State(state): State<AdminState>, headers: HeaderMap) -> impl IntoResponse {
    let events = state.gateway.events();
    let after = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or_else(|| events.last_id());
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
    limit: Option<usize>,
}

pub(crate) async fn recent(State(state): State<AdminState>, Query(q): Query<Limit>) -> impl IntoResponse {
    let limit = q.limit.unwrap_or(RECENT).min(RECENT);
    let recent = state.gateway.events().recent(limit);
    Json(recent.iter().map(|e| &**e).collect::<Vec<&Event>>()).into_response()
}
