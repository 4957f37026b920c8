//! The arrival ledger: every request a test backend received, as received.
//!
//! The ledger is what lets a test say "nothing rejected was forwarded" or "a
//! non-idempotent request was executed once": it is written by the origin,
//! not by the gateway under test, so it cannot be fooled by the gateway's own
//! view of what it did.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::sync::Notify;
use tokio::time::Instant;

/// A shared, append-only record of requests received by one or more
/// backends. Cloning is cheap and every clone sees the same record.
#[derive(Clone, Default)]
pub struct Ledger {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    arrivals: Mutex<Vec<Arrival>>,
    next_seq: AtomicU64,
    changed: Notify,
}

/// One request as a backend received it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Arrival {
    /// Order in which request heads arrived at the backends sharing this
    /// ledger, from 0. An arrival is recorded when its body ends, so a slow
    /// upload can be recorded after a later, faster request; [`Ledger::arrivals`]
    /// sorts by `seq` to give arrival order.
    pub seq: u64,
    /// Name of the backend that received it.
    pub backend: String,
    /// The `x-request-id` header, if the request carried one.
    pub request_id: Option<String>,
    /// The method as received. Empty when the backend could not parse the
    /// request head at all: such bytes are still recorded (with
    /// `complete: false`), so that "nothing reached the origin" is checkable
    /// even for garbage.
    pub method: String,
    /// Path and query as received (the request target).
    pub path: String,
    /// `"HTTP/1.0"`, `"HTTP/1.1"` or `"HTTP/2.0"`.
    pub version: String,
    /// Header fields in the order received, names lowercased, values decoded
    /// lossily as UTF-8. For HTTP/2 the order is hyper's, not the wire's, and
    /// the `:authority` pseudo-header comes first when present.
    pub headers: Vec<(String, String)>,
    /// Trailer fields of a chunked (or HTTP/2) body, names lowercased.
    pub trailers: Vec<(String, String)>,
    /// Body bytes received (decoded, for a chunked body).
    pub body_len: u64,
    /// Lowercase hex SHA-256 of the body bytes received.
    pub body_sha256: String,
    /// True when the whole body was received; false when the connection or
    /// stream ended before it did.
    pub complete: bool,
}

impl Arrival {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        header(&self.headers, name)
    }

    /// Every value of header `name` (case-insensitive), in order received.
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        header_all(&self.headers, name)
    }
}

impl Ledger {
    /// An empty ledger, for sharing between several backends.
    pub fn new() -> Ledger {
        Ledger::default()
    }

    /// Everything recorded so far, in arrival (`seq`) order.
    pub fn arrivals(&self) -> Vec<Arrival> {
        let mut all = self.lock().clone();
        all.sort_by_key(|a| a.seq);
        all
    }

    /// Number of recorded arrivals.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// True when nothing has been recorded.
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// Arrivals whose target is `path`: equal to it, or, when `path` has no
    /// query, equal to it once the query is removed.
    pub fn count_path(&self, path: &str) -> usize {
        self.lock().iter().filter(|a| path_matches(&a.path, path)).count()
    }

    /// Arrivals carrying `x-request-id: id`, in arrival order.
    pub fn find_request_id(&self, id: &str) -> Vec<Arrival> {
        let mut found: Vec<Arrival> = self
            .lock()
            .iter()
            .filter(|a| a.request_id.as_deref() == Some(id))
            .cloned()
            .collect();
        found.sort_by_key(|a| a.seq);
        found
    }

    /// Forgets every arrival (sequence numbers keep counting up).
    pub fn clear(&self) {
        self.lock().clear();
    }

    /// Waits until at least `n` arrivals are recorded; false if the deadline
    /// passes first. Arrivals are recorded asynchronously to what a client
    /// sees in some cases (an incomplete body is recorded when the backend
    /// notices the connection died), so tests wait rather than sleep.
    pub async fn wait_for_len(&self, n: usize, deadline: Duration) -> bool {
        let end = Instant::now() + deadline;
        loop {
            // Registering before checking avoids missing a record that lands
            // between the check and the wait.
            let notified = self.inner.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.len() >= n {
                return true;
            }
            if tokio::time::timeout_at(end, notified).await.is_err() {
                return self.len() >= n;
            }
        }
    }

    pub(crate) fn next_seq(&self) -> u64 {
        self.inner.next_seq.fetch_add(1, Ordering::Relaxed)
    }

