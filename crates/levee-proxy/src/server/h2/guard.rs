//! The HTTP/2 flood guard: frame budgets the h2 library does not keep.
//!
//! h2 already bounds rapid reset of streams it has not handed over yet,
//! CONTINUATION floods, HPACK bombs, small DATA frames and stream errors
//! (each ends in GOAWAY `ENHANCE_YOUR_CALM`), and it answers one PING or
//! SETTINGS at a time, so those cannot grow its memory. What it does not
//! bound is how many of them a client may send: a PING or SETTINGS flood
//! costs a reply each for as long as the client likes, resets of streams
//! already handed to levee each start (and cancel) upstream work, and frames
//! with no payload cost a frame's work for nothing.
//!
//! [`Guarded`] wraps the connection's I/O and reads the 9-byte frame
//! headers as the bytes pass to hyper (never copying or holding a payload),
//! counting those frames per connection over a 10 s window. Over a budget,
//! hyper is given nothing more from the client: levee writes its own GOAWAY
//! (`ENHANCE_YOUR_CALM`, the last stream hyper was given, and the reason as
//! debug data) at the next frame boundary of hyper's output, closes its
//! side, and discards what the client still sends until it closes or the
//! connection's owner gives up on it. It also reads the GOAWAY frames h2
//! sends, so that h2's own refusals are counted by the same reasons.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;
use tokio::time::Instant;

/// The window the budgets are counted over.
pub(crate) const WINDOW: Duration = Duration::from_secs(10);

const PREFACE_LEN: u8 = 24;
const HEADER_LEN: usize = 9;

const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const CONTINUATION: u8 = 0x9;

const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;

const ENHANCE_YOUR_CALM: u32 = 0xb;

/// How much of a GOAWAY levee reads from hyper's output: the last stream
/// ID, the error code, and enough debug data to tell h2's reasons apart.
const GOAWAY_CAPTURE: usize = 8 + 32;
/// Reads discarded in one poll once the client is cut off, before yielding.
const DISCARD_ROUNDS: usize = 16;

/// Why a connection was closed for abuse: the `reason` label of
/// `levee_http2_abuse_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Abuse {
    /// Streams reset by the client over `h2_max_reset_streams`, or over
    /// h2's cap on resets of streams not yet handed over (CVE-2023-44487).
    RapidReset,
    PingFlood,
    SettingsFlood,
    /// Frames without payload or effect over `h2_max_empty_frames`.
    EmptyFrames,
    /// A header block continued in more CONTINUATION frames than its size
    /// could need (h2).
    ContinuationFlood,
    /// A header block that decodes to over four times
    /// `max_header_bytes`, the HPACK bomb (h2).
    HeaderListTooLarge,
    /// Too much DATA framing for too little data (h2).
    SmallDataFrames,
    /// Too many streams the client made levee reset for errors (h2).
    StreamErrors,
    /// h2's `ENHANCE_YOUR_CALM` for a reason levee does not know (a newer
    /// h2 than the one this was written against).
    Other,
}

impl Abuse {
    pub(crate) const ALL: [Abuse; 9] = [
        Abuse::RapidReset,
        Abuse::PingFlood,
        Abuse::SettingsFlood,
        Abuse::EmptyFrames,
        Abuse::ContinuationFlood,
        Abuse::HeaderListTooLarge,
        Abuse::SmallDataFrames,
        Abuse::StreamErrors,
        Abuse::Other,
    ];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Abuse::RapidReset => "rapid_reset",
            Abuse::PingFlood => "ping_flood",
            Abuse::SettingsFlood => "settings_flood",
            Abuse::EmptyFrames => "empty_frames",
            Abuse::ContinuationFlood => "continuation_flood",
            Abuse::HeaderListTooLarge => "header_list_too_large",
            Abuse::SmallDataFrames => "small_data_frames",
            Abuse::StreamErrors => "stream_errors",
            Abuse::Other => "other",
        }
    }

    /// The reason of a GOAWAY `ENHANCE_YOUR_CALM` h2 sent, from its debug
    /// data (h2 0.4 names the limit there).
    fn of_h2_debug_data(debug: &[u8]) -> Abuse {
        match debug {
            b"too_many_resets" => Abuse::RapidReset,
            b"too_many_continuations" => Abuse::ContinuationFlood,
            b"header_list_way_too_large" => Abuse::HeaderListTooLarge,
            b"too_many_data_frames" => Abuse::SmallDataFrames,
            b"too_many_internal_resets" => Abuse::StreamErrors,
            _ => Abuse::Other,
        }
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

/// The `server.h2_max_*` budgets, each per connection per [`WINDOW`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Budgets {
    pub resets: u32,
    pub control: u32,
    pub empty: u32,
}

