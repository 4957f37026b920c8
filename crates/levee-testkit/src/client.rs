//! A small real HTTP client for end-to-end tests, on hyper's connection-level
//! API: HTTP/1.1 with a keep-alive pool, or h2c (prior knowledge) over one
//! multiplexed connection. Also [`load`], a bounded load driver.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::{Context as _, anyhow};
use bytes::Bytes;
use http::header::HOST;
use http::{HeaderMap, HeaderValue, Request, Uri};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio::time::Instant;

/// Default deadline for one request, body included.
const REQUEST_DEADLINE: Duration = Duration::from_secs(30);
const CONNECT_DEADLINE: Duration = Duration::from_secs(10);
/// How long a pooled connection may take to become ready.
const IDLE_READY: Duration = Duration::from_secs(1);
/// Idle HTTP/1.1 connections kept for reuse.
const MAX_IDLE: usize = 64;

/// An HTTP client bound to one address. Clones share the connection pool.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    addr: SocketAddr,
    protocol: Protocol,
    timeout: Duration,
    idle: Mutex<Vec<http1::SendRequest<Full<Bytes>>>>,
    h2: tokio::sync::Mutex<Option<H2>>,
    /// Connection drivers; dropping the set (with the last clone) aborts them.
    connections: Mutex<JoinSet<()>>,
}

/// The one multiplexed h2 connection.
struct H2 {
    generation: u64,
    sender: http2::SendRequest<Full<Bytes>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Protocol {
    Http1,
    Http2,
}

/// A response, body collected.
#[derive(Clone, Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    /// The first value of header `name`, if present and valid UTF-8.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The body as text, lossily decoded.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

impl Client {
    /// HTTP/1.1, keeping idle connections for reuse.
    pub fn http1(addr: SocketAddr) -> Client {
        Client::new(addr, Protocol::Http1, REQUEST_DEADLINE)
    }

    /// h2c with prior knowledge; every request multiplexes on one connection
    /// (re-established if it closes).
    pub fn http2(addr: SocketAddr) -> Client {
        Client::new(addr, Protocol::Http2, REQUEST_DEADLINE)
    }

    /// The same client with another per-request deadline (default 30 s), and
    /// a pool of its own.
    pub fn with_timeout(&self, timeout: Duration) -> Client {
        Client::new(self.inner.addr, self.inner.protocol, timeout)
    }

