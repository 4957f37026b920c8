//! Raw shape → validated [`Config`], collecting every error with its path.

mod alerting;
mod fault;

pub(crate) use fault::fault as route_fault;
mod scalar;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::time::Duration;

use http::{HeaderName, HeaderValue, Method};
use levee_core::attempt::MAX_ATTEMPTS;
use levee_core::balance::Policy;
use levee_core::id::{ListenerName, RegionName, RouteName, UpstreamName};

use crate::error::{ConfigErrors, Errors};
use crate::model::*;
use crate::raw::*;
use scalar::{cidr_set, count, duration_or_zero, name_of, timeout};

/// Default admin address: loopback, so the API is not reachable from
/// elsewhere unless the operator says so.
const DEFAULT_ADMIN: &str = "127.0.0.1:9901";

/// Validates what parsed, adding to the shape errors found while parsing.
pub fn validate(raw: RawConfig, shape_errors: Errors) -> Result<Config, ConfigErrors> {
    let mut e = shape_errors;
    let runtime = runtime(&mut e, raw.runtime);
    let admin = admin(&mut e, raw.admin);
    let server = server(&mut e, raw.server);
    if raw.listener.is_empty() && raw.broken_listeners.is_empty() {
        e.push(
            "listener",
            "at least one listener is required, like [listener.main] address = \"127.0.0.1:8080\"",
        );
    }
    let declared_listeners: Vec<String> = raw.listener.iter().map(|(n, _)| n.clone()).collect();
    let declared_upstreams: Vec<String> = raw.upstream.iter().map(|(n, _)| n.clone()).collect();
    let (mut listeners, listener_limits) = listeners(&mut e, raw.listener, admin.as_ref().map(|a| a.listen));
    for l in listeners.iter().filter(|l| l.proxy_protocol) {
        if server.trusted_proxies.is_empty() {
            e.push(
                format!("listener.{}.proxy_protocol", l.name),
                "needs server.trusted_proxies: the PROXY header is believed only from the proxies listed there",
            );
        }
    }
    let upstreams: Vec<Upstream> = raw
        .upstream
        .into_iter()
        .filter_map(|(name, u)| upstream(&mut e, &name, u))
        .collect();
    // Every declared name counts as known, valid or not: a route naming a
    // broken upstream gets the upstream's error, not a second one.
    let known_upstreams: HashSet<&str> = declared_upstreams
        .iter()
        .chain(&raw.broken_upstreams)
        .map(String::as_str)
        .collect();
    let known_listeners: HashSet<&str> = declared_listeners
        .iter()
        .chain(&raw.broken_listeners)
        .map(String::as_str)
        .collect();
    let declared_rate_limits: Vec<String> = raw.rate_limit.iter().map(|(n, _)| n.clone()).collect();
    let redis_declared = raw.redis.is_some();
    let rate_limits: Vec<RateLimit> = raw
        .rate_limit
        .into_iter()
        .filter_map(|(name, r)| rate_limit(&mut e, &name, r, redis_declared))
        .collect();
    let redis = raw.redis.and_then(|r| redis(&mut e, r));
    let access_log = raw.access_log.and_then(|a| access_log(&mut e, a));
    let known_rate_limits: HashSet<&str> = declared_rate_limits
        .iter()
        .chain(&raw.broken_rate_limits)
        .map(String::as_str)
        .collect();
    for (l, names) in listeners.iter_mut().zip(&listener_limits) {
        let path = format!("listener.{}", l.name);
        l.rate_limits = rate_limit_refs(&mut e, &path, names, &known_rate_limits, &rate_limits);
    }
    let upstream_refs: HashMap<&str, UpstreamRef> = (upstreams.iter().enumerate())
        .map(|(i, u)| (u.name.as_str(), UpstreamRef(i)))
        .collect();
    let mut route_names = HashSet::new();
    let routes: Vec<Route> = raw
        .route
        .into_iter()
        .enumerate()
        .filter_map(|(i, mut r)| {
            let path = format!("route[{i}]");
            let limits = r.rate_limits.take().unwrap_or_default();
            if !route_names.insert(r.name.clone()) {
                e.push(
                    format!("{path}.name"),
                    format!("duplicate route name {:?}", r.name),
                );
            }
            let fault = r.fault.take();
            let mut route = route(
                &mut e,
                &path,
                r,
                &known_upstreams,
                &upstream_refs,
                &known_listeners,
            );
            let fault =
                fault.map(|f| fault::fault(&mut e, &format!("{path}.fault"), f, &server.trusted_proxies));
            let limits = rate_limit_refs(&mut e, &path, &limits, &known_rate_limits, &rate_limits);
            if let Some(route) = &mut route {
                route.rate_limits = limits;
                route.fault = fault;
            }
            route
        })
        .collect();
    let alerting = alerting::alerting(
        &mut e,
        raw.alerting,
        raw.notifier,
        &raw.broken_notifiers,
        raw.alert,
        admin.as_ref().map(|a| a.listen),
        &alerting::Known {
            upstreams: &known_upstreams,
            rate_limits: &known_rate_limits,
            redis: redis_declared,
        },
    );
    // A missing section value always comes with an error already recorded.
    let (Some(admin), Some(runtime)) = (admin, runtime) else {
        return Err(e.into_errors());
    };
    e.into_result(Config {
        runtime,
        admin,
        server,
        listeners,
        routes,
        upstreams,
        rate_limits,
        redis,
        alerting,
        access_log,
        document: Default::default(),
    })
}

/// The rules `names` refer to. A name that is declared but invalid has
/// its own error already, and no reference.
fn rate_limit_refs(
    e: &mut Errors,
    path: &str,
    names: &[String],
    known: &HashSet<&str>,
    valid: &[RateLimit],
) -> Vec<RateLimitRef> {
    let mut seen = HashSet::new();
    let mut refs = Vec::with_capacity(names.len());
    for (i, n) in names.iter().enumerate() {
        if !known.contains(n.as_str()) {
            e.push(
                format!("{path}.rate_limits[{i}]"),
                format!("no rate limit named {n:?} (declare it as [rate_limit.{n}])"),
            );
        } else if !seen.insert(n) {
            e.push(
                format!("{path}.rate_limits[{i}]"),
                format!("{n:?} is listed twice"),
            );
        } else if let Some(index) = valid.iter().position(|r| r.name == *n) {
            refs.push(RateLimitRef(index));
        }
    }
    refs
}

