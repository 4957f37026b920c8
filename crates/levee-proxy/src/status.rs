//! What the gateway is doing, as the admin API shows it, and the few
//! things an operator may change at run time: drain an endpoint, set its
//! weight. Reads take the current snapshot and atomics; nothing here
//! blocks the request path.

use std::collections::BTreeMap;
use std::time::Duration;

use levee_config::HostMatch;
use levee_core::alert::{Fact, Kind, Source};
use serde::Serialize;
use tokio::time::Instant;

use crate::events::{EventKind, LevelShare};
use crate::gateway::{Gateway, GatewayError};
use crate::history::{Point, SECONDS, Stats};
use crate::metrics::ListenerLabels;
use crate::snapshot::{RouteRuntime, Snapshot};
use crate::upstream::{Endpoint, Upstream, millis};

/// The seconds the `stats` of an upstream cover.
const STATS_SECONDS: usize = 10;

#[derive(Debug, Serialize)]
pub struct UpstreamStatus {
    pub name: String,
    pub policy: &'static str,
    pub failover_active: bool,
    pub levels: Vec<LevelShare>,
    pub regions: Vec<RegionStatus>,
    pub endpoints: Vec<EndpointStatus>,
    /// Over the last [`STATS_SECONDS`].
    pub stats: Stats,
}

#[derive(Debug, Serialize)]
pub struct RegionStatus {
    pub name: String,
    pub priority: u32,
    /// The share of the upstream's requests its priority level takes now.
    pub share: f64,
    pub panic: bool,
    pub endpoints: usize,
    /// Endpoints that may take traffic now.
    pub available: usize,
    /// Available weight over all weight, drained endpoints left out.
    pub healthy_weight_share: f64,
}

#[derive(Debug, Serialize)]
pub struct EndpointStatus {
    pub address: String,
    pub region: String,
    pub priority: u32,
    pub weight: u32,
    pub configured_weight: u32,
    /// `drained`, `unhealthy`, `ejected` or `healthy`: the first that applies.
    pub state: &'static str,
    pub healthy: bool,
    pub ejected: bool,
    /// How long the current ejection still lasts.
    pub ejected_for_ms: Option<u64>,
    pub drained: bool,
    pub in_flight: u64,
    /// A moving average of the time to the response head; `null` before
    /// the first response.
    pub latency_ms: Option<f64>,
    pub last_check: Option<LastCheck>,
}

#[derive(Debug, Serialize)]
pub struct LastCheck {
    /// `ok`, `failed` or `timeout`.
    pub result: &'static str,
    pub age_ms: u64,
}

#[derive(Debug, Serialize)]
pub struct ListenerStatus {
    pub name: String,
    pub address: String,
    /// The address it is bound to (differs from `address` with port 0).
    pub bound: Option<String>,
    pub tls: bool,
    pub proxy_protocol: bool,
    pub connections_active: i64,
}

#[derive(Debug, Serialize)]
pub struct RouteStatus {
    pub name: String,
    /// Empty: every listener.
    pub listeners: Vec<String>,
    pub hosts: Vec<String>,
    pub path_prefix: Option<String>,
    pub methods: Vec<String>,
    pub headers: BTreeMap<String, String>,
    pub upstream: String,
    pub priority: &'static str,
    pub request_timeout_ms: u64,
    pub attempts: u32,
    pub rate_limits: Vec<String>,
}

/// A route's faults, as the admin API shows and takes them.
#[derive(Debug, Serialize)]
pub struct FaultStatus {
    pub route: String,
    /// `"config"` or `"api"`; `null` when the route injects nothing.
    pub source: Option<&'static str>,
    /// The keys of `[route.fault]`; `null` when none are in force.
    pub fault: Option<FaultView>,
}

