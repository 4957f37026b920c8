//! The validated configuration. Every value here has been checked; code that
//! receives a [`Config`] never validates again.

mod alerting;

pub use alerting::*;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use http::{HeaderName, HeaderValue, Method};
pub use levee_core::access::{Access, Cidr, CidrSet};
use levee_core::balance::Policy;
pub use levee_core::concurrency::{Params as AdaptiveParams, Priority};
pub use levee_core::failover::{Mode as FailoverMode, Params as FailoverParams};
pub use levee_core::fault::Faults;
use levee_core::id::{ListenerName, RegionName, RouteName, UpstreamName};
pub use levee_core::outlier::{Params as OutlierParams, SuccessRate};
pub use levee_core::ratelimit::Quota;
pub use levee_core::retry::{Backoff, RetryOn};

#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    pub runtime: Runtime,
    pub admin: Admin,
    pub server: Server,
    pub listeners: Vec<Listener>,
    pub routes: Vec<Route>,
    pub upstreams: Vec<Upstream>,
    pub rate_limits: Vec<RateLimit>,
    pub redis: Option<Redis>,
    /// `[alerting]`, its notifiers, and the alert rules in force.
    pub alerting: Alerting,
    /// `None` unless `[access_log]` has `enabled = true`.
    pub access_log: Option<AccessLog>,
    /// The file as written, secrets replaced by `"<redacted>"`: what the
    /// admin API shows as the running config.
    pub document: std::sync::Arc<toml::Table>,
}

/// `[rate_limit.<name>]`: a rate limit rule, applied where listeners and
/// routes name it.
#[derive(Clone, Debug, PartialEq)]
pub struct RateLimit {
    pub name: String,
    pub quota: Quota,
    /// What a bucket is kept for: the values of these parts together.
    pub key: Vec<KeyPart>,
    pub backend: RateLimitBackend,
    /// Keys kept at most (local tables, and the fallback of Redis rules).
    pub max_keys: usize,
    /// How many levee instances share a Redis rule: while Redis is
    /// unavailable each enforces `rate / instances` on its own.
    pub instances: u32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyPart {
    ClientIp,
    Route,
    Header(HeaderName),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RateLimitBackend {
    Local,
    Redis,
}

/// `[redis]`: where fleet-wide rate limits are kept.
#[derive(Clone, PartialEq, Eq)]
pub struct Redis {
    pub address: SocketAddr,
    /// Sent with `AUTH` on every connection.
    pub password: Option<String>,
    /// How long a request waits for Redis before deciding locally.
    pub timeout: Duration,
    pub connect_timeout: Duration,
    pub key_prefix: String,
}

/// Never prints the password.
impl std::fmt::Debug for Redis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redis")
            .field("address", &self.address)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("timeout", &self.timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("key_prefix", &self.key_prefix)
            .finish()
    }
}

/// `[access_log]`: one line per request, written by a task of its own so
/// that a slow disk never slows a request down.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccessLog {
    pub output: LogOutput,
    pub format: LogFormat,
    /// The fields of each `json` line, in this order (the other formats
    /// have fixed fields).
    pub fields: Vec<LogField>,
    /// Records waiting to be written, at most: past it, records are dropped
    /// (and counted) rather than let a request wait.
    pub buffer: usize,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LogOutput {
    Stdout,
    /// Opened for appending, created if missing, reopened on every reload
    /// (so `logrotate` can move it away and send SIGHUP).
    File(PathBuf),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    /// One JSON object a line, with the configured fields.
    Json,
    /// The Common Log Format of Apache and nginx.
    Common,
    /// Common, then the `Referer` and `User-Agent` in quotes.
    Combined,
}

/// What an access log line can say about a request. A closed set: every
/// field is cheap to capture and none holds a secret unless the operator
/// asks for it (`uri` and `query` carry the query string, which often does).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LogField {
    /// When the request head arrived, RFC 3339 UTC with milliseconds.
    Time,
    ClientIp,
    Listener,
    Method,
    /// The path, without the query.
    Path,
    /// The query, without the `?` (null when there is none).
    Query,
    /// The request target as received: path and query.
    Uri,
    Host,
    /// `HTTP/1.0`, `HTTP/1.1` or `HTTP/2`.
    Protocol,
    Status,
    /// Response body bytes passed on to the client.
    BytesSent,
    DurationMs,
    Route,
    Upstream,
    /// The region of the endpoint that answered (or was tried last).
    Region,
    Endpoint,
    /// Tries sent upstream: 0 when levee answered without one.
    Attempts,
    /// The `Proxy-Status` error type when levee generated the response.
    ProxyStatus,
    /// For a request that ended on a failure, why no retry saved it
    /// (`attempts`, `budget`, `deadline`, `all_down`, ...).
    RetryStop,
    /// The faults injected into the request (`delay`, `abort`,
    /// `response_rate`, comma-separated), or null.
    Fault,
    RequestId,
    UserAgent,
    Referer,
}

