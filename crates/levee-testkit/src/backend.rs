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
mod serving;

pub use serving::{Behaviour, pattern_bytes, pattern_sha256};

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::net::{TcpListener, TcpSocket};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::ledger::Ledger;
use serving::{Protocol, Shared};

/// How long [`Backend::kill`] waits for connection tasks to end.
const KILL_DEADLINE: Duration = Duration::from_secs(5);

/// One scripted origin. Dropping it stops it: the listener closes and every
/// open connection is reset.
pub struct Backend {
    shared: Arc<Shared>,
    addr: SocketAddr,
    running: Mutex<Option<Generation>>,
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
