//! A connection pool per endpoint.
//!
//! HTTP/1.1 connections carry one exchange at a time: an idle one is taken
//! out of the pool for a request and given back only when its response body
//! has been read to the end (an unread body leaves the connection unusable).
//! HTTP/2 connections are shared by every request. Each connection is driven
//! by its own task, which ends when the connection closes or when its last
//! sender is dropped, so the pool owns its tasks through the senders.

use std::sync::Mutex;
use std::time::Duration;

use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use levee_config::{EndpointAddress, Protocol};
use levee_core::outcome::ErrorKind;
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::body::RequestBody;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct PoolSettings {
    pub protocol: Protocol,
    pub max_idle: usize,
    pub idle_timeout: Duration,
}

pub(crate) enum Connection {
    H1(http1::SendRequest<RequestBody>),
    H2(http2::SendRequest<RequestBody>),
}

pub(crate) struct Pool {
    pub address: EndpointAddress,
    pub settings: PoolSettings,
    idle: Mutex<Vec<Idle>>,
    shared: Mutex<Option<http2::SendRequest<RequestBody>>>,
    /// Held while an HTTP/2 connection is being opened, so that a burst of
    /// requests opens one connection rather than one each.
    connecting: tokio::sync::Mutex<()>,
}

struct Idle {
    sender: http1::SendRequest<RequestBody>,
    since: Instant,
}

impl Pool {
    pub fn new(address: EndpointAddress, settings: PoolSettings) -> Pool {
        Pool {
            address,
            settings,
            idle: Mutex::new(Vec::new()),
            shared: Mutex::new(None),
            connecting: tokio::sync::Mutex::new(()),
        }
    }

    /// A connection that was open already, if any is still usable.
    pub fn checkout(&self, now: Instant) -> Option<Connection> {
        match self.settings.protocol {
            Protocol::Http2 => {
                let shared = lock(&self.shared);
                shared
                    .as_ref()
                    .filter(|s| !s.is_closed())
                    .map(|s| Connection::H2(s.clone()))
            }
            Protocol::Http1 => {
                let mut idle = lock(&self.idle);
                // Most recently used first: its TCP state is warmest and the
                // oldest ones are left to expire.
                while let Some(c) = idle.pop() {
                    if !c.sender.is_closed() && now.duration_since(c.since) < self.settings.idle_timeout {
                        return Some(Connection::H1(c.sender));
                    }
                }
                None
            }
        }
    }

    /// Returns an HTTP/1.1 connection whose exchange completed.
    pub fn give_back(&self, sender: http1::SendRequest<RequestBody>, now: Instant) {
        if sender.is_closed() {
            return;
        }
        let mut idle = lock(&self.idle);
        if idle.len() < self.settings.max_idle {
            idle.push(Idle { sender, since: now });
        }
    }

    /// Drops idle connections past the idle timeout.
    pub fn evict_expired(&self, now: Instant) {
        lock(&self.idle)
            .retain(|c| !c.sender.is_closed() && now.duration_since(c.since) < self.settings.idle_timeout);
        let mut shared = lock(&self.shared);
        if shared.as_ref().is_some_and(|s| s.is_closed()) {
            *shared = None;
        }
    }

    /// Opens a new connection, within `timeout` for DNS, TCP and handshake.
    /// For HTTP/2, waits for a connection another request is opening and
    /// shares it. Returns whether a connection was opened.
    pub async fn connect(&self, timeout: Duration) -> Result<(Connection, bool), ErrorKind> {
        let deadline = Instant::now() + timeout;
        if self.settings.protocol == Protocol::Http1 {
            return Ok((self.open(deadline).await?, true));
        }
        let _opening = tokio::time::timeout_at(deadline, self.connecting.lock())
            .await
            .map_err(|_| ErrorKind::ConnectionTimeout)?;
        if let Some(shared) = self.checkout(Instant::now()) {
            return Ok((shared, false));
        }
        let conn = self.open(deadline).await?;
        if let Connection::H2(sender) = &conn {
            *lock(&self.shared) = Some(sender.clone());
        }
        Ok((conn, true))
    }

    async fn open(&self, deadline: Instant) -> Result<Connection, ErrorKind> {
        let stream = tokio::time::timeout_at(deadline, open(&self.address))
            .await
            .map_err(|_| ErrorKind::ConnectionTimeout)??;
        let io = TokioIo::new(stream);
        match self.settings.protocol {
            Protocol::Http1 => {
                let (sender, conn) = tokio::time::timeout_at(deadline, http1::Builder::new().handshake(io))
                    .await
                    .map_err(|_| ErrorKind::ConnectionTimeout)?
                    .map_err(|_| ErrorKind::ConnectionTerminated)?;
                // Owned by `sender`: the task ends when the connection closes
                // or the sender is dropped while the connection is idle.
                tokio::spawn(async move {
                    if let Err(e) = conn.with_upgrades().await {
                        tracing::debug!(error = %e, "upstream connection ended with an error");
                    }
                });
                Ok(Connection::H1(sender))
            }
            Protocol::Http2 => {
                let (sender, conn) = tokio::time::timeout_at(
                    deadline,
                    http2::Builder::new(TokioExecutor::new())
                        .timer(TokioTimer::new())
                        .keep_alive_interval(Duration::from_secs(20))
                        .keep_alive_timeout(Duration::from_secs(10))
                        .handshake(io),
                )
                .await
                .map_err(|_| ErrorKind::ConnectionTimeout)?
                .map_err(|_| ErrorKind::ConnectionTerminated)?;
                // Owned by the senders (the pool's and in-flight requests').
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(error = %e, "upstream h2 connection ended with an error");
                    }
                });
                Ok(Connection::H2(sender))
            }
        }
    }
}

/// Resolves (when the endpoint is a name) and connects.
async fn open(address: &EndpointAddress) -> Result<TcpStream, ErrorKind> {
    let stream = match address {
        EndpointAddress::Ip(addr) => TcpStream::connect(addr).await,
        EndpointAddress::Dns { host, port } => {
            let addrs: Vec<_> = tokio::net::lookup_host((host.as_str(), *port))
                .await
                .map_err(|_| ErrorKind::DnsError)?
                .collect();
            if addrs.is_empty() {
                return Err(ErrorKind::DnsError);
            }
            TcpStream::connect(&addrs[..]).await
        }
    }
    .map_err(|e| match e.kind() {
        std::io::ErrorKind::TimedOut => ErrorKind::ConnectionTimeout,
        _ => ErrorKind::ConnectionRefused,
    })?;
    // Requests and responses are written whole; Nagle would only add delay.
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// Locks a pool mutex. Nothing panics while holding these locks, but if a
/// panic ever did, the pool's contents are still consistent, so poisoning
/// is ignored rather than propagated into every later request.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
