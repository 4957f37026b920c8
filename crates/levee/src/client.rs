//! levee's own HTTP/1.1 client, for the load it sends itself (the demo's
//! traffic, a chaos run's): keep-alive connections to one address, reused
//! one request at a time, opened as the load needs them. Every exchange
//! has a deadline; a connection whose exchange failed is dropped.

use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use levee_core::sync::lock;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How long connecting may take, within the request's own deadline.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// The answer to one request: its status and fields (the body is read to
/// its end and dropped).
pub(crate) struct Answered {
    pub status: u16,
    pub fields: HeaderMap,
}

pub(crate) struct Client {
    addr: SocketAddr,
    idle: Mutex<Vec<SendRequest<Full<Bytes>>>>,
    /// Owns the connection tasks; they end with `stop`.
    tracker: TaskTracker,
    stop: CancellationToken,
}

impl Client {
    pub fn new(addr: SocketAddr, tracker: TaskTracker, stop: CancellationToken) -> Client {
        Client {
            addr,
            idle: Mutex::new(Vec::new()),
            tracker,
            stop,
        }
    }

    /// Sends `request` and reads its answer whole, within `timeout`;
    /// `None` when no answer came (a transport error or the deadline).
    pub async fn send(&self, request: Request<Full<Bytes>>, timeout: Duration) -> Option<Answered> {
        let exchange = async {
            let mut sender = match self.take_idle() {
                Some(s) => s,
                None => self.connect().await?,
            };
            sender.ready().await.ok()?;
            let response = sender.send_request(request).await.ok()?;
            let (parts, body) = response.into_parts();
            body.collect().await.ok()?;
            lock(&self.idle).push(sender);
            Some(Answered {
                status: parts.status.as_u16(),
                fields: parts.headers,
            })
        };
        tokio::select! {
            answered = tokio::time::timeout(timeout, exchange) => answered.ok().flatten(),
            () = self.stop.cancelled() => None,
        }
    }

    fn take_idle(&self) -> Option<SendRequest<Full<Bytes>>> {
        let mut idle = lock(&self.idle);
        while let Some(sender) = idle.pop() {
            if !sender.is_closed() {
                return Some(sender);
            }
        }
        None
    }

    async fn connect(&self) -> Option<SendRequest<Full<Bytes>>> {
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(self.addr))
            .await
            .ok()?
            .ok()?;
        let _ = stream.set_nodelay(true);
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .ok()?;
        let stop = self.stop.clone();
        // Ends when its sender is dropped (the pool let it go) or at stop.
        self.tracker.spawn(async move {
            tokio::select! {
                _ = conn => {}
                () = stop.cancelled() => {}
            }
        });
        Some(sender)
    }
}
