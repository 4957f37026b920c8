//! The event stream: state changes operators want to see as they happen —
//! health changes, ejections, drains, failover start and end, alerts and
//! reloads — for the admin API's server-sent events and the dashboard.
//!
//! Publishing never blocks and never waits for a reader: events go to a
//! broadcast channel (a reader that falls behind loses the oldest and is
//! told so) and to a short ring of recent events that a new reader starts
//! from. Events are rare (state changes, not requests), so the ring's lock
//! is uncontended and held for a push only.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use levee_core::sync::lock;
use serde::Serialize;
use tokio::sync::{Notify, broadcast};

/// Recent events kept for new readers and `GET /api/v1/events/recent`.
pub const RECENT: usize = 256;
/// Events a slow stream reader may fall behind before it loses some.
const CHANNEL: usize = 1024;

/// One state change, as the API serialises it:
/// `{"id": 7, "time_ms": 1764460800000, "kind": "endpoint_health", ...}`.
#[derive(Clone, Debug, Serialize)]
pub struct Event {
    /// Increases by one per event, from 1, for the life of the process
    /// (the SSE `id`, so a reader can resume with `Last-Event-ID`).
    pub id: u64,
    /// Milliseconds since the Unix epoch.
    pub time_ms: u64,
    #[serde(flatten)]
    pub kind: EventKind,
}

/// The closed set of events.
#[derive(Clone, Debug, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum EventKind {
    /// Active health checks moved an endpoint in or out of rotation.
    EndpointHealth {
        upstream: String,
        region: String,
        endpoint: String,
        healthy: bool,
    },
    /// Passive outlier detection ejected an endpoint.
    EndpointEjected {
        upstream: String,
        region: String,
        endpoint: String,
        detector: &'static str,
        seconds: f64,
    },
    /// An ejection ended (its time was up, or a health check passed).
    EndpointReturned {
        upstream: String,
        region: String,
        endpoint: String,
    },
    /// An operator drained or undrained an endpoint.
    EndpointDrained {
        upstream: String,
        region: String,
        endpoint: String,
        drained: bool,
    },
    /// An operator changed an endpoint's weight; `weight` is the one in
    /// effect now (the configured one when the change was undone).
    WeightChanged {
        upstream: String,
        region: String,
        endpoint: String,
        weight: u32,
    },
    /// Traffic started to leave the upstream's most preferred level.
    FailoverStarted {
        upstream: String,
        shares: Vec<LevelShare>,
    },
    /// All traffic is back on the most preferred level.
    FailoverEnded { upstream: String },
    /// Which levels take traffic, or which are in panic, changed.
    LoadsChanged {
        upstream: String,
        shares: Vec<LevelShare>,
    },
    /// An alert changed state: `pending`, `firing`, `resolved`, or
    /// `inactive` (pending, and its condition ended before its `for`).
    Alert {
        rule: String,
        state: &'static str,
        severity: String,
        labels: BTreeMap<String, String>,
        annotations: BTreeMap<String, String>,
        value: f64,
    },
    /// The connection to the fleet-wide rate limits' Redis came up or went
    /// down (while down, Redis rules decide locally on their share).
    Redis { address: String, up: bool },
    /// A config reload was applied or refused.
    Reload {
        source: &'static str,
        result: &'static str,
        errors: Vec<String>,
    },
}

impl EventKind {
    /// The `kind` field's value (the SSE event name).
    pub fn name(&self) -> &'static str {
        match self {
            EventKind::EndpointHealth { .. } => "endpoint_health",
            EventKind::EndpointEjected { .. } => "endpoint_ejected",
            EventKind::EndpointReturned { .. } => "endpoint_returned",
            EventKind::EndpointDrained { .. } => "endpoint_drained",
            EventKind::WeightChanged { .. } => "weight_changed",
            EventKind::FailoverStarted { .. } => "failover_started",
            EventKind::FailoverEnded { .. } => "failover_ended",
            EventKind::LoadsChanged { .. } => "loads_changed",
            EventKind::Alert { .. } => "alert",
            EventKind::Redis { .. } => "redis",
            EventKind::Reload { .. } => "reload",
        }
    }
}

/// The share of an upstream's traffic one priority level takes.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LevelShare {
    pub priority: u32,
    /// 0 to 1.
    pub share: f64,
    pub panic: bool,
}

