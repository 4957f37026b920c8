//! The running gateway: its listeners, the current config snapshot, and
//! the lifecycle — start, reload, drain and stop.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use levee_config::Config;
use levee_core::id::ListenerName;
use levee_core::sync::lock;
use tokio::net::{TcpListener, TcpSocket};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::access_log::{self, AccessLogError, Logs};
use crate::drain::Drain;
use crate::events::Events;
use crate::forward::Proxy;
use crate::history::History;
use crate::metrics::RefusedLabels;
use crate::metrics::{ListenerLabels, Metrics, RuleLabels};
use crate::ratelimit::redis;
use crate::server::gate::{self, Gate};
use crate::server::{ListenerContext, accept_loop};
use crate::snapshot::Snapshot;
use crate::tls::{self, TlsError};
use crate::upstream::health::{self, EndpointName};
use crate::upstream::watch;

/// How often idle upstream connections past their idle timeout are closed.
const EVICT_EVERY: Duration = Duration::from_secs(5);
const LISTEN_BACKLOG: u32 = 1024;
/// At shutdown, how long the access log writers get to write what they hold.
const ACCESS_LOG_FLUSH: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("the gateway is shutting down")]
    Draining,
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Tls(Vec<TlsError>),
    #[error(transparent)]
    AccessLog(#[from] AccessLogError),
    #[error("listener.{listener}: cannot listen on {address}: {source}")]
    Bind {
        listener: ListenerName,
        address: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// A listener that is accepting connections.
struct Running {
    name: ListenerName,
    /// The address as configured (port 0 stays 0 here).
    configured: SocketAddr,
    local: SocketAddr,
    stop: CancellationToken,
    draining: Arc<Drain>,
}

/// A listener bound and not yet accepting: its name, configured address
/// and socket.
type Bound = (ListenerName, SocketAddr, TcpListener);

pub struct Gateway {
    state: Arc<ArcSwap<Snapshot>>,
    proxy: Arc<Proxy>,
    metrics: Arc<Metrics>,
    listeners: Mutex<Vec<Running>>,
    /// Every connection task, accept loop and per-stream task.
    tracker: TaskTracker,
    /// Tells every connection to finish its current exchange and close.
    draining: CancellationToken,
    /// Connection counts, shared by every listener across reloads.
    gate: Arc<Gate>,
    /// The Redis connection of `[redis]`, kept while its settings stay.
    redis: Mutex<Option<RedisConnection>>,
    events: Arc<Events>,
    history: Arc<History>,
    /// Serialises config changes: a reload and an admin weight change
    /// must not both build from the same previous snapshot.
    applying: Mutex<()>,
    last_reload: Mutex<Option<ReloadRecord>>,
    /// The access log writers.
    access_logs: Mutex<Logs>,
}

/// The last reload and how it went.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ReloadRecord {
    pub ok: bool,
    /// `api`, `signal` or `file-watch`.
    pub source: &'static str,
    /// Milliseconds since the Unix epoch.
    pub time_ms: u64,
    pub errors: Vec<String>,
}

struct RedisConnection {
    settings: levee_config::Redis,
    client: redis::Client,
    /// Ends the connection task.
    stop: CancellationToken,
}

/// The Redis client `config` asks for: the running one if its settings
/// are unchanged, else a new one (the old connection closes).
fn redis_for(
    slot: &Mutex<Option<RedisConnection>>,
    config: &Config,
    metrics: &Arc<Metrics>,
    tracker: &TaskTracker,
    draining: &CancellationToken,
    events: &Arc<Events>,
) -> Option<redis::Client> {
    let mut slot = lock(slot);
    let wanted = config.redis.as_ref();
    if let Some(running) = slot.as_ref()
        && Some(&running.settings) == wanted
    {
        return Some(running.client.clone());
    }
    if let Some(old) = slot.take() {
        old.stop.cancel();
    }
    let settings = wanted?;
    let stop = draining.child_token();
    let up = metrics.redis_up.clone();
    let events = events.clone();
    let address = settings.address.to_string();
    let client = redis::Client::start(
        settings.address,
        settings.password.clone(),
        settings.connect_timeout,
        stop.clone(),
        tracker,
        move |is_up| {
            up.set(i64::from(is_up));
            // An event too, so the Redis alert rule looks at once.
            events.publish(crate::events::EventKind::Redis {
                address: address.clone(),
                up: is_up,
            });
        },
    );
    *slot = Some(RedisConnection {
        settings: settings.clone(),
        client: client.clone(),
        stop,
    });
    Some(client)
}

impl Gateway {
    /// Binds the config's listeners and starts serving.
    pub fn start(config: Config, metrics: Arc<Metrics>) -> Result<Arc<Gateway>, GatewayError> {
        let tls = tls::load(&config).map_err(GatewayError::Tls)?;
        let access_logs = Logs::default();
        let log_plan = access_logs.plan(config.access_log.as_ref())?;
        let tracker = TaskTracker::new();
        let draining = CancellationToken::new();
        let redis = Mutex::new(None);
        let events = Arc::new(Events::new());
        let client = redis_for(&redis, &config, &metrics, &tracker, &draining, &events);
        let snapshot = Snapshot::build(Arc::new(config), None, &metrics, tls, client.as_ref(), &events);
        let state = Arc::new(ArcSwap::from_pointee(snapshot));
        let proxy = Arc::new(Proxy {
            state: state.clone(),
            access_log: Default::default(),
        });
        let gateway = Arc::new(Gateway {
            state,
            proxy,
            metrics,
            listeners: Mutex::new(Vec::new()),
            tracker,
            draining,
            gate: Arc::new(Gate::default()),
            redis,
            events,
            history: Arc::new(History::default()),
            applying: Mutex::new(()),
            last_reload: Mutex::new(None),
            access_logs: Mutex::new(access_logs),
        });
        let config = gateway.config();
        let bound = gateway.bind_new(&config)?;
        gateway.switch_access_log(log_plan);
        gateway.switch_listeners(&config, bound);
        gateway.spawn_evictor();
        gateway.spawn_sampler();
        gateway.start_checkers();
        Ok(gateway)
    }

    /// The config being served.
    pub fn config(&self) -> Arc<Config> {
        self.state.load().config.clone()
    }

    /// Whether shutdown has begun.
    pub fn is_draining(&self) -> bool {
        self.draining.is_cancelled()
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The current config snapshot.
    pub(crate) fn snapshot(&self) -> arc_swap::Guard<Arc<Snapshot>> {
        self.state.load()
    }

    /// The last ten minutes of every upstream.
    pub fn history(&self) -> &History {
        &self.history
    }

    /// Records a reload's result: metrics, the event stream, and
    /// [`Gateway::last_reload`] (which the `reload_failed` alert reads).
    pub fn record_reload(&self, source: &'static str, errors: Vec<String>) {
        let ok = errors.is_empty();
        self.metrics.reload(ok);
        let record = ReloadRecord {
            ok,
            source,
            time_ms: crate::events::unix_millis(),
            errors: errors.clone(),
        };
        *lock(&self.last_reload) = Some(record);
        self.events.publish(crate::events::EventKind::Reload {
            source,
            result: if ok { "success" } else { "failure" },
            errors,
        });
    }

    pub fn last_reload(&self) -> Option<ReloadRecord> {
        lock(&self.last_reload).clone()
    }

    /// Runs `f` on the current snapshot with reloads held off, so that a
    /// run-time change it makes there is carried into the next snapshot.
    pub(crate) fn holding_reloads<T>(&self, f: impl FnOnce(&Snapshot) -> T) -> T {
        let _applying = lock(&self.applying);
        f(&self.state.load())
    }

    /// Rebuilds the snapshot from the running config and TLS material, to
    /// take in run-time changes that the balancers are built with
    /// (weights). Unlike a reload it reads no file: certificates, listeners
    /// and the access log stay as they are.
    pub(crate) fn rebuild(&self) -> Result<(), GatewayError> {
        let _applying = lock(&self.applying);
        if self.is_draining() {
            return Err(GatewayError::Draining);
        }
        let previous = self.state.load_full();
        let redis = lock(&self.redis).as_ref().map(|r| r.client.clone());
        let next = Snapshot::build(
            previous.config.clone(),
            Some(&previous),
            &self.metrics,
            previous.tls(),
            redis.as_ref(),
            &self.events,
        );
        self.state.store(Arc::new(next));
        self.start_checkers();
        Ok(())
    }

    /// The stream of state changes.
    pub fn events(&self) -> &Arc<Events> {
        &self.events
    }

    /// The address a listener is bound to (useful when configured with port 0).
    pub fn listener_addr(&self, name: &str) -> Option<SocketAddr> {
        lock(&self.listeners)
            .iter()
            .find(|l| l.name.as_str() == name)
            .map(|l| l.local)
    }

    /// Switches to a new, already validated config. New listeners are bound
    /// first; if one cannot be, nothing changes. Requests in flight finish
    /// on the snapshot they started with; endpoints that stay keep their
    /// pools and counters.
    pub fn apply(&self, config: Config) -> Result<(), GatewayError> {
        let _applying = lock(&self.applying);
        // A reload racing with shutdown must not reopen listeners.
        if self.is_draining() {
            return Err(GatewayError::Draining);
        }
        // Certificates are read before anything changes: a bad file leaves
        // the running config in place.
        let tls = tls::load(&config).map_err(GatewayError::Tls)?;
        let log_plan = lock(&self.access_logs).plan(config.access_log.as_ref())?;
        let config = Arc::new(config);
        let bound = self.bind_new(&config)?;
        let client = redis_for(
            &self.redis,
            &config,
            &self.metrics,
            &self.tracker,
            &self.draining,
            &self.events,
        );
        let next = Snapshot::build(
            config.clone(),
            Some(&self.state.load()),
            &self.metrics,
            tls,
            client.as_ref(),
            &self.events,
        );
        // Published before new listeners accept, so that their first
        // requests already see the routes that name them.
        self.state.store(Arc::new(next));
        self.switch_access_log(log_plan);
        self.switch_listeners(&config, bound);
        self.start_checkers();
        Ok(())
    }

    /// Starts, replaces, stops or keeps (reopening its file) the access log
    /// writer, as planned before anything changed.
    fn switch_access_log(&self, plan: access_log::Plan) {
        let sink = lock(&self.access_logs).apply(plan, &self.metrics.access_log);
        self.proxy.access_log.store(sink);
    }

    /// Starts a watch task for every upstream of the current snapshot, and a
    /// checker for every checked endpoint that has none running.
    fn start_checkers(&self) {
        let snap = self.state.load();
        for u in &snap.upstreams {
            if u.claim_watch() {
                self.tracker
                    .spawn(watch::run(Arc::downgrade(u), self.draining.clone()));
            }
            for e in u.endpoints() {
                let wanted = e.state.check.load().is_some();
                if wanted && !e.state.checking.swap(true, std::sync::atomic::Ordering::AcqRel) {
                    let name = EndpointName {
                        upstream: u.name().to_string(),
                        region: e.region.to_string(),
                        address: e.address.clone(),
                    };
                    let state = Arc::downgrade(&e.state);
                    self.tracker.spawn(health::run(
                        state,
                        name,
                        self.events.clone(),
                        self.draining.clone(),
                    ));
                }
            }
        }
    }

    /// Binds the listeners `config` has and the gateway does not run yet;
    /// if one cannot be bound, none is kept.
    fn bind_new(&self, config: &Config) -> Result<Vec<Bound>, GatewayError> {
        let running = lock(&self.listeners);
        let mut bound = Vec::new();
        for l in &config.listeners {
            let kept = running
                .iter()
                .any(|r| r.name == l.name && r.configured == l.address);
            if kept {
                continue;
            }
            match bind(l.address) {
                Ok(listener) => bound.push((l.name.clone(), l.address, listener)),
                Err(source) => {
                    return Err(GatewayError::Bind {
                        listener: l.name.clone(),
                        address: l.address,
                        source,
                    });
                }
            }
        }
        Ok(bound)
    }

    /// Makes the running listeners match `config`: starts the `bound` ones,
    /// stops the removed ones (their connections drain), keeps the rest.
    fn switch_listeners(&self, config: &Config, bound: Vec<Bound>) {
        let mut running = lock(&self.listeners);
        // Shutdown began after `apply` checked: it owns the listeners now,
        // and the new sockets close unused.
        if self.is_draining() {
            return;
        }
        running.retain(|r| {
            let keep = config
                .listeners
                .iter()
                .any(|l| l.name == r.name && l.address == r.configured);
            if !keep {
                tracing::info!(listener = %r.name, address = %r.local, "listener removed; its connections drain");
                r.stop.cancel();
                r.draining.start();
            }
            keep
        });
        for (name, configured, listener) in bound {
            let local = listener.local_addr().unwrap_or(configured);
            let labels = ListenerLabels {
                listener: name.to_string(),
            };
            let ctx = Arc::new(ListenerContext {
                name: name.clone(),
                handler: self.proxy.clone(),
                stop: CancellationToken::new(),
                draining: Arc::new(Drain::default()),
                tracker: self.tracker.clone(),
                active: self.metrics.connections_active.get_or_create_owned(&labels),
                accepted: self.metrics.connections_total.get_or_create_owned(&labels),
                refused: gate::Refusal::ALL.map(|why| {
                    self.metrics
                        .connections_refused
                        .get_or_create_owned(&RefusedLabels {
                            listener: name.to_string(),
                            reason: why.as_str(),
                        })
                }),
                h2_abuse: Arc::new(self.metrics.h2_abuse(&labels.listener)),
                gate: self.gate.clone(),
            });
            tracing::info!(listener = %name, address = %local, "listening");
            running.push(Running {
                name,
                configured,
                local,
                stop: ctx.stop.clone(),
                draining: ctx.draining.clone(),
            });
            self.tracker.spawn(accept_loop(listener, ctx));
        }
    }

    /// Closes pooled upstream connections that have been idle too long.
    /// Ends when the gateway drains.
    /// Samples every upstream into the history once a second.
    fn spawn_sampler(&self) {
        let state = self.state.clone();
        let draining = self.draining.clone();
        let history = self.history.clone();
        self.tracker.spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            // A late tick (a busy machine) is one longer second, not a burst
            // of short ones.
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = draining.cancelled() => return,
                    _ = tick.tick() => {}
                }
                history.sample(&state.load(), crate::events::unix_millis());
            }
        });
    }

    fn spawn_evictor(&self) {
        let state = self.state.clone();
        let draining = self.draining.clone();
        let metrics = self.metrics.clone();
        self.tracker.spawn(async move {
            let mut tick = tokio::time::interval(EVICT_EVERY);
            loop {
                tokio::select! {
                    _ = draining.cancelled() => return,
                    _ = tick.tick() => {}
                }
                let now = Instant::now();
                let snap = state.load();
                for u in &snap.upstreams {
                    for e in u.endpoints() {
                        e.state.pool.evict_expired(now);
                    }
                }
                // Recovered keys change no decision: dropping them keeps
                // the tables small between floods.
                for rule in &snap.rate_limits {
                    rule.sweep(now.into_std());
                    let labels = RuleLabels {
                        rule: rule.config.name.clone(),
                    };
                    metrics
                        .rate_limit_keys
                        .get_or_create(&labels)
                        .set(rule.keys() as i64);
                }
            }
        });
    }

    /// Stops accepting, lets in-flight exchanges finish (idle keep-alive
    /// connections close at once, HTTP/2 connections get GOAWAY), and waits
    /// up to `grace`. Returns whether everything finished in time; what has
    /// not is dropped when the runtime stops.
    pub async fn shutdown(&self, grace: Duration) -> bool {
        self.draining.cancel();
        for l in lock(&self.listeners).drain(..) {
            l.stop.cancel();
            l.draining.start();
        }
        self.tracker.close();
        let drained = tokio::time::timeout(grace, self.tracker.wait()).await.is_ok();
        // Last, so that every request that ended has handed in its entry.
        self.proxy.access_log.store(None);
        let writers = lock(&self.access_logs).stop();
        if !access_log::finished(writers, ACCESS_LOG_FLUSH).await {
            tracing::warn!("the access log writer did not finish in time; its last lines may be lost");
        }
        drained
    }
}

fn bind(address: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if address.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    // Restarting levee must not fail on the previous process's TIME_WAIT.
    socket.set_reuseaddr(true)?;
    socket.bind(address)?;
    socket.listen(LISTEN_BACKLOG)
}