impl LogField {
    pub const ALL: [LogField; 23] = [
        LogField::Time,
        LogField::ClientIp,
        LogField::Listener,
        LogField::Method,
        LogField::Path,
        LogField::Query,
        LogField::Uri,
        LogField::Host,
        LogField::Protocol,
        LogField::Status,
        LogField::BytesSent,
        LogField::DurationMs,
        LogField::Route,
        LogField::Upstream,
        LogField::Region,
        LogField::Endpoint,
        LogField::Attempts,
        LogField::ProxyStatus,
        LogField::RetryStop,
        LogField::Fault,
        LogField::RequestId,
        LogField::UserAgent,
        LogField::Referer,
    ];

    /// The fields of a `json` line when `fields` is not set.
    pub const DEFAULT: [LogField; 16] = [
        LogField::Time,
        LogField::ClientIp,
        LogField::Method,
        LogField::Path,
        LogField::Protocol,
        LogField::Status,
        LogField::BytesSent,
        LogField::DurationMs,
        LogField::Route,
        LogField::Upstream,
        LogField::Endpoint,
        LogField::Attempts,
        LogField::ProxyStatus,
        LogField::RetryStop,
        LogField::Fault,
        LogField::RequestId,
    ];

    /// The name in the config and the JSON key.
    pub fn as_str(self) -> &'static str {
        match self {
            LogField::Time => "time",
            LogField::ClientIp => "client_ip",
            LogField::Listener => "listener",
            LogField::Method => "method",
            LogField::Path => "path",
            LogField::Query => "query",
            LogField::Uri => "uri",
            LogField::Host => "host",
            LogField::Protocol => "protocol",
            LogField::Status => "status",
            LogField::BytesSent => "bytes_sent",
            LogField::DurationMs => "duration_ms",
            LogField::Route => "route",
            LogField::Upstream => "upstream",
            LogField::Region => "region",
            LogField::Endpoint => "endpoint",
            LogField::Attempts => "attempts",
            LogField::ProxyStatus => "proxy_status",
            LogField::RetryStop => "retry_stop",
            LogField::Fault => "fault",
            LogField::RequestId => "request_id",
            LogField::UserAgent => "user_agent",
            LogField::Referer => "referer",
        }
    }
}

impl LogFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            LogFormat::Json => "json",
            LogFormat::Common => "common",
            LogFormat::Combined => "combined",
        }
    }
}

impl Config {
    pub fn upstream(&self, name: &UpstreamName) -> Option<&Upstream> {
        self.upstreams.iter().find(|u| &u.name == name)
    }
}

/// `[runtime]`: settings that take effect at start only.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Runtime {
    /// Worker threads; 0 means one per CPU.
    pub workers: usize,
}

/// `[admin]`
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Admin {
    pub listen: SocketAddr,
    /// The bearer token the admin API requires, if any. Required when
    /// `listen` is not a loopback address. Debug shows it redacted.
    pub token: Option<Secret>,
}