impl Budgets {
    pub(crate) fn from_config(s: &levee_config::Server) -> Budgets {
        Budgets {
            resets: s.h2_max_reset_streams,
            control: s.h2_max_control_frames,
            empty: s.h2_max_empty_frames,
        }
    }
}

/// What [`FrameWatch`] counts, indexing its counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Counted {
    Reset = 0,
    Ping = 1,
    Settings = 2,
    Empty = 3,
}

impl Counted {
    fn abuse(self) -> Abuse {
        match self {
            Counted::Reset => Abuse::RapidReset,
            Counted::Ping => Abuse::PingFlood,
            Counted::Settings => Abuse::SettingsFlood,
            Counted::Empty => Abuse::EmptyFrames,
        }
    }
}

/// A budget was exceeded by the frame whose header starts `at` bytes into
/// the bytes just fed (0 when it started in an earlier feed).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Trip {
    pub at: usize,
    pub abuse: Abuse,
}

/// Where a byte stream of frames is: inside a frame header (with the part
/// read so far) or inside a payload (with the bytes left of it).
#[derive(Debug, Default)]
struct Framing {
    header: [u8; HEADER_LEN],
    have: usize,
    payload_left: u32,
}

/// A frame header, parsed.
#[derive(Clone, Copy, Debug)]
struct Head {
    len: u32,
    kind: u8,
    flags: u8,
    stream: u32,
}

impl Framing {
    /// Takes bytes from `bytes[*i..]`: skips payload, or collects a header.
    /// Returns a header once it is complete (and `*i` is past it).
    fn step(&mut self, bytes: &[u8], i: &mut usize) -> Option<Head> {
        let rest = &bytes[*i..];
        if self.payload_left > 0 {
            let n = rest.len().min(self.payload_left as usize);
            // n <= payload_left, a u32.
            self.payload_left -= n as u32;
            *i += n;
            return None;
        }
        let n = rest.len().min(HEADER_LEN - self.have);
        self.header[self.have..self.have + n].copy_from_slice(&rest[..n]);
        self.have += n;
        *i += n;
        if self.have < HEADER_LEN {
            return None;
        }
        self.have = 0;
        let h = &self.header;
        let head = Head {
            len: u32::from_be_bytes([0, h[0], h[1], h[2]]),
            kind: h[3],
            flags: h[4],
            stream: u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff,
        };
        self.payload_left = head.len;
        Some(head)
    }

    fn at_boundary(&self) -> bool {
        self.have == 0 && self.payload_left == 0
    }

    /// Bytes to the end of the current frame, or of its header while the
    /// header is incomplete (its length is not known yet).
    fn rest_of_frame(&self) -> usize {
        if self.have > 0 {
            HEADER_LEN - self.have
        } else {
            self.payload_left as usize
        }
    }
}

/// Counts the client's frames against the budgets. Pure: no I/O, and time
/// comes from the caller's clock, read only when a count passes its budget.
#[derive(Debug)]
pub(crate) struct FrameWatch {
    budgets: Budgets,
    /// Bytes of the client preface still to skip.
    preface_left: u8,
    framing: Framing,
    counts: [u32; 4],
    window_start: Instant,
    /// The highest stream a HEADERS frame was seen for.
    last_stream: u32,
}

impl FrameWatch {
    pub(crate) fn new(budgets: Budgets, now: Instant) -> FrameWatch {
        FrameWatch {
            budgets,
            preface_left: PREFACE_LEN,
            framing: Framing::default(),
            counts: [0; 4],
            window_start: now,
            last_stream: 0,
        }
    }

    /// Reads the frame headers in the next bytes from the client. Stops at
    /// the first frame over a budget: what follows it was not looked at.
    pub(crate) fn feed(&mut self, bytes: &[u8], clock: &mut impl FnMut() -> Instant) -> Option<Trip> {
        let mut i = usize::from(self.preface_left).min(bytes.len());
        // i <= preface_left, a u8.
        self.preface_left -= i as u8;
        while i < bytes.len() {
            let starts_here = self.framing.payload_left == 0 && self.framing.have == 0;
            let start = if starts_here { i } else { 0 };
            let Some(head) = self.framing.step(bytes, &mut i) else {
                continue;
            };
            if let Some(counted) = self.classify(head)
                && let Err(abuse) = self.count(counted, clock)
            {
                return Some(Trip { at: start, abuse });
            }
        }
        None
    }

