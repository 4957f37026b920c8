//! One toxic acting on one direction of one connection: what it lets
//! through, and when. Pure: the time is an argument, randomness a seeded
//! generator, and the caller moves bytes.
//!
//! Toxiproxy runs each toxic as a goroutine between channels. A `Stage` is
//! the same thing as a state machine: items go in with [`Stage::accept`],
//! come out with [`Stage::emit`] once due, and [`Stage::wake`] says when
//! the next one may be due, so a single task can drive a whole chain
//! (`chain.rs`) and tests can step it through explicit instants.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use fastrand::Rng;

use crate::toxic::{FOREVER, Kind, Toxic, micros, millis};

/// How a direction ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum End {
    /// The source finished sending: the destination gets a FIN, and the
    /// other direction goes on (a half-close).
    Eof,
    /// A toxic closed the connection (`limit_data`, `timeout`): both
    /// sides are closed.
    Close,
    /// `reset_peer`: both sides are closed with a TCP RST.
    Reset,
}

/// What flows through a chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Item {
    /// Bytes, stamped with when they were read (`latency` counts from
    /// there, so that queueing behind earlier chunks is not added twice).
    Data {
        bytes: Bytes,
        stamp: Instant,
    },
    End(End),
}

impl Item {
    fn len(&self) -> usize {
        match self {
            Item::Data { bytes, .. } => bytes.len(),
            Item::End(_) => 0,
        }
    }
}

/// An item waiting in a stage, and the earliest time it may leave.
#[derive(Debug)]
struct Entry {
    item: Item,
    due: Instant,
}

/// Per-connection state that outlives an update of the toxic's
/// attributes, as Toxiproxy's does (`limit_data` keeps its count).
#[derive(Debug)]
enum State {
    Plain,
    /// When the link is next free: the front chunk's next slice leaves
    /// once its transmission time after this has passed.
    Bandwidth {
        free_at: Instant,
    },
    /// The last data seen (or the toxic's start): the connection closes
    /// `timeout` after it.
    Timeout {
        since: Instant,
    },
    /// When the reset fires, once the first item arrived.
    Reset {
        fire_at: Option<Instant>,
    },
    /// The lengths of the front chunk's remaining pieces, and when the
    /// next piece may leave.
    Slicer {
        cuts: VecDeque<usize>,
        next_at: Instant,
    },
    Limit {
        sent: u64,
    },
}

/// A toxic on one direction of one connection.
#[derive(Debug)]
pub struct Stage {
    toxic: Arc<Toxic>,
    /// Drawn against `toxicity` when the toxic takes hold (and again when
    /// it is updated): a stage that missed passes everything on.
    active: bool,
    queue: VecDeque<Entry>,
    state: State,
    /// An end is queued or was emitted: later input is dropped, and a
    /// timer toxic does not fire again.
    ended: bool,
}

/// `t + d`, or far in the future when that overflows the clock.
pub fn later(t: Instant, d: Duration) -> Instant {
    t.checked_add(d).or_else(|| t.checked_add(FOREVER)).unwrap_or(t)
}

impl Stage {
    pub fn new(toxic: Arc<Toxic>, now: Instant, rng: &mut Rng) -> Stage {
        let state = match toxic.kind {
            Kind::Bandwidth(_) => State::Bandwidth { free_at: now },
            Kind::Timeout(_) => State::Timeout { since: now },
            Kind::ResetPeer(_) => State::Reset { fire_at: None },
            Kind::Slicer(_) => State::Slicer {
                cuts: VecDeque::new(),
                next_at: now,
            },
            Kind::LimitData(_) => State::Limit { sent: 0 },
            _ => State::Plain,
        };
        let active = draw(&toxic, rng);
        Stage {
            toxic,
            active,
            queue: VecDeque::new(),
            state,
            ended: false,
        }
    }

    pub fn toxic(&self) -> &Arc<Toxic> {
        &self.toxic
    }

    pub fn is_active(&self) -> bool {
        self.active
    }

