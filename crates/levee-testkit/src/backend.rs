//! A scripted test origin that records every request in a [`Ledger`].
//!
//! # What it serves
//!
//! Every response carries `x-backend: <name>`, `x-testkit-seq: <seq>` (the
//! arrival's [`seq`](crate::Arrival::seq)), the request's `x-request-id` when
//! it had one, and — except for `/echo`, whose body is streamed back before
//! it has all arrived — `x-body-len` and `x-body-sha256` of the request body
//! received. Paths:
//!
//! - anything: `200`, `content-type: text/plain`, body
//!   `"<name> <METHOD> <path-and-query>\n"`;
//! - `GET /bytes/<n>`: `n` bytes of [`pattern_bytes`], streamed in 64 KiB
//!   pieces with `content-length` (or chunked with `?chunked=1`);
//! - `POST|PUT /echo`: the request body, streamed back as it arrives
//!   (chunked; close-delimited for HTTP/1.0). Nothing is buffered, so the
//!   client must read the response while it sends, as hyper does; one that
//!   sends megabytes before reading stalls until the 60 s I/O deadline;
//! - `/healthz`: `ok\n`;
//! - `Upgrade: websocket` with `Connection: upgrade`: `101`, then every byte
//!   received is echoed back until EOF (no WebSocket framing).
//!
//! # Recording
//!
//! A request is recorded when its body has been fully received, which for
//! every path but `/echo` is before the response is written: a client that
//! saw a response can rely on the arrival being in the ledger. A request
//! whose connection dies mid-body is recorded with `complete: false`; bytes
//! that do not parse as a request head are recorded with an empty `method`.
//!
//! # Scripting
//!
//! [`Backend::set_behaviour`] sets what happens to requests arriving from then
//! on. A request carrying any of `x-testkit-status: <code>`,
//! `x-testkit-delay-ms: <ms>`, `x-testkit-action: reset|hang|close-mid-body`
//! ignores the global behaviour and is scripted by those headers alone (a
//! bad value is answered `400`). A status applies to whatever the path would
//! have answered; `204` and `304` are sent without a body.
//!
//! # HTTP/2
//!
//! [`Backend::start_h2`] serves h2c with prior knowledge through hyper, with
//! the same ledger, paths (except the WebSocket upgrade) and scripting, where
//! the faults are approximated at stream level: `Reset` resets the stream,
//! `CloseMidBody` sends 10 of 100000 promised bytes then resets the stream,
//! `Hang` never answers the stream, and `Raw` is answered `501` (hyper owns
//! the framing). [`Backend::kill`] still resets the TCP connections.

mod h1;
mod h2;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use tokio::net::{TcpListener, TcpSocket};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::ledger::{Ledger, header};

/// How long the backend waits for any single read or write before giving up
/// on a connection: long enough for any honest test, short enough that a
/// broken one fails instead of hanging CI.
const IO_DEADLINE: Duration = Duration::from_secs(60);
/// How long `Hang` hangs when nobody kills the backend: still a deadline.
const HANG_LIMIT: Duration = Duration::from_secs(300);
/// How long [`Backend::kill`] waits for connection tasks to end.
const KILL_DEADLINE: Duration = Duration::from_secs(5);
/// Size of the pieces `/bytes/<n>` is written in.
const PIECE: usize = 64 * 1024;
/// The repeating pattern `/bytes/<n>` serves.
const PATTERN: &[u8; 16] = b"0123456789abcdef";
/// Bytes `CloseMidBody` promises in `content-length`, and sends before the reset.
const MID_BODY_PROMISED: u64 = 100_000;
const MID_BODY_SENT: usize = 10;

