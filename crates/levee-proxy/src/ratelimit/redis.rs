//! The Redis side of fleet-wide rate limits: one pipelined connection per
//! gateway, run by a task the gateway owns, that requests talk to through a
//! bounded queue.
//!
//! levee speaks the few commands it needs (`SCRIPT LOAD`, `EVALSHA`) in
//! RESP2 itself rather than through the `redis` crate, which would add some
//! fifty crates (URL and Unicode tables among them) to the build for three
//! commands, and whose reconnect logic would sit between a request and its
//! few-millisecond deadline. What levee needs from the client is simple and
//! strict: a request never waits longer than `redis.timeout`, never queues
//! behind a dead connection, and finds out at once that Redis is down.
//!
//! So: requests enqueue a command with `try_send` (a full queue or a down
//! connection answers "unavailable" immediately) and wait for the reply up
//! to the timeout. The task writes every queued command in one go and pairs
//! replies with waiters in order. When the connection fails, every waiter is
//! told, the state flips to down, and the task reconnects with jittered
//! exponential backoff (100 ms to 5 s), loading the script again. A Redis
//! that is connected but stalled (eight timeouts in a row) is skipped for a
//! second at a time, so requests stop paying the timeout while it is stuck.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use levee_core::retry::Backoff;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

/// Commands waiting to be written; beyond this, requests decide locally.
const QUEUE: usize = 4096;
/// Between reconnection attempts: from 100 ms, doubling, up to 5 s.
const RECONNECT: Backoff = Backoff {
    base: Duration::from_millis(100),
    cap: Duration::from_secs(5),
};
/// A reply larger than this is not one levee asked for.
const MAX_REPLY: usize = 64 * 1024;
/// After this many timeouts in a row, Redis counts as slow: requests stop
/// asking it (and paying the timeout) for [`SLOW_PAUSE`].
const SLOW_AFTER: u32 = 8;
const SLOW_PAUSE: Duration = Duration::from_secs(1);
/// A connection whose oldest command has had no answer for this long, or
/// whose writes stall this long, is dropped and replaced.
const STUCK_AFTER: Duration = Duration::from_secs(1);

/// GCRA, as [`levee_core::ratelimit::gcra`] does it, on Redis's clock so
/// that every instance agrees on "now". Times are microseconds: Lua numbers
/// are doubles, exact to 2^53, and microseconds since 1970 fit; nanoseconds
/// do not. Returns `{1, remaining, reset_us}` or `{0, retry_after_us,
/// reset_us}`. The key expires when its bucket is full again.
pub(crate) const GCRA_SCRIPT: &str = r#"
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local span = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or 0)
if tat < now then tat = now end
local ahead = tat + interval - now
if ahead <= span then
  local new = tat + interval
  redis.call('SET', KEYS[1], string.format('%d', new), 'PX', math.ceil((new - now) / 1000) + 1)
  return {1, math.floor((span - ahead) / interval), ahead}
end
return {0, ahead - span, tat - now}
"#;

/// Marks the connection up while it lives.
struct Up<'a> {
    flag: &'a AtomicBool,
    on_change: &'a (dyn Fn(bool) + Send + Sync),
}

impl<'a> Up<'a> {
    fn new(flag: &'a AtomicBool, on_change: &'a (dyn Fn(bool) + Send + Sync)) -> Up<'a> {
        flag.store(true, Ordering::Release);
        on_change(true);
        Up { flag, on_change }
    }
}

impl Drop for Up<'_> {
    fn drop(&mut self) {
        self.flag.store(false, Ordering::Release);
        (self.on_change)(false);
    }
}

/// A reply, as far as levee reads them.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Reply {
    Simple(Bytes),
    Error(Bytes),
    Integer(i64),
    Bulk(Option<Bytes>),
    Array(Vec<Reply>),
}

/// Why a call got no reply.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Unavailable {
    /// Not connected, or the queue is full: decided without waiting.
    Down,
    /// No reply within the timeout.
    Timeout,
    /// The connection failed with the call in flight.
    Failed,
}

type Waiter = oneshot::Sender<Result<Reply, Unavailable>>;