    fn classify(&mut self, head: Head) -> Option<Counted> {
        let empty = head.len == 0;
        match head.kind {
            HEADERS => {
                self.last_stream = self.last_stream.max(head.stream);
                (empty && head.flags & END_HEADERS == 0).then_some(Counted::Empty)
            }
            CONTINUATION => (empty && head.flags & END_HEADERS == 0).then_some(Counted::Empty),
            DATA => (empty && head.flags & END_STREAM == 0).then_some(Counted::Empty),
            RST_STREAM => Some(Counted::Reset),
            // Acknowledgements too: h2 logs a warning for each PING ack it
            // did not ask for, and a SETTINGS ack it did not ask for is an
            // error anyway.
            PING => Some(Counted::Ping),
            SETTINGS => Some(Counted::Settings),
            _ => None,
        }
    }

    fn count(&mut self, what: Counted, clock: &mut impl FnMut() -> Instant) -> Result<(), Abuse> {
        let budget = match what {
            Counted::Reset => self.budgets.resets,
            Counted::Ping | Counted::Settings => self.budgets.control,
            Counted::Empty => self.budgets.empty,
        };
        let n = &mut self.counts[what as usize];
        *n = n.saturating_add(1);
        if *n <= budget {
            return Ok(());
        }
        // Over budget since the window started: a new window if that was
        // long enough ago (so a count never exceeds twice its budget within
        // one window), else the connection is over.
        let now = clock();
        if now.saturating_duration_since(self.window_start) < WINDOW {
            return Err(what.abuse());
        }
        self.window_start = now;
        self.counts = [0; 4];
        self.counts[what as usize] = 1;
        Ok(())
    }

    /// levee sent the client response data: PINGs alongside it are how
    /// clients measure the path (BDP probes) and only idle PINGs count.
    pub(crate) fn response_sent(&mut self) {
        self.counts[Counted::Ping as usize] = 0;
    }

    pub(crate) fn last_stream(&self) -> u32 {
        self.last_stream
    }
}

/// Reads the frame headers of hyper's output: to find frame boundaries
/// (where levee's own GOAWAY may go), response data (which excuses PINGs),
/// and the GOAWAY frames h2 sends.
#[derive(Debug, Default)]
struct OutWatch {
    framing: Framing,
    /// A GOAWAY went out, or is going out.
    goaway_seen: bool,
    /// The start of the payload of the GOAWAY being written, while in it.
    capture: Option<([u8; GOAWAY_CAPTURE], usize)>,
}

/// What hyper's output showed.
#[derive(Debug, Default, PartialEq, Eq)]
struct OutEvents {
    response_sent: bool,
    /// A GOAWAY `ENHANCE_YOUR_CALM` from h2, with its reason.
    calm_down: Option<Abuse>,
}

impl OutWatch {
    fn feed(&mut self, bytes: &[u8]) -> OutEvents {
        let mut events = OutEvents::default();
        let mut i = 0;
        while i < bytes.len() {
            let in_payload = self.framing.payload_left > 0;
            let from = i;
            let head = self.framing.step(bytes, &mut i);
            if in_payload && let Some((buf, len)) = &mut self.capture {
                let n = (i - from).min(GOAWAY_CAPTURE - *len);
                buf[*len..*len + n].copy_from_slice(&bytes[from..from + n]);
                *len += n;
            }
            if let Some(head) = head {
                match head.kind {
                    DATA | HEADERS => events.response_sent = true,
                    GOAWAY => {
                        self.goaway_seen = true;
                        self.capture = Some(([0; GOAWAY_CAPTURE], 0));
                    }
                    _ => {}
                }
            }
            if self.framing.at_boundary()
                && let Some((buf, len)) = self.capture.take()
            {
                events.calm_down = calm_down(&buf[..len]).or(events.calm_down);
            }
        }
        events
    }
}

