//! `App`: the gateway, the admin listener, the reload loop and alerting,
//! started together and stopped together.

use std::net::SocketAddr;
use std::sync::Arc;

use levee_admin::{AdminState, AlertView, ReloadOutcome, ReloadRequest, ReloadSource};
use levee_alert::{Alert, AlertMetrics, Alerting};
use levee_config::Config;
use levee_proxy::events::EventKind;
use levee_proxy::{Gateway, GatewayError, Metrics};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::reload;
pub use crate::reload::ConfigSource;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Gateway(#[from] GatewayError),
    #[error("admin.listen: cannot listen on {address}: {source}")]
    Admin {
        address: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot watch the config file: {0}")]
    Watch(#[source] notify::Error),
}

pub struct App {
    gateway: Arc<Gateway>,
    admin_addr: SocketAddr,
    reload_tx: mpsc::Sender<ReloadRequest>,
    /// Stops the reload loop: first thing at shutdown, so that nothing can
    /// reopen listeners while the gateway drains.
    stop_reloads: CancellationToken,
    /// Stops the admin listener, after the gateway drained (it reports the
    /// drain on /readyz meanwhile).
    stop_admin: CancellationToken,
    /// Stops alerting: after the drain, so what happened during it can
    /// still be told.
    stop_alerting: CancellationToken,
    alerting: Alerting,
    tasks: TaskTracker,
    /// Kept alive for as long as the app: dropping it stops watching.
    _watcher: Option<notify::RecommendedWatcher>,
}

impl App {
    /// Starts serving `config`. `extra_admin` routes are added to the admin
    /// listener (the demo's controls).
    pub async fn start(
        config: Config,
        source: ConfigSource,
        extra_admin: Option<axum::Router>,
    ) -> Result<App, StartError> {
        let admin_address = config.admin.listen;
        let admin_listener = levee_admin::bind(admin_address)
            .await
            .map_err(|source| StartError::Admin {
                address: admin_address,
                source,
            })?;
        let admin_addr = admin_listener.local_addr().unwrap_or(admin_address);
        let mut metrics = Metrics::new();
        let alert_metrics = AlertMetrics::register(metrics.registry_mut());
        let gateway = Gateway::start(config, Arc::new(metrics))?;

        let stop_reloads = CancellationToken::new();
        let stop_admin = CancellationToken::new();
        let stop_alerting = CancellationToken::new();
        let tasks = TaskTracker::new();
        let alerting = start_alerting(&gateway, alert_metrics, &tasks, stop_alerting.clone());
        let (reload_tx, reload_rx) = mpsc::channel(16);
        let (watch_tx, watch_rx) = mpsc::channel(1);
        let watcher = match &source {
            ConfigSource::File { path, watch: true } => {
                Some(reload::watch(path, watch_tx).map_err(StartError::Watch)?)
            }
            _ => None,
        };
        let applied = match &source {
            ConfigSource::File { path, .. } => std::fs::read(path).ok(),
            ConfigSource::Fixed => None,
        };
        tasks.spawn(reload::run(
            gateway.clone(),
            source,
            reload_rx,
            watch_rx,
            stop_reloads.clone(),
            applied,
        ));

        let mut router = levee_admin::router(AdminState {
            gateway: gateway.clone(),
            reload: reload_tx.clone(),
            alerts: Arc::new(AlertsView(alerting.clone())),
            shutdown: stop_admin.clone(),
            started: std::time::SystemTime::now(),
        });
        if let Some(extra) = extra_admin {
            router = router.merge(extra);
        }
        let admin_stop = stop_admin.clone();
        tasks.spawn(async move {
            if let Err(e) = levee_admin::serve(admin_listener, router, admin_stop).await {
                tracing::error!(error = %e, "admin listener failed");
            }
        });
        tracing::info!(address = %admin_addr, "admin listening");
        tasks.close();
        Ok(App {
            gateway,
            admin_addr,
            reload_tx,
            stop_reloads,
            stop_admin,
            stop_alerting,
            alerting,
            tasks,
            _watcher: watcher,
        })
    }

    /// The alerts and notifiers.
    pub fn alerting(&self) -> &Alerting {
        &self.alerting
    }

    pub fn gateway(&self) -> &Arc<Gateway> {
        &self.gateway
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// The bound address of a listener, by name.
    pub fn listener_addr(&self, name: &str) -> Option<SocketAddr> {
        self.gateway.listener_addr(name)
    }

    /// Reloads the config source, as SIGHUP would, and reports the outcome.
    pub async fn reload(&self, source: ReloadSource) -> ReloadOutcome {
        let (tx, rx) = oneshot::channel();
        let request = ReloadRequest {
            source,
            reply: Some(tx),
        };
        if self.reload_tx.send(request).await.is_err() {
            return stopped();
        }
        rx.await.unwrap_or_else(|_| stopped())
    }

    /// Stops reloading, drains the gateway (up to `server.drain_timeout`),
    /// then stops the admin listener. Returns whether every in-flight
    /// exchange finished within the deadline.
    pub async fn shutdown(self) -> bool {
        self.stop_reloads.cancel();
        let grace = self.gateway.config().server.drain_timeout;
        tracing::info!(grace = ?grace, "draining");
        let drained = self.gateway.shutdown(grace).await;
        if !drained {
            tracing::warn!("drain deadline passed with requests still in flight");
        }
        self.stop_alerting.cancel();
        self.stop_admin.cancel();
        self.tasks.wait().await;
        drained
    }

    /// Serves until SIGTERM or SIGINT, reloading on SIGHUP; then shuts down.
    pub async fn run_until_signal(self) -> bool {
        self.wait_for_stop_signal().await;
        self.shutdown().await
    }

    /// Returns on SIGTERM or SIGINT; meanwhile SIGHUP reloads.
    pub async fn wait_for_stop_signal(&self) {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut hup), Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::hangup()),
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            tracing::error!("cannot install signal handlers; shutting down");
            return;
        };
        loop {
            tokio::select! {
                _ = hup.recv() => {
                    let request = ReloadRequest { source: ReloadSource::Signal, reply: None };
                    if self.reload_tx.send(request).await.is_err() {
                        return;
                    }
                }
                _ = term.recv() => return,
                _ = int.recv() => return,
            }
        }
    }
}

