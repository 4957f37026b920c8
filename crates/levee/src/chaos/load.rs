//! The open-loop load: each planned request is sent at its intended time
//! whatever became of the ones before it, so a gateway that slows down
//! cannot slow the load down with it (the coordinated omission a closed
//! loop hides), and its latency counts from that intended time.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::Full;
use levee_chaos::scenario::{Outcome, Planned};
use levee_core::sync::lock;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::client::Client;

/// Where outcomes are collected, with what names a backend's region.
pub(crate) struct Recorder {
    outcomes: Mutex<Vec<Outcome>>,
    regions: HashMap<String, String>,
}

impl Recorder {
    pub fn new(regions: HashMap<String, String>) -> Recorder {
        Recorder {
            outcomes: Mutex::new(Vec::new()),
            regions,
        }
    }

    /// Calls `f` with the outcomes so far (for the progress line).
    pub fn with_outcomes<T>(&self, f: impl FnOnce(&[Outcome]) -> T) -> T {
        f(&lock(&self.outcomes))
    }

    pub fn take(&self) -> Vec<Outcome> {
        let mut all = std::mem::take(&mut *lock(&self.outcomes));
        all.sort_by_key(|o| (o.flood, o.index));
        all
    }

    fn push(&self, outcome: Outcome) {
        lock(&self.outcomes).push(outcome);
    }
}

/// What every request of a load shares.
pub(crate) struct Shot {
    pub client: Arc<Client>,
    pub recorder: Arc<Recorder>,
    pub path: String,
    pub timeout: Duration,
    /// The requests' ids start with this (the scenario and its seed).
    pub prefix: String,
    pub start: Instant,
    /// Bounds the requests in flight: a request with none left fails at
    /// once rather than queue (which would make the loop closed).
    pub room: Arc<Semaphore>,
    pub tracker: TaskTracker,
}

impl Shot {
    /// Sends the planned requests, each at its time, until the plan ends
    /// or `stop`.
    pub async fn drive(self: Arc<Self>, plan: impl Iterator<Item = Planned>, stop: CancellationToken) {
        for planned in plan {
            tokio::select! {
                () = tokio::time::sleep_until(self.start + planned.at) => {}
                () = stop.cancelled() => return,
            }
            self.fire(planned, false);
        }
    }

    /// A flood from one client: `rate` GETs a second from `from` (after the
    /// start) until `stop`. Its outcomes are marked, and left out of the
    /// SLOs.
    pub async fn flood(self: Arc<Self>, rate: u32, from: Duration, stop: CancellationToken) {
        let every = Duration::from_secs(1) / rate.max(1);
        for index in 0u64.. {
            let at = from + every * index as u32;
            tokio::select! {
                () = tokio::time::sleep_until(self.start + at) => {}
                () = stop.cancelled() => return,
            }
            self.fire(
                Planned {
                    index,
                    at,
                    method: Method::GET,
                },
                true,
            );
        }
    }

    fn fire(self: &Arc<Self>, planned: Planned, flood: bool) {
        let kind = if flood { "flood" } else { "req" };
        let id = format!("{}-{kind}-{}", self.prefix, planned.index);
        let Ok(permit) = self.room.clone().try_acquire_owned() else {
            self.recorder
                .push(outcome(&planned, id, Duration::ZERO, None, flood));
            return;
        };
        let me = self.clone();
        self.tracker.spawn(async move {
            let _permit = permit;
            let body = if planned.method == Method::POST {
                Bytes::from_static(b"chaos\n")
            } else {
                Bytes::new()
            };
            let request = Request::builder()
                .method(planned.method.clone())
                .uri(&me.path)
                .header(http::header::HOST, "levee-chaos")
                .header("x-request-id", &id)
                .body(Full::new(body));
            let Ok(request) = request else { return };
            let answered = me.client.send(request, me.timeout).await;
            let latency = Instant::now().saturating_duration_since(me.start + planned.at);
            let mut o = outcome(&planned, id, latency, answered.as_ref().map(|a| a.status), flood);
            if let Some(a) = answered {
                let text = |name: &str| {
                    a.fields
                        .get(name)
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_owned)
                };
                o.proxy_status = text("proxy-status");
                o.backend = text("x-backend");
                o.region = o
                    .backend
                    .as_ref()
                    .and_then(|b| me.recorder.regions.get(b).cloned());
            }
            me.recorder.push(o);
        });
    }
}

fn outcome(planned: &Planned, id: String, latency: Duration, status: Option<u16>, flood: bool) -> Outcome {
    Outcome {
        index: planned.index,
        id,
        at: planned.at,
        method: planned.method.clone(),
        latency,
        status,
        proxy_status: None,
        backend: None,
        region: None,
        flood,
    }
}
