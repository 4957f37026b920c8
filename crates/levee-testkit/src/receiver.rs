//! Webhook receivers for the alerting tests: a [`Receiver`] that records
//! every request it gets and answers as scripted, and a [`Blackhole`] that
//! accepts connections and never answers.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::eventually;

/// One request a [`Receiver`] got.
#[derive(Clone, Debug)]
pub struct Received {
    pub method: String,
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// When its body had fully arrived.
    pub at: Instant,
    pub at_wall: SystemTime,
}

impl Received {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

#[derive(Default)]
struct State {
    log: Mutex<Vec<Received>>,
    /// Statuses to answer, in order, before `always`.
    script: Mutex<VecDeque<u16>>,
    always: Mutex<Option<u16>>,
}

/// An HTTP/1.1 server on 127.0.0.1 that records every request and answers
/// `200` (or as scripted) with an empty body. Dropping it stops it.
pub struct Receiver {
    addr: SocketAddr,
    state: Arc<State>,
    stop: CancellationToken,
}

impl Receiver {
    pub async fn start() -> std::io::Result<Receiver> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(State::default());
        let stop = CancellationToken::new();
        let tracker = TaskTracker::new();
        let (s, t, tr) = (state.clone(), stop.clone(), tracker.clone());
        tracker.spawn(async move {
            loop {
                let (stream, _) = tokio::select! {
                    _ = t.cancelled() => return,
                    r = listener.accept() => match r {
                        Ok(c) => c,
                        Err(_) => continue,
                    },
                };
                let (s, t) = (s.clone(), t.clone());
                tr.spawn(async move {
                    let service = service_fn(move |req| record(s.clone(), req));
                    let conn = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service);
                    tokio::select! {
                        _ = conn => {}
                        _ = t.cancelled() => {}
                    }
                });
            }
        });
        tracker.close();
        Ok(Receiver { addr, state, stop })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://<addr><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Answers the next requests with these statuses, then as before.
    pub fn answer_next(&self, statuses: &[u16]) {
        lock(&self.state.script).extend(statuses);
    }

    /// Answers every request (after the scripted ones) with this status.
    pub fn always(&self, status: u16) {
        *lock(&self.state.always) = Some(status);
    }

    /// Every request so far, in arrival order.
    pub fn received(&self) -> Vec<Received> {
        lock(&self.state.log).clone()
    }

    /// Waits (up to `deadline`) until at least `n` requests arrived, and
    /// returns them all.
    pub async fn wait_for(&self, n: usize, deadline: Duration) -> Vec<Received> {
        eventually(deadline, &format!("{n} requests at the receiver"), || {
            lock(&self.state.log).len() >= n
        })
        .await;
        self.received()
    }

    /// Waits (up to `deadline`) for the first request that `matches`.
    pub async fn wait_until(
        &self,
        deadline: Duration,
        what: &str,
        matches: impl Fn(&Received) -> bool,
    ) -> Received {
        let mut found = None;
        eventually(deadline, what, || {
            found = lock(&self.state.log).iter().find(|r| matches(r)).cloned();
            found.is_some()
        })
        .await;
        found.unwrap_or_else(|| unreachable!("eventually returned, so one matched"))
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn record(state: Arc<State>, req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, body) = req.into_parts();
    let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    lock(&state.log).push(Received {
        method: parts.method.to_string(),
        path: parts.uri.path().to_string(),
        headers: parts.headers,
        body,
        at: Instant::now(),
        at_wall: SystemTime::now(),
    });
    let scripted = lock(&state.script).pop_front();
    let status = scripted.or(*lock(&state.always)).unwrap_or(200);
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    Ok(response)
}

/// Accepts connections on 127.0.0.1 and never reads, answers or closes
/// them (until dropped): a receiver that hangs.
pub struct Blackhole {
    addr: SocketAddr,
    held: Arc<Mutex<Vec<TcpStream>>>,
    stop: CancellationToken,
}

impl Blackhole {
    pub async fn start() -> std::io::Result<Blackhole> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let held = Arc::new(Mutex::new(Vec::new()));
        let stop = CancellationToken::new();
        let (h, t) = (held.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = t.cancelled() => return,
                    r = listener.accept() => if let Ok((s, _)) = r {
                        lock(&h).push(s);
                    },
                }
            }
        });
        Ok(Blackhole { addr, held, stop })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        lock(&self.held).len()
    }
}

impl Drop for Blackhole {
    fn drop(&mut self) {
        self.stop.cancel();
        lock(&self.held).clear();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}