    fn new(addr: SocketAddr, protocol: Protocol, timeout: Duration) -> Client {
        Client {
            inner: Arc::new(Inner {
                addr,
                protocol,
                timeout,
                idle: Mutex::new(Vec::new()),
                h2: tokio::sync::Mutex::new(None),
                connections: Mutex::new(JoinSet::new()),
            }),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.inner.addr
    }

    /// `GET path` with `Host: localhost`.
    pub async fn get(&self, path: &str) -> anyhow::Result<Reply> {
        let req = Request::get(path)
            .body(Full::new(Bytes::new()))
            .with_context(|| format!("bad request target {path:?}"))?;
        self.send(req).await
    }

    /// Sends `req` and collects the response, within the client's deadline.
    /// `Host: localhost` is added when the request has neither a Host
    /// header nor an absolute URI. Only a request that hyper reports as
    /// never written is retried (once, on a fresh connection): that covers
    /// a pooled connection the server closed while idle, and can never
    /// execute a request twice.
    pub async fn send(&self, req: Request<Full<Bytes>>) -> anyhow::Result<Reply> {
        let deadline = self.inner.timeout;
        let what = format!("{} {}", req.method(), req.uri());
        let sent = match self.inner.protocol {
            Protocol::Http1 => tokio::time::timeout(deadline, self.send_h1(req)).await,
            Protocol::Http2 => tokio::time::timeout(deadline, self.send_h2(req)).await,
        };
        sent.map_err(|_| anyhow!("{what}: no complete response within {deadline:?}"))?
            .with_context(|| what)
    }

    async fn send_h1(&self, mut req: Request<Full<Bytes>>) -> anyhow::Result<Reply> {
        if !req.headers().contains_key(HOST) {
            let host = match req.uri().authority() {
                Some(a) => HeaderValue::from_str(a.as_str())?,
                None => HeaderValue::from_static("localhost"),
            };
            req.headers_mut().insert(HOST, host);
        }
        let (mut sender, reused) = match self.idle_h1().await {
            Some(sender) => (sender, true),
            None => (self.connect_h1().await?, false),
        };
        let response = match sender.try_send_request(req).await {
            Ok(response) => response,
            Err(mut e) => match e.take_message() {
                Some(req) if reused => {
                    sender = self.connect_h1().await?;
                    sender.send_request(req).await?
                }
                _ => return Err(e.into_error().into()),
            },
        };
        let (parts, body) = response.into_parts();
        let body = body.collect().await?.to_bytes();
        if !sender.is_closed() {
            let mut idle = self.inner.idle.lock().unwrap_or_else(PoisonError::into_inner);
            if idle.len() < MAX_IDLE {
                idle.push(sender);
            }
        }
        Ok(Reply {
            status: parts.status.as_u16(),
            headers: parts.headers,
            body,
        })
    }

    /// A pooled connection ready for a request, if any.
    async fn idle_h1(&self) -> Option<http1::SendRequest<Full<Bytes>>> {
        loop {
            let mut sender = self
                .inner
                .idle
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .pop()?;
            if sender.is_closed() {
                continue;
            }
            // Just after a response, hyper's dispatcher may not yet have
            // said it wants the next request; give it a moment.
            if let Ok(Ok(())) = tokio::time::timeout(IDLE_READY, sender.ready()).await {
                return Some(sender);
            }
        }
    }

    async fn connect(&self) -> anyhow::Result<TokioIo<TcpStream>> {
        let addr = self.inner.addr;
        let stream = tokio::time::timeout(CONNECT_DEADLINE, TcpStream::connect(addr))
            .await
            .map_err(|_| anyhow!("connect to {addr}: timed out"))?
            .with_context(|| format!("connect to {addr}"))?;
        stream.set_nodelay(true)?;
        Ok(TokioIo::new(stream))
    }

    async fn connect_h1(&self) -> anyhow::Result<http1::SendRequest<Full<Bytes>>> {
        let (sender, conn) = http1::handshake(self.connect().await?).await?;
        self.own(async move {
            let _ = conn.await;
        });
        Ok(sender)
    }

    async fn send_h2(&self, req: Request<Full<Bytes>>) -> anyhow::Result<Reply> {
        let req = absolute_for_h2(req)?;
        let (generation, mut sender) = self.sender_h2(None).await?;
        let response = match sender.try_send_request(req).await {
            Ok(response) => response,
            // The connection died before the request left (the server went
            // away while the connection sat idle): a fresh one is safe.
            Err(mut e) => match e.take_message() {
                Some(req) => {
                    let (_, mut sender) = self.sender_h2(Some(generation)).await?;
                    sender.send_request(req).await?
                }
                None => return Err(e.into_error().into()),
            },
        };
        let (parts, body) = response.into_parts();
        let body = body.collect().await?.to_bytes();
        Ok(Reply {
            status: parts.status.as_u16(),
            headers: parts.headers,
            body,
        })
    }

    /// The shared h2 connection and its generation, connecting if there is
    /// none, it has closed, or it is generation `failed`. Generations keep
    /// concurrent requests that saw the same failure from each opening a
    /// connection of their own.
    async fn sender_h2(&self, failed: Option<u64>) -> anyhow::Result<(u64, http2::SendRequest<Full<Bytes>>)> {
        let mut current = self.inner.h2.lock().await;
        if let Some(h2) = current.as_ref()
            && !h2.sender.is_closed()
            && failed != Some(h2.generation)
        {
            return Ok((h2.generation, h2.sender.clone()));
        }
        let (sender, conn) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .handshake(self.connect().await?)
            .await?;
        self.own(async move {
            let _ = conn.await;
        });
        let generation = current.as_ref().map_or(0, |h2| h2.generation + 1);
        *current = Some(H2 {
            generation,
            sender: sender.clone(),
        });
        Ok((generation, sender))
    }

    /// Spawns a connection driver owned by this client's pool.
    fn own(&self, driver: impl Future<Output = ()> + Send + 'static) {
        let mut connections = self
            .inner
            .connections
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        // Reap drivers of closed connections so the set stays small.
        while connections.try_join_next().is_some() {}
        connections.spawn(driver);
    }
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("addr", &self.inner.addr)
            .field("protocol", &self.inner.protocol)
            .finish_non_exhaustive()
    }
}

/// h2 carries the authority in `:authority`, which hyper takes from the
/// URI: make the URI absolute, from the Host header or `localhost`.
fn absolute_for_h2(mut req: Request<Full<Bytes>>) -> anyhow::Result<Request<Full<Bytes>>> {
    if req.uri().authority().is_some() {
        return Ok(req);
    }
    let host = req.headers_mut().remove(HOST);
    let authority = match &host {
        Some(h) => h.to_str().context("host header is not ASCII")?,
        None => "localhost",
    };
    let path = req
        .uri()
        .path_and_query()
        .map_or("/", |pq| pq.as_str())
        .to_owned();
    *req.uri_mut() = Uri::builder()
        .scheme("http")
        .authority(authority)
        .path_and_query(path)
        .build()
        .context("building the h2 request URI")?;
    Ok(req)
}

/// What [`load`] observed.
#[derive(Clone, Debug, Default)]
pub struct LoadReport {
    /// Requests started (at most `total`; fewer if the deadline came first).
    pub sent: usize,
    pub ok_2xx: usize,
    /// Responses by status, 2xx included.
    pub statuses: BTreeMap<u16, usize>,
    /// Transport errors and timeouts, one entry per failed request.
    pub errors: Vec<String>,
    pub elapsed: Duration,
}

impl LoadReport {
    /// Requests that got a response of any status.
    pub fn responses(&self) -> usize {
        self.statuses.values().sum()
    }
}

/// Sends `total` requests made by `make(i)`, at most `concurrency` at a
/// time, starting none after `deadline`, and giving up on those still in
/// flight at `deadline`: the function always returns by then (plus a
/// moment).
pub async fn load(
    client: &Client,
    total: usize,
    concurrency: usize,
    deadline: Duration,
    make: impl Fn(usize) -> Request<Full<Bytes>>,
) -> LoadReport {
    let start = Instant::now();
    let end = start + deadline;
    let mut report = LoadReport::default();
    let mut running = JoinSet::new();
    loop {
        while report.sent < total && running.len() < concurrency.max(1) && Instant::now() < end {
            let req = make(report.sent);
            report.sent += 1;
            let client = client.clone();
            running.spawn(async move {
                match tokio::time::timeout_at(end, client.send(req)).await {
                    Ok(result) => result,
                    Err(_) => Err(anyhow!("load deadline expired")),
                }
            });
        }
        match running.join_next().await {
            None => break,
            Some(Ok(Ok(reply))) => {
                if (200..300).contains(&reply.status) {
                    report.ok_2xx += 1;
                }
                *report.statuses.entry(reply.status).or_default() += 1;
            }
            Some(Ok(Err(e))) => report.errors.push(format!("{e:#}")),
            Some(Err(e)) => report.errors.push(format!("request task failed: {e}")),
        }
    }
    report.elapsed = start.elapsed();
    report
}

/// One request of an [`open_loop`] run.
#[derive(Clone, Debug)]
pub struct Sample {
    /// When it was due, from the start of the run.
    pub at: Duration,
    pub latency: Duration,
    /// The response status, or `None` when no response came.
    pub status: Option<u16>,
    /// The response's `x-backend` (the testkit backend that answered).
    pub backend: Option<String>,
    /// Why no response came.
    pub error: Option<String>,
}

impl Sample {
    /// A response below 500.
    pub fn ok(&self) -> bool {
        self.status.is_some_and(|s| s < 500)
    }
}

/// What an [`open_loop`] run saw, in the order the requests were due.
#[derive(Clone, Debug, Default)]
pub struct Timeline {
    pub samples: Vec<Sample>,
}

impl Timeline {
    /// The requests due in `[from, to)`.
    pub fn window(&self, from: Duration, to: Duration) -> impl Iterator<Item = &Sample> {
        self.samples.iter().filter(move |s| s.at >= from && s.at < to)
    }