/// A credential: compared and used as is, never shown by `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("\"<redacted>\"")
    }
}

/// `[server]`: how levee treats clients, on every listener.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Server {
    pub header_timeout: Duration,
    pub keepalive_timeout: Duration,
    pub body_timeout: Duration,
    pub tunnel_idle_timeout: Duration,
    pub drain_timeout: Duration,
    pub max_uri_bytes: usize,
    pub max_header_bytes: usize,
    pub max_header_count: usize,
    pub max_body_bytes: Option<u64>,
    /// Client connections open at once, over every listener.
    pub max_connections: usize,
    /// Client connections open at once from one client address.
    pub max_connections_per_ip: usize,
    /// Requests served on one connection before it is closed (HTTP/1) or
    /// sent GOAWAY (HTTP/2); 0 for no limit.
    pub max_requests_per_connection: u64,
    /// The slowest request body accepted, in bytes a second, after a grace
    /// of `header_timeout`; 0 turns it off.
    pub body_min_rate: u64,
    /// HTTP/2 streams a client may have open at once on one connection
    /// (`SETTINGS_MAX_CONCURRENT_STREAMS`).
    pub h2_max_concurrent_streams: u32,
    /// HTTP/2 streams a client may reset on one connection within 10 s
    /// before the connection is closed for rapid reset.
    pub h2_max_reset_streams: u32,
    /// HTTP/2 PING frames a client may send on one connection within 10 s
    /// while levee sends it nothing, and SETTINGS frames (counted apart),
    /// before the connection is closed for a flood.
    pub h2_max_control_frames: u32,
    /// HTTP/2 frames without payload or effect a client may send on one
    /// connection within 10 s before it is closed for a flood.
    pub h2_max_empty_frames: u32,
    /// Peers believed when they say who the client is; empty trusts none.
    pub trusted_proxies: CidrSet,
    /// Where a trusted peer says who the client is.
    pub client_ip_header: ClientIpHeader,
}

/// `server.client_ip_header`
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientIpHeader {
    XForwardedFor,
    Forwarded,
}

impl Default for Server {
    fn default() -> Server {
        Server {
            header_timeout: Duration::from_secs(10),
            keepalive_timeout: Duration::from_secs(60),
            body_timeout: Duration::from_secs(60),
            tunnel_idle_timeout: Duration::from_secs(3600),
            drain_timeout: Duration::from_secs(30),
            max_uri_bytes: 8 * 1024,
            max_header_bytes: 64 * 1024,
            max_header_count: 100,
            max_body_bytes: None,
            max_connections: 10_000,
            max_connections_per_ip: 256,
            max_requests_per_connection: 1000,
            body_min_rate: 500,
            h2_max_concurrent_streams: 100,
            h2_max_reset_streams: 200,
            h2_max_control_frames: 100,
            h2_max_empty_frames: 50,
            trusted_proxies: CidrSet::default(),
            client_ip_header: ClientIpHeader::XForwardedFor,
        }
    }
}

/// `[listener.<name>]`
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listener {
    pub name: ListenerName,
    pub address: SocketAddr,
    /// Who may connect; others are closed at accept.
    pub access: Access,
    /// Connections start with a PROXY protocol v2 header, from a peer in
    /// `server.trusted_proxies`.
    pub proxy_protocol: bool,
    /// The `[rate_limit.<name>]` rules every request on it passes.
    pub rate_limits: Vec<RateLimitRef>,
    pub tls: Option<Tls>,
}

/// `[listener.<name>.tls]`
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tls {
    /// The first is served to clients whose SNI matches none.
    pub certificates: Vec<Certificate>,
    /// ALPN protocols offered, most preferred first.
    pub alpn: Vec<Alpn>,
    pub min_version: TlsVersion,
}

