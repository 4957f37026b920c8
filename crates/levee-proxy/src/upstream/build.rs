//! An upstream built from its config, taking over what the running one had
//! learnt: endpoint state (health, ejections, pools, latency), the
//! breakers' counts and retry budget, the failover state and the adaptive
//! limit. A reload changes settings, never what was observed.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use levee_config::{EndpointAddress, Region};
use levee_core::concurrency::Limiter;
use levee_core::failover::{Failover, Loads};
use levee_core::id::{RegionName, UpstreamName};
use levee_core::retry::Budget;
use levee_core::select::{EndpointSpec, Selector};
use levee_core::sync::lock;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::{Counters, Endpoint, EndpointState, Pool, PoolSettings, Upstream};
use crate::events::Events;
use crate::metrics::{EndpointLabels, Metrics};
use crate::tls::Connector;

/// What identifies an endpoint's state across reloads: the endpoint's
/// metric labels, so one series never has two owners.
pub(crate) type StateKey = (UpstreamName, RegionName, EndpointAddress);

/// What a new upstream is built with besides its config.
pub(crate) struct Building<'a> {
    pub metrics: &'a Metrics,
    pub events: &'a Arc<Events>,
    /// The upstream of the same name in the running config.
    pub old: Option<&'a Upstream>,
    /// The running endpoints' state, taken by the endpoints that stay.
    pub carried: &'a mut HashMap<StateKey, Arc<EndpointState>>,
    /// The TLS connector the new config asks for, if any.
    pub connector: Option<&'a Arc<Connector>>,
    pub now: Instant,
}

impl Upstream {
    /// Builds the upstream `config` describes; see the module's comment.
    pub fn build(config: &levee_config::Upstream, b: Building<'_>) -> Arc<Upstream> {
        let old = b.old;
        let counters = counters(config, old);
        let changed = Arc::new(Notify::new());
        // Unchanged TLS (settings, protocol and files) keeps its connector,
        // and with it the pooled connections (see `Pool::set_tls`).
        let running = old
            .and_then(|o| o.endpoints.first())
            .and_then(|e| e.state.pool.tls());
        let connector = match (running, b.connector) {
            (Some(old), Some(new)) if old.fingerprint == new.fingerprint => Some(old),
            (_, new) => new.cloned(),
        };
        let endpoints: Vec<Endpoint> = config
            .endpoints()
            .map(|(region, e)| {
                let state = endpoint_state(config, region, &e.address, &counters, b.metrics, b.carried);
                state.pool.set_tls(connector.clone());
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
        let selector = selector(config, &endpoints);
        let priorities: Vec<u32> = selector.priorities().collect();
        let failover = match old {
            Some(o) => Failover::carried(config.failover, &priorities, &lock(&o.failover), &o.priorities),
            None => Failover::new(config.failover, priorities.len()),
        };
        let adaptive = adaptive(config, old);
        let regions = regions(&endpoints);
        let region_names: Vec<&str> = regions.iter().map(|(r, _, _)| r.as_str()).collect();
        let metrics = b
            .metrics
            .upstream(config.name.as_str(), &priorities, &region_names);
        let limit = adaptive.as_ref().map_or(0, |a| lock(a).limit());
        metrics.concurrency_limit.set(i64::from(limit));
        let upstream = Arc::new(Upstream {
            adaptive,
            name: config.name.clone(),
            selector,
            endpoints,
            protocol: config.protocol,
            connect_timeout: config.connect_timeout,
            response_header_timeout: config.response_header_timeout,
            hash_on: config.hash_on.clone(),
            limits: config.limits,
            outlier: config.outlier.clone(),
            policy: config.balance,
            tracks_latency: config.balance == levee_core::balance::Policy::PeakEwma,
            counters,
            metrics,
            priorities,
            failover: Mutex::new(failover),
            failover_params: config.failover,
            loads: ArcSwap::from_pointee(Loads::default()),
            changed,
            events: b.events.clone(),
            failover_active: AtomicBool::new(old.is_some_and(|o| o.failover_active.load(Ordering::Relaxed))),
            regions,
            retired: AtomicBool::new(false),
            watched: AtomicBool::new(false),
        });
        // Requests see loads from the start, before the task runs.
        upstream.refresh(b.now);
        upstream
    }
}

/// The breakers' counts and the retry budget: the running ones, with the
/// new budget settings, so that a reload does not forget what is in flight.
fn counters(config: &levee_config::Upstream, old: Option<&Upstream>) -> Arc<Counters> {
    let budget = Budget::new(config.retry_budget.percent, config.retry_budget.min_per_second);
    match old {
        Some(o) => {
            *lock(&o.counters.budget) = budget;
            o.counters.clone()
        }
        None => Arc::new(Counters::new(budget)),
    }
}

/// An endpoint's state: the running one when the endpoint stays (with the
/// new settings), else a new one.
fn endpoint_state(
    config: &levee_config::Upstream,
    region: &Region,
    address: &EndpointAddress,
    counters: &Arc<Counters>,
    metrics: &Metrics,
    carried: &mut HashMap<StateKey, Arc<EndpointState>>,
) -> Arc<EndpointState> {
    let settings = PoolSettings {
        protocol: config.protocol,
        max_idle: config.max_idle_per_endpoint,
        idle_timeout: config.idle_timeout,
    };
    let key = (config.name.clone(), region.name.clone(), address.clone());
    let state = match carried.remove(&key) {
        Some(state) => {
            state.pool.reconfigure(settings);
            state
        }
        None => {
            let labels = EndpointLabels {
                upstream: config.name.to_string(),
                region: region.name.to_string(),
                endpoint: address.to_string(),
            };
            Arc::new(EndpointState::new(
                Pool::new(address.clone(), settings, counters.clone()),
                metrics.upstream_in_flight.get_or_create_owned(&labels),
                metrics.upstream_connects.get_or_create_owned(&labels),
                metrics.endpoint(&labels),
            ))
        }
    };
    // New settings reach a running checker; `None` stops it.
    state.check.store(config.health.clone().map(Arc::new));
    state.uneject_on_check.store(
        config
            .outlier
            .as_ref()
            .is_some_and(|o| o.uneject_on_check_success),
        Ordering::Relaxed,
    );
    if config.outlier.is_none() {
        // Detection turned off: nobody would end an ejection early.
        state.uneject();
    }
    state
}

fn selector(config: &levee_config::Upstream, endpoints: &[Endpoint]) -> Selector {
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
    Selector::new(config.balance, &specs)
}

/// The adaptive concurrency limit: what the running limiter learnt stays;
/// only its settings change.
fn adaptive(config: &levee_config::Upstream, old: Option<&Upstream>) -> Option<Arc<Mutex<Limiter>>> {
    let params = config.adaptive_concurrency?;
    let kept = old
        .and_then(|o| o.adaptive.clone())
        .filter(|a| lock(a).set_params(params).is_ok());
    kept.or_else(|| Limiter::new(params).ok().map(|l| Arc::new(Mutex::new(l))))
}

/// The regions in config order, with their priority and their endpoints'
/// indexes.
fn regions(endpoints: &[Endpoint]) -> Vec<(RegionName, u32, Vec<usize>)> {
    let mut regions: Vec<(RegionName, u32, Vec<usize>)> = Vec::new();
    for (i, e) in endpoints.iter().enumerate() {
        match regions.iter_mut().find(|(name, _, _)| *name == e.region) {
            Some((_, _, members)) => members.push(i),
            None => regions.push((e.region.clone(), e.priority, vec![i])),
        }
    }
    regions
}