fn rate_limit(e: &mut Errors, name: &str, raw: RawRateLimit, redis_declared: bool) -> Option<RateLimit> {
    let path = format!("rate_limit.{}", key(name));
    let name = name_of(e, &path, name);
    let rate = match raw.rate {
        None => {
            e.push(format!("{path}.rate"), "is required: requests allowed per `per`");
            None
        }
        Some(r) => count(e, &format!("{path}.rate"), Some(r), 1, 1, u32::MAX as usize),
    };
    let per = timeout(e, &format!("{path}.per"), raw.per, Duration::from_secs(1));
    let burst = count(
        e,
        &format!("{path}.burst"),
        raw.burst,
        rate.unwrap_or(1),
        1,
        u32::MAX as usize,
    );
    // Every other key is still checked when the quota is wrong.
    let quota = rate
        .zip(burst)
        .and_then(|(rate, burst)| match Quota::new(rate as u32, per, burst as u32) {
            Ok(q) => Some(q),
            Err(why) => {
                e.push(format!("{path}.rate"), why.to_string());
                None
            }
        });
    let key = match raw.key {
        None => vec![KeyPart::ClientIp],
        Some(parts) => {
            if parts.is_empty() {
                e.push(format!("{path}.key"), "must name at least one part");
            }
            let mut out = Vec::new();
            for (i, p) in parts.iter().enumerate() {
                let part = match p.as_str() {
                    "client_ip" => Some(KeyPart::ClientIp),
                    "route" => Some(KeyPart::Route),
                    other => match other.strip_prefix("header:") {
                        Some(h) => match HeaderName::from_bytes(h.as_bytes()) {
                            Ok(h) => Some(KeyPart::Header(h)),
                            Err(_) => {
                                e.push(format!("{path}.key[{i}]"), format!("{h:?} is not a header name"));
                                None
                            }
                        },
                        None => {
                            e.push(
                                format!("{path}.key[{i}]"),
                                format!(
                                    "must be \"client_ip\", \"route\" or \"header:<name>\", got {other:?}"
                                ),
                            );
                            None
                        }
                    },
                };
                if let Some(part) = part {
                    if out.contains(&part) {
                        e.push(format!("{path}.key[{i}]"), format!("{p:?} is listed twice"));
                    } else {
                        out.push(part);
                    }
                }
            }
            out
        }
    };
    let backend = match raw.backend.as_deref() {
        None | Some("local") => RateLimitBackend::Local,
        Some("redis") => {
            if !redis_declared {
                e.push(
                    format!("{path}.backend"),
                    "\"redis\" needs a [redis] section saying where Redis is",
                );
            }
            RateLimitBackend::Redis
        }
        Some(other) => {
            e.push(
                format!("{path}.backend"),
                format!("must be \"local\" or \"redis\", got {other:?}"),
            );
            RateLimitBackend::Local
        }
    };
    let max_keys = count(
        e,
        &format!("{path}.max_keys"),
        raw.max_keys,
        100_000,
        1,
        100_000_000,
    );
    let instances = count(e, &format!("{path}.instances"), raw.instances, 1, 1, 10_000);
    if backend == RateLimitBackend::Local && raw.instances.is_some() {
        e.push(
            format!("{path}.instances"),
            "applies to backend = \"redis\" only: a local limit is per instance already",
        );
    }
    Some(RateLimit {
        name: name?,
        quota: quota?,
        key,
        backend,
        max_keys: max_keys?,
        instances: instances? as u32,
    })
}

fn redis(e: &mut Errors, raw: RawRedis) -> Option<Redis> {
    let text = raw.address.as_deref().unwrap_or("127.0.0.1:6379");
    let address = socket_addr(e, "redis.address", text);
    let wait = timeout(e, "redis.timeout", raw.timeout, Duration::from_millis(5));
    let connect = timeout(
        e,
        "redis.connect_timeout",
        raw.connect_timeout,
        Duration::from_secs(1),
    );
    Some(Redis {
        address: address?,
        password: raw.password,
        timeout: wait,
        connect_timeout: connect,
        key_prefix: raw.key_prefix.unwrap_or_else(|| "levee:rl:".to_string()),
    })
}

/// `None` when the log is off; its other keys are checked all the same, so
/// that turning it on later does not reveal old mistakes.
fn access_log(e: &mut Errors, raw: RawAccessLog) -> Option<AccessLog> {
    let output = match raw.path.as_deref() {
        None | Some("-") => Some(LogOutput::Stdout),
        Some("") => {
            e.push(
                "access_log.path",
                "must be a file path, or \"-\" for standard output",
            );
            None
        }
        Some(path) => Some(LogOutput::File(path.into())),
    };
    let format = match raw.format.as_deref() {
        None | Some("json") => Some(LogFormat::Json),
        Some("common") => Some(LogFormat::Common),
        Some("combined") => Some(LogFormat::Combined),
        Some(other) => {
            e.push(
                "access_log.format",
                format!("must be \"json\", \"common\" or \"combined\", got {other:?}"),
            );
            None
        }
    };
    let fields = match raw.fields {
        None => Some(LogField::DEFAULT.to_vec()),
        Some(_) if format.is_some_and(|f| f != LogFormat::Json) => {
            e.push(
                "access_log.fields",
                "applies to format = \"json\" only: the common and combined formats have fixed fields",
            );
            None
        }
        Some(names) if names.is_empty() => {
            e.push("access_log.fields", "must name at least one field");
            None
        }
        Some(names) => {
            let mut fields = Vec::with_capacity(names.len());
            let mut ok = true;
            for (i, name) in names.iter().enumerate() {
                match LogField::ALL.iter().find(|f| f.as_str() == name) {
                    Some(f) if fields.contains(f) => {
                        e.push(
                            format!("access_log.fields[{i}]"),
                            format!("{name:?} is listed twice"),
                        );
                        ok = false;
                    }
                    Some(f) => fields.push(*f),
                    None => {
                        let known: Vec<&str> = LogField::ALL.iter().map(|f| f.as_str()).collect();
                        e.push(
                            format!("access_log.fields[{i}]"),
                            format!("{name:?} is not a field; expected one of {}", known.join(", ")),
                        );
                        ok = false;
                    }
                }
            }
            ok.then_some(fields)
        }
    };
    let buffer = count(e, "access_log.buffer", raw.buffer, 8192, 1, 1 << 20);
    let log = AccessLog {
        output: output?,
        format: format?,
        fields: fields?,
        buffer: buffer?,
    };
    raw.enabled.unwrap_or(false).then_some(log)
}

