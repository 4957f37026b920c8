//! `levee demo`: the whole reference topology on one machine, no files.
//!
//! Five small HTTP backends run in-process on the ports of
//! `examples/two-regions.toml` (region `primary`: 9101–9103, `secondary`:
//! 9201–9202), the gateway serves that config on 127.0.0.1:8080 and the
//! admin listener on 127.0.0.1:9901 carries control endpoints that fail
//! and restore a backend or a whole region for real: a failed backend stops
//! listening (new connections are refused) and resets the ones it had.
//! `levee demo` also sends a gentle stream of requests through the gateway,
//! so that the dashboard's charts have something to show.
//!
//! Tests start the same demo on free ports ([`Ports::Ephemeral`]), beside
//! each other and beside a demo someone is running.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use levee_core::sync::lock;
use serde::Serialize;
use tokio::net::{TcpListener, TcpSocket};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::client::Client;
use crate::{App, ConfigSource, StartError};

/// The reference topology, the demo's config.
pub const CONFIG: &str = include_str!("../../../examples/two-regions.toml");

/// The demo's backends: (name, region, address).
pub const BACKENDS: [(&str, &str, &str); 5] = [
    ("primary-1", "primary", "127.0.0.1:9101"),
    ("primary-2", "primary", "127.0.0.1:9102"),
    ("primary-3", "primary", "127.0.0.1:9103"),
    ("secondary-1", "secondary", "127.0.0.1:9201"),
    ("secondary-2", "secondary", "127.0.0.1:9202"),
];

/// Which ports the demo listens on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ports {
    /// The reference topology's: gateway 8080, admin 9901, backends
    /// 9101–9103 and 9201–9202, as the banner and the docs say.
    Reference,
    /// Free ports the system picks, for tests.
    Ephemeral,
}

/// How the demo starts.
#[derive(Clone)]
pub struct Options {
    pub ports: Ports,
    /// Requests per second the demo sends through its own gateway, so
    /// that the dashboard has traffic to show; `None` sends none.
    pub traffic: Option<u32>,
    /// Puts a fault proxy of this registry in front of each backend (named
    /// after it), for a chaos run's network faults: the gateway then
    /// reaches each backend through its proxy.
    pub front: Option<Arc<levee_chaos::registry::Registry>>,
}

impl Options {
    /// `levee demo`: the reference ports and a little traffic.
    pub fn cli() -> Options {
        Options {
            ports: Ports::Reference,
            traffic: Some(20),
            front: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("demo backend {name}: cannot listen on {address}: {source} (is another demo running?)")]
    Backend {
        name: &'static str,
        address: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("demo backend {name}: cannot put a fault proxy in front of it: {message}")]
    Front { name: &'static str, message: String },
    #[error("the embedded demo config is invalid: {0}")]
    Config(levee_config::ConfigErrors),
    #[error(transparent)]
    Start(#[from] StartError),
}

/// What a demo backend does with the requests it gets, health checks
/// included: a chaos scenario sets it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Behaviour {
    /// Answers at once.
    Normal,
    /// Reads requests and never answers, like a frozen process; when the
    /// behaviour changes, the connections it held are reset (the requests
    /// were never processed).
    Hang,
    /// Answers after this long.
    Latency(Duration),
    /// Answers this share of requests (0 to 1) with `status`, unprocessed;
    /// health checks pass.
    Errors { status: u16, ratio: f64 },
    /// Resets each connection once a request head arrives.
    Reset,
}

/// One demo backend that can be failed and restored.
pub struct DemoBackend {
    pub name: &'static str,
    pub region: &'static str,
    pub address: SocketAddr,
    served: AtomicU64,
    /// `Some` while up: cancelling it stops the listener and its connections.
    running: Mutex<Option<CancellationToken>>,
    behaviour: Mutex<Behaviour>,
    /// Wakes the requests a hanging backend holds when its behaviour changes.
    changed: tokio::sync::Notify,
    /// Request ids processed, and how many times each, while recording.
    ledger: Mutex<Option<HashMap<String, u32>>>,
    tracker: TaskTracker,
}

/// Why a request gets no answer: its connection is reset.
#[derive(Debug)]
struct Dropped;

impl std::fmt::Display for Dropped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the backend drops the connection")
    }
}