struct Call {
    /// The command, already encoded.
    encoded: Bytes,
    reply: Waiter,
}

/// The handle requests use. Cloning is cheap.
#[derive(Clone)]
pub(crate) struct Client {
    tx: mpsc::Sender<Call>,
    up: Arc<AtomicBool>,
    sha: Arc<arc_swap::ArcSwapOption<Bytes>>,
    slow: Arc<Slow>,
}

/// Consecutive timeouts, and until when (milliseconds since `epoch`)
/// requests skip Redis because of them.
struct Slow {
    epoch: tokio::time::Instant,
    timeouts: AtomicU32,
    until_ms: AtomicU64,
}

impl Slow {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn skipping(&self) -> bool {
        self.until_ms.load(Ordering::Relaxed) > self.now_ms()
    }

    fn record(&self, timed_out: bool) {
        if !timed_out {
            self.timeouts.store(0, Ordering::Relaxed);
        } else if self.timeouts.fetch_add(1, Ordering::Relaxed) + 1 >= SLOW_AFTER {
            self.timeouts.store(0, Ordering::Relaxed);
            let until = self.now_ms() + SLOW_PAUSE.as_millis() as u64;
            self.until_ms.store(until, Ordering::Relaxed);
            tracing::warn!("redis is answering slower than redis.timeout: deciding locally for 1 s");
        }
    }
}

impl Client {
    /// Starts the connection task; it ends when `stop` is cancelled (and
    /// every `Client` is dropped). `on_change` hears each up/down change.
    pub fn start(
        address: SocketAddr,
        password: Option<String>,
        connect_timeout: Duration,
        stop: CancellationToken,
        tracker: &tokio_util::task::TaskTracker,
        on_change: impl Fn(bool) + Send + Sync + 'static,
    ) -> Client {
        let (tx, rx) = mpsc::channel(QUEUE);
        let client = Client {
            tx,
            up: Arc::new(AtomicBool::new(false)),
            sha: Arc::new(arc_swap::ArcSwapOption::empty()),
            slow: Arc::new(Slow {
                epoch: tokio::time::Instant::now(),
                timeouts: AtomicU32::new(0),
                until_ms: AtomicU64::new(0),
            }),
        };
        let task = Task {
            address,
            password,
            connect_timeout,
            up: client.up.clone(),
            sha: client.sha.clone(),
            on_change: Box::new(on_change),
        };
        tracker.spawn(task.run(rx, stop));
        client
    }

    /// Whether both handles reach the same connection task.
    pub fn same(&self, other: &Client) -> bool {
        self.tx.same_channel(&other.tx)
    }

    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    /// Runs the GCRA script on `key`, waiting at most `timeout`.
    pub async fn gcra(
        &self,
        key: &[u8],
        interval_us: u64,
        span_us: u64,
        timeout: Duration,
    ) -> Result<Reply, Unavailable> {
        let Some(sha) = self
            .sha
            .load_full()
            .filter(|_| self.is_up() && !self.slow.skipping())
        else {
            return Err(Unavailable::Down);
        };
        let interval = interval_us.to_string();
        let span = span_us.to_string();
        let encoded = encode(&[b"EVALSHA", &sha, b"1", key, interval.as_bytes(), span.as_bytes()]);
        let result = self.call(encoded, timeout).await;
        self.slow.record(result == Err(Unavailable::Timeout));
        result
    }

    async fn call(&self, encoded: Bytes, timeout: Duration) -> Result<Reply, Unavailable> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .try_send(Call { encoded, reply })
            .map_err(|_| Unavailable::Down)?;
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(Unavailable::Failed),
            Err(_) => Err(Unavailable::Timeout),
        }
    }
}

/// Encodes a command as a RESP array of bulk strings.
pub(crate) fn encode(args: &[&[u8]]) -> Bytes {
    let mut out = BytesMut::with_capacity(16 + args.iter().map(|a| a.len() + 16).sum::<usize>());
    out.put_slice(format!("*{}\r\n", args.len()).as_bytes());
    for a in args {
        out.put_slice(format!("${}\r\n", a.len()).as_bytes());
        out.put_slice(a);
        out.put_slice(b"\r\n");
    }
    out.freeze()
}