fn runtime(e: &mut Errors, raw: RawRuntime) -> Option<Runtime> {
    let workers = count(e, "runtime.workers", raw.workers, 0, 0, 1024)?;
    Some(Runtime { workers })
}

fn admin(e: &mut Errors, raw: RawAdmin) -> Option<Admin> {
    let text = raw.listen.as_deref().unwrap_or(DEFAULT_ADMIN);
    let listen = socket_addr(e, "admin.listen", text)?;
    let token = match raw.token {
        Some(t) if t.len() < 16 || t.chars().any(|c| !c.is_ascii_graphic()) => {
            e.push(
                "admin.token",
                "must be at least 16 printable characters without spaces",
            );
            None
        }
        Some(t) => Some(Secret(t)),
        None => {
            if !listen.ip().is_loopback() {
                e.push(
                    "admin.token",
                    format!(
                        "required when admin.listen ({listen}) is not a loopback address: \
                         the admin API can drain endpoints and reload the config"
                    ),
                );
            }
            None
        }
    };
    Some(Admin { listen, token })
}

fn server(e: &mut Errors, raw: RawServer) -> Server {
    let d = Server::default();
    let s = Server {
        header_timeout: timeout(e, "server.header_timeout", raw.header_timeout, d.header_timeout),
        keepalive_timeout: timeout(
            e,
            "server.keepalive_timeout",
            raw.keepalive_timeout,
            d.keepalive_timeout,
        ),
        body_timeout: timeout(e, "server.body_timeout", raw.body_timeout, d.body_timeout),
        tunnel_idle_timeout: timeout(
            e,
            "server.tunnel_idle_timeout",
            raw.tunnel_idle_timeout,
            d.tunnel_idle_timeout,
        ),
        drain_timeout: timeout(e, "server.drain_timeout", raw.drain_timeout, d.drain_timeout),
        max_uri_bytes: count(
            e,
            "server.max_uri_bytes",
            raw.max_uri_bytes,
            d.max_uri_bytes,
            64,
            1 << 20,
        )
        .unwrap_or(d.max_uri_bytes),
        max_header_bytes: count(
            e,
            "server.max_header_bytes",
            raw.max_header_bytes,
            d.max_header_bytes,
            1024,
            1 << 24,
        )
        .unwrap_or(d.max_header_bytes),
        max_header_count: count(
            e,
            "server.max_header_count",
            raw.max_header_count,
            d.max_header_count,
            1,
            10_000,
        )
        .unwrap_or(d.max_header_count),
        max_body_bytes: match raw.max_body_bytes {
            None => None,
            Some(n) if n >= 1 => Some(n as u64),
            Some(_) => {
                e.push(
                    "server.max_body_bytes",
                    "must be at least 1 (leave it out for no limit)",
                );
                None
            }
        },
        max_connections: count(
            e,
            "server.max_connections",
            raw.max_connections,
            d.max_connections,
            1,
            10_000_000,
        )
        .unwrap_or(d.max_connections),
        max_connections_per_ip: count(
            e,
            "server.max_connections_per_ip",
            raw.max_connections_per_ip,
            d.max_connections_per_ip,
            1,
            10_000_000,
        )
        .unwrap_or(d.max_connections_per_ip),
        max_requests_per_connection: count(
            e,
            "server.max_requests_per_connection",
            raw.max_requests_per_connection,
            d.max_requests_per_connection as usize,
            0,
            u32::MAX as usize,
        )
        .unwrap_or(d.max_requests_per_connection as usize) as u64,
        body_min_rate: count(
            e,
            "server.body_min_rate",
            raw.body_min_rate,
            d.body_min_rate as usize,
            0,
            1 << 30,
        )
        .unwrap_or(d.body_min_rate as usize) as u64,
        h2_max_concurrent_streams: h2_count(
            e,
            "h2_max_concurrent_streams",
            raw.h2_max_concurrent_streams,
            d.h2_max_concurrent_streams,
            10_000,
        ),
        h2_max_reset_streams: h2_count(
            e,
            "h2_max_reset_streams",
            raw.h2_max_reset_streams,
            d.h2_max_reset_streams,
            1_000_000,
        ),
        h2_max_control_frames: h2_count(
            e,
            "h2_max_control_frames",
            raw.h2_max_control_frames,
            d.h2_max_control_frames,
            1_000_000,
        ),
        h2_max_empty_frames: h2_count(
            e,
            "h2_max_empty_frames",
            raw.h2_max_empty_frames,
            d.h2_max_empty_frames,
            1_000_000,
        ),
        trusted_proxies: cidr_set(e, "server.trusted_proxies", raw.trusted_proxies),
        client_ip_header: match raw.client_ip_header.as_deref() {
            None | Some("x-forwarded-for") => ClientIpHeader::XForwardedFor,
            Some("forwarded") => ClientIpHeader::Forwarded,
            Some(other) => {
                e.push(
                    "server.client_ip_header",
                    format!("must be \"x-forwarded-for\" or \"forwarded\", got {other:?}"),
                );
                d.client_ip_header
            }
        },
    };
    if s.max_connections_per_ip > s.max_connections {
        e.push(
            "server.max_connections_per_ip",
            format!("must not exceed server.max_connections ({})", s.max_connections),
        );
    }
    if s.max_uri_bytes > s.max_header_bytes {
        e.push(
            "server.max_uri_bytes",
            format!(
                "must not exceed server.max_header_bytes ({}): the request line is part of the header section",
                s.max_header_bytes
            ),
        );
    }
    s
}

/// One of the `server.h2_*` caps: at least 1, as turning a guard off is
/// never safe at the edge (a large value is the way to loosen one).
fn h2_count(e: &mut Errors, key: &str, raw: Option<i64>, default: u32, max: u32) -> u32 {
    count(
        e,
        &format!("server.{key}"),
        raw,
        default as usize,
        1,
        max as usize,
    )
    .and_then(|n| u32::try_from(n).ok())
    .unwrap_or(default)
}