    /// Requests without a response below 500.
    pub fn failures(&self) -> Vec<&Sample> {
        self.samples.iter().filter(|s| !s.ok()).collect()
    }

    /// The share of the answered requests due in `[from, to)` that a backend
    /// whose name satisfies `which` served (0 when none was answered).
    pub fn share(&self, from: Duration, to: Duration, which: impl Fn(&str) -> bool) -> f64 {
        let answered: Vec<&Sample> = self.window(from, to).filter(|s| s.ok()).collect();
        if answered.is_empty() {
            return 0.0;
        }
        let hits = answered
            .iter()
            .filter(|s| s.backend.as_deref().is_some_and(&which))
            .count();
        hits as f64 / answered.len() as f64
    }
}

/// Sends requests at a fixed `rate` per second for `duration`, each when it
/// is due whatever happened to the ones before (open loop: a slow or failing
/// gateway does not slow the load down, as real clients would not). At most
/// `max_in_flight` are outstanding; a request due beyond that is recorded as
/// failed without being sent, so a broken gateway cannot make the run
/// unbounded. Returns once every request has an answer or has timed out (the
/// client's deadline).
pub async fn open_loop(
    client: &Client,
    rate: u32,
    duration: Duration,
    max_in_flight: usize,
    make: impl Fn(usize) -> Request<Full<Bytes>>,
) -> Timeline {
    let start = Instant::now();
    let total = (duration.as_secs_f64() * f64::from(rate)) as usize;
    let period = Duration::from_secs_f64(1.0 / f64::from(rate.max(1)));
    let mut running: JoinSet<Sample> = JoinSet::new();
    let mut samples = Vec::with_capacity(total);
    for i in 0..total {
        let due = start + period * i as u32;
        tokio::time::sleep_until(due).await;
        while let Some(done) = running.try_join_next() {
            samples.extend(done.ok());
        }
        let at = due - start;
        if running.len() >= max_in_flight {
            samples.push(Sample {
                at,
                latency: Duration::ZERO,
                status: None,
                backend: None,
                error: Some("not sent: too many requests outstanding".to_string()),
            });
            continue;
        }
        let client = client.clone();
        let req = make(i);
        running.spawn(async move {
            let sent = Instant::now();
            let reply = client.send(req).await;
            let latency = sent.elapsed();
            match reply {
                Ok(r) => Sample {
                    at,
                    latency,
                    status: Some(r.status),
                    backend: r.header("x-backend").map(str::to_string),
                    error: None,
                },
                Err(e) => Sample {
                    at,
                    latency,
                    status: None,
                    backend: None,
                    error: Some(format!("{e:#}")),
                },
            }
        });
    }
    while let Some(done) = running.join_next().await {
        samples.extend(done.ok());
    }
    samples.sort_by_key(|s| s.at);
    Timeline { samples }
}
