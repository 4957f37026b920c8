//! One immutable view of the running configuration.
//!
//! A request takes the current snapshot once, at its start, and uses it to
//! the end; a reload publishes a new snapshot atomically. So a request never
//! sees half of an old config and half of a new one, and in-flight requests
//! finish on the config they started with.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use levee_config::Config;
use levee_core::access::Access;
use levee_core::concurrency::Priority;
use levee_core::id::{ListenerName, UpstreamName};
use tokio::time::Instant;

use crate::events::Events;
use crate::fault::FaultSwitch;
use crate::metrics::{Metrics, RouteMetrics};
use crate::ratelimit::{self, Rule};
use crate::router::Router;
use crate::server::settings::{ListenerPolicy, Settings};
use crate::tls::Loaded;
use crate::upstream::build::{Building, StateKey};
use crate::upstream::{EndpointState, Upstream};

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
    /// The faults the route injects, if any.
    pub fault: FaultSwitch,
}

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
                old_upstreams.insert(u.name().clone(), u);
                for e in u.endpoints() {
                    let key = (u.name().clone(), e.region.clone(), e.address.clone());
                    carried.insert(key, e.state.clone());
                }
            }
        }
        let now = Instant::now();

        let upstreams: Vec<Arc<Upstream>> = (config.upstreams.iter())
            .map(|u| {
                let building = Building {
                    metrics,
                    events,
                    old: old_upstreams.get(&u.name).map(|o| &***o),
                    carried: &mut carried,
                    connector: tls.connectors.get(&u.name),
                    now,
                };
                Upstream::build(u, building)
            })
            .collect();
        // Endpoints that left the config: their checkers stop now, not when
        // the last request still using the old snapshot ends.
        for state in carried.values() {
            state.check.store(None);
        }
        for old in old_upstreams.values() {
            old.retire();
        }

        let routes = config
            .routes
            .iter()
            .map(|r| {
                let upstream = r.upstream_ref.index();
                let before = previous.and_then(|p| p.routes.iter().find(|old| old.name == r.name.as_str()));
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
                        Some(upstreams[upstream].recorder().clone()),
                    ),
                    fault: FaultSwitch::new(r.fault.clone(), before.map(|b| &b.fault)),
                }
            })
            .collect();

        let settings = Settings::from_config(&config.server);
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
                .filter_map(|u| Some((u.name().clone(), u.endpoints().first()?.state.pool.tls()?)))
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