#[derive(Debug, Serialize)]
pub struct FaultView {
    pub delay: Option<String>,
    pub delay_percent: Option<f64>,
    pub abort_status: Option<u16>,
    pub abort_percent: Option<f64>,
    pub abort_grpc_status: Option<u32>,
    pub response_rate: Option<u64>,
    pub response_rate_percent: Option<f64>,
    pub headers: bool,
    pub headers_from: Vec<String>,
}

impl FaultView {
    fn of(f: &levee_config::RouteFault) -> FaultView {
        let faults = &f.faults;
        FaultView {
            delay: faults.delay.map(|d| format!("{}ms", d.duration.as_millis())),
            delay_percent: faults.delay.map(|d| d.share.percent()),
            abort_status: faults.abort.map(|a| a.status),
            abort_percent: faults.abort.map(|a| a.share.percent()),
            abort_grpc_status: faults.abort.and_then(|a| a.grpc_status),
            response_rate: faults.response_rate.map(|r| r.bytes_per_second),
            response_rate_percent: faults.response_rate.map(|r| r.share.percent()),
            headers: faults.headers,
            headers_from: f.headers_from.blocks().iter().map(ToString::to_string).collect(),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct UpstreamHistory {
    pub name: String,
    pub points: Vec<Point>,
}

fn find_route<'s>(snap: &'s Snapshot, route: &str) -> Result<&'s RouteRuntime, ChangeError> {
    (snap.routes.iter())
        .find(|r| r.name == route)
        .ok_or_else(|| ChangeError::NoRoute(route.to_string()))
}

fn fault_status(snap: &Snapshot, route: &str) -> Result<FaultStatus, ChangeError> {
    let r = find_route(snap, route)?;
    let current = r.fault.current();
    Ok(FaultStatus {
        route: route.to_string(),
        source: current
            .as_ref()
            .map(|_| if r.fault.is_from_api() { "api" } else { "config" }),
        fault: current.as_deref().map(FaultView::of),
    })
}

/// Why an operator's change was refused.
#[derive(Debug, thiserror::Error)]
pub enum ChangeError {
    #[error("no upstream {0}")]
    NoUpstream(String),
    #[error("no endpoint {endpoint} in upstream {upstream}")]
    NoEndpoint { upstream: String, endpoint: String },
    #[error("weight must be from 1 to 1000")]
    Weight,
    #[error("no route {0}")]
    NoRoute(String),
    #[error("invalid fault: {0}")]
    Fault(levee_config::ConfigErrors),
    #[error(transparent)]
    Gateway(#[from] GatewayError),
}

impl Gateway {
    /// The faults of `route` as they stand.
    pub fn route_fault(&self, route: &str) -> Result<FaultStatus, ChangeError> {
        let snap = self.snapshot();
        fault_status(&snap, route)
    }

    /// Sets the faults of `route` from the admin API's `body` (the keys of
    /// `[route.fault]`), in place of the config's until they are removed
    /// ([`Gateway::remove_route_fault`]), reloads included.
    pub fn put_route_fault<'de, D: serde::Deserializer<'de>>(
        &self,
        route: &str,
        body: D,
    ) -> Result<FaultStatus, ChangeError> {
        let trusted = self.config().server.trusted_proxies.clone();
        let fault = levee_config::route_fault(body, &trusted).map_err(ChangeError::Fault)?;
        self.holding_reloads(|snap| {
            let r = find_route(snap, route)?;
            r.fault.set_api(Some(Some(std::sync::Arc::new(fault))));
            tracing::info!(route, "faults set by the admin API");
            fault_status(snap, route)
        })
    }

    /// Removes the admin API's faults of `route`: the config's (if any)
    /// are in force again.
    pub fn remove_route_fault(&self, route: &str) -> Result<FaultStatus, ChangeError> {
        self.holding_reloads(|snap| {
            find_route(snap, route)?.fault.set_api(None);
            tracing::info!(route, "faults of the admin API removed");
            fault_status(snap, route)
        })
    }