impl std::error::Error for Dropped {}

impl DemoBackend {
    fn new(
        name: &'static str,
        region: &'static str,
        address: SocketAddr,
        tracker: TaskTracker,
    ) -> Arc<DemoBackend> {
        Arc::new(DemoBackend {
            name,
            region,
            address,
            served: AtomicU64::new(0),
            running: Mutex::new(None),
            behaviour: Mutex::new(Behaviour::Normal),
            changed: tokio::sync::Notify::new(),
            ledger: Mutex::new(None),
            tracker,
        })
    }

    /// What the backend does with requests from now on.
    pub fn set_behaviour(&self, behaviour: Behaviour) {
        *lock(&self.behaviour) = behaviour;
        self.changed.notify_waiters();
    }

    pub fn behaviour(&self) -> Behaviour {
        *lock(&self.behaviour)
    }

    /// Records, from now on, the id (`x-request-id`) of every request the
    /// backend processes: what a chaos run checks "lost" and "duplicated"
    /// against.
    pub fn start_recording(&self) {
        lock(&self.ledger).get_or_insert_with(HashMap::new);
    }

    /// The request ids processed since recording started, with how many
    /// times each was.
    pub fn processed(&self) -> HashMap<String, u32> {
        lock(&self.ledger).clone().unwrap_or_default()
    }

    pub fn is_up(&self) -> bool {
        lock(&self.running).is_some()
    }

    /// Starts listening (again). Idempotent.
    pub fn restore(self: &Arc<Self>) -> Result<(), DemoError> {
        let mut running = lock(&self.running);
        if running.is_some() {
            return Ok(());
        }
        let listener = bind(self.address).map_err(|source| DemoError::Backend {
            name: self.name,
            address: self.address,
            source,
        })?;
        self.start_serving(&mut running, listener);
        Ok(())
    }

    fn start_serving(self: &Arc<Self>, running: &mut Option<CancellationToken>, listener: TcpListener) {
        let token = CancellationToken::new();
        *running = Some(token.clone());
        let me = self.clone();
        self.tracker.spawn(async move { me.serve(listener, token).await });
    }

    /// Stops listening and resets every open connection. Idempotent.
    pub fn fail(&self) {
        if let Some(token) = lock(&self.running).take() {
            token.cancel();
        }
    }

    async fn serve(self: Arc<Self>, listener: TcpListener, token: CancellationToken) {
        loop {
            let (stream, _) = tokio::select! {
                _ = token.cancelled() => return,
                r = listener.accept() => match r {
                    Ok(s) => s,
                    Err(_) => continue,
                },
            };
            let me = self.clone();
            let token = token.clone();
            self.tracker.spawn(async move {
                let _ = stream.set_nodelay(true);
                // A dead machine does not close politely: when the backend
                // is failed and drops its connections, they reset.
                let _ = stream.set_zero_linger();
                let io = TokioIo::new(stream);
                let service = service_fn(|req: Request<Incoming>| {
                    let me = me.clone();
                    async move { me.handle(req).await }
                });
                let conn = hyper::server::conn::http1::Builder::new().serve_connection(io, service);
                tokio::pin!(conn);
                tokio::select! {
                    _ = conn.as_mut() => {}
                    _ = token.cancelled() => {}
                }
            });
        }
    }