/// The reason of a GOAWAY payload's `ENHANCE_YOUR_CALM`, if it is one.
fn calm_down(payload: &[u8]) -> Option<Abuse> {
    let code = payload.get(4..8)?;
    let code = u32::from_be_bytes([code[0], code[1], code[2], code[3]]);
    (code == ENHANCE_YOUR_CALM).then(|| Abuse::of_h2_debug_data(&payload[8..]))
}

/// A connection's abuse verdict, shared with whoever serves it.
#[derive(Debug, Default)]
pub(crate) struct Verdict {
    /// The first reason found, as its index + 1; 0 for none.
    reason: AtomicU8,
    /// Signalled when levee's own guard cut the client off.
    tripped: Notify,
}

impl Verdict {
    fn record(&self, abuse: Abuse) {
        // Abuse::ALL has 9 entries.
        let value = abuse.index() as u8 + 1;
        let _ = self
            .reason
            .compare_exchange(0, value, Ordering::AcqRel, Ordering::Acquire);
    }

    /// Why the connection was closed for abuse, if it was.
    pub(crate) fn reason(&self) -> Option<Abuse> {
        let value = usize::from(self.reason.load(Ordering::Acquire));
        value.checked_sub(1).and_then(|i| Abuse::ALL.get(i).copied())
    }

    /// Resolves once the guard has cut the client off; the connection
    /// should then be given a short while to get its GOAWAY out, and ended.
    pub(crate) async fn tripped(&self) {
        self.tripped.notified().await;
    }
}

/// levee's GOAWAY, and how much of it has been written.
#[derive(Debug)]
struct OwnGoaway {
    bytes: [u8; HEADER_LEN + 8 + 24],
    len: usize,
    written: usize,
}

impl OwnGoaway {
    fn new(last_stream: u32, abuse: Abuse) -> OwnGoaway {
        let debug = abuse.as_str().as_bytes();
        let debug = &debug[..debug.len().min(24)];
        let payload = 8 + debug.len();
        let mut bytes = [0u8; HEADER_LEN + 8 + 24];
        // payload <= 32: it fits the 24-bit length.
        bytes[..3].copy_from_slice(&(payload as u32).to_be_bytes()[1..]);
        bytes[3] = GOAWAY;
        bytes[9..13].copy_from_slice(&(last_stream & 0x7fff_ffff).to_be_bytes());
        bytes[13..17].copy_from_slice(&ENHANCE_YOUR_CALM.to_be_bytes());
        bytes[17..17 + debug.len()].copy_from_slice(debug);
        OwnGoaway {
            bytes,
            len: HEADER_LEN + payload,
            written: 0,
        }
    }
}

#[derive(Debug)]
enum Phase {
    Serving,
    /// The client is cut off; levee's GOAWAY waits for a frame boundary.
    CutOff(OwnGoaway),
    /// The GOAWAY is out (levee's or h2's); closing levee's side.
    Closing,
    /// hyper's output is dropped, the client's input discarded until it
    /// closes.
    Closed,
}

/// A client connection's I/O with the flood guard in the way (see the
/// module docs).
pub(crate) struct Guarded<IO> {
    io: IO,
    watch: FrameWatch,
    out: OutWatch,
    phase: Phase,
    verdict: std::sync::Arc<Verdict>,
}

impl<IO> Guarded<IO> {
    pub(crate) fn new(io: IO, budgets: Budgets) -> (Guarded<IO>, std::sync::Arc<Verdict>) {
        let verdict = std::sync::Arc::new(Verdict::default());
        let guarded = Guarded {
            io,
            watch: FrameWatch::new(budgets, Instant::now()),
            out: OutWatch::default(),
            phase: Phase::Serving,
            verdict: verdict.clone(),
        };
        (guarded, verdict)
    }

    fn cut_off(&mut self, abuse: Abuse) {
        tracing::debug!(
            reason = abuse.as_str(),
            "HTTP/2 client over a frame budget; GOAWAY"
        );
        self.verdict.record(abuse);
        self.verdict.tripped.notify_one();
        self.phase = Phase::CutOff(OwnGoaway::new(self.watch.last_stream(), abuse));
    }