/// What the backend does with requests (see the module docs for how request
/// headers override it).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Behaviour {
    /// Answer normally: `200` and the path's body.
    #[default]
    Normal,
    /// Answer with this status and the path's body.
    Status(u16),
    /// Wait this long after the request body arrived, then answer normally.
    Delay(Duration),
    /// Once the request head is read, reset the connection (`SO_LINGER` 0,
    /// close) without a response. The body is not read; the arrival is
    /// complete only if the request had no body.
    Reset,
    /// Read the whole request, record it, and never answer (until
    /// [`Backend::kill`], drop, or a 300 s safety limit closes the connection).
    Hang,
    /// Read the whole request, write these exact bytes as the response, then
    /// close the connection: for malformed-response tests.
    Raw(Bytes),
    /// Read the whole request, send a `200` head promising
    /// `content-length: 100000`, 10 body bytes, then reset the connection.
    CloseMidBody,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Protocol {
    Http1,
    Http2,
}

/// One scripted origin. Dropping it stops it: the listener closes and every
/// open connection is reset.
pub struct Backend {
    shared: Arc<Shared>,
    addr: SocketAddr,
    running: Mutex<Option<Generation>>,
}

/// State shared by the accept loop and every connection task.
struct Shared {
    name: String,
    protocol: Protocol,
    ledger: Ledger,
    behaviour: Mutex<Behaviour>,
    accepted: AtomicU64,
    in_flight: AtomicU64,
    max_in_flight: AtomicU64,
}

/// One listening period, between a start (or restart) and a kill.
struct Generation {
    accept: JoinHandle<()>,
    /// Cancelled to make every connection task reset its connection and end.
    kill: CancellationToken,
    tracker: TaskTracker,
}

/// Options for a [`Backend`] beyond the `start*` shorthands.
#[derive(Debug)]
pub struct BackendBuilder {
    name: String,
    protocol: Protocol,
    ledger: Ledger,
    addr: SocketAddr,
    behaviour: Behaviour,
}

impl BackendBuilder {
    /// Serve h2c with prior knowledge instead of HTTP/1.1.
    pub fn http2(mut self) -> Self {
        self.protocol = Protocol::Http2;
        self
    }

    /// Record into `ledger`, shared with other backends, instead of a fresh one.
    pub fn ledger(mut self, ledger: Ledger) -> Self {
        self.ledger = ledger;
        self
    }

    /// Listen on `addr` instead of `127.0.0.1:0`.
    pub fn addr(mut self, addr: SocketAddr) -> Self {
        self.addr = addr;
        self
    }

    /// Start with this behaviour instead of [`Behaviour::Normal`].
    pub fn behaviour(mut self, behaviour: Behaviour) -> Self {
        self.behaviour = behaviour;
        self
    }

    /// Binds and starts serving; fails only if the address cannot be bound.
    pub async fn start(self) -> std::io::Result<Backend> {
        let listener = bind(self.addr)?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            name: self.name,
            protocol: self.protocol,
            ledger: self.ledger,
            behaviour: Mutex::new(self.behaviour),
            accepted: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            max_in_flight: AtomicU64::new(0),
        });
        let generation = Generation::spawn(listener, &shared);
        Ok(Backend {
            shared,
            addr,
            running: Mutex::new(Some(generation)),
        })
    }
}

impl Backend {
    /// Options: protocol, shared ledger, address, initial behaviour.
    pub fn builder(name: &str) -> BackendBuilder {
        BackendBuilder {
            name: name.to_owned(),
            protocol: Protocol::Http1,
            ledger: Ledger::new(),
            addr: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            behaviour: Behaviour::Normal,
        }
    }

    /// An HTTP/1.1 backend on `127.0.0.1:0`.
    ///
    /// # Panics
    /// If binding a loopback port fails.
    pub async fn start(name: &str) -> Backend {
        Backend::builder(name)
            .start()
            .await
            .unwrap_or_else(|e| panic!("testkit backend {name}: bind 127.0.0.1:0: {e}"))
    }

    /// An HTTP/1.1 backend on `addr`.
    pub async fn start_on(name: &str, addr: SocketAddr) -> std::io::Result<Backend> {
        Backend::builder(name).addr(addr).start().await
    }

