//! A request's record, from the moment its head is read: when it started,
//! its id, what it is counted against and its access log entry. A record
//! ends in exactly one of two ways: carried into the response's accounting
//! ([`Record::completion`]), or [`Record::refuse`], the one place where a
//! refusal becomes a response.

use std::sync::Arc;

use http::header::{self, HeaderValue};
use levee_core::fault::Injected;
use levee_core::outcome::{ErrorKind, Rejection};
use tokio::time::Instant;

use crate::access_log::Pending;
use crate::completion::Completion;
use crate::metrics::RouteMetrics;
use crate::ratelimit::Limited;
use crate::respond;
use crate::response::{Answer, ResponseBody};
use crate::upstream::InFlight;

pub(crate) struct Record<'s> {
    pub start: Instant,
    /// Empty for a request refused before its head could be read.
    pub request_id: HeaderValue,
    /// The route's metrics once it is routed, the unmatched ones before.
    pub metrics: &'s Arc<RouteMetrics>,
    pub log: Option<Pending>,
}

/// Why levee answers a request itself, and what its answer carries besides
/// the `Proxy-Status`.
pub(crate) struct Refusal {
    pub rejection: Rejection,
    extra: Extra,
}

enum Extra {
    None,
    /// A 429's `Retry-After`, `RateLimit-Policy` and `RateLimit`.
    Limited(Limited),
    /// A shed 503's `Retry-After`, in seconds.
    RetryAfter(u64),
    /// An injected abort: its status, and for a gRPC request the
    /// `grpc-status` of the `200` it gets instead.
    Fault(u16, Option<u32>),
}

impl Refusal {
    pub fn limited(rejection: Rejection, limited: Limited) -> Refusal {
        Refusal {
            rejection,
            extra: Extra::Limited(limited),
        }
    }

    pub fn retry_after(rejection: Rejection, seconds: u64) -> Refusal {
        Refusal {
            rejection,
            extra: Extra::RetryAfter(seconds),
        }
    }
}

/// What an injected abort says of itself, in `Proxy-Status` and `grpc-message`.
const FAULT_INJECTED: Rejection = Rejection::new(ErrorKind::FaultInjected, "fault injected");

impl Refusal {
    /// An injected abort with `status` (or, for gRPC, `grpc_status`).
    pub fn fault(status: u16, grpc_status: Option<u32>) -> Refusal {
        Refusal {
            rejection: FAULT_INJECTED,
            extra: Extra::Fault(status, grpc_status),
        }
    }
}

impl From<Rejection> for Refusal {
    fn from(rejection: Rejection) -> Refusal {
        Refusal {
            rejection,
            extra: Extra::None,
        }
    }
}

/// Turns levee's refusal into an injected abort's answer: the route's
/// status, or for gRPC a `200` whose `grpc-status` says the call failed,
/// with no body (a trailers-only response).
fn fault_answer(answer: &mut Answer, status: u16, grpc: Option<u32>) {
    let (status, grpc) = match grpc {
        Some(code) => (200, Some(code)),
        None => (status, None),
    };
    answer.parts.status = http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::SERVICE_UNAVAILABLE);
    if let Some(a) = &mut answer.accounting {
        a.answered_with(status);
    }
    if let Some(code) = grpc {
        let fields = &mut answer.parts.headers;
        fields.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
        fields.insert("grpc-status", HeaderValue::from(code));
        fields.insert("grpc-message", HeaderValue::from_static("fault injected"));
        answer.body = ResponseBody::empty();
    }
}

impl<'s> Record<'s> {
    /// The request has a route: it is counted against the route's metrics.
    pub fn routed(&mut self, index: usize, metrics: &'s Arc<RouteMetrics>) {
        self.metrics = metrics;
        if let Some(log) = &mut self.log {
            log.route(index);
        }
    }

    /// levee's own answer to the request, counted like any other.
    pub fn refuse(self, refusal: Refusal) -> Answer {
        let id = (!self.request_id.is_empty()).then_some(&self.request_id);
        let accounting = Completion::new(self.start, 0, self.metrics.clone(), None).logging(self.log);
        let mut answer = respond::refuse(refusal.rejection, id, Some(accounting));
        let fields = &mut answer.parts.headers;
        match refusal.extra {
            Extra::None => {}
            Extra::Limited(limited) => fields.extend(limited.fields()),
            Extra::RetryAfter(seconds) => {
                fields.append(header::RETRY_AFTER, HeaderValue::from(seconds));
            }
            Extra::Fault(status, grpc) => fault_answer(&mut answer, status, grpc),
        }
        answer
    }

    /// Faults were injected into the request: counted and logged.
    pub fn faulted(&mut self, injected: &Injected) {
        self.metrics.faulted(injected.kinds());
        if let Some(log) = &mut self.log {
            log.faulted(injected.kinds());
        }
    }

    /// The accounting of an upstream's answer with `status`, settled when
    /// its body ends, and the request id for the answer: the record is
    /// spent. (The id is moved out, not cloned: cloning the `Bytes` of a
    /// generated id allocates.)
    pub fn completion(&mut self, status: u16, in_flight: InFlight) -> (Completion, HeaderValue) {
        let completion = Completion::new(self.start, status, self.metrics.clone(), Some(in_flight))
            .logging(self.log.take());
        let request_id = std::mem::replace(&mut self.request_id, HeaderValue::from_static(""));
        (completion, request_id)
    }
}