/// The listeners, each with the names of its rate limits (resolved once the
/// rate limits are known).
fn listeners(
    e: &mut Errors,
    raw: Vec<(String, RawListener)>,
    admin: Option<SocketAddr>,
) -> (Vec<Listener>, Vec<Vec<String>>) {
    let mut seen: BTreeMap<SocketAddr, String> = BTreeMap::new();
    raw.into_iter()
        .filter_map(|(name, l)| {
            let path = format!("listener.{}", key(&name));
            let name = name_of(e, &path, &name).map(|n| ListenerName::new(&n));
            let address = socket_addr(e, &format!("{path}.address"), &l.address)?;
            // Port 0 asks the OS for a free port: never a clash.
            let fixed = address.port() != 0;
            if let Some(other) = seen.insert(address, path.clone()).filter(|_| fixed) {
                e.push(
                    format!("{path}.address"),
                    format!("{address} is already used by {other}"),
                );
            }
            if fixed && admin == Some(address) {
                e.push(
                    format!("{path}.address"),
                    format!("{address} is already used by admin.listen"),
                );
            }
            let access = access(e, &path, l.allow, l.deny);
            let tls = l.tls.and_then(|t| tls(e, &format!("{path}.tls"), t));
            let listener = Listener {
                name: name?,
                address,
                access,
                proxy_protocol: l.proxy_protocol.unwrap_or(false),
                rate_limits: Vec::new(),
                tls,
            };
            Some((listener, l.rate_limits.unwrap_or_default()))
        })
        .unzip()
}

fn access(e: &mut Errors, path: &str, allow: Option<Vec<String>>, deny: Option<Vec<String>>) -> Access {
    Access {
        allow: cidr_set(e, &format!("{path}.allow"), allow),
        deny: cidr_set(e, &format!("{path}.deny"), deny),
    }
}

/// Certificate files are not read here (validation does no I/O): they are
/// loaded, and their errors reported with these paths, when the listeners
/// are built, by `levee check` as by `levee run` and every reload.
fn tls(e: &mut Errors, path: &str, raw: RawTls) -> Option<Tls> {
    if raw.certificates.is_empty() {
        e.push(
            format!("{path}.certificates"),
            "at least one certificate is required, like certificates = [{ cert = \"cert.pem\", key = \"key.pem\" }]",
        );
    }
    let mut certificates = Vec::new();
    for c in raw.certificates {
        certificates.push(Certificate {
            cert: c.cert.into(),
            key: c.key.into(),
        });
    }
    let alpn = match raw.alpn {
        None => vec![Alpn::H2, Alpn::Http11],
        Some(list) => {
            let mut out = Vec::new();
            for (i, a) in list.iter().enumerate() {
                let p = match a.as_str() {
                    "h2" => Alpn::H2,
                    "http/1.1" => Alpn::Http11,
                    other => {
                        e.push(
                            format!("{path}.alpn[{i}]"),
                            format!("must be \"h2\" or \"http/1.1\", got {other:?}"),
                        );
                        continue;
                    }
                };
                if out.contains(&p) {
                    e.push(format!("{path}.alpn[{i}]"), format!("{a:?} is listed twice"));
                } else {
                    out.push(p);
                }
            }
            if list.is_empty() {
                e.push(format!("{path}.alpn"), "must offer at least one protocol");
            }
            out
        }
    };
    let min_version = match raw.min_version.as_deref() {
        None | Some("1.2") => TlsVersion::V1_2,
        Some("1.3") => TlsVersion::V1_3,
        Some(other) => {
            e.push(
                format!("{path}.min_version"),
                format!("must be \"1.2\" or \"1.3\" (older versions are not offered), got {other:?}"),
            );
            TlsVersion::V1_2
        }
    };
    Some(Tls {
        certificates,
        alpn,
        min_version,
    })
}

fn route(
    e: &mut Errors,
    path: &str,
    raw: RawRoute,
    upstreams: &HashSet<&str>,
    upstream_refs: &HashMap<&str, UpstreamRef>,
    listeners: &HashSet<&str>,
) -> Option<Route> {
    let name = name_of(e, &format!("{path}.name"), &raw.name);
    if !upstreams.contains(raw.upstream.as_str()) {
        e.push(
            format!("{path}.upstream"),
            format!(
                "no upstream named {:?} (declare it as [upstream.{}])",
                raw.upstream, raw.upstream
            ),
        );
    }
    for (i, l) in raw.listeners.iter().enumerate() {
        if !listeners.contains(l.as_str()) {
            e.push(
                format!("{path}.listeners[{i}]"),
                format!("no listener named {l:?}"),
            );
        }
    }
    let request_timeout = timeout(
        e,
        &format!("{path}.request_timeout"),
        raw.request_timeout,
        Duration::from_secs(300),
    );
    let matcher = route_match(e, &format!("{path}.match"), raw.matcher);
    let retry = match raw.retry {
        Some(r) => retry(e, &format!("{path}.retry"), r),
        None => Retry::default(),
    };
    let access = access(e, path, raw.allow, raw.deny);
    let priority = match raw.priority.as_deref() {
        None => Priority::Default,
        Some(p) => Priority::parse(p).unwrap_or_else(|| {
            e.push(
                format!("{path}.priority"),
                format!("must be \"critical\", \"default\" or \"bulk\", got {p:?}"),
            );
            Priority::Default
        }),
    };
    Some(Route {
        name: RouteName::new(&name?),
        listeners: raw.listeners.iter().map(|l| ListenerName::new(l)).collect(),
        matcher,
        upstream: UpstreamName::new(&raw.upstream),
        // None for an upstream that is declared but invalid: its own
        // error is recorded, and the config is refused.
        upstream_ref: *upstream_refs.get(raw.upstream.as_str())?,
        request_timeout,
        retry,
        access,
        rate_limits: Vec::new(),
        priority,
        fault: None,
    })
}