    /// The toxic was updated: new attributes and a new toxicity draw, as
    /// Toxiproxy restarts the toxic; its count and queue are kept, and a
    /// timeout starts over.
    pub fn reconfigure(&mut self, toxic: Arc<Toxic>, now: Instant, rng: &mut Rng) {
        self.active = draw(&toxic, rng);
        self.toxic = toxic;
        if let State::Timeout { since } = &mut self.state {
            *since = now;
        }
    }

    /// Takes the stage out of a chain: what it still holds goes on to the
    /// next stage, unchanged (as Toxiproxy flushes an interrupted toxic).
    /// An active `timeout` closes the connection instead, as Toxiproxy's
    /// does when removed; its data was being dropped anyway.
    pub fn remove(self) -> Vec<Item> {
        if self.active && matches!(self.toxic.kind, Kind::Timeout(_)) && !self.ended {
            return vec![Item::End(End::Close)];
        }
        self.queue.into_iter().map(|e| e.item).collect()
    }

    /// Bytes and items held.
    pub fn held(&self) -> (usize, usize) {
        let bytes = self.queue.iter().map(|e| e.item.len()).sum();
        (bytes, self.queue.len())
    }

    /// An item arrives at `now`.
    pub fn accept(&mut self, item: Item, now: Instant, rng: &mut Rng) {
        if self.ended {
            return;
        }
        if matches!(item, Item::End(_)) {
            // Nothing comes after an end; but a `reset_peer` that the end
            // started counting down still fires, as in Toxiproxy.
            let counting_down = self.active && matches!(self.state, State::Reset { .. });
            self.ended = !counting_down;
        }
        if !self.active {
            self.queue.push_back(Entry { item, due: now });
            return;
        }
        match (&self.toxic.kind, &mut self.state) {
            (Kind::Latency(l), _) => {
                let due = match &item {
                    Item::Data { stamp, .. } => later(*stamp, latency(l.latency, l.jitter, rng)),
                    Item::End(_) => now,
                };
                self.queue.push_back(Entry { item, due });
            }
            (Kind::Bandwidth(_), State::Bandwidth { free_at }) => {
                // An idle link does not bank time: sending resumes at the
                // rate from now.
                if self.queue.is_empty() && *free_at < now {
                    *free_at = now;
                }
                self.queue.push_back(Entry { item, due: now });
            }
            (Kind::SlowClose(s), _) => {
                let due = match item {
                    Item::Data { .. } => now,
                    Item::End(_) => later(now, millis(s.delay)),
                };
                self.queue.push_back(Entry { item, due });
            }
            (Kind::Timeout(_), State::Timeout { since }) => match item {
                // Dropped; Toxiproxy restarts its timer on each chunk.
                Item::Data { .. } => *since = now,
                Item::End(_) => self.queue.push_back(Entry { item, due: now }),
            },
            (Kind::ResetPeer(t), State::Reset { fire_at }) => {
                // Everything is dropped; the first item, data or end,
                // starts the countdown.
                fire_at.get_or_insert(later(now, millis(t.timeout)));
            }
            (Kind::LimitData(l), State::Limit { sent }) => {
                limit(&mut self.queue, &mut self.ended, sent, l.bytes, item, now);
            }
            _ => self.queue.push_back(Entry { item, due: now }),
        }
    }

