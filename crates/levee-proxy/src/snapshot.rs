//! One immutable view of the running configuration.
//!
//! A request takes the current snapshot once, at its start, and uses it to
//! the end; a reload publishes a new snapshot atomically. So a request never
//! sees half of an old config and half of a new one, and in-flight requests
//! finish on the config they started with.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use levee_core::concurrency::{Limiter, Priority};
use levee_core::failover::{Failover, Loads};
use levee_core::retry::Budget;
use tokio::sync::Notify;
use tokio::time::Instant;

use levee_config::{Config, EndpointAddress};
use levee_core::access::Access;
use levee_core::id::{ListenerName, RegionName, UpstreamName};
use levee_core::select::{EndpointSpec, Selector};

use crate::events::Events;
use crate::metrics::{EndpointLabels, Metrics, RouteMetrics};
use crate::ratelimit::{self, Rule};
use crate::router::Router;
use crate::server::{ListenerPolicy, h1};
use crate::tls::Loaded;
use crate::upstream::{Counters, Endpoint, EndpointState, Pool, PoolSettings, Upstream};

pub(crate) struct Snapshot {
    pub config: Arc<Config>,
    pub router: Router,
    pub routes: Vec<RouteRuntime>,
    pub upstreams: Vec<Arc<Upstream>>,
    /// Metrics for requests that matched no route.
    pub unmatched: Arc<RouteMetrics>,
    pub listeners: Vec<(ListenerName, Arc<ListenerPolicy>)>,
    pub rate_limits: Vec<Arc<Rule>>,
    /// The rules of listeners that have some.
    listener_limits: Vec<(ListenerName, Vec<Arc<Rule>>)>,
}

pub(crate) struct RouteRuntime {
    pub name: String,
    /// Index into [`Snapshot::upstreams`].
    pub upstream: usize,
    pub request_timeout: Duration,
    pub retry: levee_config::Retry,
    pub access: Access,
    pub rate_limits: Vec<Arc<Rule>>,
    pub priority: Priority,
    pub metrics: Arc<RouteMetrics>,
}

/// What identifies an endpoint's state across reloads: the endpoint's
/// metric labels, so one series never has two owners.
type StateKey = (UpstreamName, RegionName, EndpointAddress);