fn retry(e: &mut Errors, path: &str, raw: RawRetry) -> Retry {
    let d = Retry::default();
    let attempts = count(
        e,
        &format!("{path}.attempts"),
        raw.attempts,
        d.attempts as usize,
        1,
        MAX_ATTEMPTS,
    )
    .unwrap_or(d.attempts as usize) as u32;
    let retry_on = match raw.retry_on {
        None => d.retry_on,
        Some(list) => {
            let mut on = RetryOn {
                connect_failure: false,
                reset: false,
                timeout: false,
                statuses: Vec::new(),
            };
            for (i, item) in list.iter().enumerate() {
                match item.as_str() {
                    "connect-failure" => on.connect_failure = true,
                    "reset" => on.reset = true,
                    "timeout" => on.timeout = true,
                    "gateway-error" => on.statuses.extend([502, 503, 504]),
                    status => match status.parse::<u16>() {
                        Ok(code) if code == 429 || (500..=599).contains(&code) => on.statuses.push(code),
                        _ => e.push(
                            format!("{path}.retry_on[{i}]"),
                            format!(
                                "{item:?} is not one of connect-failure, reset, timeout, gateway-error, \
                                 429 or a 5xx status like \"503\""
                            ),
                        ),
                    },
                }
            }
            on.statuses.sort_unstable();
            on.statuses.dedup();
            on
        }
    };
    let per_try_timeout = raw.per_try_timeout.map(|t| {
        timeout(
            e,
            &format!("{path}.per_try_timeout"),
            Some(t),
            Duration::from_secs(1),
        )
    });
    let base = timeout(
        e,
        &format!("{path}.backoff_base"),
        raw.backoff_base,
        d.backoff.base,
    );
    let cap = timeout(e, &format!("{path}.backoff_max"), raw.backoff_max, d.backoff.cap);
    if base > cap {
        e.push(
            format!("{path}.backoff_max"),
            "must not be shorter than backoff_base",
        );
    }
    let retry_after_max = duration_or_zero(
        e,
        &format!("{path}.retry_after_max"),
        raw.retry_after_max,
        d.retry_after_max,
    );
    let max_body_bytes = count(
        e,
        &format!("{path}.max_body_bytes"),
        raw.max_body_bytes,
        d.max_body_bytes as usize,
        0,
        64 << 20,
    )
    .unwrap_or(d.max_body_bytes as usize) as u64;
    let hedge_after = raw
        .hedge_after
        .map(|t| timeout(e, &format!("{path}.hedge_after"), Some(t), Duration::from_secs(1)));
    if hedge_after.is_some() && attempts < 2 {
        e.push(
            format!("{path}.hedge_after"),
            "needs attempts of at least 2: a hedge is a second try",
        );
    }
    let leave_region = match raw.leave_region.as_deref() {
        None => d.leave_region,
        Some("when_failing") => LeaveRegion::WhenFailing,
        Some("always") => LeaveRegion::Always,
        Some("never") => LeaveRegion::Never,
        Some(other) => {
            e.push(
                format!("{path}.leave_region"),
                format!("{other:?} is not one of when_failing, always or never"),
            );
            d.leave_region
        }
    };
    Retry {
        attempts,
        retry_on,
        per_try_timeout,
        backoff: Backoff { base, cap },
        retry_after_max,
        max_body_bytes,
        idempotent: raw.idempotent.unwrap_or(false),
        hedge_after,
        leave_region,
    }
}

fn route_match(e: &mut Errors, path: &str, raw: RawMatch) -> RouteMatch {
    let hosts = raw
        .hosts
        .iter()
        .enumerate()
        .filter_map(|(i, h)| host_match(e, &format!("{path}.hosts[{i}]"), h))
        .collect();
    let path_prefix = raw.path_prefix.filter(|p| {
        let ok = p.starts_with('/') && p.bytes().all(|b| b.is_ascii_graphic());
        if !ok {
            e.push(
                format!("{path}.path_prefix"),
                "must start with '/' and contain no spaces or control characters",
            );
        }
        ok
    });
    let methods = raw
        .methods
        .iter()
        .enumerate()
        .filter_map(|(i, m)| {
            let p = format!("{path}.methods[{i}]");
            if m.is_empty() || !m.bytes().all(|b| b.is_ascii_uppercase() || b == b'-') {
                let hint = if m.bytes().any(|b| b.is_ascii_lowercase()) {
                    format!(
                        " (methods are case-sensitive: did you mean {:?}?)",
                        m.to_ascii_uppercase()
                    )
                } else {
                    String::new()
                };
                e.push(p, format!("{m:?} is not a method{hint}"));
                return None;
            }
            Method::from_bytes(m.as_bytes()).ok()
        })
        .collect();
    let headers = raw
        .headers
        .iter()
        .filter_map(|(name, value)| {
            let p = format!("{path}.headers.{name}");
            let Ok(n) = HeaderName::from_bytes(name.as_bytes()) else {
                e.push(p, "is not a valid header name");
                return None;
            };
            let Ok(v) = HeaderValue::from_str(value) else {
                e.push(p, "is not a valid header value");
                return None;
            };
            Some((n, v))
        })
        .collect();
    RouteMatch {
        hosts,
        path_prefix,
        methods,
        headers,
    }
}

fn host_match(e: &mut Errors, path: &str, text: &str) -> Option<HostMatch> {
    let lower = text.to_ascii_lowercase();
    let (pattern, name) = match lower.strip_prefix("*.") {
        Some(rest) => (HostMatch::Suffix(format!(".{rest}")), rest),
        None => (HostMatch::Exact(lower.clone()), lower.as_str()),
    };
    if !is_dns_name(name) {
        e.push(
            path,
            format!("{text:?} is not a host name or a wildcard like \"*.example.com\" (no port, no scheme)"),
        );
        return None;
    }
    Some(pattern)
}