    /// A request as the backend's behaviour says: answered, delayed,
    /// failed, or its connection reset.
    async fn handle(&self, req: Request<Incoming>) -> Result<http::Response<Full<Bytes>>, Dropped> {
        let health = req.uri().path() == "/healthz";
        match self.behaviour() {
            Behaviour::Normal => {}
            Behaviour::Latency(delay) => tokio::time::sleep(delay).await,
            Behaviour::Errors { status, ratio } if !health && fastrand::f64() < ratio => {
                let mut res = http::Response::new(Full::new(Bytes::from_static(b"injected error\n")));
                *res.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                return Ok(res);
            }
            Behaviour::Errors { .. } => {}
            Behaviour::Hang => {
                // Held until the behaviour changes, then dropped unanswered.
                while self.behaviour() == Behaviour::Hang {
                    let changed = self.changed.notified();
                    tokio::pin!(changed);
                    changed.as_mut().enable();
                    if self.behaviour() != Behaviour::Hang {
                        break;
                    }
                    changed.await;
                }
                return Err(Dropped);
            }
            Behaviour::Reset => return Err(Dropped),
        }
        Ok(self.respond(&req, health))
    }

    fn respond(&self, req: &Request<Incoming>, health: bool) -> http::Response<Full<Bytes>> {
        if health {
            return http::Response::new(Full::new(Bytes::from_static(b"ok\n")));
        }
        let n = self.served.fetch_add(1, Ordering::Relaxed) + 1;
        let request_id = req
            .headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if let Some(ledger) = lock(&self.ledger).as_mut() {
            *ledger.entry(request_id.to_string()).or_default() += 1;
        }
        let body = serde_json::json!({
            "backend": self.name,
            "region": self.region,
            "path": req.uri().path(),
            "request_id": request_id,
            "served": n,
        });
        let mut res = http::Response::new(Full::new(Bytes::from(format!("{body}\n"))));
        res.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        if let Ok(v) = http::HeaderValue::from_str(self.name) {
            res.headers_mut().insert("x-backend", v);
        }
        res
    }
}

/// The running demo: backends plus the app.
pub struct Demo {
    pub app: App,
    pub backends: Arc<Vec<Arc<DemoBackend>>>,
    /// Each backend's endpoint address in the gateway's config (its fault
    /// proxy's, when it has one).
    pub endpoints: HashMap<&'static str, String>,
    tracker: TaskTracker,
    /// Stops the demo's own traffic.
    stop_traffic: CancellationToken,
}

impl Demo {
    /// Starts the backends and the gateway on the reference ports, without
    /// traffic of its own.
    pub async fn start() -> Result<Demo, DemoError> {
        Demo::start_with(Options {
            ports: Ports::Reference,
            traffic: None,
            front: None,
        })
        .await
    }

    /// Starts the backends and the gateway as `options` say.
    pub async fn start_with(options: Options) -> Result<Demo, DemoError> {
        let tracker = TaskTracker::new();
        let mut config_text = CONFIG.to_string();
        let mut backends = Vec::with_capacity(BACKENDS.len());
        let mut endpoints = HashMap::new();
        for (name, region, addr) in BACKENDS {
            let reference: SocketAddr = addr.parse().unwrap_or(SocketAddr::from(([127, 0, 0, 1], 0)));
            let backend = match options.ports {
                Ports::Reference => {
                    let b = DemoBackend::new(name, region, reference, tracker.clone());
                    b.restore()?;
                    b
                }
                Ports::Ephemeral => {
                    // The backend keeps the port the system gave it, so that a
                    // restored backend comes back where the gateway expects it.
                    let any = SocketAddr::from(([127, 0, 0, 1], 0));
                    let failed = |source| DemoError::Backend {
                        name,
                        address: any,
                        source,
                    };
                    let listener = bind(any).map_err(failed)?;
                    let address = listener.local_addr().map_err(failed)?;
                    config_text = config_text.replace(addr, &address.to_string());
                    let b = DemoBackend::new(name, region, address, tracker.clone());
                    b.start_serving(&mut lock(&b.running), listener);
                    b
                }
            };
            let mut endpoint = backend.address.to_string();
            if let Some(registry) = &options.front {
                let proxy = front(registry, &backend).await?;
                config_text = config_text.replace(&endpoint, &proxy);
                endpoint = proxy;
            }
            endpoints.insert(name, endpoint);
            backends.push(backend);
        }
        if options.ports == Ports::Ephemeral {
            for fixed in ["127.0.0.1:8080", "127.0.0.1:9901"] {
                config_text = config_text.replace(fixed, "127.0.0.1:0");
            }
        }
        let config = levee_config::parse(&config_text).map_err(DemoError::Config)?;
        let backends = Arc::new(backends);
        let started = App::start(
            config,
            ConfigSource::Fixed,
            Some(control_routes(backends.clone())),
        )
        .await;
        let app = match started {
            Ok(app) => app,
            Err(e) => {
                for b in backends.iter() {
                    b.fail();
                }
                tracker.close();
                tracker.wait().await;
                return Err(e.into());
            }
        };
        let stop_traffic = CancellationToken::new();
        if let (Some(rate), Some(gateway)) = (options.traffic, app.listener_addr("public")) {
            tracker.spawn(traffic(gateway, rate, stop_traffic.clone(), tracker.clone()));
        }
        Ok(Demo {
            app,
            backends,
            endpoints,
            tracker,
            stop_traffic,
        })
    }

