//! What the backend's HTTP/1.1 and HTTP/2 sides serve from: the state
//! every connection of a backend shares, the plan its behaviour or a
//! request's override headers make, the page a request asks for, and the
//! bodies they are answered with.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use bytes::Bytes;

use crate::ledger::{Ledger, header};

/// How long the backend waits for any single read or write before giving up
/// on a connection: long enough for any honest test, short enough that a
/// broken one fails instead of hanging CI.
pub(super) const IO_DEADLINE: Duration = Duration::from_secs(60);
/// How long `Hang` hangs when nobody kills the backend: still a deadline.
pub(super) const HANG_LIMIT: Duration = Duration::from_secs(300);
/// Size of the pieces `/bytes/<n>` is written in.
const PIECE: usize = 64 * 1024;
/// The repeating pattern `/bytes/<n>` serves.
const PATTERN: &[u8; 16] = b"0123456789abcdef";
/// Bytes `CloseMidBody` promises in `content-length`, and sends before the reset.
pub(super) const MID_BODY_PROMISED: u64 = 100_000;
pub(super) const MID_BODY_SENT: usize = 10;

/// What the backend does with requests (see the [backend](super) module
/// docs for how request headers override it).
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
    /// [`Backend::kill`](super::Backend::kill), drop, or a 300 s safety
    /// limit closes the connection).
    Hang,
    /// Read the whole request, write these exact bytes as the response, then
    /// close the connection: for malformed-response tests.
    Raw(Bytes),
    /// Read the whole request, send a `200` head promising
    /// `content-length: 100000`, 10 body bytes, then reset the connection.
    CloseMidBody,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Protocol {
    Http1,
    Http2,
}

/// State shared by the accept loop and every connection task.
pub(super) struct Shared {
    pub(super) name: String,
    pub(super) protocol: Protocol,
    pub(super) ledger: Ledger,
    pub(super) behaviour: Mutex<Behaviour>,
    pub(super) accepted: AtomicU64,
    pub(super) in_flight: AtomicU64,
    pub(super) max_in_flight: AtomicU64,
}

/// Counts a request as in flight for as long as it lives.
pub(super) struct InFlight(Arc<Shared>);

impl InFlight {
    pub(super) fn enter(shared: &Arc<Shared>) -> InFlight {
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
pub(super) struct Plan {
    pub(super) status: u16,
    pub(super) delay: Duration,
    pub(super) action: Action,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Action {
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
    pub(super) fn for_request(shared: &Shared, headers: &[(String, String)]) -> Result<Plan, String> {
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
pub(super) enum Page {
    Default,
    Healthz,
    Echo,
    Bytes { len: u64, chunked: bool },
}

impl Page {
    pub(super) fn of(method: &str, target: &str) -> Result<Page, String> {
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
pub(super) fn bodiless(status: u16) -> bool {
    status == 204 || status == 304
}

pub(super) fn reason(status: u16) -> &'static str {
    http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("Unknown")
}

pub(super) fn default_body(shared: &Shared, method: &str, target: &str) -> Bytes {
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
pub(super) fn pattern_piece(left: u64) -> Bytes {
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