/// Milliseconds since the Unix epoch, as events and the history stamp them.
pub fn unix_millis() -> u64 {
    levee_core::calendar::unix_millis(SystemTime::now())
}

pub struct Events {
    /// Woken by every event but alerts' own: what alert rules read may
    /// have changed, so the evaluator looks at once rather than at its
    /// next tick.
    changed: Arc<Notify>,
    next: AtomicU64,
    tx: broadcast::Sender<Arc<Event>>,
    recent: Mutex<VecDeque<Arc<Event>>>,
}

impl Default for Events {
    fn default() -> Self {
        Events::new()
    }
}

impl Events {
    pub fn new() -> Events {
        let (tx, _) = broadcast::channel(CHANNEL);
        Events {
            changed: Arc::new(Notify::new()),
            next: AtomicU64::new(1),
            tx,
            recent: Mutex::new(VecDeque::with_capacity(RECENT)),
        }
    }

    /// Notified (one permit, never blocking the publisher) by every event
    /// that is not an alert's.
    pub fn changed(&self) -> Arc<Notify> {
        self.changed.clone()
    }

    /// Publishes an event to every reader and the recent ring.
    pub fn publish(&self, kind: EventKind) {
        if !matches!(kind, EventKind::Alert { .. }) {
            self.changed.notify_one();
        }
        let time_ms = unix_millis();
        // Ids are taken under the ring's lock so that the ring and the
        // channel see events in id order.
        let mut recent = lock(&self.recent);
        let event = Arc::new(Event {
            id: self.next.fetch_add(1, Ordering::Relaxed),
            time_ms,
            kind,
        });
        if recent.len() == RECENT {
            recent.pop_front();
        }
        recent.push_back(event.clone());
        // No reader is not an error: nobody is watching.
        let _ = self.tx.send(event);
    }

    /// A live reader, and the recent events with an id above `after` that
    /// it should be given first (none are missed or repeated between the
    /// two).
    pub fn subscribe(&self, after: u64) -> (Vec<Arc<Event>>, broadcast::Receiver<Arc<Event>>) {
        let recent = lock(&self.recent);
        let rx = self.tx.subscribe();
        let backlog = recent.iter().filter(|e| e.id > after).cloned().collect();
        (backlog, rx)
    }

    /// The last `limit` events, oldest first.
    pub fn recent(&self, limit: usize) -> Vec<Arc<Event>> {
        let recent = lock(&self.recent);
        let skip = recent.len().saturating_sub(limit);
        recent.iter().skip(skip).cloned().collect()
    }

    /// The id the next event will have, minus one: the newest id so far.
    pub fn last_id(&self) -> u64 {
        self.next.load(Ordering::Relaxed) - 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reload() -> EventKind {
        EventKind::Reload {
            source: "api",
            result: "success",
            errors: vec![],
        }
    }

    #[test]
    fn a_new_reader_gets_what_it_missed_then_live_events() {
        let events = Events::new();
        events.publish(reload());
        events.publish(reload());
        let (backlog, mut rx) = events.subscribe(1);
        assert_eq!(backlog.iter().map(|e| e.id).collect::<Vec<_>>(), vec![2]);
        events.publish(reload());
        assert_eq!(rx.try_recv().map(|e| e.id).ok(), Some(3));
    }

    #[test]
    fn the_ring_keeps_the_newest() {
        let events = Events::new();
        for _ in 0..RECENT + 5 {
            events.publish(reload());
        }
        let recent = events.recent(usize::MAX);
        assert_eq!(recent.len(), RECENT);
        assert_eq!(recent.last().map(|e| e.id), Some((RECENT + 5) as u64));
        assert_eq!(events.recent(2).len(), 2);
    }

    #[test]
    fn serialises_flat_with_its_kind() {
        let events = Events::new();
        events.publish(reload());
        let json = serde_json::to_string(&*events.recent(1)[0]).unwrap_or_default();
        assert!(json.contains(r#""id":1"#), "{json}");
        assert!(json.contains(r#""kind":"reload""#), "{json}");
        assert_eq!(events.recent(1)[0].kind.name(), "reload");
        assert!(json.contains(r#""result":"success""#), "{json}");
    }
}