    /// Every upstream, in config order.
    pub fn upstreams(&self) -> Vec<UpstreamStatus> {
        let snap = self.snapshot();
        let now = Instant::now();
        snap.upstreams
            .iter()
            .map(|u| self.upstream_status(u, now))
            .collect()
    }

    pub fn upstream(&self, name: &str) -> Option<UpstreamStatus> {
        let snap = self.snapshot();
        let u = snap.upstreams.iter().find(|u| u.name().as_str() == name)?;
        Some(self.upstream_status(u, Instant::now()))
    }

    fn upstream_status(&self, u: &Upstream, now: Instant) -> UpstreamStatus {
        let now_ms = millis(now);
        let loads = u.loads();
        let levels = u.level_shares(&loads);
        let health = u.region_health(now_ms);
        let regions = u
            .regions()
            .iter()
            .zip(health)
            .map(|((name, priority, members), healthy_weight_share)| {
                let level = levels.iter().find(|l| l.priority == *priority);
                RegionStatus {
                    name: name.to_string(),
                    priority: *priority,
                    share: level.map_or(0.0, |l| l.share),
                    panic: level.is_some_and(|l| l.panic),
                    endpoints: members.len(),
                    available: members
                        .iter()
                        .filter(|&&i| u.endpoints()[i].state.is_available(now_ms))
                        .count(),
                    healthy_weight_share,
                }
            })
            .collect();
        let totals = self.history().totals(u.name().as_str(), STATS_SECONDS);
        let seconds = totals.seconds.max(1) as f64;
        UpstreamStatus {
            name: u.name().to_string(),
            policy: u.policy().as_str(),
            failover_active: u.failover_active(),
            levels,
            regions,
            endpoints: u.endpoints().iter().map(|e| endpoint_status(e, now)).collect(),
            stats: Stats::of(&totals.window, seconds),
        }
    }

    pub fn listeners(&self) -> Vec<ListenerStatus> {
        let config = self.config();
        config
            .listeners
            .iter()
            .map(|l| ListenerStatus {
                name: l.name.to_string(),
                address: l.address.to_string(),
                bound: self.listener_addr(l.name.as_str()).map(|a| a.to_string()),
                tls: l.tls.is_some(),
                proxy_protocol: l.proxy_protocol,
                connections_active: self
                    .metrics()
                    .connections_active
                    .get_or_create(&ListenerLabels {
                        listener: l.name.to_string(),
                    })
                    .get(),
            })
            .collect()
    }