    /// An h2c (prior knowledge) backend on `127.0.0.1:0`.
    ///
    /// # Panics
    /// If binding a loopback port fails.
    pub async fn start_h2(name: &str) -> Backend {
        Backend::builder(name)
            .http2()
            .start()
            .await
            .unwrap_or_else(|e| panic!("testkit backend {name}: bind 127.0.0.1:0: {e}"))
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn name(&self) -> &str {
        &self.shared.name
    }

    pub fn ledger(&self) -> Ledger {
        self.shared.ledger.clone()
    }

    /// Applies to requests whose head arrives from now on.
    pub fn set_behaviour(&self, behaviour: Behaviour) {
        *self
            .shared
            .behaviour
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = behaviour;
    }

    /// Stops accepting (the port refuses connections once this returns) and
    /// resets every open connection, hung ones included. Idempotent.
    pub async fn kill(&self) {
        let generation = self.running.lock().unwrap_or_else(PoisonError::into_inner).take();
        if let Some(generation) = generation {
            generation.shutdown().await;
        }
    }

    /// Listens on the same port again (after killing the current listener
    /// if still running), with the same name, ledger and counters. Fails if
    /// the port was taken in the meantime.
    pub async fn restart(&self) -> std::io::Result<()> {
        self.kill().await;
        let listener = bind(self.addr)?;
        let generation = Generation::spawn(listener, &self.shared);
        *self.running.lock().unwrap_or_else(PoisonError::into_inner) = Some(generation);
        Ok(())
    }

    /// True between start (or restart) and kill.
    pub fn is_running(&self) -> bool {
        self.running
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some()
    }

    /// TCP connections accepted since start, across restarts.
    pub fn connections_accepted(&self) -> u64 {
        self.shared.accepted.load(Ordering::Relaxed)
    }

    /// Requests currently being handled (head read, response not finished).
    pub fn requests_in_flight(&self) -> u64 {
        self.shared.in_flight.load(Ordering::Relaxed)
    }

    /// The most requests ever in flight at once.
    pub fn max_requests_in_flight(&self) -> u64 {
        self.shared.max_in_flight.load(Ordering::Relaxed)
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        let generation = self
            .running
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(generation) = generation {
            // No await in drop: abort the listener and let each connection
            // task reset its own connection.
            generation.accept.abort();
            generation.kill.cancel();
        }
    }
}

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backend")
            .field("name", &self.shared.name)
            .field("addr", &self.addr)
            .field("protocol", &self.shared.protocol)
            .finish_non_exhaustive()
    }
}

/// Binds with `SO_REUSEADDR` so that a restart can take the same port back
/// while old connections linger in TIME_WAIT.
fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

impl Generation {
    fn spawn(listener: TcpListener, shared: &Arc<Shared>) -> Generation {
        let kill = CancellationToken::new();
        let tracker = TaskTracker::new();
        let accept = tokio::spawn(accept_loop(
            listener,
            Arc::clone(shared),
            kill.clone(),
            tracker.clone(),
        ));
        Generation {
            accept,
            kill,
            tracker,
        }
    }

    async fn shutdown(self) {
        self.accept.abort();
        // Awaiting the aborted task guarantees the listener is dropped, so
        // the port refuses connections by the time kill returns.
        let _ = self.accept.await;
        self.kill.cancel();
        self.tracker.close();
        if tokio::time::timeout(KILL_DEADLINE, self.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!("testkit backend: connection tasks still running after kill");
        }
    }
}

/// Runs until its owner (the backend's current generation) aborts it.
async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    kill: CancellationToken,
    tracker: TaskTracker,
) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of descriptors and the like: back off rather than spin.
                tracing::warn!(error = %e, "testkit backend: accept failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        shared.accepted.fetch_add(1, Ordering::Relaxed);
        let _ = stream.set_nodelay(true);
        let shared = Arc::clone(&shared);
        let kill = kill.clone();
        match shared.protocol {
            Protocol::Http1 => tracker.spawn(h1::serve(stream, shared, kill)),
            Protocol::Http2 => tracker.spawn(h2::serve(stream, shared, kill)),
        };
    }
}

