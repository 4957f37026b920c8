//! HTTP/2 with prior knowledge (h2c) from clients, served by hyper.
//!
//! HTTP/2's binary framing leaves no room for the HTTP/1 smuggling games,
//! and the h2 crate already refuses malformed pseudo-headers, uppercase and
//! connection-specific fields, and bodies that disagree with their
//! content-length. levee adds its own limits on top and hands each stream
//! to the same [`Handler`] as HTTP/1.

use std::convert::Infallible;
use std::sync::Arc;

use crate::drain::Drain;
use http::Request;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use levee_core::outcome::{ErrorKind, Rejection};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::task::TaskTracker;

use super::h1::Settings;
use super::{ConnInfo, Handler};
use crate::body::RequestBody;

/// Streams a client may open at once on one connection.
const MAX_CONCURRENT_STREAMS: u32 = 256;

/// Spawns hyper's per-stream tasks on the gateway's tracker, so shutdown
/// waits for them like for connections.
#[derive(Clone)]
struct TrackedExecutor(TaskTracker);

impl<F> hyper::rt::Executor<F> for TrackedExecutor
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, fut: F) {
        self.0.spawn(fut);
    }
}

pub(crate) async fn serve<H, IO>(
    handler: Arc<H>,
    conn: Arc<ConnInfo>,
    io: IO,
    settings: &Settings,
    draining: &Drain,
    tracker: &TaskTracker,
) where
    H: Handler,
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let limits = settings.limits;
    let service = service_fn(move |req: Request<Incoming>| {
        let handler = handler.clone();
        let conn = conn.clone();
        async move {
            let uri_len = req.uri().path_and_query().map_or(0, |p| p.as_str().len());
            let res = if uri_len > limits.max_uri {
                handler.reject(
                    Rejection::new(ErrorKind::UriTooLong, "request target too long"),
                    &conn,
                )
            } else if req.headers().len() > limits.max_headers {
                handler.reject(
                    Rejection::new(ErrorKind::HeaderTooLarge, "too many header fields"),
                    &conn,
                )
            } else {
                handler.handle(req.map(RequestBody::H2), None, &conn).await
            };
            Ok::<_, Infallible>(res)
        }
    });
    let mut builder = hyper::server::conn::http2::Builder::new(TrackedExecutor(tracker.clone()));
    builder
        .timer(TokioTimer::new())
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .max_header_list_size(u32::try_from(limits.max_head).unwrap_or(u32::MAX))
        .keep_alive_interval(Some(settings.keepalive_timeout / 2))
        .keep_alive_timeout(settings.header_timeout);
    let connection = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(connection);
    tokio::select! {
        _ = connection.as_mut() => {}
        _ = draining.watch() => {
            // GOAWAY: streams already open finish, new ones are refused.
            connection.as_mut().graceful_shutdown();
            let _ = connection.await;
        }
    }
}
