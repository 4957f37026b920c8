//! One direction of a proxied connection: bytes read from the source go
//! through the direction's chain of toxics and are written to the
//! destination when the chain says so. All the decisions are the chain's;
//! this only reads, writes, sleeps until the chain's next instant, and
//! hands the chain a new toxic list whenever the proxy's changes.

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use fastrand::Rng;
use socket2::SockRef;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::chain::{Chain, Poll};
use crate::stage::{End, Item};
use crate::toxic::{Stream, ToxicSet};

/// The most a direction holds in its toxics before it stops reading from
/// the source (TCP flow control then slows the sender): enough for a
/// latency toxic not to throttle ordinary traffic, bounded so that a slow
/// toxic never buffers a whole stream. Toxiproxy's latency holds up to
/// 1024 chunks; so does this, and at most 1 MiB.
const HELD_BYTES: usize = 1 << 20;
const HELD_ITEMS: usize = 1024;
/// One read's most.
const READ_SIZE: usize = 32 * 1024;

/// How a direction ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ended {
    /// The source finished and the destination got a FIN; the other
    /// direction carries on.
    Eof,
    /// A toxic closed the connection.
    Close,
    /// A toxic reset the connection (both sockets now linger 0).
    Reset,
    /// A read or write failed: the connection is broken.
    Failed,
    /// The proxy stopped, or the other direction closed the connection.
    Cancelled,
}

/// What a direction needs.
pub struct Pipe<'a> {
    pub src: ReadHalf<'a>,
    pub dst: WriteHalf<'a>,
    pub stream: Stream,
    pub toxics: watch::Receiver<Arc<ToxicSet>>,
    pub rng: Rng,
    /// The connection's: cancelled when either direction closes it, or
    /// when the proxy stops.
    pub cancel: &'a CancellationToken,
}

/// Runs a direction to its end. A toxic's close or reset, and any
/// failure, cancel the connection so that the other direction stops too;
/// a reset first sets both sockets to linger 0, so that closing them
/// sends an RST (as Toxiproxy's `reset_peer` does).
pub async fn run(mut pipe: Pipe<'_>) -> Ended {
    let ended = copy(&mut pipe).await;
    if ended == Ended::Reset {
        let zero = Some(Duration::ZERO);
        let src = SockRef::from(pipe.src.as_ref()).set_linger(zero);
        let dst = SockRef::from(pipe.dst.as_ref()).set_linger(zero);
        if src.is_err() || dst.is_err() {
            tracing::debug!("cannot set SO_LINGER 0; the reset becomes a close");
        }
    }
    if ended != Ended::Eof {
        pipe.cancel.cancel();
    }
    ended
}

async fn copy(p: &mut Pipe<'_>) -> Ended {
    let mut rng = p.rng.clone();
    let set = Arc::clone(&p.toxics.borrow_and_update());
    let mut chain = Chain::new(set.side(p.stream), Instant::now().into_std(), &mut rng);
    let mut buf = BytesMut::with_capacity(READ_SIZE);
    let (mut source_done, mut watching) = (false, true);
    loop {
        let now = Instant::now().into_std();
        let wake = match chain.poll(now, &mut rng) {
            Poll::Ready(Item::Data { bytes, .. }) => {
                tokio::select! {
                    biased;
                    _ = p.cancel.cancelled() => return Ended::Cancelled,
                    r = p.dst.write_all(&bytes) => if r.is_err() { return Ended::Failed },
                }
                continue;
            }
            Poll::Ready(Item::End(end)) => return finish(p, end).await,
            Poll::Wait(wake) => wake,
        };
        let (bytes, items) = chain.held();
        let may_read = !source_done && bytes < HELD_BYTES && items < HELD_ITEMS;
        if buf.capacity() < READ_SIZE / 2 {
            buf.reserve(READ_SIZE);
        }
        tokio::select! {
            biased;
            _ = p.cancel.cancelled() => return Ended::Cancelled,
            changed = p.toxics.changed(), if watching => match changed {
                Ok(()) => {
                    let set = Arc::clone(&p.toxics.borrow_and_update());
                    chain.update(set.side(p.stream), Instant::now().into_std(), &mut rng);
                }
                // The proxy is gone; its stop token ends this soon.
                Err(_) => watching = false,
            },
            r = p.src.read_buf(&mut buf), if may_read => {
                let now = Instant::now().into_std();
                let item = match r {
                    Ok(0) => Item::End(End::Eof),
                    Ok(_) => Item::Data { bytes: buf.split().freeze(), stamp: now },
                    // A source that failed (reset by its peer) ends like
                    // a close: what the toxics hold is still delivered.
                    Err(_) => Item::End(End::Close),
                };
                source_done = matches!(item, Item::End(_));
                chain.push(item, now, &mut rng);
            }
            _ = sleep_until(wake), if wake.is_some() => {}
        }
    }
}

async fn sleep_until(at: Option<std::time::Instant>) {
    if let Some(at) = at {
        tokio::time::sleep_until(Instant::from_std(at)).await;
    }
}

/// The chain ended the direction: a FIN for a plain end, and nothing to do
/// here for a close or reset (the caller cancels the connection).
async fn finish(p: &mut Pipe<'_>, end: End) -> Ended {
    match end {
        End::Eof => {
            tokio::select! {
                biased;
                _ = p.cancel.cancelled() => Ended::Cancelled,
                r = p.dst.shutdown() => if r.is_ok() { Ended::Eof } else { Ended::Failed },
            }
        }
        End::Close => Ended::Close,
        End::Reset => Ended::Reset,
    }
}
