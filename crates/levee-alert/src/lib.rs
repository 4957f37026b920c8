//! Alerting, beside the data plane and never in its path.
//!
//! An evaluator task ([`Alerting::start`]) wakes every
//! `alerting.evaluation_interval`, asks a [`levee_core::alert::Source`]
//! (the running gateway) for the facts of each rule's kind, and steps each
//! rule through Prometheus's alert states (levee-core's policy): pending,
//! firing, resolved. Every change is published (the event stream), the
//! active alerts are kept for the admin API, and firing and resolved alerts
//! go to the rule's notifiers.
//!
//! Each notifier runs two tasks of its own: one groups alerts as
//! Alertmanager does (levee-core's `group` policy) and renders the payload
//! (generic webhook JSON, Slack, or Alertmanager's v2 API), the other
//! delivers it over a fresh HTTP/1.1 connection with retries. The
//! evaluator never waits for a notifier, and a request never waits for
//! the evaluator: a receiver that is slow or dead fills its notifier's
//! bounded queue, and what does not fit is dropped and counted.

// Tests use unwrap freely: a failed unwrap there is a failed test.
#![cfg_attr(test, allow(clippy::unwrap_used))]

mod alert;
mod engine;
mod http;
mod metrics;
mod notifier;
mod payload;
pub mod time;

pub use alert::Alert;
pub use engine::{Alerting, Inputs};
pub use metrics::AlertMetrics;
pub use notifier::NotifierStatus;