/// Parses one reply from the front of `buf`: `Ok(None)` if incomplete.
pub(crate) fn parse(buf: &mut BytesMut) -> Result<Option<Reply>, &'static str> {
    let mut at = 0;
    match parse_at(buf, &mut at, 0)? {
        Some(r) => {
            buf.advance(at);
            Ok(Some(r))
        }
        None if buf.len() > MAX_REPLY => Err("reply too large"),
        None => Ok(None),
    }
}

fn parse_at(buf: &[u8], at: &mut usize, depth: u8) -> Result<Option<Reply>, &'static str> {
    if depth > 4 {
        return Err("reply nested too deep");
    }
    let Some(line) = line(buf, *at) else {
        return Ok(None);
    };
    // An empty line (`line == at`) is no reply at all.
    let kind = *buf.get(*at).filter(|_| line > *at).ok_or("empty line in reply")?;
    let text = &buf[*at + 1..line];
    let next = line + 2;
    let number = || -> Result<i64, &'static str> {
        std::str::from_utf8(text)
            .ok()
            .and_then(|t| t.parse().ok())
            .ok_or("bad number in reply")
    };
    let reply = match kind {
        b'+' => Reply::Simple(Bytes::copy_from_slice(text)),
        b'-' => Reply::Error(Bytes::copy_from_slice(text)),
        b':' => Reply::Integer(number()?),
        b'$' => {
            let n = number()?;
            if n < 0 {
                *at = next;
                return Ok(Some(Reply::Bulk(None)));
            }
            let n = usize::try_from(n).map_err(|_| "bad length")?;
            if n > MAX_REPLY {
                return Err("reply too large");
            }
            if buf.len() < next + n + 2 {
                return Ok(None);
            }
            if &buf[next + n..next + n + 2] != b"\r\n" {
                return Err("bulk reply longer than its length");
            }
            *at = next + n + 2;
            return Ok(Some(Reply::Bulk(Some(Bytes::copy_from_slice(
                &buf[next..next + n],
            )))));
        }
        b'*' => {
            let n = number()?;
            *at = next;
            if n < 0 {
                return Ok(Some(Reply::Array(Vec::new())));
            }
            let n = usize::try_from(n).map_err(|_| "bad length")?;
            // levee asks for nothing longer; pairing what follows with the
            // next waiter would be worse than dropping the connection.
            if n > 64 {
                return Err("array reply too long");
            }
            let mut items = Vec::with_capacity(n);
            for _ in 0..n {
                match parse_at(buf, at, depth + 1)? {
                    Some(r) => items.push(r),
                    None => return Ok(None),
                }
            }
            return Ok(Some(Reply::Array(items)));
        }
        _ => return Err("unknown reply type"),
    };
    *at = next;
    Ok(Some(reply))
}

async fn read_reply(stream: &mut TcpStream, buf: &mut BytesMut) -> std::io::Result<Reply> {
    loop {
        if let Some(reply) = parse(buf).map_err(std::io::Error::other)? {
            return Ok(reply);
        }
        if stream.read_buf(buf).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
    }
}

fn line(buf: &[u8], from: usize) -> Option<usize> {
    memchr::memmem::find(buf.get(from..)?, b"\r\n").map(|i| from + i)
}

struct Task {
    address: SocketAddr,
    password: Option<String>,
    connect_timeout: Duration,
    up: Arc<AtomicBool>,
    sha: Arc<arc_swap::ArcSwapOption<Bytes>>,
    on_change: Box<dyn Fn(bool) + Send + Sync>,
}

