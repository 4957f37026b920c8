//! A raw TCP echo server, for tests of proxies that work on bytes rather
//! than HTTP (`levee chaos proxy` and its toxics).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Echoes every byte back on the connection it came from, and half-closes
/// when the client does. Listens on 127.0.0.1; dropping it stops it and
/// closes its connections.
pub struct Echo {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    stop: CancellationToken,
}

impl Echo {
    pub async fn start() -> std::io::Result<Echo> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let accepted = Arc::new(AtomicUsize::new(0));
        let stop = CancellationToken::new();
        let tracker = TaskTracker::new();
        let (count, t, tr) = (accepted.clone(), stop.clone(), tracker.clone());
        tracker.spawn(async move {
            loop {
                let (mut stream, _) = tokio::select! {
                    _ = t.cancelled() => return,
                    r = listener.accept() => match r {
                        Ok(c) => c,
                        Err(_) => continue,
                    },
                };
                count.fetch_add(1, Ordering::SeqCst);
                let t = t.clone();
                tr.spawn(async move {
                    let (mut read, mut write) = stream.split();
                    tokio::select! {
                        _ = t.cancelled() => {}
                        r = tokio::io::copy(&mut read, &mut write) => {
                            if r.is_ok() {
                                let _ = write.shutdown().await;
                            }
                        }
                    }
                });
            }
        });
        Ok(Echo { addr, accepted, stop })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}
