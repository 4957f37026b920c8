//! The `[server]` settings as client connections use them, resolved once
//! per config.

use std::time::Duration;

use levee_core::access::{Access, CidrSet};

use super::h2::guard::Budgets;
use crate::codec::parse::HeadLimits;
use crate::metrics::SlowClients;

/// The `[server]` settings as the HTTP/1 connection uses them.
#[derive(Clone, Debug)]
pub(crate) struct Settings {
    pub limits: HeadLimits,
    pub header_timeout: Duration,
    pub keepalive_timeout: Duration,
    pub body_timeout: Duration,
    pub tunnel_idle_timeout: Duration,
    pub max_body: Option<u64>,
    /// Requests before the connection closes; 0 for no limit.
    pub max_requests: u64,
    /// The slowest request body accepted, in bytes a second after a grace
    /// of `header_timeout`; 0 for none.
    pub body_min_rate: u64,
    pub slow: SlowClients,
    /// HTTP/2 connections only.
    pub h2: H2Limits,
}

impl Settings {
    pub fn from_config(s: &levee_config::Server) -> Settings {
        Settings {
            limits: HeadLimits {
                max_uri: s.max_uri_bytes,
                max_head: s.max_header_bytes,
                max_headers: s.max_header_count,
            },
            header_timeout: s.header_timeout,
            keepalive_timeout: s.keepalive_timeout,
            body_timeout: s.body_timeout,
            tunnel_idle_timeout: s.tunnel_idle_timeout,
            max_body: s.max_body_bytes,
            max_requests: s.max_requests_per_connection,
            body_min_rate: s.body_min_rate,
            slow: SlowClients::default(),
            h2: H2Limits::from_config(s),
        }
    }
}

/// The `[server]` settings for HTTP/2 connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct H2Limits {
    pub max_concurrent_streams: u32,
    pub budgets: Budgets,
}

impl H2Limits {
    pub(crate) fn from_config(s: &levee_config::Server) -> H2Limits {
        H2Limits {
            max_concurrent_streams: s.h2_max_concurrent_streams,
            budgets: Budgets::from_config(s),
        }
    }
}

/// One listener's settings from one config, built once per snapshot.
pub(crate) struct ListenerPolicy {
    pub settings: Settings,
    pub access: Access,
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
    /// Expect a PROXY protocol v2 header, believed only from `trusted`.
    pub proxy_protocol: bool,
    pub trusted: CidrSet,
    pub tls: Option<tokio_rustls::TlsAcceptor>,
}

impl ListenerPolicy {
    #[cfg(test)]
    pub fn for_tests() -> ListenerPolicy {
        ListenerPolicy {
            settings: Settings::from_config(&levee_config::Server::default()),
            access: Access::default(),
            max_connections: usize::MAX,
            max_connections_per_ip: usize::MAX,
            proxy_protocol: false,
            trusted: CidrSet::default(),
            tls: None,
        }
    }
}