impl Task {
    async fn run(self, mut rx: mpsc::Receiver<Call>, stop: CancellationToken) {
        // Reconnections tried since the last one that succeeded.
        let mut retries = 0u32;
        let mut warned = false;
        loop {
            let connected = tokio::select! {
                _ = stop.cancelled() => return,
                c = self.connect() => c,
            };
            match connected {
                Ok(stream) => {
                    retries = 0;
                    warned = false;
                    // Down again however serving ends, a panic included,
                    // so the gauge never claims a connection that is gone.
                    let up = Up::new(&self.up, &*self.on_change);
                    tracing::info!(address = %self.address, "redis connected: fleet-wide rate limits are shared");
                    let why = self.serve(stream, &mut rx, &stop).await;
                    drop(up);
                    match why {
                        None => return,
                        Some(e) => tracing::warn!(
                            address = %self.address, error = %e,
                            "redis connection lost: rate limits fall back to each instance's share",
                        ),
                    }
                }
                Err(e) => {
                    // One warning per outage, not one per attempt.
                    if !warned {
                        tracing::warn!(
                            address = %self.address, error = %e,
                            "redis unavailable: rate limits fall back to each instance's share; retrying",
                        );
                        warned = true;
                    }
                }
            }
            // Whatever queued while down was refused at `try_send` time only
            // if the queue was full; answer the rest now rather than later.
            while let Ok(call) = rx.try_recv() {
                let _ = call.reply.send(Err(Unavailable::Down));
            }
            retries = retries.saturating_add(1);
            let pause = RECONNECT.delay_equal_jitter(retries, fastrand::u64(..));
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(pause) => {}
            }
        }
    }

    async fn connect(&self) -> std::io::Result<TcpStream> {
        let attempt = async {
            let mut stream = TcpStream::connect(self.address).await?;
            stream.set_nodelay(true)?;
            let mut buf = BytesMut::with_capacity(256);
            if let Some(password) = &self.password {
                stream.write_all(&encode(&[b"AUTH", password.as_bytes()])).await?;
                match read_reply(&mut stream, &mut buf).await? {
                    Reply::Simple(_) => {}
                    // The server's words, not the password.
                    Reply::Error(e) => {
                        return Err(std::io::Error::other(format!(
                            "AUTH refused: {}",
                            String::from_utf8_lossy(&e)
                        )));
                    }
                    _ => return Err(std::io::Error::other("AUTH: unexpected reply")),
                }
            }
            // The script's hash is what EVALSHA names; loading it on every
            // connect also covers a Redis that restarted empty.
            stream
                .write_all(&encode(&[b"SCRIPT", b"LOAD", GCRA_SCRIPT.as_bytes()]))
                .await?;
            match read_reply(&mut stream, &mut buf).await? {
                Reply::Bulk(Some(sha)) => self.sha.store(Some(Arc::new(sha))),
                other => return Err(std::io::Error::other(format!("SCRIPT LOAD answered {other:?}"))),
            }
            Ok(stream)
        };
        tokio::time::timeout(self.connect_timeout, attempt)
            .await
            .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()))
    }

    /// Pipelines calls until the connection fails (`Some(error)`) or levee
    /// stops (`None`).
    async fn serve(
        &self,
        stream: TcpStream,
        rx: &mut mpsc::Receiver<Call>,
        stop: &CancellationToken,
    ) -> Option<std::io::Error> {
        let (mut rd, mut wr) = stream.into_split();
        // Each waiter with when its command was written: a connection whose
        // oldest answer is overdue is stuck (a frozen Redis, a black hole)
        // and is replaced rather than trusted until TCP gives up.
        let mut waiting: VecDeque<(Waiter, tokio::time::Instant)> = VecDeque::new();
        let mut buf = BytesMut::with_capacity(4096);
        let mut out = BytesMut::with_capacity(4096);
        let fail = |waiting: &mut VecDeque<(Waiter, tokio::time::Instant)>, e: std::io::Error| {
            for (w, _) in waiting.drain(..) {
                let _ = w.send(Err(Unavailable::Failed));
            }
            Some(e)
        };
        loop {
            let overdue = waiting.front().map(|(_, sent)| *sent + STUCK_AFTER);
            tokio::select! {
                _ = stop.cancelled() => return None,
                _ = tokio::time::sleep_until(overdue.unwrap_or_else(far_future)), if overdue.is_some() => {
                    return fail(&mut waiting, std::io::Error::other("no answer for a second"));
                }
                call = rx.recv() => {
                    // Every client is gone: nothing more will be asked.
                    let call = call?;
                    let now = tokio::time::Instant::now();
                    out.put_slice(&call.encoded);
                    waiting.push_back((call.reply, now));
                    // Everything else already queued goes in the same write.
                    while let Ok(call) = rx.try_recv() {
                        out.put_slice(&call.encoded);
                        waiting.push_back((call.reply, now));
                    }
                    // A Redis that stopped reading must not hold the task:
                    // the write is bounded, and levee can still stop.
                    let write = tokio::time::timeout(STUCK_AFTER, wr.write_all(&out));
                    let written = tokio::select! {
                        _ = stop.cancelled() => return None,
                        w = write => w,
                    };
                    match written {
                        Ok(Ok(())) => out.clear(),
                        Ok(Err(e)) => return fail(&mut waiting, e),
                        Err(_) => return fail(&mut waiting, std::io::Error::other("write stalled")),
                    }
                }
                read = rd.read_buf(&mut buf) => {
                    match read {
                        Ok(0) => return fail(&mut waiting, std::io::ErrorKind::UnexpectedEof.into()),
                        Err(e) => return fail(&mut waiting, e),
                        Ok(_) => {}
                    }
                    loop {
                        match parse(&mut buf) {
                            Ok(Some(reply)) => {
                                // The script is gone (SCRIPT FLUSH, a failover
                                // behind a proxy): reconnecting loads it again.
                                let noscript = matches!(&reply, Reply::Error(e) if e.starts_with(b"NOSCRIPT"));
                                match waiting.pop_front() {
                                    // A waiter that timed out is gone; its reply
                                    // is read and dropped all the same.
                                    Some((w, _)) => { let _ = w.send(Ok(reply)); }
                                    None => return fail(&mut waiting, std::io::Error::other("unexpected reply")),
                                }
                                if noscript {
                                    return fail(&mut waiting, std::io::Error::other("the script was flushed"));
                                }
                            }
                            Ok(None) => break,
                            Err(e) => return fail(&mut waiting, std::io::Error::other(e)),
                        }
                    }
                }
            }
        }
    }
}

