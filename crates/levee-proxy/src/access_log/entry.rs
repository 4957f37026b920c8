//! One request as the access log's writer formats it.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::{HeaderValue, Method, Uri, Version};
use levee_core::attempt::Stop;
use levee_core::id::ListenerName;
use levee_core::outcome::ErrorKind;

use crate::snapshot::{RouteRuntime, Snapshot};
use crate::upstream::{Endpoint, Upstream};

pub(crate) struct RequestLine {
    pub(super) method: Method,
    pub(super) uri: Uri,
    pub(super) version: Version,
}

/// One request, as the writer formats it. Names are looked up in the
/// snapshot the request ran on, when the line is written.
pub(crate) struct Entry {
    pub(super) snap: Arc<Snapshot>,
    pub(super) client: IpAddr,
    pub(super) listener: Option<ListenerName>,
    pub(super) request: Option<RequestLine>,
    pub(super) host: Option<HeaderValue>,
    pub(super) request_id: Option<HeaderValue>,
    pub(super) user_agent: Option<HeaderValue>,
    pub(super) referer: Option<HeaderValue>,
    /// Index into the snapshot's routes.
    pub(super) route: Option<u32>,
    /// Index into the route's upstream's endpoints.
    pub(super) endpoint: Option<u32>,
    pub(super) attempts: u32,
    /// Why no retry saved a request that ended on a failure.
    pub(super) retry_stop: Option<Stop>,
    /// The kinds of fault injected, one bit each (`FaultKind as u8`).
    pub(super) faults: u8,
    pub(super) status: u16,
    pub(super) proxy_status: Option<ErrorKind>,
    pub(super) bytes: u64,
    pub(super) duration: Duration,
    pub(super) ended: SystemTime,
}

impl Entry {
    /// When the request head arrived.
    pub(super) fn started(&self) -> SystemTime {
        self.ended.checked_sub(self.duration).unwrap_or(self.ended)
    }

    pub(super) fn route(&self) -> Option<&RouteRuntime> {
        self.snap.routes.get(self.route? as usize)
    }

    pub(super) fn upstream(&self) -> Option<&Upstream> {
        self.snap.upstreams.get(self.route()?.upstream).map(|u| &**u)
    }

    pub(super) fn endpoint(&self) -> Option<&Endpoint> {
        self.upstream()?.endpoints().get(self.endpoint? as usize)
    }
}
