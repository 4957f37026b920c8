//! A recording receiver, a receiver that never answers, a scripted fact
//! source, and alerting started on them.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use levee_alert::{Alert, AlertMetrics, Alerting, Inputs};
use levee_config::Config;
use levee_core::alert::{Fact, Kind, Source};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// A generous deadline for what settles asynchronously.
pub const SETTLE: Duration = Duration::from_secs(10);

/// One request a receiver got.
#[derive(Clone, Debug)]
pub struct Received {
    pub path: String,
    pub headers: HeaderMap,
    pub body: serde_json::Value,
    pub at: Instant,
    /// When it arrived, as RFC 3339 (to compare with a payload's times).
    pub at_rfc3339: String,
}

#[derive(Default)]
struct ReceiverState {
    log: Mutex<Vec<Received>>,
    /// Statuses to answer, in order; 200 once empty (or `always`).
    script: Mutex<VecDeque<u16>>,
    always: Mutex<Option<u16>>,
}

/// An HTTP server on 127.0.0.1 that records every request and answers as
/// scripted.
pub struct Receiver {
    pub addr: SocketAddr,
    state: Arc<ReceiverState>,
    task: tokio::task::JoinHandle<()>,
}

impl Receiver {
    pub async fn start() -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(ReceiverState::default());
        let app = axum::Router::new().fallback(record).with_state(state.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Receiver { addr, state, task }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Answers the next requests with these statuses, then 200.
    pub fn answer_next(&self, statuses: &[u16]) {
        self.state.script.lock().unwrap().extend(statuses);
    }

    /// Answers every request with this status.
    pub fn always(&self, status: u16) {
        *self.state.always.lock().unwrap() = Some(status);
    }

    pub fn received(&self) -> Vec<Received> {
        self.state.log.lock().unwrap().clone()
    }

    /// Waits until at least `n` requests arrived; returns them all.
    pub async fn wait_for(&self, n: usize) -> Vec<Received> {
        levee_testkit::eventually(SETTLE, &format!("{n} notifications"), || {
            self.state.log.lock().unwrap().len() >= n
        })
        .await;
        self.received()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn record(
    State(state): State<Arc<ReceiverState>>,
    uri: Uri,
    headers: HeaderMap,
    body: String,
) -> StatusCode {
    let body = serde_json::from_str(&body).unwrap_or(serde_json::Value::String(body));
    state.log.lock().unwrap().push(Received {
        path: uri.path().to_string(),
        headers,
        body,
        at: Instant::now(),
        at_rfc3339: levee_alert::time::rfc3339(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_millis() as u64,
        ),
    });
    let scripted = state.script.lock().unwrap().pop_front();
    let status = scripted.or(*state.always.lock().unwrap()).unwrap_or(200);
    StatusCode::from_u16(status).unwrap()
}

/// Accepts connections and never answers, never closes: a hung receiver.
pub struct Blackhole {
    pub addr: SocketAddr,
    accepted: Arc<Mutex<Vec<tokio::net::TcpStream>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Blackhole {
    pub async fn start() -> Blackhole {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(Mutex::new(Vec::new()));
        let held = accepted.clone();
        let task = tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                held.lock().unwrap().push(s);
            }
        });
        Blackhole { addr, accepted, task }
    }

    pub fn connections(&self) -> usize {
        self.accepted.lock().unwrap().len()
    }
}

impl Drop for Blackhole {
    fn drop(&mut self) {
        self.task.abort();
    }
}

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
        text.lines()
            .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.trim().parse().ok()))
            .unwrap_or(0.0)
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