    pub fn routes(&self) -> Vec<RouteStatus> {
        let config = self.config();
        config
            .routes
            .iter()
            .map(|r| RouteStatus {
                name: r.name.to_string(),
                listeners: r.listeners.iter().map(ToString::to_string).collect(),
                hosts: r
                    .matcher
                    .hosts
                    .iter()
                    .map(|h| match h {
                        HostMatch::Exact(h) => h.clone(),
                        HostMatch::Suffix(s) => format!("*{s}"),
                    })
                    .collect(),
                path_prefix: r.matcher.path_prefix.clone(),
                methods: r.matcher.methods.iter().map(ToString::to_string).collect(),
                headers: r
                    .matcher
                    .headers
                    .iter()
                    .map(|(n, v)| (n.to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
                    .collect(),
                upstream: r.upstream.to_string(),
                priority: r.priority.as_str(),
                request_timeout_ms: r.request_timeout.as_millis() as u64,
                attempts: r.retry.attempts,
                rate_limits: (r.rate_limits.iter())
                    .map(|l| config.rate_limits[l.index()].name.clone())
                    .collect(),
            })
            .collect()
    }

    /// One point per second of every upstream, over the last ten minutes.
    pub fn history_points(&self) -> Vec<UpstreamHistory> {
        let snap = self.snapshot();
        snap.upstreams
            .iter()
            .map(|u| UpstreamHistory {
                name: u.name().to_string(),
                points: self.history().points(u.name().as_str()),
            })
            .collect()
    }

    /// Drains (`true`) or undrains an endpoint. Requests in flight finish;
    /// no new one is sent to it. The drain outlasts reloads that keep the
    /// endpoint.
    pub fn drain(
        &self,
        upstream: &str,
        endpoint: &str,
        region: Option<&str>,
        drained: bool,
    ) -> Result<EndpointStatus, ChangeError> {
        let snap = self.snapshot();
        let (u, e) = find(&snap.upstreams, upstream, endpoint, region)?;
        if e.state.set_drained(drained) {
            tracing::info!(upstream, region = %e.region, endpoint, drained, "endpoint drain changed by the admin API");
            self.events().publish(EventKind::EndpointDrained {
                upstream: u.name().to_string(),
                region: e.region.to_string(),
                endpoint: e.address.to_string(),
                drained,
            });
            // The watch task recomputes the loads; do it now as well, so
            // the answer and the next request already see the change.
            u.refresh(Instant::now());
        }
        Ok(endpoint_status(e, Instant::now()))
    }

    /// Sets an endpoint's weight (`None`: back to the configured one). The
    /// balancer is rebuilt with it; it outlasts reloads that keep the
    /// endpoint.
    pub fn set_weight(
        &self,
        upstream: &str,
        endpoint: &str,
        region: Option<&str>,
        weight: Option<u32>,
    ) -> Result<EndpointStatus, ChangeError> {
        if weight.is_some_and(|w| !(1..=1000).contains(&w)) {
            return Err(ChangeError::Weight);
        }
        let region = {
            let snap = self.snapshot();
            let (_, e) = find(&snap.upstreams, upstream, endpoint, region)?;
            e.state.set_weight_override(weight);
            e.region.to_string()
        };
        self.rebuild()?;
        let snap = self.snapshot();
        let (u, e) = find(&snap.upstreams, upstream, endpoint, Some(&region))?;
        tracing::info!(
            upstream,
            region,
            endpoint,
            weight = e.weight,
            "endpoint weight changed by the admin API"
        );
        self.events().publish(EventKind::WeightChanged {
            upstream: u.name().to_string(),
            region,
            endpoint: e.address.to_string(),
            weight: e.weight,
        });
        Ok(endpoint_status(e, Instant::now()))
    }
}

fn find<'a>(
    upstreams: &'a [std::sync::Arc<Upstream>],
    upstream: &str,
    endpoint: &str,
    region: Option<&str>,
) -> Result<(&'a Upstream, &'a Endpoint), ChangeError> {
    let u = upstreams
        .iter()
        .find(|u| u.name().as_str() == upstream)
        .ok_or_else(|| ChangeError::NoUpstream(upstream.to_string()))?;
    // An address is in at most one region of an upstream (the config
    // refuses it twice), so `region` only narrows: a wrong one is a 404.
    let e = u
        .endpoints()
        .iter()
        .find(|e| e.address.to_string() == endpoint && region.is_none_or(|r| e.region.as_str() == r))
        .ok_or_else(|| ChangeError::NoEndpoint {
            upstream: upstream.to_string(),
            endpoint: endpoint.to_string(),
        })?;
    Ok((u, e))
}

fn endpoint_status(e: &Endpoint, now: Instant) -> EndpointStatus {
    let now_ms = millis(now);
    let s = &e.state;
    let healthy = s.is_healthy();
    let ejected = s.is_ejected(now_ms);
    let drained = s.is_drained();
    let state = if drained {
        "drained"
    } else if !healthy {
        "unhealthy"
    } else if ejected {
        "ejected"
    } else {
        "healthy"
    };
    let latency = s.typical_latency();
    EndpointStatus {
        address: e.address.to_string(),
        region: e.region.to_string(),
        priority: e.priority,
        weight: e.weight,
        configured_weight: e.configured_weight,
        state,
        healthy,
        ejected,
        ejected_for_ms: s
            .ejected_until()
            .filter(|_| ejected)
            .map(|until| until.saturating_sub(now_ms)),
        drained,
        in_flight: s.in_flight(),
        latency_ms: (!latency.is_zero()).then_some(latency.as_secs_f64() * 1e3),
        last_check: s.last_check().map(|(result, at)| LastCheck {
            result: result.as_str(),
            age_ms: now_ms.saturating_sub(at),
        }),
    }
}

impl Source for Gateway {
    fn facts(&self, kind: Kind, window: Duration, now: std::time::Instant) -> Vec<Fact> {
        let snap = self.snapshot();
        let now_ms = millis(Instant::from_std(now));
        let seconds = (window.as_secs() as usize).clamp(1, SECONDS);
        let upstream_label = |u: &Upstream| vec![("upstream", u.name().to_string())];
        let per_upstream = |value: &dyn Fn(&Upstream) -> f64| -> Vec<Fact> {
            snap.upstreams
                .iter()
                .map(|u| Fact {
                    labels: upstream_label(u),
                    value: value(u),
                })
                .collect()
        };
        match kind {
            Kind::EndpointDown => snap
                .upstreams
                .iter()
                .flat_map(|u| {
                    u.endpoints().iter().map(|e| Fact {
                        labels: vec![
                            ("upstream", u.name().to_string()),
                            ("region", e.region.to_string()),
                            ("endpoint", e.address.to_string()),
                        ],
                        // A drained endpoint is out by an operator's choice.
                        value: f64::from(
                            !e.state.is_drained() && (!e.state.is_healthy() || e.state.is_ejected(now_ms)),
                        ),
                    })
                })
                .collect(),
            Kind::RegionDegraded => snap
                .upstreams
                .iter()
                .flat_map(|u| {
                    u.regions()
                        .iter()
                        .zip(u.region_health(now_ms))
                        .map(|((region, _, _), share)| Fact {
                            labels: vec![("upstream", u.name().to_string()), ("region", region.to_string())],
                            value: share,
                        })
                })
                .collect(),
            Kind::FailoverActive => per_upstream(&|u| {
                let loads = u.loads();
                let first = loads.shares.first().copied().unwrap_or(0);
                1.0 - f64::from(first) / f64::from(levee_core::failover::ALL)
            }),
            Kind::ErrorRatio => per_upstream(&|u| {
                let t = self.history().totals(u.name().as_str(), seconds);
                t.window.error_ratio().unwrap_or(0.0)
            }),
            Kind::LatencyP99 => per_upstream(&|u| {
                let t = self.history().totals(u.name().as_str(), seconds);
                t.window.quantile(0.99).unwrap_or(0.0)
            }),
            Kind::Shedding => per_upstream(&|u| {
                let t = self.history().totals(u.name().as_str(), seconds);
                t.shed as f64 / t.seconds.max(1) as f64
            }),
            Kind::RetryBudgetExhausted => {
                per_upstream(&|u| self.history().totals(u.name().as_str(), seconds).budget_exhausted as f64)
            }
            Kind::RateLimited => snap
                .rate_limits
                .iter()
                .map(|r| {
                    let (limited, covered) = self.history().limited(&r.config.name, seconds);
                    Fact {
                        labels: vec![("rate_limit", r.config.name.clone())],
                        value: limited as f64 / covered.max(1) as f64,
                    }
                })
                .collect(),
            Kind::RedisDegraded => match snap.config.redis {
                Some(_) => vec![Fact {
                    labels: Vec::new(),
                    value: f64::from(self.metrics().redis_up.get() == 0),
                }],
                None => Vec::new(),
            },
            Kind::ReloadFailed => vec![Fact {
                labels: Vec::new(),
                value: f64::from(self.last_reload().is_some_and(|r| !r.ok)),
            }],
        }
    }
}
