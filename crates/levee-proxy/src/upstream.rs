//! Upstreams at run time: their endpoints, the selector over them, and a
//! connection pool per endpoint.
//!
//! An endpoint's state that must outlive a config reload — its pool, its
//! in-flight count — lives in [`EndpointState`], which a new snapshot takes
//! over from the old one when the endpoint stays. What the config may change
//! (weight, region, priority) lives in [`Endpoint`] and is rebuilt.

pub(crate) mod h1;
pub(crate) mod health;
mod pool;

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use arc_swap::ArcSwapOption;
use std::time::Duration;

use http::header::COOKIE;
use levee_config::{EndpointAddress, HashOn, HealthCheck, Protocol};
use levee_core::hash::hash64;
use levee_core::id::{RegionName, UpstreamName};
use levee_core::select::{Endpoints, Selector};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;

use crate::fields::FieldsView;

pub(crate) use pool::{Pool, PoolSettings};

pub(crate) struct Upstream {
    pub name: UpstreamName,
    pub selector: Selector,
    pub endpoints: Vec<Endpoint>,
    pub protocol: Protocol,
    pub connect_timeout: Duration,
    pub response_header_timeout: Duration,
    pub hash_on: Option<HashOn>,
}

pub(crate) struct Endpoint {
    pub address: EndpointAddress,
    pub region: RegionName,
    pub priority: u32,
    pub weight: u32,
    pub state: Arc<EndpointState>,
}

/// What survives a reload for an endpoint that stays.
pub(crate) struct EndpointState {
    in_flight: AtomicU64,
    pub pool: Pool,
    in_flight_gauge: Gauge,
    pub connects: Counter,
    /// What active checks last decided; true without checks.
    healthy: AtomicBool,
    /// The upstream's current check settings (replaced on reload); `None`
    /// stops the checker.
    pub check: ArcSwapOption<HealthCheck>,
    /// Whether a checker task runs for this endpoint.
    pub checking: AtomicBool,
    pub metrics: EndpointMetrics,
}

/// Per-endpoint series, resolved once.
pub(crate) struct EndpointMetrics {
    pub healthy: Gauge,
    pub check_ok: Counter,
    pub check_failed: Counter,
}

impl EndpointState {
    pub fn new(
        pool: Pool,
        in_flight_gauge: Gauge,
        connects: Counter,
        metrics: EndpointMetrics,
    ) -> EndpointState {
        metrics.healthy.set(1);
        EndpointState {
            in_flight: AtomicU64::new(0),
            pool,
            in_flight_gauge,
            connects,
            healthy: AtomicBool::new(true),
            check: ArcSwapOption::empty(),
            checking: AtomicBool::new(false),
            metrics,
        }
    }

    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Relaxed)
    }

    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    pub fn set_healthy(&self, healthy: bool) {
        self.healthy.store(healthy, Ordering::Relaxed);
        self.metrics.healthy.set(i64::from(healthy));
    }
}

/// Counts a request in flight to an endpoint until dropped.
pub(crate) struct InFlight(Arc<EndpointState>);

impl InFlight {
    pub fn start(state: &Arc<EndpointState>) -> InFlight {
        state.in_flight.fetch_add(1, Ordering::Relaxed);
        state.in_flight_gauge.inc();
        InFlight(state.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.0.in_flight_gauge.dec();
    }
}

impl Endpoints for Upstream {
    fn available(&self, endpoint: usize) -> bool {
        self.endpoints[endpoint].state.is_healthy()
    }

    fn in_flight(&self, endpoint: usize) -> u64 {
        self.endpoints[endpoint].state.in_flight()
    }
}

impl Upstream {
    /// The consistent-hash key of a request, when the upstream hashes and
    /// the request carries the key.
    pub fn hash_key(&self, fields: FieldsView<'_>, client: IpAddr) -> Option<u64> {
        match self.hash_on.as_ref()? {
            HashOn::Header(name) => fields.first(name).map(hash64),
            HashOn::Cookie(name) => cookie(fields, name).map(hash64),
            HashOn::ClientIp => Some(match client {
                IpAddr::V4(ip) => hash64(&ip.octets()),
                IpAddr::V6(ip) => hash64(&ip.octets()),
            }),
        }
    }
}

/// The value of cookie `name` in the request's `Cookie` fields.
fn cookie<'a>(fields: FieldsView<'a>, name: &str) -> Option<&'a [u8]> {
    fields.find_map(&COOKIE, |v| {
        v.split(|&b| b == b';').find_map(|pair| {
            let pair = pair.trim_ascii();
            let (k, val) = pair.split_at(pair.iter().position(|&b| b == b'=')?);
            (k == name.as_bytes()).then_some(&val[1..])
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{HeaderMap, HeaderValue};

    #[test]
    fn cookie_lookup() {
        let mut h = HeaderMap::new();
        h.append(COOKIE, HeaderValue::from_static("a=1; session=xyz ;b=2"));
        h.append(COOKIE, HeaderValue::from_static("late=3"));
        let v = FieldsView::Map(&h);
        assert_eq!(cookie(v, "session"), Some(&b"xyz"[..]));
        assert_eq!(cookie(v, "late"), Some(&b"3"[..]));
        assert_eq!(cookie(v, "sess"), None);
        assert_eq!(cookie(v, "b"), Some(&b"2"[..]));
    }
}