fn upstream(e: &mut Errors, name: &str, raw: RawUpstream) -> Option<Upstream> {
    let path = format!("upstream.{}", key(name));
    let checked_name = name_of(e, &path, name);
    let balance = match raw.balance.as_deref() {
        None => Some(Policy::RoundRobin),
        Some(b) => Policy::parse(b).or_else(|| {
            let all: Vec<&str> = Policy::ALL.iter().map(|p| p.as_str()).collect();
            e.push(
                format!("{path}.balance"),
                format!("{b:?} is not one of {}", all.join(", ")),
            );
            None
        }),
    };
    let hash_on = raw
        .hash_on
        .as_deref()
        .and_then(|h| hash_on(e, &format!("{path}.hash_on"), h));
    match (balance, &raw.hash_on) {
        (Some(p), None) if p.is_hashing() => e.push(
            format!("{path}.hash_on"),
            format!(
                "is required with balance = \"{}\": \"header:<name>\", \"cookie:<name>\" or \"client_ip\"",
                p.as_str()
            ),
        ),
        (Some(p), Some(_)) if !p.is_hashing() => e.push(
            format!("{path}.hash_on"),
            format!(
                "has no effect with balance = \"{}\"; use ring_hash or maglev",
                p.as_str()
            ),
        ),
        _ => {}
    }
    let protocol = match raw.protocol.as_deref() {
        None | Some("http1") => Some(Protocol::Http1),
        Some("http2") => Some(Protocol::Http2),
        Some(other) => {
            e.push(
                format!("{path}.protocol"),
                format!("{other:?} is not one of http1, http2"),
            );
            None
        }
    };
    let connect_timeout = timeout(
        e,
        &format!("{path}.connect_timeout"),
        raw.connect_timeout,
        Duration::from_secs(2),
    );
    let response_header_timeout = timeout(
        e,
        &format!("{path}.response_header_timeout"),
        raw.response_header_timeout,
        Duration::from_secs(30),
    );
    let idle_timeout = timeout(
        e,
        &format!("{path}.idle_timeout"),
        raw.idle_timeout,
        Duration::from_secs(90),
    );
    let max_idle_per_endpoint = count(
        e,
        &format!("{path}.max_idle_per_endpoint"),
        raw.max_idle_per_endpoint,
        64,
        0,
        100_000,
    );
    let health = raw.health.and_then(|h| health(e, &format!("{path}.health"), h));
    let failover = match raw.failover {
        Some(f) => failover(e, &format!("{path}.failover"), f),
        None => FailoverParams::DEFAULT,
    };
    let outlier = raw.outlier.map(|o| outlier(e, &format!("{path}.outlier"), o));
    let limits = match raw.limits {
        Some(l) => limits(e, &format!("{path}.limits"), l),
        None => Limits::default(),
    };
    let retry_budget = match raw.retry_budget {
        Some(b) => retry_budget(e, &format!("{path}.retry_budget"), b),
        None => RetryBudget::default(),
    };
    let adaptive_concurrency = raw
        .adaptive_concurrency
        .map(|a| adaptive(e, &format!("{path}.adaptive_concurrency"), a));
    let tls = raw.tls.map(|t| upstream_tls(e, &format!("{path}.tls"), t));
    if raw.region.is_empty() {
        e.push(
            format!("{path}.region"),
            format!("an upstream needs at least one region, like [{path}.region.main] with endpoints"),
        );
    }
    let mut seen = HashSet::new();
    let regions: Vec<Region> = raw
        .region
        .into_iter()
        .filter_map(|(rname, r)| region(e, &format!("{path}.region.{}", key(&rname)), &rname, r, &mut seen))
        .collect();
    Some(Upstream {
        name: UpstreamName::new(&checked_name?),
        balance: balance?,
        hash_on,
        protocol: protocol?,
        connect_timeout,
        response_header_timeout,
        idle_timeout,
        max_idle_per_endpoint: max_idle_per_endpoint?,
        health,
        failover,
        outlier,
        limits,
        retry_budget,
        adaptive_concurrency,
        tls,
        regions,
    })
}

fn upstream_tls(e: &mut Errors, path: &str, raw: RawUpstreamTls) -> UpstreamTls {
    if let Some(sni) = &raw.sni
        && !is_dns_name(sni)
        && sni.parse::<std::net::IpAddr>().is_err()
    {
        e.push(
            format!("{path}.sni"),
            format!("{sni:?} is not a host name or an IP address"),
        );
    }
    let client_certificate = match (raw.cert, raw.key) {
        (Some(cert), Some(key)) => Some(Certificate {
            cert: cert.into(),
            key: key.into(),
        }),
        (None, None) => None,
        (Some(_), None) => {
            e.push(format!("{path}.key"), "a client certificate needs its key");
            None
        }
        (None, Some(_)) => {
            e.push(format!("{path}.cert"), "a client key needs its certificate");
            None
        }
    };
    UpstreamTls {
        sni: raw.sni,
        ca: raw.ca.map(Into::into),
        client_certificate,
    }
}

fn adaptive(e: &mut Errors, path: &str, raw: RawAdaptive) -> AdaptiveParams {
    let d = AdaptiveParams::DEFAULT;
    let limit = |e: &mut Errors, key: &str, v: Option<i64>, default: u32| {
        count(e, &format!("{path}.{key}"), v, default as usize, 1, 1_000_000).map_or(default, |n| n as u32)
    };
    let params = AdaptiveParams {
        initial_limit: limit(e, "initial_limit", raw.initial_limit, d.initial_limit),
        min_limit: limit(e, "min_limit", raw.min_limit, d.min_limit),
        max_limit: limit(e, "max_limit", raw.max_limit, d.max_limit),
        tolerance: raw.tolerance.unwrap_or(d.tolerance),
        smoothing: raw.smoothing.unwrap_or(d.smoothing),
        window: timeout(e, &format!("{path}.window"), raw.window, d.window),
        min_samples: limit(e, "min_samples", raw.min_samples, d.min_samples),
        rebase_after: timeout(
            e,
            &format!("{path}.rebase_after"),
            raw.rebase_after,
            d.rebase_after,
        ),
    };
    // The policy states its own bounds; each error names the key it is about.
    for why in params.errors() {
        e.push(format!("{path}.{}", why.field()), why.to_string());
    }
    params
}

