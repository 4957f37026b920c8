//! Listeners and client connections.
//!
//! Each listener runs an accept loop; each accepted connection runs in its
//! own task on the gateway's [`TaskTracker`], which is how shutdown knows
//! when every connection has finished. The first bytes decide the protocol:
//! the HTTP/2 connection preface means h2c, anything else is HTTP/1.

pub(crate) mod h1;
pub(crate) mod h2;
mod io;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use http::{Request, Response};
use levee_core::id::ListenerName;
use levee_core::outcome::Rejection;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::body::{RequestBody, ResponseBody};
use crate::codec::parse::RawRequest;
use crate::drain::Drain;
use crate::forward::ClientAddr;

/// What a connection knows about itself.
#[derive(Clone, Debug)]
pub struct ConnInfo {
    pub listener: ListenerName,
    pub peer: SocketAddr,
    pub local: SocketAddr,
    /// The peer's address rendered for forwarding fields, once.
    pub(crate) client: ClientAddr,
}

/// What serves requests once the connection has read them.
pub(crate) trait Handler: Send + Sync + 'static {
    /// Serves a request. With `raw`, its fields are the lines received
    /// (and the request's own header map is empty).
    fn handle(
        &self,
        req: Request<RequestBody>,
        raw: Option<RawRequest>,
        conn: &ConnInfo,
    ) -> impl Future<Output = Response<ResponseBody>> + Send;

    /// The response to a request refused before it could be handled
    /// (malformed, too large, too slow).
    fn reject(&self, rejection: Rejection, conn: &ConnInfo) -> Response<ResponseBody>;

    /// The current `[server]` settings, read once per connection.
    fn settings(&self) -> h1::Settings;
}

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Everything an accept loop needs, shared by its connections.
pub(crate) struct ListenerContext<H> {
    pub name: ListenerName,
    pub handler: Arc<H>,
    /// Stops this listener accepting.
    pub stop: CancellationToken,
    /// Tells this listener's connections to finish and close.
    pub draining: Arc<Drain>,
    pub tracker: TaskTracker,
    pub active: Gauge,
    pub accepted: Counter,
}

/// Accepts until stopped. Accept errors never end the loop: running out of
/// file descriptors backs off and tries again rather than spinning or dying.
pub(crate) async fn accept_loop<H: Handler>(listener: TcpListener, ctx: Arc<ListenerContext<H>>) {
    let local = listener.local_addr().ok();
    let mut last_warning: Option<Instant> = None;
    loop {
        let accepted = tokio::select! {
            biased;
            _ = ctx.stop.cancelled() => return,
            r = listener.accept() => r,
        };
        match accepted {
            Ok((stream, peer)) => {
                let ctx = ctx.clone();
                let local = local.unwrap_or(peer);
                ctx.tracker.clone().spawn(async move {
                    connection(stream, peer, local, &ctx).await;
                });
            }
            Err(e) => {
                // EMFILE/ENFILE/ENOBUFS: back off so in-flight work can
                // release descriptors. Warn at most once a second.
                let now = Instant::now();
                if last_warning.is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1)) {
                    tracing::warn!(listener = %ctx.name, error = %e, "accept failed");
                    last_warning = Some(now);
                }
                tokio::select! {
                    _ = ctx.stop.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                }
            }
        }
    }
}

async fn connection<H: Handler>(
    mut stream: TcpStream,
    peer: SocketAddr,
    local: SocketAddr,
    ctx: &ListenerContext<H>,
) {
    let accepted = Instant::now();
    ctx.accepted.inc();
    ctx.active.inc();
    let _active = DecOnDrop(&ctx.active);
    // Responses are written whole; Nagle would only delay them.
    let _ = stream.set_nodelay(true);
    let settings = ctx.handler.settings();
    let info = ConnInfo {
        listener: ctx.name.clone(),
        peer,
        local,
        client: ClientAddr::new(peer.ip()),
    };

    let mut buf = BytesMut::with_capacity(4 * 1024);
    let deadline = accepted + settings.header_timeout;
    // Read until the bytes so far are not a prefix of the h2 preface.
    while buf.len() < H2_PREFACE.len() && H2_PREFACE.starts_with(&buf) {
        let read = tokio::select! {
            _ = ctx.draining.watch(), if buf.is_empty() => return,
            r = tokio::time::timeout_at(deadline, stream.read_buf(&mut buf)) => r,
        };
        match read {
            Ok(Ok(n)) if n > 0 => {}
            // Closed, failed or silent past the header deadline before
            // saying anything that could be answered.
            _ => return,
        }
    }
    if buf.starts_with(H2_PREFACE) {
        let io = io::Prefixed::new(buf, stream);
        h2::serve(
            ctx.handler.clone(),
            Arc::new(info),
            io,
            &settings,
            &ctx.draining,
            &ctx.tracker,
        )
        .await;
    } else {
        let (mut rd, mut wr) = stream.split();
        let ending = h1::serve(
            &*ctx.handler,
            &info,
            &mut rd,
            &mut wr,
            buf,
            &settings,
            &ctx.draining,
            accepted,
        )
        .await;
        if ending == h1::Ending::Reset {
            let _ = stream.set_zero_linger();
        }
    }
}

struct DecOnDrop<'a>(&'a Gauge);

impl Drop for DecOnDrop<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}
