//! A connection pool per endpoint.
//!
//! HTTP/1.1 connections carry one exchange at a time: an idle one is taken
//! out of the pool for a request and given back only when its response body
//! has been read to the end and the whole request sent (anything else leaves
//! the connection in an unknown state, and it is closed). HTTP/2 connections
//! are shared by every request; each is driven by hyper in a task of its
//! own, which ends when the connection closes or its last sender is dropped,
//! so the pool owns that task through the senders it holds.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use levee_config::{EndpointAddress, Limits, Protocol};
use levee_core::outcome::ErrorKind;
use levee_core::sync::lock;
use tokio::net::TcpStream;

use super::stream::Stream;
use crate::tls::Connector;
use tokio::time::Instant;

use super::conn::Conn;
use super::counters::{Counters, Slot};
use crate::body::RequestBody;
use crate::metrics::Limit;

/// Why no new connection was opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum OpenError {
    /// Connecting failed.
    Failed(ErrorKind),
    /// A circuit breaker is full.
    Full(Limit),
    /// Called off while waiting: another connection to the endpoint failed
    /// meanwhile, so this one would most likely fail too (see
    /// [`Pool::went_dark`]).
    Redirected,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct PoolSettings {
    pub protocol: Protocol,
    pub max_idle: usize,
    pub idle_timeout: Duration,
}

pub(crate) type H2Sender = http2::SendRequest<RequestBody>;

pub(crate) struct Pool {
    pub address: EndpointAddress,
    /// The upstream's breaker counts: connections and pending opens.
    counters: Arc<Counters>,
    /// The settings live with the idle connections they govern, so that a
    /// reload can change them under the one lock every use takes anyway.
    idle: Mutex<IdleSet>,
    shared: Mutex<Option<H2Sender>>,
    /// Held while an HTTP/2 connection is being opened, so that a burst of
    /// requests opens one connection rather than one each.
    connecting: tokio::sync::Mutex<()>,
    /// TLS to the endpoint, as the upstream's config says.
    tls: arc_swap::ArcSwapOption<Connector>,
    /// Wakes the requests waiting for a connection to the endpoint when
    /// one fails to open: they go elsewhere at once rather than each
    /// waiting out its own refusal or connect timeout.
    dark: tokio::sync::Notify,
}

struct IdleSet {
    settings: PoolSettings,
    /// Oldest first.
    conns: Vec<Idle>,
}

struct Idle {
    conn: Box<Conn>,
    since: Instant,
}

impl Pool {
    pub fn new(address: EndpointAddress, settings: PoolSettings, counters: Arc<Counters>) -> Pool {
        Pool {
            address,
            counters,
            idle: Mutex::new(IdleSet {
                settings,
                conns: Vec::new(),
            }),
            shared: Mutex::new(None),
            connecting: tokio::sync::Mutex::new(()),
            tls: arc_swap::ArcSwapOption::empty(),
            dark: tokio::sync::Notify::new(),
        }
    }

    /// A connection to the endpoint failed to open in a way that says it
    /// is gone (refused, unreachable, timed out): every request waiting
    /// for a connection to it is redirected.
    fn went_dark(&self, failure: &OpenError) {
        if let OpenError::Failed(
            ErrorKind::ConnectionRefused | ErrorKind::ConnectionTimeout | ErrorKind::DestinationUnreachable,
        ) = failure
        {
            self.dark.notify_waiters();
        }
    }

    /// TLS to the endpoint from now on (`None`: plain TCP). Connections in
    /// use finish with what they were opened with; pooled ones are dropped
    /// so that the next request uses the new settings.
    pub fn set_tls(&self, tls: Option<Arc<Connector>>) {
        // A reload keeps the connector of an unchanged `[upstream.<u>.tls]`
        // (see the snapshot), so this only drops connections on a change.
        let old = self.tls.swap(tls.clone());
        let same = match (&old, &tls) {
            (None, None) => true,
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            _ => false,
        };
        if !same {
            lock(&self.idle).conns.clear();
            *lock(&self.shared) = None;
        }
    }

