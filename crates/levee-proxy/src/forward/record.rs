//! A request's record, from the moment its head is read: when it started,
//! its id, what it is counted against and its access log entry. A record
//! ends in exactly one of two ways: carried into the response's accounting
//! ([`Record::completion`]), or [`Record::refuse`], the one place where a
//! refusal becomes a response.

use std::sync::Arc;

use http::header::{self, HeaderValue};
use levee_core::outcome::Rejection;
use tokio::time::Instant;

use crate::access_log::Pending;
use crate::completion::Completion;
use crate::metrics::RouteMetrics;
use crate::ratelimit::Limited;
use crate::respond;
use crate::response::Answer;
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

impl From<Rejection> for Refusal {
    fn from(rejection: Rejection) -> Refusal {
        Refusal {
            rejection,
            extra: Extra::None,
        }
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
        }
        answer
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
