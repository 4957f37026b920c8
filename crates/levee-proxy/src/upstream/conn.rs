//! An HTTP/1.1 connection to an endpoint with its buffers, as the pool
//! keeps it between requests.

use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};

use super::counters::Slot;
use super::stream::Stream;
use crate::timer::LazyTimer;

/// Read sizes on upstream connections.
pub(super) const READ_CHUNK: usize = 16 * 1024;

/// An open HTTP/1.1 connection to an endpoint, idle or in use.
pub(crate) struct Conn {
    pub(super) io: Stream,
    pub(super) rbuf: BytesMut,
    /// Scratch space kept with the connection so that a request on a pooled
    /// connection allocates nothing for its head or its write queue.
    pub(super) wbuf: BytesMut,
    pub(super) queue: VecDeque<Bytes>,
    /// Deadline for the response head, re-armed lazily across requests.
    pub(super) timer: LazyTimer,
    /// Counts the connection against the upstream's connection limit.
    pub(super) open: Option<Slot>,
}

impl Conn {
    /// Boxed: a connection outlives many requests and moves with each of
    /// them (into the exchange, the response body, the pool), so one
    /// allocation per connection saves copying it around per request.
    pub fn new(io: Stream, open: Option<Slot>) -> Box<Conn> {
        Box::new(Conn {
            io,
            rbuf: BytesMut::with_capacity(READ_CHUNK),
            wbuf: BytesMut::with_capacity(1024),
            queue: VecDeque::with_capacity(8),
            timer: LazyTimer::new(),
            open,
        })
    }

    /// Whether an idle connection can carry another request: the peer has
    /// neither closed it nor sent anything unasked. tokio remembers that the
    /// socket had nothing to read, so in the common case this makes no
    /// system call at all.
    pub fn is_usable(&mut self) -> bool {
        self.rbuf.is_empty() && self.io.is_usable()
    }
}