/// `[upstream.<u>.tls]`
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct UpstreamTls {
    /// The name sent as SNI and verified; by default the endpoint's host
    /// name (or, for an IP endpoint, its address, checked against the
    /// certificate's IP names).
    pub sni: Option<String>,
    /// PEM file of the CAs to trust; the system's roots without it.
    pub ca: Option<PathBuf>,
    /// A client certificate, for upstreams that require one.
    pub client_certificate: Option<Certificate>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Certificate {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Alpn {
    H2,
    Http11,
}

impl Alpn {
    pub fn id(self) -> &'static [u8] {
        match self {
            Alpn::H2 => b"h2",
            Alpn::Http11 => b"http/1.1",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum TlsVersion {
    V1_2,
    V1_3,
}

/// `[[route]]`
#[derive(Clone, Debug, PartialEq)]
pub struct Route {
    pub name: RouteName,
    /// The listeners the route applies to; empty means all.
    pub listeners: Vec<ListenerName>,
    pub matcher: RouteMatch,
    /// The upstream's name (for labels) and where it is.
    pub upstream: UpstreamName,
    pub upstream_ref: UpstreamRef,
    pub request_timeout: Duration,
    pub retry: Retry,
    /// Who may use the route; others get 403.
    pub access: Access,
    /// `[rate_limit.<name>]` rules, after the listener's.
    pub rate_limits: Vec<RateLimitRef>,
    /// Which share of an adaptive concurrency limit the route may use.
    pub priority: Priority,
    /// `[route.fault]`: faults injected into the route's requests.
    pub fault: Option<RouteFault>,
}

/// `[route.fault]`: what the route injects, and from whom its fault
/// headers are honoured.
#[derive(Clone, Debug, PartialEq)]
pub struct RouteFault {
    pub faults: Faults,
    /// The addresses whose fault headers count: `headers_from`, or else
    /// `server.trusted_proxies`.
    pub headers_from: CidrSet,
}

/// An upstream a route sends to: an index into [`Config::upstreams`],
/// resolved by validation, so that the data plane never looks a name up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UpstreamRef(pub(crate) usize);

impl UpstreamRef {
    pub fn index(self) -> usize {
        self.0
    }
}

/// A rate limit a listener or route applies: an index into
/// [`Config::rate_limits`], resolved by validation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimitRef(pub(crate) usize);

impl RateLimitRef {
    pub fn index(self) -> usize {
        self.0
    }
}

/// `[route.retry]`: the attempt machine's policy, defaults included.
pub use levee_core::attempt::{LeaveRegion, Policy as Retry};

/// `[route.match]`: every condition given must hold.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RouteMatch {
    /// Any of these hosts; empty means any host.
    pub hosts: Vec<HostMatch>,
    pub path_prefix: Option<String>,
    /// Any of these methods; empty means any method.
    pub methods: Vec<Method>,
    /// Every one of these headers with exactly this value.
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

/// A host pattern, lowercased.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HostMatch {
    /// `api.example.com`
    Exact(String),
    /// `*.example.com`: any name ending in `.example.com` (not the apex); the
    /// string held is the suffix including its leading dot.
    Suffix(String),
}

impl HostMatch {
    /// Whether a lowercased host name without port matches.
    pub fn matches(&self, host: &str) -> bool {
        match self {
            HostMatch::Exact(h) => h == host,
            HostMatch::Suffix(s) => host.len() > s.len() && host.ends_with(s.as_str()),
        }
    }
}

/// `[upstream.<name>]`
#[derive(Clone, Debug, PartialEq)]
pub struct Upstream {
    pub name: UpstreamName,
    pub balance: Policy,
    pub hash_on: Option<HashOn>,
    pub protocol: Protocol,
    pub connect_timeout: Duration,
    pub response_header_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_idle_per_endpoint: usize,
    /// Active health checks; without them every endpoint takes traffic.
    pub health: Option<HealthCheck>,
    /// `[upstream.<u>.failover]`
    pub failover: FailoverParams,
    /// `[upstream.<u>.outlier]`; without it, no passive ejection.
    pub outlier: Option<Outlier>,
    /// `[upstream.<u>.limits]`: the circuit breakers.
    pub limits: Limits,
    /// `[upstream.<u>.retry_budget]`
    pub retry_budget: RetryBudget,
    /// `[upstream.<u>.adaptive_concurrency]`; without it, no adaptive limit.
    pub adaptive_concurrency: Option<AdaptiveParams>,
    /// `[upstream.<u>.tls]`: TLS to the endpoints; plain TCP without it.
    pub tls: Option<UpstreamTls>,
    pub regions: Vec<Region>,
}

/// `[upstream.<u>.outlier]`: passive outlier detection.
#[derive(Clone, Debug, PartialEq)]
pub struct Outlier {
    pub params: OutlierParams,
    /// A passing active check ends an ejection early.
    pub uneject_on_check_success: bool,
}

/// `[upstream.<u>.limits]`: requests beyond these fail fast with 503.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Open connections to the upstream's endpoints, idle ones included.
    pub max_connections: u64,
    /// Requests waiting for a connection to open.
    pub max_pending: u64,
    /// Requests in flight.
    pub max_requests: u64,
    /// Retries in flight (beyond it, a failed try is not retried).
    pub max_retries: u64,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_connections: 1024,
            max_pending: 1024,
            max_requests: 1024,
            // A backstop, as the others are: the retry budget is what bounds
            // retries to a share of the traffic. A small fixed cap would
            // refuse the retries of a region going dark, which all come at
            // once, exactly when they are needed.
            max_retries: 1024,
        }
    }
}