    /// Connects, then does the TLS handshake if the upstream asks for it.
    pub fn tls(&self) -> Option<Arc<Connector>> {
        self.tls.load_full()
    }

    pub(crate) async fn open_stream(&self) -> Result<Stream, ErrorKind> {
        let tcp = open(&self.address).await?;
        let Some(tls) = self.tls.load_full() else {
            return Ok(Stream::Plain(tcp));
        };
        let name = tls.name_for(&self.address).ok_or(ErrorKind::TlsProtocol)?;
        match tls.connector.connect(name, tcp).await {
            Ok(s) => Ok(Stream::Tls(Box::new(s))),
            Err(e) => {
                let kind = match e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
                    Some(rustls::Error::InvalidCertificate(_)) => ErrorKind::TlsCertificate,
                    _ => ErrorKind::TlsProtocol,
                };
                tracing::debug!(endpoint = %self.address, error = %e, "upstream TLS handshake failed");
                Err(kind)
            }
        }
    }

    /// Takes a reloaded upstream's settings. The connections already open
    /// stay, unless the protocol changed: those would never be used again.
    pub fn reconfigure(&self, settings: PoolSettings) {
        let mut idle = lock(&self.idle);
        if idle.settings.protocol != settings.protocol {
            idle.conns.clear();
            *lock(&self.shared) = None;
        }
        let excess = idle.conns.len().saturating_sub(settings.max_idle);
        idle.conns.drain(..excess);
        idle.settings = settings;
    }

    /// Closes the longest-idle connection, if there is one: room for a new
    /// connection when the upstream's connection limit is reached.
    pub fn close_idle(&self) -> bool {
        let mut idle = lock(&self.idle);
        if idle.conns.is_empty() {
            return false;
        }
        idle.conns.remove(0);
        true
    }

    /// An idle HTTP/1.1 connection that is still usable, if any.
    pub fn checkout(&self, now: Instant) -> Option<Box<Conn>> {
        let mut idle = lock(&self.idle);
        let idle_timeout = idle.settings.idle_timeout;
        // Most recently used first: its TCP state is warmest and the oldest
        // ones are left to expire.
        while let Some(mut c) = idle.conns.pop() {
            if now.duration_since(c.since) < idle_timeout && c.conn.is_usable() {
                return Some(c.conn);
            }
        }
        None
    }

    /// Returns an HTTP/1.1 connection whose exchange completed cleanly
    /// (unless a reload switched the endpoint to HTTP/2 meanwhile).
    pub fn give_back(&self, conn: Box<Conn>, now: Instant) {
        let mut idle = lock(&self.idle);
        if idle.settings.protocol == Protocol::Http1 && idle.conns.len() < idle.settings.max_idle {
            idle.conns.push(Idle { conn, since: now });
        }
    }

    /// Closes idle connections past the idle timeout or closed by the peer.
    pub fn evict_expired(&self, now: Instant) {
        let mut idle = lock(&self.idle);
        let idle_timeout = idle.settings.idle_timeout;
        idle.conns
            .retain_mut(|c| now.duration_since(c.since) < idle_timeout && c.conn.is_usable());
        drop(idle);
        let mut shared = lock(&self.shared);
        if shared.as_ref().is_some_and(|s| s.is_closed()) {
            *shared = None;
        }
    }

    /// Takes the breakers' slots for a connection about to open: a pending
    /// one, held while it opens, and its place among the open connections,
    /// taken now (not once open) so that racing opens cannot all slip under
    /// the limit.
    fn may_open(&self, limits: &Limits) -> Result<(Slot, Slot), OpenError> {
        let pending = Slot::take(&self.counters, Limit::Pending, limits.max_pending)
            .ok_or(OpenError::Full(Limit::Pending))?;
        let open = Slot::take(&self.counters, Limit::Connections, limits.max_connections)
            .ok_or(OpenError::Full(Limit::Connections))?;
        Ok((pending, open))
    }

    /// A new HTTP/1.1 connection, within `timeout`.
    pub async fn connect_h1(&self, timeout: Duration, limits: &Limits) -> Result<Box<Conn>, OpenError> {
        let (_pending, slot) = self.may_open(limits)?;
        let stream = self.open_by(Instant::now() + timeout).await?;
        Ok(Conn::new(stream, Some(slot)))
    }

    /// A new stream by `deadline`, unless another connection to the
    /// endpoint fails first ([`OpenError::Redirected`]).
    async fn open_by(&self, deadline: Instant) -> Result<Stream, OpenError> {
        let dark = self.dark.notified();
        tokio::pin!(dark);
        // Registered before connecting, so that no failure is missed.
        dark.as_mut().enable();
        let opened = tokio::select! {
            biased;
            opened = tokio::time::timeout_at(deadline, self.open_stream()) => opened,
            () = dark => return Err(OpenError::Redirected),
        };
        let opened = opened
            .map_err(|_| OpenError::Failed(ErrorKind::ConnectionTimeout))
            .and_then(|r| r.map_err(OpenError::Failed));
        if let Err(failure) = &opened {
            self.went_dark(failure);
        }
        opened
    }

    /// The shared HTTP/2 connection, opening it if there is none (one
    /// request opens it; the others of a burst wait and share). Returns
    /// whether a connection was opened.
    pub async fn h2(&self, timeout: Duration, limits: &Limits) -> Result<(H2Sender, bool), OpenError> {
        if let Some(s) = self.shared_h2() {
            return Ok((s, false));
        }
        let timed_out = OpenError::Failed(ErrorKind::ConnectionTimeout);
        let deadline = Instant::now() + timeout;
        let dark = self.dark.notified();
        tokio::pin!(dark);
        dark.as_mut().enable();
        // The requests of a burst wait for the one opening the connection;
        // when it fails, they go elsewhere rather than each trying in turn.
        let _opening = tokio::select! {
            biased;
            opening = tokio::time::timeout_at(deadline, self.connecting.lock()) => {
                opening.map_err(|_| timed_out)?
            }
            () = dark => return Err(OpenError::Redirected),
        };
        if let Some(s) = self.shared_h2() {
            return Ok((s, false));
        }
        let (_pending, open_slot) = self.may_open(limits)?;
        let stream = self.open_by(deadline).await?;
        let (sender, conn) = tokio::time::timeout_at(
            deadline,
            http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .keep_alive_interval(Duration::from_secs(20))
                .keep_alive_timeout(Duration::from_secs(10))
                .handshake(TokioIo::new(stream)),
        )
        .await
        .map_err(|_| timed_out)?
        .map_err(|_| OpenError::Failed(ErrorKind::ConnectionTerminated))?;
        // Owned by the senders (the pool's and in-flight requests'); counted
        // as one open connection for as long as it runs.
        tokio::spawn(async move {
            let _open = open_slot;
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "upstream h2 connection ended with an error");
            }
        });
        // Shared only while the endpoint speaks HTTP/2: a request that
        // started before a reload switched it to HTTP/1.1 uses this
        // connection alone, and it closes when that request is done.
        if lock(&self.idle).settings.protocol == Protocol::Http2 {
            *lock(&self.shared) = Some(sender.clone());
        }
        Ok((sender, true))
    }

    fn shared_h2(&self) -> Option<H2Sender> {
        lock(&self.shared).as_ref().filter(|s| !s.is_closed()).cloned()
    }
}

/// Resolves (when the endpoint is a name) and connects.
pub(crate) async fn open(address: &EndpointAddress) -> Result<TcpStream, ErrorKind> {
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
        std::io::ErrorKind::NetworkUnreachable | std::io::ErrorKind::HostUnreachable => {
            ErrorKind::DestinationUnreachable
        }
        _ => ErrorKind::ConnectionRefused,
    })?;
    // Requests and responses are written whole; Nagle would only add delay.
    let _ = stream.set_nodelay(true);
    Ok(stream)
}