fn failover(e: &mut Errors, path: &str, raw: RawFailover) -> FailoverParams {
    let d = FailoverParams::DEFAULT;
    let mode = match raw.mode.as_deref() {
        None => d.mode,
        Some(m) => FailoverMode::parse(m).unwrap_or_else(|| {
            e.push(
                format!("{path}.mode"),
                format!("{m:?} is not one of proportional, strict"),
            );
            d.mode
        }),
    };
    let overprovisioning_percent = match raw.overprovisioning {
        None => d.overprovisioning_percent,
        Some(f) if (1.0..=10.0).contains(&f) => (f * 100.0).round() as u32,
        Some(f) => {
            e.push(
                format!("{path}.overprovisioning"),
                format!("must be between 1.0 and 10.0, got {f}"),
            );
            d.overprovisioning_percent
        }
    };
    if raw.overprovisioning.is_some() && mode == FailoverMode::Strict {
        e.push(
            format!("{path}.overprovisioning"),
            "has no effect with mode = \"strict\"",
        );
    }
    let panic_threshold_percent = count(
        e,
        &format!("{path}.panic_threshold_percent"),
        raw.panic_threshold_percent,
        d.panic_threshold_percent as usize,
        0,
        100,
    )
    .unwrap_or(d.panic_threshold_percent as usize) as u32;
    FailoverParams {
        mode,
        overprovisioning_percent,
        panic_threshold_percent,
        failback_after: duration_or_zero(
            e,
            &format!("{path}.failback_after"),
            raw.failback_after,
            d.failback_after,
        ),
        ramp: duration_or_zero(e, &format!("{path}.ramp"), raw.ramp, d.ramp),
    }
}

fn outlier(e: &mut Errors, path: &str, raw: RawOutlier) -> Outlier {
    let d = OutlierParams::DEFAULT;
    let sr = SuccessRate::DEFAULT;
    let n = |e: &mut Errors, key: &str, raw: Option<i64>, default: usize, min: usize, max: usize| {
        count(e, &format!("{path}.{key}"), raw, default, min, max).unwrap_or(default)
    };
    let consecutive_5xx = n(e, "consecutive_5xx", raw.consecutive_5xx, 5, 0, 1000) as u32;
    let consecutive_gateway_failure = n(
        e,
        "consecutive_gateway_failure",
        raw.consecutive_gateway_failure,
        5,
        0,
        1000,
    ) as u32;
    let base_ejection_time = timeout(
        e,
        &format!("{path}.base_ejection_time"),
        raw.base_ejection_time,
        d.base_ejection_time,
    );
    let max_ejection_time = timeout(
        e,
        &format!("{path}.max_ejection_time"),
        raw.max_ejection_time,
        d.max_ejection_time.max(base_ejection_time),
    );
    if max_ejection_time < base_ejection_time {
        e.push(
            format!("{path}.max_ejection_time"),
            "must not be shorter than base_ejection_time",
        );
    }
    let jitter = duration_or_zero(
        e,
        &format!("{path}.ejection_jitter"),
        raw.ejection_jitter,
        d.jitter,
    );
    let max_ejection_percent = n(e, "max_ejection_percent", raw.max_ejection_percent, 10, 0, 100) as u32;
    let min_available_per_region = n(
        e,
        "min_available_per_region",
        raw.min_available_per_region,
        1,
        0,
        1000,
    ) as u32;
    let min_hosts = n(
        e,
        "success_rate_min_hosts",
        raw.success_rate_min_hosts,
        5,
        0,
        10_000,
    ) as u32;
    let request_volume = n(
        e,
        "success_rate_request_volume",
        raw.success_rate_request_volume,
        100,
        1,
        1_000_000,
    ) as u64;
    let stdev_factor = match raw.success_rate_stdev_factor {
        None => sr.stdev_factor,
        Some(f) if f > 0.0 && f <= 10.0 => f,
        Some(f) => {
            e.push(
                format!("{path}.success_rate_stdev_factor"),
                format!("must be above 0 and at most 10, got {f}"),
            );
            sr.stdev_factor
        }
    };
    let interval = timeout(
        e,
        &format!("{path}.success_rate_interval"),
        raw.success_rate_interval,
        sr.interval,
    );
    Outlier {
        params: OutlierParams {
            consecutive_5xx,
            consecutive_gateway_failure,
            base_ejection_time,
            max_ejection_time,
            jitter,
            max_ejection_percent,
            min_available_per_region,
            // Statistics over fewer than two endpoints say nothing.
            success_rate: (min_hosts >= 2).then_some(SuccessRate {
                minimum_hosts: min_hosts,
                request_volume,
                stdev_factor,
                interval,
            }),
        },
        uneject_on_check_success: raw.uneject_on_check_success.unwrap_or(true),
    }
}

fn limits(e: &mut Errors, path: &str, raw: RawLimits) -> Limits {
    let d = Limits::default();
    let mut n = |key: &str, raw: Option<i64>, default: u64, min: usize| {
        count(e, &format!("{path}.{key}"), raw, default as usize, min, 1_000_000).unwrap_or(default as usize)
            as u64
    };
    Limits {
        max_connections: n("max_connections", raw.max_connections, d.max_connections, 1),
        max_pending: n("max_pending", raw.max_pending, d.max_pending, 1),
        max_requests: n("max_requests", raw.max_requests, d.max_requests, 1),
        max_retries: n("max_retries", raw.max_retries, d.max_retries, 0),
    }
}

fn retry_budget(e: &mut Errors, path: &str, raw: RawRetryBudget) -> RetryBudget {
    let d = RetryBudget::default();
    RetryBudget {
        percent: count(e, &format!("{path}.percent"), raw.percent, 20, 0, 100).unwrap_or(20) as u32,
        min_per_second: count(
            e,
            &format!("{path}.min_per_second"),
            raw.min_per_second,
            d.min_per_second as usize,
            0,
            100_000,
        )
        .unwrap_or(d.min_per_second as usize) as u32,
    }
}

