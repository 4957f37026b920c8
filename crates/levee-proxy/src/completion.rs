//! A request's accounting: its route's metrics, the endpoint's in-flight
//! count, the upstream's breaker slot and its access log line, settled
//! once, when the response ends or is dropped, whoever finishes it.

use std::sync::Arc;

use levee_core::outcome::ErrorKind;
use tokio::time::Instant;

use crate::access_log::Pending;
use crate::metrics::RouteMetrics;
use crate::upstream::{InFlight, Slot};

/// Accounting for one request, run once when its response ends or is dropped.
pub(crate) struct Completion {
    start: Instant,
    status: u16,
    metrics: Arc<RouteMetrics>,
    in_flight: Option<InFlight>,
    /// The upstream's requests-breaker slot, released with the response.
    admitted: Option<Slot>,
    /// Response body bytes passed on to the client.
    bytes: u64,
    log: Option<Pending>,
}

impl Completion {
    pub(crate) fn new(
        start: Instant,
        status: u16,
        metrics: Arc<RouteMetrics>,
        in_flight: Option<InFlight>,
    ) -> Completion {
        Completion {
            start,
            status,
            metrics,
            in_flight,
            admitted: None,
            bytes: 0,
            log: None,
        }
    }

    /// Hands the request's access log entry in when the response ends.
    pub(crate) fn logging(mut self, log: Option<Pending>) -> Completion {
        self.log = log;
        self
    }

    /// Counts body bytes passed on to the client.
    pub(crate) fn sent(&mut self, bytes: usize) {
        self.bytes += bytes as u64;
    }

    /// Keeps the request counted against the upstream's breaker until the
    /// response ends.
    pub(crate) fn holding(mut self, admitted: Slot) -> Completion {
        self.admitted = Some(admitted);
        self
    }

    /// The request is answered by levee itself, with `kind`'s status.
    pub(crate) fn generated(&mut self, kind: ErrorKind) {
        self.metrics.generated(kind);
        self.status = kind.status();
        if let Some(log) = &mut self.log {
            log.generated(kind);
        }
    }
}

impl Completion {
    /// levee's own answer has `status` after all (an injected abort's).
    pub(crate) fn answered_with(&mut self, status: u16) {
        self.status = status;
    }
}

impl Drop for Completion {
    /// Records the request: its answer ended, or was dropped before its end
    /// (the client went away, or levee replaced it).
    fn drop(&mut self) {
        let elapsed = Instant::now().duration_since(self.start);
        self.metrics.record(self.status, elapsed.as_secs_f64());
        if let Some(log) = self.log.take() {
            log.finish(self.status, self.bytes, elapsed);
        }
        drop(self.in_flight.take());
        drop(self.admitted.take());
    }
}