    /// Serves until SIGTERM/SIGINT, then stops everything.
    pub async fn run_until_signal(self) -> bool {
        self.app.wait_for_stop_signal().await;
        self.shutdown().await
    }

    /// Drains the gateway, then stops the backends.
    pub async fn shutdown(self) -> bool {
        self.stop_traffic.cancel();
        let drained = self.app.shutdown().await;
        for b in self.backends.iter() {
            b.fail();
        }
        self.tracker.close();
        self.tracker.wait().await;
        drained
    }

    /// What the demo prints on start.
    pub fn banner(&self) -> String {
        let gateway = self
            .app
            .listener_addr("public")
            .map(|a| a.to_string())
            .unwrap_or_default();
        let admin = self.app.admin_addr();
        let in_region = |region: &str| {
            self.backends
                .iter()
                .filter(|b| b.region == region)
                .map(|b| b.address.to_string())
                .collect::<Vec<_>>()
                .join(" ")
        };
        let (primary, secondary) = (in_region("primary"), in_region("secondary"));
        format!(
            r#"
levee demo is running: one gateway in front of five backends in two regions.

  dashboard  http://{admin}/
  gateway    http://{gateway}/
  admin API  http://{admin}/api/v1/upstreams   (also /metrics, /healthz, /readyz)
  backends   primary: {primary}    secondary: {secondary}
  config     examples/two-regions.toml (embedded)

Open the dashboard, then try:
  curl -s http://{gateway}/                        # answered by primary-1, -2, -3 in turn
  curl -s http://{admin}/demo                      # the backends and their state
  curl -s -X POST http://{admin}/demo/backends/primary-2/fail
  curl -s -X POST http://{admin}/demo/regions/primary/fail     # then curl the gateway again
  curl -s -X POST http://{admin}/demo/regions/primary/restore
  curl -s http://{admin}/metrics | grep -E 'levee_upstream_(priority_share|endpoint_healthy|endpoint_ejected)'

A failed backend refuses connections and resets open ones, as a crashed
machine would. A request caught on it is retried on another backend, real
traffic ejects it within a few requests, and health checks (GET /healthz
every second) confirm within about two seconds: clients see no error. Fail
the whole primary region and the traffic moves to secondary at once;
restore it and the traffic stays on secondary for 5 s, then ramps back to
primary over 10 s (damped failback: see docs/failover.md). The dashboard
shows each step as it happens.

To prove it with load, faults on a schedule and SLO verdicts (stop this
demo first: the scenario runs its own on the same ports):
  levee chaos run examples/chaos/region-outage.toml --report chaos-report/
Press Ctrl-C to stop.
"#
        )
    }
}