/// A deadline that never comes, for a disabled `select!` arm.
fn far_future() -> tokio::time::Instant {
    tokio::time::Instant::now() + Duration::from_secs(86_400)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_arrays_of_bulk_strings() {
        assert_eq!(&encode(&[b"GET", b"k"])[..], b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n");
    }

    #[test]
    fn replies_parse_whole_or_not_at_all() {
        let text = b"*3\r\n:1\r\n:42\r\n:1500\r\n+OK\r\n$-1\r\n-ERR no\r\n$3\r\nabc\r\n";
        for cut in 0..18 {
            let mut buf = BytesMut::from(&text[..cut]);
            assert_eq!(parse(&mut buf), Ok(None), "cut at {cut}");
            assert_eq!(buf.len(), cut);
        }
        let mut buf = BytesMut::from(&text[..]);
        assert_eq!(
            parse(&mut buf),
            Ok(Some(Reply::Array(vec![
                Reply::Integer(1),
                Reply::Integer(42),
                Reply::Integer(1500)
            ])))
        );
        assert_eq!(
            parse(&mut buf),
            Ok(Some(Reply::Simple(Bytes::from_static(b"OK"))))
        );
        assert_eq!(parse(&mut buf), Ok(Some(Reply::Bulk(None))));
        assert_eq!(
            parse(&mut buf),
            Ok(Some(Reply::Error(Bytes::from_static(b"ERR no"))))
        );
        assert_eq!(
            parse(&mut buf),
            Ok(Some(Reply::Bulk(Some(Bytes::from_static(b"abc")))))
        );
        assert!(buf.is_empty());
    }

    #[test]
    fn nonsense_is_an_error_not_a_panic() {
        for bad in [
            &b"?x\r\n"[..],
            b":abc\r\n",
            b"$99999999\r\n",
            b"*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n:1\r\n",
            b"\r\n",
            b"$3\r\nabcdef\r\n",
            b"*65\r\n",
        ] {
            let mut buf = BytesMut::from(bad);
            assert!(parse(&mut buf).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
    }
}
