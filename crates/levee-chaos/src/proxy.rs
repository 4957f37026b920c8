//! A running proxy: its listener, and a task per connection that dials
//! the upstream and runs both directions through the proxy's toxics.
//!
//! Every task is on the proxy's own `TaskTracker` and ends on its stop
//! token, so [`Running::stop`] closes the listener (the port is free when
//! it returns, as a disabled Toxiproxy proxy refuses connections) and cuts
//! every open connection.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use fastrand::Rng;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::pipe::{self, Ended, Pipe};
use crate::toxic::{Stream, ToxicSet};

/// How long a connection to the upstream may take before the client is
/// dropped. Toxiproxy waits for the OS (minutes); a bound keeps a
/// black-holed upstream from pinning connections forever.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long stopping waits for the tasks to notice. They end at the next
/// poll, so this is only reached if something is badly wrong.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);
/// The pause after a failed accept (out of file descriptors, say), so the
/// loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// A proxy that is listening.
#[derive(Debug)]
pub struct Running {
    /// The address it listens on (the real port when asked for port 0).
    pub addr: SocketAddr,
    stop: CancellationToken,
    tasks: TaskTracker,
}

/// Binds `listen` and starts accepting. `seed` seeds the toxicity draws
/// of its connections; `parent` is the server's shutdown.
pub async fn start(
    listen: SocketAddr,
    upstream: String,
    toxics: watch::Receiver<Arc<ToxicSet>>,
    seed: u64,
    parent: &CancellationToken,
) -> std::io::Result<Running> {
    let listener = TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    let stop = parent.child_token();
    let tasks = TaskTracker::new();
    let accept = Accept {
        listener,
        upstream: Arc::from(upstream),
        toxics,
        rng: Rng::with_seed(seed),
        stop: stop.clone(),
        tasks: tasks.clone(),
    };
    tasks.spawn(accept.run());
    Ok(Running { addr, stop, tasks })
}

/// A proxy dropped without [`Running::stop`] (its API call was cut short)
/// still stops: its tasks must not outlive their owner.
impl Drop for Running {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Running {
    /// Closes the listener and every connection, and waits for them.
    pub async fn stop(self) {
        self.stop.cancel();
        self.tasks.close();
        if tokio::time::timeout(STOP_TIMEOUT, self.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!(addr = %self.addr, "a proxy's tasks did not stop in time");
        }
    }
}

struct Accept {
    listener: TcpListener,
    upstream: Arc<str>,
    toxics: watch::Receiver<Arc<ToxicSet>>,
    rng: Rng,
    stop: CancellationToken,
    tasks: TaskTracker,
}

impl Accept {
    async fn run(mut self) {
        loop {
            let accepted = tokio::select! {
                biased;
                _ = self.stop.cancelled() => return,
                r = self.listener.accept() => r,
            };
            match accepted {
                Ok((client, _)) => {
                    let conn = Connection {
                        client,
                        upstream: Arc::clone(&self.upstream),
                        toxics: self.toxics.clone(),
                        seed: self.rng.u64(..),
                        cancel: self.stop.child_token(),
                    };
                    self.tasks.spawn(conn.run());
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::select! {
                        _ = self.stop.cancelled() => return,
                        _ = tokio::time::sleep(ACCEPT_BACKOFF) => {}
                    }
                }
            }
        }
    }
}

struct Connection {
    client: TcpStream,
    upstream: Arc<str>,
    toxics: watch::Receiver<Arc<ToxicSet>>,
    seed: u64,
    cancel: CancellationToken,
}

impl Connection {
    async fn run(mut self) {
        let dial = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&*self.upstream));
        let mut server = tokio::select! {
            _ = self.cancel.cancelled() => return,
            r = dial => match r {
                Ok(Ok(s)) => s,
                // Toxiproxy closes the client when the upstream cannot be
                // reached; so does this.
                Ok(Err(e)) => return tracing::info!(upstream = %self.upstream, error = %e, "cannot connect upstream"),
                Err(_) => return tracing::info!(upstream = %self.upstream, "connecting upstream timed out"),
            },
        };
        let _ = self.client.set_nodelay(true);
        let _ = server.set_nodelay(true);
        let mut rng = Rng::with_seed(self.seed);
        let (client_read, client_write) = self.client.split();
        let (server_read, server_write) = server.split();
        let up = Pipe {
            src: client_read,
            dst: server_write,
            stream: Stream::Upstream,
            toxics: self.toxics.clone(),
            rng: Rng::with_seed(rng.u64(..)),
            cancel: &self.cancel,
        };
        let down = Pipe {
            src: server_read,
            dst: client_write,
            stream: Stream::Downstream,
            toxics: self.toxics.clone(),
            rng: Rng::with_seed(rng.u64(..)),
            cancel: &self.cancel,
        };
        let (up, down) = tokio::join!(pipe::run(up), pipe::run(down));
        if up == Ended::Reset || down == Ended::Reset {
            tracing::debug!("connection reset by a toxic");
        }
        // Both sockets close here, when `client` and `server` drop: with an
        // RST if a toxic set them to linger 0.
    }
}