    pub(crate) fn record(&self, arrival: Arrival) {
        tracing::debug!(
            backend = %arrival.backend,
            method = %arrival.method,
            path = %arrival.path,
            complete = arrival.complete,
            "testkit backend recorded an arrival"
        );
        self.lock().push(arrival);
        self.inner.changed.notify_waiters();
    }

    fn lock(&self) -> MutexGuard<'_, Vec<Arrival>> {
        // A panicking test thread must not hide the ledger from the others.
        self.inner.arrivals.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl std::fmt::Debug for Ledger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.arrivals()).finish()
    }
}

/// An arrival being received: it records itself when finished, or as
/// incomplete when dropped first (the connection died, the task was
/// cancelled), so no request that reached a backend escapes the ledger.
pub(crate) struct Draft {
    ledger: Ledger,
    arrival: Option<Arrival>,
    hasher: Sha256,
}

impl Draft {
    pub(crate) fn new(
        ledger: &Ledger,
        backend: &str,
        method: String,
        path: String,
        version: String,
        headers: Vec<(String, String)>,
    ) -> Draft {
        let request_id = header(&headers, "x-request-id").map(str::to_owned);
        Draft {
            arrival: Some(Arrival {
                seq: ledger.next_seq(),
                backend: backend.to_owned(),
                request_id,
                method,
                path,
                version,
                headers,
                trailers: Vec::new(),
                body_len: 0,
                body_sha256: String::new(),
                complete: false,
            }),
            ledger: ledger.clone(),
            hasher: Sha256::new(),
        }
    }

    pub(crate) fn seq(&self) -> u64 {
        self.arrival.as_ref().map_or(0, |a| a.seq)
    }

    pub(crate) fn body(&mut self, bytes: &[u8]) {
        self.hasher.update(bytes);
        if let Some(a) = self.arrival.as_mut() {
            a.body_len += bytes.len() as u64;
        }
    }

    pub(crate) fn trailers(&mut self, trailers: Vec<(String, String)>) {
        if let Some(a) = self.arrival.as_mut() {
            a.trailers = trailers;
        }
    }

    /// Records the arrival as complete and returns `(body_len, body_sha256)`
    /// for the response headers.
    pub(crate) fn finish(mut self) -> (u64, String) {
        self.record(true)
    }

    fn record(&mut self, complete: bool) -> (u64, String) {
        let Some(mut arrival) = self.arrival.take() else {
            return (0, String::new());
        };
        arrival.body_sha256 = hex(&std::mem::take(&mut self.hasher).finalize());
        arrival.complete = complete;
        let summary = (arrival.body_len, arrival.body_sha256.clone());
        self.ledger.record(arrival);
        summary
    }
}

impl Drop for Draft {
    fn drop(&mut self) {
        self.record(false);
    }
}

/// Lowercase hex SHA-256 of `bytes`, to compare with
/// [`Arrival::body_sha256`] and the backend's `x-body-sha256` header.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    s
}

pub(crate) fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

pub(crate) fn header_all<'a>(headers: &'a [(String, String)], name: &str) -> Vec<&'a str> {
    headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
        .collect()
}

fn path_matches(target: &str, path: &str) -> bool {
    target == path || (!path.contains('?') && target.split_once('?').is_some_and(|(p, _)| p == path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_hex_matches_known_vector() {
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(
            sha256_hex(b""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn dropped_draft_is_recorded_incomplete() {
        let ledger = Ledger::new();
        let mut draft = Draft::new(
            &ledger,
            "a",
            "POST".into(),
            "/up?x=1".into(),
            "HTTP/1.1".into(),
            vec![("x-request-id".into(), "r1".into())],
        );
        draft.body(b"ab");
        drop(draft);
        let arrivals = ledger.find_request_id("r1");
        assert_eq!(arrivals.len(), 1);
        assert!(!arrivals[0].complete);
        assert_eq!(arrivals[0].body_len, 2);
        assert_eq!(arrivals[0].body_sha256, sha256_hex(b"ab"));
        assert_eq!(ledger.count_path("/up"), 1);
        assert_eq!(ledger.count_path("/up?x=1"), 1);
        assert_eq!(ledger.count_path("/up?x=2"), 0);
    }

    #[test]
    fn finished_draft_is_recorded_once() {
        let ledger = Ledger::new();
        let draft = Draft::new(&ledger, "a", "GET".into(), "/".into(), "HTTP/1.1".into(), vec![]);
        let (len, sha) = draft.finish();
        assert_eq!(len, 0);
        assert_eq!(sha, sha256_hex(b""));
        assert_eq!(ledger.len(), 1);
        assert!(ledger.arrivals()[0].complete);
    }
}