    fn observe_output(&mut self, written: &[u8]) {
        let events = self.out.feed(written);
        if events.response_sent {
            self.watch.response_sent();
        }
        if let Some(abuse) = events.calm_down {
            self.verdict.record(abuse);
        }
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> Guarded<IO> {
    /// Moves a cut-off connection on towards closed: levee's GOAWAY at the
    /// next frame boundary of hyper's output (unless a GOAWAY already went
    /// out), then the write side's close. Ready once closed.
    fn poll_close(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            match &mut self.phase {
                Phase::Serving | Phase::Closed => return Poll::Ready(()),
                Phase::CutOff(goaway) => {
                    if !self.out.framing.at_boundary() {
                        // hyper finishes its frame on its next write.
                        return Poll::Pending;
                    }
                    if self.out.goaway_seen {
                        // A second GOAWAY could not take back what the
                        // first promised.
                        self.phase = Phase::Closing;
                        continue;
                    }
                    while goaway.written < goaway.len {
                        let rest = &goaway.bytes[goaway.written..goaway.len];
                        match ready!(Pin::new(&mut self.io).poll_write(cx, rest)) {
                            Ok(n) if n > 0 => goaway.written += n,
                            _ => {
                                self.phase = Phase::Closed;
                                return Poll::Ready(());
                            }
                        }
                    }
                    self.out.goaway_seen = true;
                    self.phase = Phase::Closing;
                }
                Phase::Closing => {
                    // An error means the peer is gone: closed either way.
                    let _ = ready!(Pin::new(&mut self.io).poll_shutdown(cx));
                    self.phase = Phase::Closed;
                }
            }
        }
    }

    /// Reads and drops what the client sends; hyper sees only its end.
    fn poll_discard(&mut self, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        for _ in 0..DISCARD_ROUNDS {
            match ready!(Pin::new(&mut self.io).poll_read(cx, buf)) {
                // The client's end (or failure) ends the connection for hyper.
                Err(_) => return Poll::Ready(Ok(())),
                Ok(()) if buf.filled().len() == before => return Poll::Ready(Ok(())),
                Ok(()) => buf.set_filled(before),
            }
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncRead for Guarded<IO> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        if let Phase::Serving = me.phase {
            let before = buf.filled().len();
            ready!(Pin::new(&mut me.io).poll_read(cx, buf))?;
            let fresh = &buf.filled()[before..];
            let Some(trip) = me.watch.feed(fresh, &mut Instant::now) else {
                return Poll::Ready(Ok(()));
            };
            buf.set_filled(before + trip.at);
            me.cut_off(trip.abuse);
            if trip.at > 0 {
                // hyper takes in the frames before the offending one; the
                // GOAWAY goes out once it has (its next read).
                return Poll::Ready(Ok(()));
            }
        }
        // Nothing read from here on reaches hyper; an empty read would look
        // like the client's end, so this waits on the socket instead.
        let _ = me.poll_close(cx);
        me.poll_discard(cx, buf)
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Guarded<IO> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let me = self.get_mut();
        let limit = match &me.phase {
            Phase::Serving => buf.len(),
            // Up to the frame boundary where levee's GOAWAY goes.
            Phase::CutOff(_) if !me.out.framing.at_boundary() => {
                buf.len().min(me.out.framing.rest_of_frame())
            }
            // Nothing more of hyper's reaches a client that was cut off.
            _ => {
                ready!(me.poll_close(cx));
                return Poll::Ready(Ok(buf.len()));
            }
        };
        let n = ready!(Pin::new(&mut me.io).poll_write(cx, &buf[..limit]))?;
        me.observe_output(&buf[..n]);
        if let Phase::CutOff(_) = me.phase {
            // Once hyper's frame is out, the GOAWAY follows at once rather
            // than on hyper's next write, which may never come.
            let _ = me.poll_close(cx);
        }
        Poll::Ready(Ok(n))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let me = self.get_mut();
        if !matches!(me.phase, Phase::Serving) {
            let first = bufs.iter().find(|b| !b.is_empty()).map_or(&[][..], |b| &**b);
            return Pin::new(me).poll_write(cx, first);
        }
        let n = ready!(Pin::new(&mut me.io).poll_write_vectored(cx, bufs))?;
        let mut left = n;
        for b in bufs {
            if left == 0 {
                break;
            }
            let take = left.min(b.len());
            me.observe_output(&b[..take]);
            left -= take;
        }
        Poll::Ready(Ok(n))
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        if let Phase::CutOff(_) = me.phase {
            let _ = me.poll_close(cx);
        }
        match me.phase {
            Phase::Serving | Phase::CutOff(_) => Pin::new(&mut me.io).poll_flush(cx),
            Phase::Closing | Phase::Closed => {
                ready!(me.poll_close(cx));
                Poll::Ready(Ok(()))
            }
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        match me.phase {
            Phase::Serving => Pin::new(&mut me.io).poll_shutdown(cx),
            // hyper is done writing mid-frame (it gave up): no boundary will
            // come for levee's GOAWAY.
            Phase::CutOff(_) if !me.out.framing.at_boundary() => {
                me.phase = Phase::Closing;
                ready!(me.poll_close(cx));
                Poll::Ready(Ok(()))
            }
            _ => {
                ready!(me.poll_close(cx));
                Poll::Ready(Ok(()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = u32::try_from(payload.len()).expect("small payload").to_be_bytes();
        let mut f = vec![len[1], len[2], len[3], kind, flags];
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    fn ping() -> Vec<u8> {
        frame(PING, 0, 0, &[7; 8])
    }

    fn budgets(resets: u32, control: u32, empty: u32) -> Budgets {
        Budgets {
            resets,
            control,
            empty,
        }
    }

    /// Feeds `bytes` in pieces of `piece` bytes; the trip's offset is
    /// returned from the start of `bytes`.
    fn feed_in_pieces(
        watch: &mut FrameWatch,
        bytes: &[u8],
        piece: usize,
        now: Instant,
    ) -> Option<(usize, Abuse)> {
        let mut offset = 0;
        for chunk in bytes.chunks(piece) {
            if let Some(trip) = watch.feed(chunk, &mut || now) {
                return Some((offset + trip.at, trip.abuse));
            }
            offset += chunk.len();
        }
        None
    }

    #[test]
    fn the_frame_over_budget_is_found_however_the_bytes_are_split() {
        let now = Instant::now();
        let mut bytes = PREFACE.to_vec();
        bytes.extend(frame(SETTINGS, 0, 0, &[0, 3, 0, 0, 0, 100]));
        bytes.extend(frame(HEADERS, END_HEADERS | END_STREAM, 1, &[0x82, 0x86, 0x84]));
        bytes.extend(frame(DATA, 0, 1, &[1u8; 1000]));
        let fourth_ping = bytes.len() + 3 * ping().len();
        for _ in 0..10 {
            bytes.extend(ping());
        }
        for piece in [1, 2, 5, 9, 10, 17, 100, 4096] {
            let mut watch = FrameWatch::new(budgets(10, 3, 10), now);
            let (at, abuse) = feed_in_pieces(&mut watch, &bytes, piece, now).expect("tripped");
            assert_eq!(abuse, Abuse::PingFlood, "pieces of {piece}");
            // A header split over reads trips at the start of the read that
            // completes it: hyper then has part of the header, never more
            // of the frame.
            assert!(
                at >= fourth_ping && at - fourth_ping < HEADER_LEN,
                "pieces of {piece}: {at}"
            );
            if fourth_ping / piece == (fourth_ping + HEADER_LEN - 1) / piece {
                assert_eq!(at, fourth_ping, "pieces of {piece}");
            }
            assert_eq!(watch.last_stream(), 1);
        }
    }

    #[test]
    fn budgets_are_per_window() {
        let start = Instant::now();
        let mut watch = FrameWatch::new(budgets(2, 100, 100), start);
        let reset = frame(RST_STREAM, 0, 1, &[0, 0, 0, 8]);
        let mut bytes = PREFACE.to_vec();
        bytes.extend(reset.repeat(2));
        assert_eq!(watch.feed(&bytes, &mut || start), None);
        // Over budget long after the window began: a new window.
        let later = start + WINDOW;
        assert_eq!(watch.feed(&reset, &mut || later), None);
        assert_eq!(watch.feed(&reset, &mut || later), None);
        let trip = watch.feed(&reset, &mut || later + Duration::from_secs(9));
        assert_eq!(
            trip,
            Some(Trip {
                at: 0,
                abuse: Abuse::RapidReset
            })
        );
    }

    #[test]
    fn what_counts_as_empty() {
        let now = Instant::now();
        let not_counted = [
            frame(DATA, END_STREAM, 1, &[]),
            frame(HEADERS, END_HEADERS, 3, &[]),
            frame(CONTINUATION, END_HEADERS, 3, &[]),
            frame(DATA, 0, 1, &[0]),
            // PRIORITY, WINDOW_UPDATE and unknown types cost h2 no more than
            // reading them, and browsers send some with every request.
            frame(0x2, 0, 1, &[0, 0, 0, 0, 16]),
            frame(0x8, 0, 0, &[0, 0, 1, 0]),
            frame(0x10, 0, 1, &[0; 5]),
        ];
        let mut watch = FrameWatch::new(budgets(1, 1, 1), now);
        let _ = watch.feed(PREFACE, &mut || now);
        for f in &not_counted {
            for _ in 0..5 {
                assert_eq!(watch.feed(f, &mut || now), None, "{f:?}");
            }
        }
        for f in [
            frame(DATA, 0, 1, &[]),
            frame(HEADERS, 0, 5, &[]),
            frame(CONTINUATION, 0, 5, &[]),
        ] {
            let mut watch = FrameWatch::new(budgets(1, 1, 1), now);
            let mut bytes = PREFACE.to_vec();
            bytes.extend(f.repeat(2));
            let trip = watch.feed(&bytes, &mut || now).expect("second empty frame");
            assert_eq!(
                (trip.at, trip.abuse),
                (PREFACE.len() + f.len(), Abuse::EmptyFrames)
            );
        }
    }

    #[test]
    fn pings_alongside_response_data_are_not_a_flood() {
        let now = Instant::now();
        let mut watch = FrameWatch::new(budgets(1, 2, 1), now);
        let _ = watch.feed(PREFACE, &mut || now);
        for _ in 0..100 {
            assert_eq!(watch.feed(&ping().repeat(2), &mut || now), None);
            watch.response_sent();
        }
        let trip = watch.feed(&ping().repeat(3), &mut || now).expect("idle pings");
        assert_eq!(trip.abuse, Abuse::PingFlood);
        // Settings are counted apart from pings, and never excused.
        let mut watch = FrameWatch::new(budgets(1, 2, 1), now);
        let settings = frame(SETTINGS, 0, 0, &[]);
        let mut bytes = PREFACE.to_vec();
        bytes.extend(ping().repeat(2));
        bytes.extend(settings.repeat(2));
        assert_eq!(watch.feed(&bytes, &mut || now), None);
        watch.response_sent();
        let trip = watch.feed(&settings, &mut || now).expect("third settings");
        assert_eq!(trip.abuse, Abuse::SettingsFlood);
    }

    #[test]
    fn h2s_goaway_reasons_are_read_from_its_output() {
        let goaway = |code: u32, debug: &[u8]| {
            let mut payload = 5u32.to_be_bytes().to_vec();
            payload.extend(code.to_be_bytes());
            payload.extend_from_slice(debug);
            frame(GOAWAY, 0, 0, &payload)
        };
        let mut out = frame(HEADERS, END_HEADERS, 1, &[0x88]);
        out.extend(frame(DATA, 0, 1, &[0; 300]));
        out.extend(goaway(ENHANCE_YOUR_CALM, b"too_many_resets"));
        for piece in [1, 3, 9, 20, 1000] {
            let mut watch = OutWatch::default();
            let mut seen = OutEvents::default();
            for chunk in out.chunks(piece) {
                let e = watch.feed(chunk);
                seen.response_sent |= e.response_sent;
                seen.calm_down = seen.calm_down.or(e.calm_down);
            }
            assert_eq!(
                seen,
                OutEvents {
                    response_sent: true,
                    calm_down: Some(Abuse::RapidReset)
                },
                "pieces of {piece}"
            );
            assert!(watch.goaway_seen && watch.framing.at_boundary());
        }
        for (frame, expected) in [
            (goaway(0, b""), None),
            (goaway(1, b"too_many_resets"), None),
            (
                goaway(ENHANCE_YOUR_CALM, b"header_list_way_too_large"),
                Some(Abuse::HeaderListTooLarge),
            ),
            (
                goaway(ENHANCE_YOUR_CALM, b"too_many_continuations"),
                Some(Abuse::ContinuationFlood),
            ),
            (
                goaway(ENHANCE_YOUR_CALM, b"too_many_data_frames"),
                Some(Abuse::SmallDataFrames),
            ),
            (
                goaway(ENHANCE_YOUR_CALM, b"too_many_internal_resets"),
                Some(Abuse::StreamErrors),
            ),
            (goaway(ENHANCE_YOUR_CALM, &[b'x'; 100]), Some(Abuse::Other)),
        ] {
            assert_eq!(OutWatch::default().feed(&frame).calm_down, expected, "{frame:?}");
        }
    }

    #[test]
    fn reasons_have_distinct_names_in_order() {
        for (i, a) in Abuse::ALL.iter().enumerate() {
            assert_eq!(a.index(), i);
            assert!(a.as_str().len() <= 24, "{a:?} fits levee's GOAWAY");
        }
        let names: std::collections::BTreeSet<_> = Abuse::ALL.iter().map(|a| a.as_str()).collect();
        assert_eq!(names.len(), Abuse::ALL.len());
    }

    #[tokio::test]
    async fn a_cut_off_client_gets_levees_goaway_and_nothing_more_reaches_hyper() {
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let (mut guarded, verdict) = Guarded::new(server, budgets(10, 3, 10));
        let mut sent = PREFACE.to_vec();
        sent.extend(frame(HEADERS, END_HEADERS | END_STREAM, 3, &[0x82, 0x86, 0x84]));
        let delivered = sent.len() + 3 * ping().len();
        sent.extend(ping().repeat(10));
        client.write_all(&sent).await.expect("write");

        let mut got = vec![0u8; 4096];
        let n = guarded.read(&mut got).await.expect("read");
        assert_eq!(&got[..n], &sent[..delivered]);
        assert_eq!(verdict.reason(), Some(Abuse::PingFlood));
        tokio::time::timeout(Duration::from_secs(5), verdict.tripped())
            .await
            .expect("tripped is signalled");
        // hyper's next read gets nothing (the rest is discarded) and puts
        // levee's GOAWAY out.
        let more = tokio::time::timeout(Duration::from_millis(100), guarded.read(&mut got)).await;
        assert!(more.is_err(), "nothing more for hyper: {more:?}");
        // hyper's writes after that are dropped.
        assert_eq!(guarded.write(&ping()).await.expect("write"), ping().len());

        let mut goaway = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), client.read_to_end(&mut goaway))
            .await
            .expect("levee closes its side")
            .expect("read");
        let mut payload = 3u32.to_be_bytes().to_vec();
        payload.extend(ENHANCE_YOUR_CALM.to_be_bytes());
        payload.extend_from_slice(b"ping_flood");
        assert_eq!(goaway, frame(GOAWAY, 0, 0, &payload));

        // The client's end ends the connection for hyper.
        drop(client);
        let end = tokio::time::timeout(Duration::from_secs(5), guarded.read(&mut got))
            .await
            .expect("end of input");
        assert_eq!(end.expect("read"), 0);
    }

    #[tokio::test]
    async fn levees_goaway_waits_for_the_end_of_the_frame_being_written() {
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let (mut guarded, _verdict) = Guarded::new(server, budgets(10, 1, 10));
        // hyper has written half of a DATA frame when the flood is noticed.
        let data = frame(DATA, 0, 1, &[b'd'; 100]);
        assert_eq!(guarded.write(&data[..50]).await.expect("write"), 50);
        let mut sent = PREFACE.to_vec();
        sent.extend(ping().repeat(2));
        client.write_all(&sent).await.expect("write");
        let mut got = vec![0u8; 4096];
        let n = guarded.read(&mut got).await.expect("read");
        assert_eq!(n, PREFACE.len() + ping().len());
        let more = tokio::time::timeout(Duration::from_millis(100), guarded.read(&mut got)).await;
        assert!(more.is_err());
        // The rest of the frame goes out whole, though offered with more.
        let mut rest = data[50..].to_vec();
        rest.extend(ping());
        assert_eq!(guarded.write(&rest).await.expect("write"), data.len() - 50);
        // The GOAWAY follows the frame without waiting for more from hyper.
        let goaway_len = HEADER_LEN + 8 + "ping_flood".len();
        let mut out = vec![0u8; data.len() + goaway_len];
        tokio::time::timeout(Duration::from_secs(5), client.read_exact(&mut out))
            .await
            .expect("in time")
            .expect("read");
        assert_eq!(&out[..data.len()], &data[..]);
        let goaway = &out[data.len()..];
        assert_eq!(goaway[3], GOAWAY, "{out:?}");
        assert_eq!(&goaway[HEADER_LEN + 8..], b"ping_flood");
        // Then nothing more: what hyper writes is dropped, and levee's side
        // is closed.
        guarded.write_all(&ping()).await.expect("write");
        guarded.shutdown().await.expect("shutdown");
        let mut rest = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), client.read_to_end(&mut rest))
            .await
            .expect("closed")
            .expect("read");
        assert!(rest.is_empty(), "{rest:?}");
    }
}