/// Counts a request as in flight for as long as it lives.
struct InFlight(Arc<Shared>);

impl InFlight {
    fn enter(shared: &Arc<Shared>) -> InFlight {
        let now = shared.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
        shared.max_in_flight.fetch_max(now, Ordering::Relaxed);
        InFlight(Arc::clone(shared))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What to do with one request, from the behaviour or its override headers.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Plan {
    status: u16,
    delay: Duration,
    action: Action,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Action {
    Respond,
    Reset,
    Hang,
    Raw(Bytes),
    CloseMidBody,
}

impl Plan {
    fn normal() -> Plan {
        Plan {
            status: 200,
            delay: Duration::ZERO,
            action: Action::Respond,
        }
    }

    fn from_behaviour(b: &Behaviour) -> Plan {
        let mut plan = Plan::normal();
        match b {
            Behaviour::Normal => {}
            Behaviour::Status(s) => plan.status = *s,
            Behaviour::Delay(d) => plan.delay = *d,
            Behaviour::Reset => plan.action = Action::Reset,
            Behaviour::Hang => plan.action = Action::Hang,
            Behaviour::Raw(bytes) => plan.action = Action::Raw(bytes.clone()),
            Behaviour::CloseMidBody => plan.action = Action::CloseMidBody,
        }
        plan
    }

    /// The request's override headers, else the global behaviour. `Err` is
    /// the reason a bad override value is answered `400`.
    fn for_request(shared: &Shared, headers: &[(String, String)]) -> Result<Plan, String> {
        let status = header(headers, "x-testkit-status");
        let delay = header(headers, "x-testkit-delay-ms");
        let action = header(headers, "x-testkit-action");
        if status.is_none() && delay.is_none() && action.is_none() {
            let behaviour = shared.behaviour.lock().unwrap_or_else(PoisonError::into_inner);
            return Ok(Plan::from_behaviour(&behaviour));
        }
        let mut plan = Plan::normal();
        if let Some(s) = status {
            plan.status = s
                .trim()
                .parse()
                .ok()
                .filter(|s| (200..=599).contains(s))
                .ok_or_else(|| format!("bad x-testkit-status {s:?}"))?;
        }
        if let Some(d) = delay {
            let ms: u64 = d
                .trim()
                .parse()
                .map_err(|_| format!("bad x-testkit-delay-ms {d:?}"))?;
            plan.delay = Duration::from_millis(ms);
        }
        if let Some(a) = action {
            plan.action = match a.trim() {
                "reset" => Action::Reset,
                "hang" => Action::Hang,
                "close-mid-body" => Action::CloseMidBody,
                other => return Err(format!("bad x-testkit-action {other:?}")),
            };
        }
        Ok(plan)
    }
}

/// Which built-in page a request asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Page {
    Default,
    Healthz,
    Echo,
    Bytes { len: u64, chunked: bool },
}

impl Page {
    fn of(method: &str, target: &str) -> Result<Page, String> {
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        if path == "/healthz" {
            return Ok(Page::Healthz);
        }
        if path == "/echo" && (method == "POST" || method == "PUT") {
            return Ok(Page::Echo);
        }
        if let Some(n) = path.strip_prefix("/bytes/")
            && (method == "GET" || method == "HEAD")
        {
            let len = n.parse().map_err(|_| format!("bad /bytes length {n:?}"))?;
            let chunked = query.split('&').any(|kv| kv == "chunked=1");
            return Ok(Page::Bytes { len, chunked });
        }
        Ok(Page::Default)
    }
}

/// Statuses whose responses never have a body (RFC 9110 sections 15.3.5, 15.4.5).
fn bodiless(status: u16) -> bool {
    status == 204 || status == 304
}

fn reason(status: u16) -> &'static str {
    http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("Unknown")
}

fn default_body(shared: &Shared, method: &str, target: &str) -> Bytes {
    Bytes::from(format!("{} {method} {target}\n", shared.name))
}

/// `len` bytes of the repeating pattern `/bytes/<n>` serves
/// (`0123456789abcdef…`), for comparing with what a client received.
pub fn pattern_bytes(len: usize) -> Vec<u8> {
    PATTERN.iter().copied().cycle().take(len).collect()
}

/// SHA-256 (hex) of what `/bytes/<len>` serves, computed without holding it.
pub fn pattern_sha256(len: u64) -> String {
    use sha2::{Digest, Sha256};
    let mut hasher = Sha256::new();
    let mut left = len;
    while left > 0 {
        let piece = pattern_piece(left);
        left -= piece.len() as u64;
        hasher.update(&piece);
    }
    // The ledger's encoding, so the two can never disagree.
    crate::ledger::hex(&hasher.finalize())
}

/// The next piece of `/bytes/<n>` when `left` bytes remain. Pieces are
/// whole multiples of the pattern (64 KiB), so each starts at pattern
/// offset 0 and they can share one buffer.
fn pattern_piece(left: u64) -> Bytes {
    static BLOCK: OnceLock<Bytes> = OnceLock::new();
    let block = BLOCK.get_or_init(|| Bytes::from(pattern_bytes(PIECE)));
    let n = usize::try_from(left).unwrap_or(PIECE).min(PIECE);
    block.slice(..n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::sha256_hex;

    #[test]
    fn pattern_pieces_concatenate_to_the_pattern() {
        let len = PIECE as u64 * 2 + 17;
        let mut all = Vec::new();
        let mut left = len;
        while left > 0 {
            let piece = pattern_piece(left);
            left -= piece.len() as u64;
            all.extend_from_slice(&piece);
        }
        assert_eq!(all, pattern_bytes(all.len()));
        assert_eq!(pattern_sha256(len), sha256_hex(&all));
        assert_eq!(pattern_sha256(0), sha256_hex(b""));
    }

    #[test]
    fn pages() {
        assert_eq!(
            Page::of("GET", "/bytes/10?chunked=1"),
            Ok(Page::Bytes {
                len: 10,
                chunked: true
            })
        );
        assert_eq!(Page::of("POST", "/bytes/10"), Ok(Page::Default));
        assert!(Page::of("GET", "/bytes/x").is_err());
        assert_eq!(Page::of("PUT", "/echo"), Ok(Page::Echo));
        assert_eq!(Page::of("GET", "/echo"), Ok(Page::Default));
        assert_eq!(Page::of("GET", "/healthz"), Ok(Page::Healthz));
    }

    #[test]
    fn override_headers_replace_the_behaviour() {
        let shared = Shared {
            name: "a".into(),
            protocol: Protocol::Http1,
            ledger: Ledger::new(),
            behaviour: Mutex::new(Behaviour::Reset),
            accepted: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            max_in_flight: AtomicU64::new(0),
        };
        let h = |k: &str, v: &str| vec![(k.to_owned(), v.to_owned())];
        assert_eq!(Plan::for_request(&shared, &[]).unwrap().action, Action::Reset);
        let plan = Plan::for_request(&shared, &h("x-testkit-status", "503")).unwrap();
        assert_eq!(
            plan,
            Plan {
                status: 503,
                ..Plan::normal()
            }
        );
        let plan = Plan::for_request(&shared, &h("x-testkit-delay-ms", "150")).unwrap();
        assert_eq!(plan.delay, Duration::from_millis(150));
        let plan = Plan::for_request(&shared, &h("x-testkit-action", "hang")).unwrap();
        assert_eq!(plan.action, Action::Hang);
        assert!(Plan::for_request(&shared, &h("x-testkit-action", "explode")).is_err());
        assert!(Plan::for_request(&shared, &h("x-testkit-status", "42")).is_err());
    }
}