/// Starts the alert evaluator on the gateway's facts: it reads the config
/// the gateway serves (so a reload reaches it at its next evaluation) and
/// publishes every alert's state change to the event stream.
fn start_alerting(
    gateway: &Arc<Gateway>,
    metrics: AlertMetrics,
    tasks: &TaskTracker,
    stop: CancellationToken,
) -> Alerting {
    let serving = gateway.clone();
    let events = gateway.events().clone();
    let inputs = levee_alert::Inputs {
        config: Arc::new(move || serving.config()),
        source: gateway.clone(),
        changed: gateway.events().changed(),
        publish: Arc::new(move |a: &Alert| {
            events.publish(EventKind::Alert {
                rule: a.rule.clone(),
                state: a.state,
                severity: a.severity.as_str().to_string(),
                labels: a.labels.clone(),
                annotations: a.annotations.clone(),
                value: a.value,
            });
        }),
    };
    Alerting::start(inputs, metrics, tasks, stop)
}

/// `GET /api/v1/alerts` and `/api/v1/notifiers`, from alerting's state.
struct AlertsView(Alerting);

impl AlertView for AlertsView {
    fn alerts(&self) -> serde_json::Value {
        serde_json::to_value(&*self.0.alerts()).unwrap_or_else(|_| serde_json::Value::Array(Vec::new()))
    }

    fn notifiers(&self) -> serde_json::Value {
        serde_json::to_value(self.0.notifiers()).unwrap_or_else(|_| serde_json::Value::Array(Vec::new()))
    }
}

fn stopped() -> ReloadOutcome {
    ReloadOutcome::Unavailable {
        reason: "the reload loop has stopped".to_string(),
    }
}
