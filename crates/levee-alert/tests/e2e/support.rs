//! A recording receiver, a receiver that never answers, a scripted fact
//! source, and alerting started on them.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use levee_alert::{Alert, AlertMetrics, Alerting, Inputs};
use levee_config::Config;
use levee_core::alert::{Fact, Kind, Source};
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// A generous deadline for what settles asynchronously.
pub const SETTLE: Duration = Duration::from_secs(10);

/// One request a receiver got, its body read as JSON.
#[derive(Clone, Debug)]
pub struct Received {
    pub path: String,
    pub headers: http::HeaderMap,
    pub body: serde_json::Value,
    pub at: Instant,
    /// When it arrived, as RFC 3339 (to compare with a payload's times).
    pub at_rfc3339: String,
}

/// The testkit's recording receiver, its requests read as JSON.
pub struct Receiver(levee_testkit::Receiver);

impl Receiver {
    pub async fn start() -> Receiver {
        Receiver(levee_testkit::Receiver::start().await.unwrap())
    }

    pub fn url(&self, path: &str) -> String {
        self.0.url(path)
    }

    pub fn answer_next(&self, statuses: &[u16]) {
        self.0.answer_next(statuses);
    }

    pub fn always(&self, status: u16) {
        self.0.always(status);
    }

    pub fn received(&self) -> Vec<Received> {
        self.0
            .received()
            .into_iter()
            .map(|r| Received {
                path: r.path,
                headers: r.headers,
                body: serde_json::from_slice(&r.body).unwrap_or(serde_json::Value::Null),
                at: r.at,
                at_rfc3339: levee_alert::time::rfc3339(
                    r.at_wall
                        .duration_since(std::time::UNIX_EPOCH)
                        .unwrap()
                        .as_millis() as u64,
                ),
            })
            .collect()
    }

    /// Waits until at least `n` requests arrived; returns them all.
    pub async fn wait_for(&self, n: usize) -> Vec<Received> {
        self.0.wait_for(n, SETTLE).await;
        self.received()
    }
}

pub use levee_testkit::Blackhole;

/// Facts set by the test.
#[derive(Default)]
pub struct FakeSource {
    facts: Mutex<BTreeMap<&'static str, Vec<Fact>>>,
}

impl FakeSource {
    pub fn set(&self, kind: Kind, facts: Vec<Fact>) {
        self.facts.lock().unwrap().insert(kind.as_str(), facts);
    }
}

impl Source for FakeSource {
    fn facts(&self, kind: Kind, _window: Duration, _now: std::time::Instant) -> Vec<Fact> {
        self.facts
            .lock()
            .unwrap()
            .get(kind.as_str())
            .cloned()
            .unwrap_or_default()
    }
}

/// An `endpoint_down` fact of upstream `app`, region `local`.
pub fn endpoint(address: &str, down: bool) -> Fact {
    Fact {
        labels: vec![
            ("upstream", "app".to_string()),
            ("region", "local".to_string()),
            ("endpoint", address.to_string()),
        ],
        value: if down { 1.0 } else { 0.0 },
    }
}

/// A config with one upstream `app` and `alerting` appended (evaluation
/// every 50 ms unless it says otherwise).
pub fn config(alerting: &str) -> Config {
    let text = format!(
        "[listener.main]\naddress = \"127.0.0.1:0\"\n\n[[route]]\nname = \"all\"\nupstream = \"app\"\n\n\
         [upstream.app.region.local]\nendpoints = [\"127.0.0.1:9\"]\n\n{alerting}"
    );
    levee_config::parse(&text).unwrap_or_else(|e| panic!("test config invalid:\n{e}\n{text}"))
}

/// Alerting running on a fake source.
pub struct Running {
    pub alerting: Alerting,
    pub source: Arc<FakeSource>,
    config: Arc<ArcSwap<Config>>,
    events: Arc<Mutex<Vec<Alert>>>,
    registry: Registry,
    tracker: TaskTracker,
    stop: CancellationToken,
}

impl Running {
    pub fn start(alerting: &str) -> Running {
        let config = Arc::new(ArcSwap::from_pointee(config(alerting)));
        let source = Arc::new(FakeSource::default());
        let events = Arc::new(Mutex::new(Vec::new()));
        let mut registry = Registry::with_prefix("levee");
        let metrics = AlertMetrics::register(&mut registry);
        let tracker = TaskTracker::new();
        let stop = CancellationToken::new();
        let read = config.clone();
        let log = events.clone();
        let inputs = Inputs {
            config: Arc::new(move || read.load_full()),
            source: source.clone(),
            changed: Arc::new(tokio::sync::Notify::new()),
            publish: Arc::new(move |a: &Alert| log.lock().unwrap().push(a.clone())),
        };
        let alerting = Alerting::start(inputs, metrics, &tracker, stop.clone());
        Running {
            alerting,
            source,
            config,
            events,
            registry,
            tracker,
            stop,
        }
    }

    /// Endpoint `address` down (or up), as the endpoint_down rules see it.
    pub fn endpoint(&self, address: &str, down: bool) {
        self.source.set(Kind::EndpointDown, vec![endpoint(address, down)]);
    }

    /// Switches to another config, as a reload does.
    pub fn reload(&self, alerting: &str) {
        self.config.store(Arc::new(config(alerting)));
    }

    /// The state changes published so far: (rule, state, endpoint label).
    pub fn events(&self) -> Vec<(String, &'static str, String)> {
        self.events
            .lock()
            .unwrap()
            .iter()
            .map(|a| {
                (
                    a.rule.clone(),
                    a.state,
                    a.labels.get("endpoint").cloned().unwrap_or_default(),
                )
            })
            .collect()
    }

    /// The value of one series of the registry (exact line prefix), 0 when absent.
    pub fn metric(&self, series: &str) -> f64 {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry).unwrap();
        levee_testkit::metric_value(&text, series)
    }

    pub async fn eventually_metric(&self, series: &str, at_least: f64) {
        levee_testkit::eventually(SETTLE, &format!("{series} >= {at_least}"), || {
            self.metric(series) >= at_least
        })
        .await;
    }

    /// Stops everything and checks that every task ended.
    pub async fn shutdown(self) {
        self.stop.cancel();
        self.tracker.close();
        tokio::time::timeout(SETTLE, self.tracker.wait())
            .await
            .expect("every alerting task ends at shutdown");
    }
}