/// Sends `per_second` GET requests a second through the gateway, one at a
/// time on a keep-alive connection, until `stop`. The answers are read and
/// dropped.
async fn traffic(gateway: SocketAddr, per_second: u32, stop: CancellationToken, tracker: TaskTracker) {
    let client = Client::new(gateway, tracker, stop.clone());
    let mut tick = tokio::time::interval(Duration::from_secs(1) / per_second.max(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let request = Request::get("/demo-traffic")
            .header(http::header::HOST, gateway.to_string())
            .body(Full::new(Bytes::new()));
        let Ok(request) = request else { return };
        // Ends early at `stop`; a failure is the demo's to show, not ours.
        let _ = client.send(request, Duration::from_secs(15)).await;
    }
}

#[derive(Serialize)]
struct BackendView {
    name: &'static str,
    region: &'static str,
    address: String,
    up: bool,
    served: u64,
}

type Backends = Arc<Vec<Arc<DemoBackend>>>;

fn control_routes(backends: Backends) -> axum::Router {
    axum::Router::new()
        .route("/demo", get(list))
        .route("/demo/backends/{name}/{action}", post(backend_action))
        .route("/demo/regions/{region}/{action}", post(region_action))
        .with_state(backends)
}

fn view(backends: &[Arc<DemoBackend>]) -> Vec<BackendView> {
    backends
        .iter()
        .map(|b| BackendView {
            name: b.name,
            region: b.region,
            address: b.address.to_string(),
            up: b.is_up(),
            served: b.served.load(Ordering::Relaxed),
        })
        .collect()
}

async fn list(State(backends): State<Backends>) -> Response {
    axum::Json(view(&backends)).into_response()
}

async fn backend_action(
    State(backends): State<Backends>,
    Path((name, action)): Path<(String, String)>,
) -> Response {
    let chosen: Vec<Arc<DemoBackend>> = backends.iter().filter(|b| b.name == name).cloned().collect();
    act(&backends, &chosen, &action, &format!("no backend named {name:?}"))
}

async fn region_action(
    State(backends): State<Backends>,
    Path((region, action)): Path<(String, String)>,
) -> Response {
    let chosen: Vec<Arc<DemoBackend>> = backends.iter().filter(|b| b.region == region).cloned().collect();
    act(
        &backends,
        &chosen,
        &action,
        &format!("no region named {region:?}"),
    )
}

fn act(all: &[Arc<DemoBackend>], chosen: &[Arc<DemoBackend>], action: &str, missing: &str) -> Response {
    if chosen.is_empty() {
        return (StatusCode::NOT_FOUND, format!("{missing}\n")).into_response();
    }
    for b in chosen {
        match action {
            "fail" => b.fail(),
            "restore" => {
                if let Err(e) = b.restore() {
                    return (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response();
                }
            }
            _ => {
                return (StatusCode::NOT_FOUND, "actions are fail and restore\n").into_response();
            }
        }
    }
    let mut by_name = BTreeMap::new();
    for v in view(all) {
        by_name.insert(v.name, v.up);
    }
    axum::Json(by_name).into_response()
}

/// A fault proxy in front of `backend`, named after it: the address the
/// gateway is to use instead of the backend's.
async fn front(
    registry: &levee_chaos::registry::Registry,
    backend: &DemoBackend,
) -> Result<String, DemoError> {
    let body = serde_json::json!({
        "name": backend.name,
        "listen": "127.0.0.1:0",
        "upstream": backend.address.to_string(),
        "enabled": true,
    });
    registry
        .create(body.to_string().as_bytes())
        .await
        .map(|proxy| proxy.listen)
        .map_err(|e| DemoError::Front {
            name: backend.name,
            message: e.to_string(),
        })
}

fn bind(address: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(address)?;
    socket.listen(1024)
}

#[cfg(test)]
mod tests {
    use super::BACKENDS;

    /// A chaos scenario names the demo's backends and regions from
    /// `levee_chaos` (which cannot depend on this crate): the two lists
    /// must agree.
    #[test]
    fn chaos_scenarios_know_the_demo_backends() {
        let here: Vec<(&str, &str)> = BACKENDS.iter().map(|(n, r, _)| (*n, *r)).collect();
        assert_eq!(here, levee_chaos::scenario::DEMO_ENDPOINTS.to_vec());
    }
}