fn health(e: &mut Errors, path: &str, raw: RawHealth) -> Option<HealthCheck> {
    let interval = timeout(
        e,
        &format!("{path}.interval"),
        raw.interval,
        Duration::from_secs(2),
    );
    let unhealthy_interval = timeout(
        e,
        &format!("{path}.unhealthy_interval"),
        raw.unhealthy_interval,
        interval,
    );
    let check_timeout = timeout(e, &format!("{path}.timeout"), raw.timeout, Duration::from_secs(1));
    let rise = count(e, &format!("{path}.rise"), raw.rise, 2, 1, 100);
    let fall = count(e, &format!("{path}.fall"), raw.fall, 3, 1, 100);
    let jitter = count(
        e,
        &format!("{path}.jitter_percent"),
        raw.jitter_percent,
        10,
        0,
        50,
    );
    let http_only = |e: &mut Errors, key: &str, given: bool| {
        if given {
            e.push(format!("{path}.{key}"), "applies to type = \"http\" only");
        }
    };
    let kind = match raw.kind.as_deref().unwrap_or("http") {
        "tcp" => {
            http_only(e, "path", raw.path.is_some());
            http_only(e, "host", raw.host.is_some());
            http_only(e, "expect", raw.expect.is_some());
            Some(CheckKind::Tcp)
        }
        "http" => {
            let check_path = raw.path.unwrap_or_else(|| "/".to_string());
            if !check_path.starts_with('/') || http::uri::PathAndQuery::try_from(check_path.as_str()).is_err()
            {
                e.push(
                    format!("{path}.path"),
                    format!("{check_path:?} is not a path like \"/healthz\""),
                );
            }
            if let Some(h) = &raw.host
                && http::uri::Authority::try_from(h.as_str()).is_err()
            {
                e.push(
                    format!("{path}.host"),
                    format!("{h:?} is not a host name (with an optional port)"),
                );
            }
            let expect: Vec<(u16, u16)> = raw
                .expect
                .unwrap_or_else(|| vec!["200-399".to_string()])
                .iter()
                .enumerate()
                .filter_map(|(i, r)| status_range(e, &format!("{path}.expect[{i}]"), r))
                .collect();
            Some(CheckKind::Http {
                path: check_path,
                host: raw.host,
                expect,
            })
        }
        other => {
            e.push(
                format!("{path}.type"),
                format!("{other:?} is not one of http, tcp"),
            );
            None
        }
    };
    Some(HealthCheck {
        kind: kind?,
        interval,
        unhealthy_interval,
        timeout: check_timeout,
        rise: rise? as u32,
        fall: fall? as u32,
        jitter_percent: jitter? as u32,
    })
}

/// `"200"` or `"200-399"`, within 100–599.
fn status_range(e: &mut Errors, path: &str, text: &str) -> Option<(u16, u16)> {
    let (lo, hi) = text.split_once('-').unwrap_or((text, text));
    match (lo.trim().parse::<u16>(), hi.trim().parse::<u16>()) {
        (Ok(lo), Ok(hi)) if (100..=599).contains(&lo) && (lo..=599).contains(&hi) => Some((lo, hi)),
        _ => {
            e.push(
                path,
                format!("{text:?} is not a status or a range like \"200-399\""),
            );
            None
        }
    }
}

fn hash_on(e: &mut Errors, path: &str, text: &str) -> Option<HashOn> {
    if text == "client_ip" {
        return Some(HashOn::ClientIp);
    }
    if let Some(h) = text.strip_prefix("header:") {
        return match HeaderName::from_bytes(h.as_bytes()) {
            Ok(n) => Some(HashOn::Header(n)),
            Err(_) => {
                e.push(path, format!("{h:?} is not a valid header name"));
                None
            }
        };
    }
    if let Some(c) = text.strip_prefix("cookie:") {
        if !c.is_empty() && c.bytes().all(is_token_byte) {
            return Some(HashOn::Cookie(c.to_string()));
        }
        e.push(path, format!("{c:?} is not a valid cookie name"));
        return None;
    }
    e.push(
        path,
        format!("{text:?} is not one of \"header:<name>\", \"cookie:<name>\", \"client_ip\""),
    );
    None
}

fn region(
    e: &mut Errors,
    path: &str,
    name: &str,
    raw: RawRegion,
    seen: &mut HashSet<EndpointAddress>,
) -> Option<Region> {
    let checked_name = name_of(e, path, name);
    let priority = count(e, &format!("{path}.priority"), raw.priority, 0, 0, 1_000);
    if raw.endpoints.is_empty() {
        e.push(
            format!("{path}.endpoints"),
            "a region needs at least one endpoint",
        );
    }
    let endpoints = raw
        .endpoints
        .into_iter()
        .enumerate()
        .filter_map(|(i, v)| {
            let p = format!("{path}.endpoints[{i}]");
            let ep = endpoint(e, &p, v)?;
            if !seen.insert(ep.address.clone()) {
                e.push(
                    p,
                    format!("{} appears more than once in this upstream", ep.address),
                );
                return None;
            }
            Some(ep)
        })
        .collect();
    Some(Region {
        name: RegionName::new(&checked_name?),
        priority: priority? as u32,
        endpoints,
    })
}

fn endpoint(e: &mut Errors, path: &str, value: toml::Value) -> Option<Endpoint> {
    let (address, weight) = match value {
        toml::Value::String(s) => (s, None),
        table @ toml::Value::Table(_) => {
            match serde_path_to_error::deserialize::<_, RawEndpointTable>(table) {
                Ok(t) => (t.address, t.weight),
                Err(err) => {
                    let inner = err.path().to_string();
                    let p = if inner == "." {
                        path.to_string()
                    } else {
                        format!("{path}.{inner}")
                    };
                    e.push(p, crate::raw::serde_message(&err.into_inner()));
                    return None;
                }
            }
        }
        _ => {
            e.push(
                path,
                "must be an address string or a table { address = ..., weight = ... }",
            );
            return None;
        }
    };
    let weight = count(e, &format!("{path}.weight"), weight, 1, 1, 1_000);
    let address = endpoint_address(e, path, &address);
    Some(Endpoint {
        address: address?,
        weight: weight? as u32,
    })
}

fn endpoint_address(e: &mut Errors, path: &str, text: &str) -> Option<EndpointAddress> {
    if let Ok(a) = text.parse::<SocketAddr>() {
        if a.port() == 0 {
            e.push(path, "port must not be 0");
            return None;
        }
        return Some(EndpointAddress::Ip(a));
    }
    let hint =
        format!("{text:?} is not an address like \"10.0.0.1:8080\", \"[::1]:8080\" or \"app.internal:8080\"");
    let Some((host, port)) = text.rsplit_once(':') else {
        e.push(path, hint);
        return None;
    };
    match port.parse::<u16>() {
        Ok(port) if port != 0 && is_dns_name(host) => Some(EndpointAddress::Dns {
            host: host.to_ascii_lowercase(),
            port,
        }),
        _ => {
            e.push(path, hint);
            None
        }
    }
}

fn socket_addr(e: &mut Errors, path: &str, text: &str) -> Option<SocketAddr> {
    match text.parse::<SocketAddr>() {
        Ok(a) => Some(a),
        Err(_) => {
            e.push(
                path,
                format!("{text:?} is not an IP address and port, like \"127.0.0.1:8080\""),
            );
            None
        }
    }
}

fn is_dns_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}
