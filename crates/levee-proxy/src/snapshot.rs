//! One immutable view of the running configuration.
//!
//! A request takes the current snapshot once, at its start, and uses it to
//! the end; a reload publishes a new snapshot atomically. So a request never
//! sees half of an old config and half of a new one, and in-flight requests
//! finish on the config they started with.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use levee_config::{Config, EndpointAddress};
use levee_core::id::{RegionName, UpstreamName};
use levee_core::select::{EndpointSpec, Selector};

use crate::metrics::{EndpointLabels, Metrics, RouteMetrics};
use crate::router::Router;
use crate::upstream::{Endpoint, EndpointState, Pool, PoolSettings, Upstream};

pub(crate) struct Snapshot {
    pub config: Arc<Config>,
    pub router: Router,
    pub routes: Vec<RouteRuntime>,
    pub upstreams: Vec<Arc<Upstream>>,
    /// Metrics for requests that matched no route.
    pub unmatched: Arc<RouteMetrics>,
}

pub(crate) struct RouteRuntime {
    /// Index into [`Snapshot::upstreams`].
    pub upstream: usize,
    pub request_timeout: Duration,
    pub metrics: Arc<RouteMetrics>,
}

/// What identifies an endpoint's state across reloads: the endpoint's
/// metric labels, so one series never has two owners.
type StateKey = (UpstreamName, RegionName, EndpointAddress);

impl Snapshot {
    /// Builds a snapshot, taking over the state of endpoints that `previous`
    /// already had.
    pub fn build(config: Arc<Config>, previous: Option<&Snapshot>, metrics: &Metrics) -> Snapshot {
        let mut carried: HashMap<StateKey, Arc<EndpointState>> = HashMap::new();
        if let Some(prev) = previous {
            for u in &prev.upstreams {
                for e in &u.endpoints {
                    let key = (u.name.clone(), e.region.clone(), e.address.clone());
                    carried.insert(key, e.state.clone());
                }
            }
        }

        let upstreams: Vec<Arc<Upstream>> = config
            .upstreams
            .iter()
            .map(|u| {
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
                                    Pool::new(e.address.clone(), settings),
                                    metrics.upstream_in_flight.get_or_create_owned(&labels),
                                    metrics.upstream_connects.get_or_create_owned(&labels),
                                    metrics.endpoint(&labels),
                                ))
                            }
                        };
                        // New settings reach a running checker; `None` stops it.
                        state.check.store(u.health.clone().map(Arc::new));
                        Endpoint {
                            address: e.address.clone(),
                            region: region.name.clone(),
                            priority: region.priority,
                            weight: e.weight,
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
                Arc::new(Upstream {
                    name: u.name.clone(),
                    selector: Selector::new(u.balance, &specs),
                    endpoints,
                    protocol: u.protocol,
                    connect_timeout: u.connect_timeout,
                    response_header_timeout: u.response_header_timeout,
                    hash_on: u.hash_on.clone(),
                })
            })
            .collect();
        // Endpoints that left the config: their checkers stop now, not when
        // the last request still using the old snapshot ends.
        for state in carried.values() {
            state.check.store(None);
        }

        let routes = config
            .routes
            .iter()
            .map(|r| {
                // Validation guarantees the upstream exists.
                let upstream = upstreams.iter().position(|u| u.name == r.upstream).unwrap_or(0);
                RouteRuntime {
                    upstream,
                    request_timeout: r.request_timeout,
                    metrics: metrics.route(r.name.as_str(), r.upstream.as_str()),
                }
            })
            .collect();

        Snapshot {
            router: Router::new(&config.routes),
            routes,
            upstreams,
            unmatched: metrics.route("", ""),
            config,
        }
    }
}