    /// The next item due at `now`, if any.
    pub fn emit(&mut self, now: Instant, rng: &mut Rng) -> Option<Item> {
        if self.active {
            match (&self.toxic.kind, &mut self.state) {
                (Kind::Timeout(t), State::Timeout { since })
                    if t.timeout > 0 && !self.ended && later(*since, millis(t.timeout)) <= now =>
                {
                    self.ended = true;
                    self.queue.clear();
                    return Some(Item::End(End::Close));
                }
                (Kind::ResetPeer(_), State::Reset { fire_at }) => {
                    return match *fire_at {
                        Some(at) if at <= now && !self.ended => {
                            self.ended = true;
                            Some(Item::End(End::Reset))
                        }
                        _ => None,
                    };
                }
                (Kind::Bandwidth(b), State::Bandwidth { free_at }) => {
                    return bandwidth(&mut self.queue, free_at, b.rate, now);
                }
                (Kind::Slicer(s), State::Slicer { cuts, next_at }) => {
                    return slice(&mut self.queue, cuts, next_at, s, now, rng);
                }
                _ => {}
            }
        }
        let entry = match self.queue.front() {
            Some(e) if e.due <= now => self.queue.pop_front()?,
            _ => return None,
        };
        Some(match entry.item {
            // Delayed data is stamped with when it left, so a second
            // latency counts from there, as in Toxiproxy.
            Item::Data { bytes, .. } if self.active && matches!(self.toxic.kind, Kind::Latency(_)) => {
                Item::Data {
                    bytes,
                    stamp: entry.due,
                }
            }
            item => item,
        })
    }

    /// When [`Stage::emit`] may next return an item; `None` when only new
    /// input can change that.
    pub fn wake(&self) -> Option<Instant> {
        let front = self.queue.front();
        if !self.active {
            return front.map(|e| e.due);
        }
        match (&self.toxic.kind, &self.state) {
            (Kind::Timeout(t), State::Timeout { since }) if t.timeout > 0 && !self.ended => {
                let fire = later(*since, millis(t.timeout));
                Some(front.map_or(fire, |e| e.due.min(fire)))
            }
            (Kind::ResetPeer(_), State::Reset { fire_at }) => fire_at.filter(|_| !self.ended),
            (Kind::Bandwidth(b), State::Bandwidth { free_at }) => match front {
                Some(Entry {
                    item: Item::Data { bytes, .. },
                    ..
                }) => {
                    let slice = slice_len(bytes.len(), b.rate)?;
                    Some(later(*free_at, transmit(slice, b.rate)))
                }
                other => other.map(|e| e.due),
            },
            (Kind::Slicer(_), State::Slicer { next_at, .. }) => front.map(|e| e.due.max(*next_at)),
            _ => front.map(|e| e.due),
        }
    }
}

/// Whether a toxic takes hold on this connection: Toxiproxy draws a
/// uniform number in [0, 1) against the toxicity, so 1 always and 0 never.
fn draw(toxic: &Toxic, rng: &mut Rng) -> bool {
    rng.f32() < toxic.toxicity
}

/// `latency` ± up to `jitter` milliseconds (the jitter drawn uniformly in
/// [-jitter, jitter), as Toxiproxy does).
fn latency(latency: i64, jitter: i64, rng: &mut Rng) -> Duration {
    let jitter = jitter.clamp(0, i64::MAX / 4);
    let offset = if jitter > 0 { rng.i64(-jitter..jitter) } else { 0 };
    millis(latency.clamp(-(i64::MAX / 4), i64::MAX / 4) + offset)
}

/// How long `bytes` take at `rate` KB/s (1 KB = 1000 bytes, as Toxiproxy).
fn transmit(bytes: usize, rate: i64) -> Duration {
    let rate = u128::try_from(rate.max(1)).unwrap_or(1);
    let nanos = (bytes as u128) * 1_000_000 / rate;
    Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX)).min(FOREVER)
}

/// The next slice of a chunk of `len` bytes: at most 100 ms worth, so a
/// large chunk trickles out rather than arriving whole after a long wait.
/// `None` for a rate of zero or less: Toxiproxy then passes no data.
fn slice_len(len: usize, rate: i64) -> Option<usize> {
    if rate <= 0 {
        return None;
    }
    let per_100ms = usize::try_from(rate.saturating_mul(100)).unwrap_or(usize::MAX);
    Some(len.min(per_100ms))
}