impl Snapshot {
    /// Builds a snapshot, taking over the state of endpoints and upstreams
    /// that `previous` already had. The previous snapshot's upstreams are
    /// retired: their watch tasks end, the new ones take over.
    pub fn build(
        config: Arc<Config>,
        previous: Option<&Snapshot>,
        metrics: &Metrics,
        mut tls: Loaded,
        redis: Option<&ratelimit::redis::Client>,
        events: &Arc<Events>,
    ) -> Snapshot {
        let rate_limits = ratelimit::build(
            &config,
            previous.map_or(&[][..], |p| &p.rate_limits),
            redis,
            metrics,
        );
        let mut carried: HashMap<StateKey, Arc<EndpointState>> = HashMap::new();
        let mut old_upstreams: HashMap<UpstreamName, &Arc<Upstream>> = HashMap::new();
        if let Some(prev) = previous {
            for u in &prev.upstreams {
                old_upstreams.insert(u.name.clone(), u);
                for e in &u.endpoints {
                    let key = (u.name.clone(), e.region.clone(), e.address.clone());
                    carried.insert(key, e.state.clone());
                }
            }
        }
        let now = Instant::now();

        let upstreams: Vec<Arc<Upstream>> = config
            .upstreams
            .iter()
            .map(|u| {
                let old = old_upstreams.get(&u.name).copied();
                let budget = Budget::new(u.retry_budget.percent, u.retry_budget.min_per_second);
                let counters = match old {
                    Some(o) => {
                        *o.counters.budget.lock().unwrap_or_else(|e| e.into_inner()) = budget;
                        o.counters.clone()
                    }
                    None => Arc::new(Counters::new(budget)),
                };
                let changed = Arc::new(Notify::new());
                // Unchanged TLS (settings, protocol and files) keeps its
                // connector, and with it the pooled connections (see
                // `Pool::set_tls`).
                let running = old
                    .and_then(|o| o.endpoints.first())
                    .and_then(|e| e.state.pool.tls());
                let connector = match (running, tls.connectors.get(&u.name)) {
                    (Some(old), Some(new)) if old.fingerprint == new.fingerprint => Some(old),
                    (_, new) => new.cloned(),
                };
                let settings = PoolSettings {
                    protocol: u.protocol,
                    max_idle: u.max_idle_per_endpoint,
                    idle_timeout: u.idle_timeout,
                };
                let endpoints: Vec<Endpoint> = u
                    .endpoints()
                    .map(|(region, e)| {
                        let key = (u.name.clone(), region.name.clone(), e.address.clone());
                        let state = match carried.remove(&key) {
                            Some(state) => {
                                state.pool.reconfigure(settings);
                                state
                            }
                            None => {
                                let labels = EndpointLabels {
                                    upstream: u.name.to_string(),
                                    region: region.name.to_string(),
                                    endpoint: e.address.to_string(),
                                };
                                Arc::new(EndpointState::new(
                                    Pool::new(e.address.clone(), settings, counters.clone()),
                                    metrics.upstream_in_flight.get_or_create_owned(&labels),
                                    metrics.upstream_connects.get_or_create_owned(&labels),
                                    metrics.endpoint(&labels),
                                ))
                            }
                        };
                        state.pool.set_tls(connector.clone());
                        // New settings reach a running checker; `None` stops it.
                        state.check.store(u.health.clone().map(Arc::new));
                        state.uneject_on_check.store(
                            u.outlier.as_ref().is_some_and(|o| o.uneject_on_check_success),
                            Ordering::Relaxed,
                        );
                        if u.outlier.is_none() {
                            // Detection turned off: nobody would end an ejection early.
                            state.uneject();
                        }
                        state.changed.store(changed.clone());
                        Endpoint {
                            address: e.address.clone(),
                            region: region.name.clone(),
                            priority: region.priority,
                            weight: state.weight_override().unwrap_or(e.weight),
                            configured_weight: e.weight,
                            state,
                        }
                    })
                    .collect();
                let keys: Vec<String> = endpoints.iter().map(|e| e.address.to_string()).collect();
                let specs: Vec<EndpointSpec<'_>> = endpoints
                    .iter()
                    .zip(&keys)
                    .map(|(e, key)| EndpointSpec {
                        priority: e.priority,
                        weight: e.weight,
                        key,
                    })
                    .collect();
                let selector = Selector::new(u.balance, &specs);
                let priorities: Vec<u32> = selector.priorities().collect();
                let failover = match old {
                    Some(o) => Failover::carried(
                        u.failover,
                        &priorities,
                        &o.failover.lock().unwrap_or_else(|e| e.into_inner()),
                        &o.priorities,
                    ),
                    None => Failover::new(u.failover, priorities.len()),
                };
                let adaptive = u.adaptive_concurrency.and_then(|params| {
                    // What the old limiter learnt stays; only its settings change.
                    let kept = old.and_then(|o| o.adaptive.clone()).filter(|a| {
                        a.lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .set_params(params)
                            .is_ok()
                    });
                    kept.or_else(|| Limiter::new(params).ok().map(|l| Arc::new(Mutex::new(l))))
                });
                let mut regions: Vec<(RegionName, u32, Vec<usize>)> = Vec::new();
                for (i, e) in endpoints.iter().enumerate() {
                    match regions.iter_mut().find(|(name, _, _)| *name == e.region) {
                        Some((_, _, members)) => members.push(i),
                        None => regions.push((e.region.clone(), e.priority, vec![i])),
                    }
                }
                let region_names: Vec<&str> = regions.iter().map(|(r, _, _)| r.as_str()).collect();
                let upstream_metrics = metrics.upstream(u.name.as_str(), &priorities, &region_names);
                let limit = adaptive
                    .as_ref()
                    .map_or(0, |a| a.lock().unwrap_or_else(|e| e.into_inner()).limit());
                upstream_metrics.concurrency_limit.set(i64::from(limit));
                let upstream = Arc::new(Upstream {
                    adaptive,
                    name: u.name.clone(),
                    selector,
                    endpoints,
                    protocol: u.protocol,
                    connect_timeout: u.connect_timeout,
                    response_header_timeout: u.response_header_timeout,
                    hash_on: u.hash_on.clone(),
                    limits: u.limits,
                    outlier: u.outlier.clone(),
                    policy: u.balance,
                    tracks_latency: u.balance == levee_core::balance::Policy::PeakEwma,
                    counters,
                    metrics: upstream_metrics,
                    priorities,
                    failover: Mutex::new(failover),
                    failover_params: u.failover,
                    loads: ArcSwap::from_pointee(Loads::default()),
                    changed,
                    events: events.clone(),
                    failover_active: AtomicBool::new(
                        old.is_some_and(|o| o.failover_active.load(Ordering::Relaxed)),
                    ),
                    regions,
                    retired: AtomicBool::new(false),
                    watched: AtomicBool::new(false),
                });
                // Requests see loads from the start, before the task runs.
                upstream.refresh(now);
                upstream
            })
            .collect();
        // Endpoints that left the config: their checkers stop now, not when
        // the last request still using the old snapshot ends.
        for state in carried.values() {
            state.check.store(None);
        }
        for old in old_upstreams.values() {
            old.retired.store(true, Ordering::Release);
            old.changed.notify_one();
        }

        let routes = config
            .routes
            .iter()
            .map(|r| {
                // Validation guarantees the upstream exists.
                let upstream = upstreams.iter().position(|u| u.name == r.upstream).unwrap_or(0);
                RouteRuntime {
                    name: r.name.to_string(),
                    upstream,
                    request_timeout: r.request_timeout,
                    retry: r.retry.clone(),
                    access: r.access.clone(),
                    rate_limits: ratelimit::pick(&rate_limits, &r.rate_limits),
                    priority: r.priority,
                    metrics: metrics.route(
                        r.name.as_str(),
                        r.upstream.as_str(),
                        Some(upstreams[upstream].counters.recorder.clone()),
                    ),
                }
            })
            .collect();

        let settings = h1::Settings::from_config(&config.server);
        let listeners = config
            .listeners
            .iter()
            .map(|l| {
                let mut settings = settings.clone();
                settings.slow = metrics.slow_clients(l.name.as_str());
                let policy = ListenerPolicy {
                    settings,
                    access: l.access.clone(),
                    max_connections: config.server.max_connections,
                    max_connections_per_ip: config.server.max_connections_per_ip,
                    proxy_protocol: l.proxy_protocol,
                    trusted: config.server.trusted_proxies.clone(),
                    tls: tls.acceptors.remove(&l.name).map(tokio_rustls::TlsAcceptor::from),
                };
                (l.name.clone(), Arc::new(policy))
            })
            .collect();

        let listener_limits = config
            .listeners
            .iter()
            .filter(|l| !l.rate_limits.is_empty())
            .map(|l| (l.name.clone(), ratelimit::pick(&rate_limits, &l.rate_limits)))
            .collect();

        Snapshot {
            listeners,
            rate_limits,
            listener_limits,
            router: Router::new(&config.routes),
            routes,
            upstreams,
            unmatched: metrics.route("", "", None),
            config,
        }
    }

    /// The TLS material this snapshot serves with, for a rebuild that must
    /// not read certificate files again.
    pub fn tls(&self) -> Loaded {
        Loaded {
            acceptors: self
                .listeners
                .iter()
                .filter_map(|(name, policy)| Some((name.clone(), policy.tls.as_ref()?.config().clone())))
                .collect(),
            connectors: self
                .upstreams
                .iter()
                .filter_map(|u| Some((u.name.clone(), u.endpoints.first()?.state.pool.tls()?)))
                .collect(),
        }
    }

    /// The rate limits every request on `listener` passes, if any.
    pub fn listener_limits(&self, listener: &ListenerName) -> Option<&[Arc<Rule>]> {
        self.listener_limits
            .iter()
            .find(|(name, _)| name == listener)
            .map(|(_, rules)| &rules[..])
    }
}