/// `[upstream.<u>.retry_budget]`
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryBudget {
    /// Retries in flight may be this share of the requests in flight...
    pub percent: u32,
    /// ...plus this many a second.
    pub min_per_second: u32,
}

impl Default for RetryBudget {
    fn default() -> RetryBudget {
        RetryBudget {
            percent: 20,
            min_per_second: 10,
        }
    }
}

/// `[upstream.<u>.health]`: active health checks of every endpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthCheck {
    pub kind: CheckKind,
    pub interval: Duration,
    /// The interval while an endpoint is unhealthy (to notice recovery sooner).
    pub unhealthy_interval: Duration,
    pub timeout: Duration,
    pub rise: u32,
    pub fall: u32,
    pub jitter_percent: u32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CheckKind {
    /// `GET path` must answer with a status in one of `expect`'s ranges.
    Http {
        path: String,
        /// The Host header; the endpoint's address when absent.
        host: Option<String>,
        expect: Vec<(u16, u16)>,
    },
    /// A TCP connection must open.
    Tcp,
}

impl Upstream {
    /// Every endpoint with its region, in declaration order.
    pub fn endpoints(&self) -> impl Iterator<Item = (&Region, &Endpoint)> {
        self.regions
            .iter()
            .flat_map(|r| r.endpoints.iter().map(move |e| (r, e)))
    }
}

/// What a consistent-hashing upstream hashes on (`hash_on`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HashOn {
    Header(HeaderName),
    Cookie(String),
    ClientIp,
}

/// The protocol levee speaks to an upstream's endpoints.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Protocol {
    Http1,
    /// HTTP/2 with prior knowledge (h2c).
    Http2,
}

/// `[upstream.<u>.region.<name>]`
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Region {
    pub name: RegionName,
    pub priority: u32,
    pub endpoints: Vec<Endpoint>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub address: EndpointAddress,
    pub weight: u32,
}

/// Where an endpoint is: an IP address, or a name resolved at connect time.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum EndpointAddress {
    Ip(SocketAddr),
    Dns { host: String, port: u16 },
}

impl std::fmt::Display for EndpointAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EndpointAddress::Ip(a) => write!(f, "{a}"),
            EndpointAddress::Dns { host, port } => write!(f, "{host}:{port}"),
        }
    }
}