fn bandwidth(queue: &mut VecDeque<Entry>, free_at: &mut Instant, rate: i64, now: Instant) -> Option<Item> {
    let front = queue.front_mut()?;
    if matches!(front.item, Item::End(_)) {
        let due = front.due;
        return if due <= now {
            queue.pop_front().map(|e| e.item)
        } else {
            None
        };
    }
    let Item::Data { bytes, stamp } = &mut front.item else {
        return None;
    };
    let n = slice_len(bytes.len(), rate)?;
    let due = later(*free_at, transmit(n, rate));
    if due > now {
        return None;
    }
    // The clock moves by the slice's own time, not to `now`, so a late
    // poll does not slow the rate down.
    *free_at = due;
    let out = Item::Data {
        bytes: bytes.split_to(n),
        stamp: *stamp,
    };
    if bytes.is_empty() {
        queue.pop_front();
    }
    Some(out)
}

fn slice(
    queue: &mut VecDeque<Entry>,
    cuts: &mut VecDeque<usize>,
    next_at: &mut Instant,
    s: &crate::toxic::Slicer,
    now: Instant,
    rng: &mut Rng,
) -> Option<Item> {
    let front = queue.front_mut()?;
    let at = front.due.max(*next_at);
    if at > now {
        return None;
    }
    // Toxiproxy waits `delay` after every piece, the last one too, so an
    // end or the next chunk keeps the same spacing.
    *next_at = later(at, micros(s.delay));
    let Item::Data { bytes, stamp } = &mut front.item else {
        return queue.pop_front().map(|e| e.item);
    };
    if cuts.is_empty() {
        *cuts = cut(bytes.len(), s.average_size, s.size_variation, rng);
    }
    let n = cuts.pop_front().unwrap_or(bytes.len()).min(bytes.len());
    let out = Item::Data {
        bytes: bytes.split_to(n),
        stamp: *stamp,
    };
    if bytes.is_empty() {
        queue.pop_front();
        cuts.clear();
    }
    Some(out)
}

/// Toxiproxy's slicing: halve a span until a piece is within
/// `variation` of `average`, moving each cut by up to ± `variation`.
/// Iterative, with each cut kept inside its span, so no size makes it
/// recurse without end or cut outside the chunk. Returns piece lengths in
/// order, all non-zero, summing to `len`.
pub fn cut(len: usize, average: i64, variation: i64, rng: &mut Rng) -> VecDeque<usize> {
    let average = usize::try_from(average).unwrap_or(0).max(1);
    let variation = usize::try_from(variation).unwrap_or(0);
    let mut pieces = VecDeque::new();
    // Spans still to split, last first, so pieces come out in order.
    let mut todo = vec![(0usize, len)];
    while let Some((start, end)) = todo.pop() {
        let size = end - start;
        if size == 0 {
            continue;
        }
        if size.saturating_sub(average) <= variation || size < 2 {
            pieces.push_back(size);
            continue;
        }
        let mut mid = start + size / 2;
        if variation > 0 {
            let v = i64::try_from(variation).unwrap_or(i64::MAX / 2);
            let shift = rng.i64(-v..v);
            mid = mid.saturating_add_signed(isize::try_from(shift).unwrap_or(0));
        }
        let mid = mid.clamp(start + 1, end - 1);
        todo.push((mid, end));
        todo.push((start, mid));
    }
    pieces
}

/// `limit_data`: pass what is left of the allowance, then end.
fn limit(
    queue: &mut VecDeque<Entry>,
    ended: &mut bool,
    sent: &mut u64,
    allowed: i64,
    item: Item,
    now: Instant,
) {
    let allowed = u64::try_from(allowed).unwrap_or(0);
    let Item::Data { mut bytes, stamp } = item else {
        queue.push_back(Entry { item, due: now });
        return;
    };
    let left = usize::try_from(allowed.saturating_sub(*sent)).unwrap_or(usize::MAX);
    bytes.truncate(left);
    if !bytes.is_empty() {
        *sent += bytes.len() as u64;
        queue.push_back(Entry {
            item: Item::Data { bytes, stamp },
            due: now,
        });
    }
    // Toxiproxy closes once the allowance is used, right after the chunk
    // that used it, not on the next one.
    if *sent >= allowed {
        *ended = true;
        queue.push_back(Entry {
            item: Item::End(End::Close),
            due: now,
        });
    }
}
