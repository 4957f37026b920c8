use std::time::Duration;

use super::*;

const MINIMAL: &str = r#"
[listener.main]
address = "127.0.0.1:8080"

[[route]]
name = "all"
upstream = "app"

[upstream.app.region.local]
endpoints = ["127.0.0.1:9101"]
"#;

fn errors(text: &str) -> Vec<String> {
    match parse(text) {
        Ok(_) => panic!("config was accepted:\n{text}"),
        Err(e) => e.lines(),
    }
}

fn has(errors: &[String], needle: &str) -> bool {
    errors.iter().any(|e| e.contains(needle))
}

#[test]
fn minimal_config_gets_safe_defaults() {
    let c = parse(MINIMAL).expect("valid");
    assert_eq!(c.admin.listen.to_string(), "127.0.0.1:9901");
    assert_eq!(c.server.header_timeout, Duration::from_secs(10));
    assert_eq!(c.server.max_uri_bytes, 8192);
    assert_eq!(c.server.max_header_bytes, 65536);
    assert_eq!(c.server.max_header_count, 100);
    assert_eq!(c.server.drain_timeout, Duration::from_secs(30));
    let u = &c.upstreams[0];
    assert_eq!(u.balance, levee_core::balance::Policy::RoundRobin);
    assert_eq!(u.protocol, Protocol::Http1);
    assert_eq!(u.connect_timeout, Duration::from_secs(2));
    assert_eq!(u.regions[0].priority, 0);
    assert_eq!(u.regions[0].endpoints[0].weight, 1);
    assert_eq!(c.routes[0].matcher, RouteMatch::default());
}

#[test]
fn unknown_keys_are_errors_with_their_path() {
    let text =
        format!("{MINIMAL}\n[upstream.app.region.other]\nendpoints = [\"127.0.0.1:1\"]\nprioirty = 1\n");
    let e = errors(&text);
    assert!(
        has(&e, "upstream.app.region.other.prioirty: unknown field `prioirty`"),
        "{e:?}"
    );
}

#[test]
fn unknown_section_is_an_error() {
    let e = errors(&format!("{MINIMAL}\n[upstreams.x]\n"));
    assert!(has(&e, "upstreams: unknown section"), "{e:?}");
    // Keys that are not bare are quoted, so even an empty one has a path
    // (found by fuzzing).
    let e = errors(&format!("''= 80\n{MINIMAL}"));
    assert!(has(&e, "\"\": unknown section"), "{e:?}");
    let e = errors(&format!("{MINIMAL}\n[listener.\"a.b\"]\naddress = 1\n"));
    assert!(e.iter().any(|l| l.starts_with("listener.\"a.b\"")), "{e:?}");
    // A section that parses but whose name is refused, too.
    let e = errors(&format!(
        "{MINIMAL}\n[upstream.\"a.b\"]\nconnect_timeout = \"soon\"\n[upstream.\"a.b\".region.r]\nendpoints = [\"127.0.0.1:1\"]\n"
    ));
    assert!(e.iter().any(|l| l.starts_with("upstream.\"a.b\"")), "{e:?}");
}

#[test]
fn every_error_is_reported_not_just_the_first() {
    let text = r#"
[server]
header_timeout = "10"
max_header_count = 0

[listener.main]
address = "localhost:8080"

[[route]]
name = "a"
upstream = "missing"
[route.match]
hosts = ["exa mple.com"]
path_prefix = "api"
methods = ["get"]

[upstream.app]
balance = "ring_hash"
connect_timeout = "0s"
[upstream.app.region.primary]
priority = -1
endpoints = ["127.0.0.1", { address = "127.0.0.1:80", weight = 0 }, 7]
"#;
    let e = errors(text);
    for needle in [
        "server.header_timeout: must be a duration",
        "server.max_header_count: must be between 1 and 10000, got 0",
        "listener.main.address: \"localhost:8080\" is not an IP address",
        "route[0].upstream: no upstream named \"missing\"",
        "route[0].match.hosts[0]:",
        "route[0].match.path_prefix: must start with '/'",
        "route[0].match.methods[0]: \"get\" is not a method (methods are case-sensitive: did you mean \"GET\"?)",
        "upstream.app.hash_on: is required with balance = \"ring_hash\"",
        "upstream.app.connect_timeout: must be greater than 0",
        "upstream.app.region.primary.priority: must be between 0 and 1000, got -1",
        "upstream.app.region.primary.endpoints[0]: \"127.0.0.1\" is not an address",
        "upstream.app.region.primary.endpoints[1].weight: must be between 1 and 1000, got 0",
        "upstream.app.region.primary.endpoints[2]: must be an address string or a table",
    ] {
        assert!(has(&e, needle), "missing {needle:?} in:\n{}", e.join("\n"));
    }
}

#[test]
fn wrong_types_name_the_key() {
    let e = errors(&format!("{MINIMAL}\n[runtime]\nworkers = \"two\"\n"));
    assert!(
        has(&e, "runtime.workers: invalid type: string \"two\", expected i64"),
        "{e:?}"
    );
    let e = errors(&MINIMAL.replace(
        "endpoints = [\"127.0.0.1:9101\"]",
        "endpoints = [{ adress = \"127.0.0.1:1\" }]",
    ));
    assert!(
        has(
            &e,
            "upstream.app.region.local.endpoints[0].adress: unknown field `adress`"
        ),
        "{e:?}"
    );
}

#[test]
fn syntax_errors_give_a_line_and_column() {
    let e = errors("[listener.main]\naddress = \n");
    assert!(has(&e, "line 2, column"), "{e:?}");
}

#[test]
fn duplicates_are_refused() {
    let text = r#"
[listener.a]
address = "127.0.0.1:8080"
[listener.b]
address = "127.0.0.1:8080"
[admin]
listen = "127.0.0.1:8080"

[[route]]
name = "r"
upstream = "app"
[[route]]
name = "r"
upstream = "app"

[upstream.app.region.one]
endpoints = ["127.0.0.1:1"]
[upstream.app.region.two]
endpoints = ["127.0.0.1:1"]
"#;
    let e = errors(text);
    assert!(
        has(
            &e,
            "listener.b.address: 127.0.0.1:8080 is already used by listener.a"
        ),
        "{e:?}"
    );
    assert!(has(&e, "is already used by admin.listen"), "{e:?}");
    assert!(has(&e, "route[1].name: duplicate route name \"r\""), "{e:?}");
    assert!(
        has(
            &e,
            "upstream.app.region.two.endpoints[0]: 127.0.0.1:1 appears more than once"
        ),
        "{e:?}"
    );
}

#[test]
fn no_listener_is_an_error() {
    let e = errors("[upstream.app.region.a]\nendpoints = [\"127.0.0.1:1\"]\n");
    assert!(has(&e, "listener: at least one listener is required"), "{e:?}");
}

#[test]
fn upstream_without_regions_is_an_error() {
    let e = errors(&MINIMAL.replace(
        "[upstream.app.region.local]\nendpoints = [\"127.0.0.1:9101\"]",
        "[upstream.app]\nbalance = \"random\"",
    ));
    assert!(
        has(&e, "upstream.app.region: an upstream needs at least one region"),
        "{e:?}"
    );
}

#[test]
fn route_match_is_parsed() {
    let text = MINIMAL.replace(
        "upstream = \"app\"\n",
        "upstream = \"app\"\n[route.match]\nhosts = [\"API.example.com\", \"*.example.org\"]\npath_prefix = \"/api\"\nmethods = [\"GET\", \"POST\"]\nheaders = { \"x-canary\" = \"1\" }\n",
    );
    let c = parse(&text).expect("valid");
    let m = &c.routes[0].matcher;
    assert_eq!(
        m.hosts,
        vec![
            HostMatch::Exact("api.example.com".into()),
            HostMatch::Suffix(".example.org".into())
        ]
    );
    assert!(m.hosts[1].matches("a.b.example.org"));
    assert!(!m.hosts[1].matches("example.org"));
    assert!(!m.hosts[1].matches("badexample.org"));
    assert_eq!(m.path_prefix.as_deref(), Some("/api"));
    assert_eq!(m.methods, vec![http::Method::GET, http::Method::POST]);
    assert_eq!(m.headers[0].0.as_str(), "x-canary");
}

#[test]
fn hash_on_forms() {
    for (text, want) in [
        (
            "header:x-user",
            HashOn::Header(http::HeaderName::from_static("x-user")),
        ),
        ("cookie:session", HashOn::Cookie("session".into())),
        ("client_ip", HashOn::ClientIp),
    ] {
        let c = parse(&MINIMAL.replace(
            "[upstream.app.region.local]",
            &format!(
                "[upstream.app]\nbalance = \"maglev\"\nhash_on = \"{text}\"\n[upstream.app.region.local]"
            ),
        ))
        .expect("valid");
        assert_eq!(c.upstreams[0].hash_on, Some(want));
    }
    let e = errors(&MINIMAL.replace(
        "[upstream.app.region.local]",
        "[upstream.app]\nhash_on = \"client_ip\"\n[upstream.app.region.local]",
    ));
    assert!(
        has(
            &e,
            "upstream.app.hash_on: has no effect with balance = \"round_robin\""
        ),
        "{e:?}"
    );
}

#[test]
fn endpoints_may_be_names_resolved_later() {
    let c = parse(&MINIMAL.replace("127.0.0.1:9101", "App.Internal:9101")).expect("valid");
    assert_eq!(
        c.upstreams[0].regions[0].endpoints[0].address,
        EndpointAddress::Dns {
            host: "app.internal".into(),
            port: 9101
        }
    );
}

#[test]
fn shape_errors_do_not_hide_other_problems_or_repeat_themselves() {
    let text = r#"
[listener.main]
address = "nowhere"

[upstream.app.region.r]
endpoints = ["127.0.0.1:1"]
typo = 1

[[route]]
name = "r"
upstream = "app"
"#;
    let e = errors(text);
    assert!(
        has(&e, "upstream.app.region.r.typo: unknown field `typo`"),
        "{e:?}"
    );
    assert!(
        has(&e, "listener.main.address: \"nowhere\" is not an IP address"),
        "{e:?}"
    );
    assert!(
        !has(&e, "no upstream named"),
        "a broken upstream is still declared: {e:?}"
    );
    assert!(e.iter().all(|l| !l.contains('\n')), "one line per problem: {e:?}");
}

#[test]
fn health_checks_parse_with_defaults() {
    let c = parse(&format!(
        "{MINIMAL}\n[upstream.app.health]\npath = \"/healthz\"\n"
    ))
    .expect("valid");
    let h = c.upstreams[0].health.as_ref().expect("checks");
    assert_eq!(
        h.kind,
        CheckKind::Http {
            path: "/healthz".into(),
            host: None,
            expect: vec![(200, 399)]
        }
    );
    assert_eq!(
        (h.interval, h.unhealthy_interval, h.timeout),
        (
            Duration::from_secs(2),
            Duration::from_secs(2),
            Duration::from_secs(1)
        )
    );
    assert_eq!((h.rise, h.fall, h.jitter_percent), (2, 3, 10));
    let c = parse(&format!(
        "{MINIMAL}\n[upstream.app.health]\ntype = \"tcp\"\ninterval = \"5s\"\nunhealthy_interval = \"1s\"\n"
    ))
    .expect("valid");
    let h = c.upstreams[0].health.as_ref().expect("checks");
    assert_eq!(h.kind, CheckKind::Tcp);
    assert_eq!(h.unhealthy_interval, Duration::from_secs(1));
    assert!(
        parse(MINIMAL).expect("valid").upstreams[0].health.is_none(),
        "no section, no checks"
    );
}

#[test]
fn health_check_errors_name_their_key() {
    let text = format!(
        "{MINIMAL}\n[upstream.app.health]\ntype = \"udp\"\npath = \"healthz\"\nexpect = [\"200-\", \"700\"]\nrise = 0\ntimeout = \"0s\"\n"
    );
    let e = errors(&text);
    for needle in [
        "upstream.app.health.type: \"udp\" is not one of http, tcp",
        "upstream.app.health.rise: must be between 1 and 100, got 0",
        "upstream.app.health.timeout: must be greater than 0",
    ] {
        assert!(has(&e, needle), "missing {needle:?} in {e:?}");
    }
    let e = errors(&format!(
        "{MINIMAL}\n[upstream.app.health]\npath = \"healthz\"\nexpect = [\"200-\", \"700\"]\n"
    ));
    assert!(
        has(&e, "upstream.app.health.path: \"healthz\" is not a path"),
        "{e:?}"
    );
    assert!(
        has(
            &e,
            "upstream.app.health.expect[0]: \"200-\" is not a status or a range"
        ),
        "{e:?}"
    );
    assert!(has(&e, "upstream.app.health.expect[1]: \"700\""), "{e:?}");
    let e = errors(&format!(
        "{MINIMAL}\n[upstream.app.health]\ntype = \"tcp\"\npath = \"/x\"\n"
    ));
    assert!(
        has(&e, "upstream.app.health.path: applies to type = \"http\" only"),
        "{e:?}"
    );
}

#[test]
fn resilience_defaults() {
    let c = parse(MINIMAL).expect("valid");
    let r = &c.routes[0].retry;
    assert_eq!(r.attempts, 2);
    assert_eq!(r.retry_on, RetryOn::default_set());
    assert_eq!(r.backoff, Backoff::DEFAULT);
    assert_eq!(r.max_body_bytes, 65536);
    assert!(!r.idempotent);
    assert_eq!(r.hedge_after, None);
    assert_eq!(r.leave_region, LeaveRegion::WhenFailing);
    let u = &c.upstreams[0];
    assert_eq!(u.failover, FailoverParams::DEFAULT);
    assert_eq!(u.outlier, None, "passive ejection is opted into");
    assert_eq!(u.limits, Limits::default());
    assert_eq!(u.retry_budget, RetryBudget::default());
}

#[test]
fn resilience_tables_parse() {
    let text = format!(
        "{MINIMAL}
[route.retry]
attempts = 3
retry_on = [\"reset\", \"gateway-error\", \"429\"]
per_try_timeout = \"2s\"
backoff_base = \"10ms\"
backoff_max = \"100ms\"
retry_after_max = \"0s\"
max_body_bytes = 1024
idempotent = true
hedge_after = \"50ms\"
leave_region = \"always\"

[upstream.app.failover]
mode = \"strict\"
failback_after = \"5s\"
ramp = \"0\"

[upstream.app.outlier]
consecutive_5xx = 0
base_ejection_time = \"10s\"
success_rate_min_hosts = 0

[upstream.app.limits]
max_requests = 10
max_retries = 0

[upstream.app.retry_budget]
percent = 50
min_per_second = 1
"
    );
    let c = parse(&text).expect("valid");
    let r = &c.routes[0].retry;
    assert_eq!(r.attempts, 3);
    assert!(!r.retry_on.connect_failure && r.retry_on.reset && !r.retry_on.timeout);
    assert_eq!(r.retry_on.statuses, [429, 502, 503, 504]);
    assert_eq!(r.per_try_timeout, Some(Duration::from_secs(2)));
    assert_eq!(r.retry_after_max, Duration::ZERO);
    assert_eq!(r.hedge_after, Some(Duration::from_millis(50)));
    assert_eq!(r.leave_region, LeaveRegion::Always);
    let u = &c.upstreams[0];
    assert_eq!(u.failover.mode, FailoverMode::Strict);
    assert_eq!(u.failover.failback_after, Duration::from_secs(5));
    assert_eq!(u.failover.ramp, Duration::ZERO);
    let o = u.outlier.as_ref().expect("outlier detection on");
    assert_eq!(o.params.consecutive_5xx, 0);
    assert_eq!(o.params.consecutive_gateway_failure, 5);
    assert_eq!(o.params.base_ejection_time, Duration::from_secs(10));
    assert_eq!(o.params.success_rate, None);
    assert!(o.uneject_on_check_success);
    assert_eq!(u.limits.max_requests, 10);
    assert_eq!(u.limits.max_connections, 1024);
    assert_eq!(u.limits.max_retries, 0);
    assert_eq!(u.retry_budget.percent, 50);
}

#[test]
fn resilience_errors_name_their_key() {
    let text = format!(
        "{MINIMAL}
[route.retry]
attempts = 0
retry_on = [\"5xx\"]
backoff_base = \"1s\"
backoff_max = \"10ms\"
leave_region = \"sometimes\"

[upstream.app.failover]
mode = \"eager\"
overprovisioning = 0.5
failback_after = \"soon\"

[upstream.app.outlier]
max_ejection_percent = 150
base_ejection_time = \"60s\"
max_ejection_time = \"10s\"

[upstream.app.limits]
max_requests = 0
"
    );
    let e = errors(&text);
    for expected in [
        "route[0].retry.attempts: must be between 1 and 10, got 0",
        "route[0].retry.retry_on[0]: \"5xx\" is not one of",
        "route[0].retry.backoff_max: must not be shorter than backoff_base",
        "route[0].retry.leave_region: \"sometimes\" is not one of when_failing, always or never",
        "upstream.app.failover.mode: \"eager\" is not one of proportional, strict",
        "upstream.app.failover.overprovisioning: must be between 1.0 and 10.0, got 0.5",
        "upstream.app.failover.failback_after: must be a duration",
        "upstream.app.outlier.max_ejection_percent: must be between 0 and 100, got 150",
        "upstream.app.outlier.max_ejection_time: must not be shorter than base_ejection_time",
        "upstream.app.limits.max_requests: must be between 1 and 1000000, got 0",
    ] {
        assert!(has(&e, expected), "missing {expected:?} in {e:#?}");
    }
}

#[test]
fn front_door_defaults_trust_nobody() {
    let c = parse(MINIMAL).expect("valid");
    assert_eq!(c.server.max_connections, 10_000);
    assert_eq!(c.server.max_connections_per_ip, 256);
    assert_eq!(c.server.max_requests_per_connection, 1000);
    assert!(c.server.trusted_proxies.is_empty());
    let l = &c.listeners[0];
    assert!(l.access.is_open() && !l.proxy_protocol && l.tls.is_none());
    assert!(c.routes[0].access.is_open());
}

#[test]
fn front_door_tables_parse() {
    let text = MINIMAL.replace(
        "address = \"127.0.0.1:8080\"\n",
        "address = \"127.0.0.1:8080\"\ndeny = [\"10.0.0.0/8\", \"2001:db8::/32\"]\nproxy_protocol = true\n\
         [listener.main.tls]\ncertificates = [{ cert = \"a.crt\", key = \"a.key\" }]\nalpn = [\"http/1.1\"]\nmin_version = \"1.3\"\n",
    );
    let text =
        format!("[server]\ntrusted_proxies = [\"127.0.0.1\"]\nclient_ip_header = \"forwarded\"\n{text}");
    let c = parse(&text).expect("valid");
    let l = &c.listeners[0];
    assert!(!l.access.permits("10.1.2.3".parse().expect("ip")));
    assert!(l.access.permits("11.1.2.3".parse().expect("ip")));
    let tls = l.tls.as_ref().expect("tls");
    assert_eq!(tls.alpn, [Alpn::Http11]);
    assert_eq!(tls.min_version, TlsVersion::V1_3);
    assert_eq!(tls.certificates[0].cert, std::path::PathBuf::from("a.crt"));
    assert_eq!(c.server.client_ip_header, ClientIpHeader::Forwarded);
}

#[test]
fn front_door_errors_name_their_key() {
    let text = MINIMAL.replace(
        "address = \"127.0.0.1:8080\"\n",
        "address = \"127.0.0.1:8080\"\nallow = [\"10.1.2.3/8\", \"nope\"]\nproxy_protocol = true\n\
         [listener.main.tls]\ncertificates = []\nalpn = [\"h3\", \"h2\", \"h2\"]\nmin_version = \"1.1\"\n",
    );
    let text = format!(
        "[server]\nmax_connections = 10\nmax_connections_per_ip = 20\nclient_ip_header = \"x-real-ip\"\n{text}"
    );
    let text = text.replace(
        "upstream = \"app\"\n",
        "upstream = \"app\"\ndeny = [\"::1/129\"]\n",
    );
    let e = errors(&text);
    for needle in [
        "listener.main.allow[0]: \"10.1.2.3/8\": host bits are set: did you mean 10.0.0.0/8?",
        "listener.main.allow[1]: \"nope\": not an IP address or CIDR block",
        "listener.main.proxy_protocol: needs server.trusted_proxies",
        "listener.main.tls.certificates: at least one certificate is required",
        "listener.main.tls.alpn[0]: must be \"h2\" or \"http/1.1\", got \"h3\"",
        "listener.main.tls.alpn[2]: \"h2\" is listed twice",
        "listener.main.tls.min_version: must be \"1.2\" or \"1.3\"",
        "server.max_connections_per_ip: must not exceed server.max_connections (10)",
        "server.client_ip_header: must be \"x-forwarded-for\" or \"forwarded\", got \"x-real-ip\"",
        "route[0].deny[0]: \"::1/129\": prefix length 129 is longer than the address",
    ] {
        assert!(has(&e, needle), "missing {needle:?} in {e:#?}");
    }
}

#[test]
fn rate_limits_parse_with_defaults() {
    let text = MINIMAL.replace(
        "upstream = \"app\"\n",
        "upstream = \"app\"\nrate_limits = [\"a\", \"b\"]\n",
    ) + "[rate_limit.a]\nrate = 10\n\n[rate_limit.b]\nrate = 5\nper = \"1m\"\nburst = 1\nkey = [\"header:x-api-key\", \"route\"]\nbackend = \"redis\"\ninstances = 2\n\n[redis]\n";
    let c = parse(&text).expect("valid");
    let a = &c.rate_limits[0];
    assert_eq!(
        (a.quota.rate(), a.quota.per(), a.quota.burst()),
        (10, Duration::from_secs(1), 10)
    );
    assert_eq!(a.key, [KeyPart::ClientIp]);
    assert_eq!(
        (a.backend, a.max_keys, a.instances),
        (RateLimitBackend::Local, 100_000, 1)
    );
    let b = &c.rate_limits[1];
    assert_eq!(
        b.key,
        [
            KeyPart::Header(http::HeaderName::from_static("x-api-key")),
            KeyPart::Route
        ]
    );
    assert_eq!((b.backend, b.instances), (RateLimitBackend::Redis, 2));
    let r = c.redis.as_ref().expect("redis");
    assert_eq!(r.address.to_string(), "127.0.0.1:6379");
    assert_eq!(r.timeout, Duration::from_millis(5));
    let names: Vec<&str> = (c.routes[0].rate_limits.iter())
        .map(|r| c.rate_limits[r.index()].name.as_str())
        .collect();
    assert_eq!(names, ["a", "b"]);
    assert!(!format!("{r:?}").contains("change-me"));
}

#[test]
fn rate_limit_errors_name_their_key() {
    let text = MINIMAL.replace(
        "upstream = \"app\"\n",
        "upstream = \"app\"\nrate_limits = [\"nope\", \"a\", \"a\"]\n",
    ) + "[rate_limit.a]\nrate = 0\n\n[rate_limit.b]\nrate = 2000000\nkey = [\"ip\", \"header:bad header\", \"route\", \"route\"]\nbackend = \"redis\"\n\n\
         [rate_limit.c]\nper = \"1s\"\n\n[rate_limit.d]\nrate = 1\ninstances = 3\n";
    let e = errors(&text);
    for needle in [
        "route[0].rate_limits[0]: no rate limit named \"nope\"",
        "route[0].rate_limits[2]: \"a\" is listed twice",
        "rate_limit.a.rate: must be between 1 and",
        "rate_limit.b.rate: period / rate must be at least 1µs",
        "rate_limit.b.key[0]: must be \"client_ip\", \"route\" or \"header:<name>\", got \"ip\"",
        "rate_limit.b.key[1]: \"bad header\" is not a header name",
        "rate_limit.b.key[3]: \"route\" is listed twice",
        "rate_limit.b.backend: \"redis\" needs a [redis] section",
        "rate_limit.c.rate: is required",
        "rate_limit.d.instances: applies to backend = \"redis\" only",
    ] {
        assert!(has(&e, needle), "missing {needle:?} in {e:#?}");
    }
}

#[test]
fn adaptive_concurrency_and_priority_parse_and_explain_errors() {
    let text = MINIMAL.replace(
        "upstream = \"app\"\n",
        "upstream = \"app\"\npriority = \"bulk\"\n",
    ) + "[upstream.app.adaptive_concurrency]\nmax_limit = 50\n";
    let c = parse(&text).expect("valid");
    assert_eq!(c.routes[0].priority, Priority::Bulk);
    let a = c.upstreams[0].adaptive_concurrency.expect("adaptive");
    assert_eq!((a.initial_limit, a.min_limit, a.max_limit), (20, 5, 50));
    assert!(
        parse(MINIMAL).expect("valid").upstreams[0]
            .adaptive_concurrency
            .is_none()
    );

    let text = MINIMAL.replace(
        "upstream = \"app\"\n",
        "upstream = \"app\"\npriority = \"urgent\"\n",
    ) + "[upstream.app.adaptive_concurrency]\nmin_limit = 30\nmax_limit = 10\ntolerance = 0.5\nwindow = \"0s\"\n";
    let e = errors(&text);
    for needle in [
        "route[0].priority: must be \"critical\", \"default\" or \"bulk\", got \"urgent\"",
        "upstream.app.adaptive_concurrency.min_limit: min_limit 30 is above max_limit 10",
        "upstream.app.adaptive_concurrency.tolerance: tolerance must be above 1",
        "upstream.app.adaptive_concurrency.window: must be greater than 0",
    ] {
        assert!(has(&e, needle), "missing {needle:?} in {e:#?}");
    }
}

#[test]
fn upstream_tls_parses_and_explains_errors() {
    let text = MINIMAL.to_string() + "[upstream.app.tls]\nsni = \"app.internal\"\nca = \"ca.pem\"\n";
    let c = parse(&text).expect("valid");
    let tls = c.upstreams[0].tls.as_ref().expect("tls");
    assert_eq!(tls.sni.as_deref(), Some("app.internal"));
    assert_eq!(tls.ca.as_deref(), Some(std::path::Path::new("ca.pem")));
    assert!(tls.client_certificate.is_none());

    let text = MINIMAL.to_string() + "[upstream.app.tls]\nsni = \"not a name\"\ncert = \"c.pem\"\n";
    let e = errors(&text);
    assert!(
        has(
            &e,
            "upstream.app.tls.sni: \"not a name\" is not a host name or an IP address"
        ),
        "{e:#?}"
    );
    assert!(
        has(&e, "upstream.app.tls.key: a client certificate needs its key"),
        "{e:#?}"
    );
}

#[test]
fn http2_guards_default_on_and_refuse_zero() {
    let c = parse(MINIMAL).expect("valid");
    assert_eq!(c.server.h2_max_concurrent_streams, 100);
    assert_eq!(c.server.h2_max_reset_streams, 200);
    assert_eq!(c.server.h2_max_control_frames, 100);
    assert_eq!(c.server.h2_max_empty_frames, 50);

    let text = format!(
        "[server]\nh2_max_concurrent_streams = 8\nh2_max_reset_streams = 1\nh2_max_control_frames = 1000000\n\
         h2_max_empty_frames = 3\n{MINIMAL}"
    );
    let c = parse(&text).expect("valid");
    assert_eq!(c.server.h2_max_concurrent_streams, 8);
    assert_eq!(c.server.h2_max_reset_streams, 1);
    assert_eq!(c.server.h2_max_control_frames, 1_000_000);
    assert_eq!(c.server.h2_max_empty_frames, 3);

    let text = format!(
        "[server]\nh2_max_concurrent_streams = 0\nh2_max_reset_streams = 0\nh2_max_control_frames = -1\n\
         h2_max_empty_frames = 1000001\n{MINIMAL}"
    );
    let e = errors(&text);
    for expected in [
        "server.h2_max_concurrent_streams: must be between 1 and 10000, got 0",
        "server.h2_max_reset_streams: must be between 1 and 1000000, got 0",
        "server.h2_max_control_frames: must be between 1 and 1000000, got -1",
        "server.h2_max_empty_frames: must be between 1 and 1000000, got 1000001",
    ] {
        assert!(has(&e, expected), "missing {expected:?} in {e:#?}");
    }
    let e = errors(&format!("[server]\nh2_max_concurrent_streams = 20000\n{MINIMAL}"));
    assert!(
        has(
            &e,
            "server.h2_max_concurrent_streams: must be between 1 and 10000, got 20000"
        ),
        "{e:?}"
    );
}

#[test]
fn without_alert_rules_the_default_set_applies() {
    let c = parse(MINIMAL).expect("valid");
    let a = &c.alerting;
    assert_eq!(a.evaluation_interval, Duration::from_secs(1));
    assert_eq!(a.external_url, "http://127.0.0.1:9901");
    let names: Vec<&str> = a.rules.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "endpoint-down",
            "region-degraded",
            "failover-active",
            "error-ratio",
            "latency-p99",
            "retry-budget-exhausted",
            "reload-failed"
        ],
        "no redis-degraded without [redis]"
    );
    let failover = &a.rules[2];
    assert_eq!(failover.severity, Severity::Critical);
    assert_eq!(failover.condition.hold, Duration::ZERO);
    assert!(a.notifiers.is_empty());

    let off = parse(&format!("{MINIMAL}\n[alerting]\ndefault_rules = false\n")).expect("valid");
    assert!(off.alerting.rules.is_empty());

    let with_redis = parse(&format!("{MINIMAL}\n[redis]\n")).expect("valid");
    assert!(
        with_redis
            .alerting
            .rules
            .iter()
            .any(|r| r.name == "redis-degraded")
    );
}

#[test]
fn alert_rules_and_notifiers_parse() {
    let text = format!(
        r#"{MINIMAL}
[rate_limit.per_client]
rate = 10

[alerting]
evaluation_interval = "500ms"
external_url = "https://levee.example.com/"

[alerting.notifier.hook]
kind = "webhook"
url = "https://hooks.example.com/levee?token=s3cret"
headers = {{ authorization = "Bearer s3cret" }}
timeout = "2s"
group_by = ["alertname", "upstream"]
group_wait = "0s"
group_interval = "10s"
repeat_interval = "1h"
send_resolved = false
queue = 10
max_retries = 2
backoff_base = "100ms"
backoff_max = "1s"

[alerting.notifier.am]
kind = "alertmanager"
url = "http://127.0.0.1:9093"
resend_interval = "30s"

[[alert]]
name = "app-failover"
kind = "failover_active"
for = "10s"
severity = "critical"
upstream = "app"
labels = {{ team = "edge" }}
summary = "{{upstream}} failed over: {{value}}"
description = "threshold {{threshold}}"
runbook_url = "https://runbooks.example.com/failover"
notifiers = ["am"]

[[alert]]
name = "slow"
kind = "latency_p99"
threshold = "250ms"
window = "30s"

[[alert]]
name = "limited"
kind = "rate_limited"
threshold = 5
rate_limit = "per_client"
"#
    );
    let c = parse(&text).expect("valid");
    let a = &c.alerting;
    assert_eq!(a.evaluation_interval, Duration::from_millis(500));
    assert_eq!(a.external_url, "https://levee.example.com");
    assert_eq!(a.rules.len(), 3, "written rules replace the default set");
    let f = &a.rules[0];
    assert_eq!(f.condition.kind, AlertKind::FailoverActive);
    assert_eq!(f.condition.threshold, 0.0);
    assert_eq!(f.condition.hold, Duration::from_secs(10));
    assert_eq!(f.severity, Severity::Critical);
    assert_eq!(f.upstream.as_ref().map(|u| u.as_str()), Some("app"));
    assert_eq!(f.labels.get("team").map(String::as_str), Some("edge"));
    assert_eq!(f.notifiers, ["am"]);
    assert_eq!(f.summary.as_str(), "{upstream} failed over: {value}");
    let slow = &a.rules[1];
    assert_eq!(slow.condition.threshold, 0.25);
    assert_eq!(slow.window, Duration::from_secs(30));
    assert_eq!(slow.severity, Severity::Warning);
    assert_eq!(slow.notifiers, ["am", "hook"], "every notifier by default");
    assert_eq!(a.rules[2].condition.threshold, 5.0);
    assert_eq!(a.rules[2].rate_limit.as_deref(), Some("per_client"));

    let hook = &a.notifiers[1];
    assert_eq!(hook.kind, NotifierKind::Webhook);
    assert_eq!(hook.grouping.group_wait, Duration::ZERO);
    assert_eq!(
        hook.grouping.group_by,
        GroupBy::Labels(vec!["alertname".to_string(), "upstream".to_string()])
    );
    assert!(!hook.grouping.send_resolved);
    assert_eq!((hook.queue, hook.max_retries), (10, 2));
    let am = &a.notifiers[0];
    assert_eq!(am.grouping.group_by, GroupBy::Labels(vec![]));
    assert_eq!(am.grouping.group_wait, Duration::ZERO);
    assert_eq!(am.grouping.repeat_interval, Duration::from_secs(30));
    assert_eq!(am.timeout, Duration::from_secs(5));

    let debug = format!("{c:?}");
    assert!(
        !debug.contains("s3cret"),
        "a notifier's URL and headers are secrets: {debug}"
    );
}

#[test]
fn alert_errors_name_their_key() {
    let text = format!(
        r#"{MINIMAL}
[alerting]
evaluation_interval = "0s"
external_url = "ftp://x"

[alerting.notifier.slack]
kind = "slack"
url = "hooks.slack.com/services/T000/B000/s3cret"
headers = {{ host = "x" }}
resend_interval = "1m"

[alerting.notifier.am]
kind = "alertmanager"
url = "http://127.0.0.1:9093"
group_wait = "1s"

[alerting.notifier.nokind]
url = "ftp://127.0.0.1/x"

[[alert]]
name = "a"
kind = "endpoint_down"
threshold = 1

[[alert]]
name = "a"
kind = "latency_p99"
threshold = 0.5

[[alert]]
name = "c"
kind = "failover_active"
threshold = 1.5
window = "1m"
upstream = "nope"
labels = {{ severity = "page", "9x" = "y" }}
summary = "{{endpoint}} is down"
notifiers = ["slack", "pager"]

[[alert]]
name = "d"
kind = "endpoint_gone"

[[alert]]
name = "e"
kind = "redis_degraded"
severity = "page"
upstream = "app"
rate_limit = "x"
"#
    );
    let e = errors(&text);
    for expected in [
        "alerting.evaluation_interval: must be greater than 0",
        "alerting.external_url: \"ftp://x\" is not an http or https URL",
        "alerting.notifier.slack.url: is not a URL like",
        "alerting.notifier.nokind.url: must start with http:// or https://",
        "alerting.notifier.slack.headers.host: is set by levee itself",
        "alerting.notifier.slack.resend_interval: applies to kind = \"alertmanager\" only",
        "alerting.notifier.am.group_wait: has no effect with kind = \"alertmanager\"",
        "alerting.notifier.nokind.kind: is required",
        "alert[0].threshold: endpoint_down rules have no threshold",
        "alert[1].name: duplicate alert rule name \"a\"",
        "alert[1].threshold: must be a duration",
        "alert[2].threshold: must be a share of requests, at least 0 and below 1, got 1.5",
        "alert[2].window: has no effect on failover_active rules",
        "alert[2].upstream: no upstream named \"nope\"",
        "alert[2].labels.severity: is set by levee itself",
        "alert[2].labels.9x: is not a label name",
        "alert[2].summary: {endpoint} is not a placeholder here; failover_active rules have {rule}, {value}, {threshold}, {upstream}",
        "alert[2].notifiers[1]: no notifier named \"pager\"",
        "alert[3].kind: \"endpoint_gone\" is not one of endpoint_down, region_degraded",
        "alert[4].severity: must be \"critical\", \"warning\" or \"info\", got \"page\"",
        "alert[4].upstream: has no effect on redis_degraded rules",
        "alert[4].rate_limit: applies to kind = \"rate_limited\" only",
        "alert[4].kind: \"redis_degraded\" needs a [redis] section",
    ] {
        assert!(has(&e, expected), "missing {expected:?} in {e:#?}");
    }
    assert!(
        !e.iter().any(|l| l.contains("s3cret")),
        "errors must not repeat a secret URL: {e:#?}"
    );
}

#[test]
fn a_broken_alert_rule_does_not_shift_the_paths_of_the_next() {
    let text = format!(
        "{MINIMAL}\n[[alert]]\nname = \"a\"\nkind = \"shedding\"\nthreshhold = 1\n\n[[alert]]\nname = \"b\"\nkind = \"shedding\"\nthreshold = -1\n"
    );
    let e = errors(&text);
    assert!(has(&e, "alert[0].threshhold: unknown field"), "{e:?}");
    assert!(has(&e, "alert[1].threshold: must be"), "{e:?}");
}

#[test]
fn access_log_is_off_unless_enabled_and_has_defaults() {
    assert_eq!(parse(MINIMAL).expect("valid").access_log, None);
    let off = format!("{MINIMAL}\n[access_log]\npath = \"/var/log/levee/access.log\"\n");
    assert_eq!(parse(&off).expect("valid").access_log, None);
    let on = format!("{MINIMAL}\n[access_log]\nenabled = true\n");
    let log = parse(&on).expect("valid").access_log.expect("enabled");
    assert_eq!(log.output, LogOutput::Stdout);
    assert_eq!(log.format, LogFormat::Json);
    assert_eq!(log.fields, LogField::DEFAULT);
    assert_eq!(log.buffer, 8192);
    let file = format!(
        "{MINIMAL}\n[access_log]\nenabled = true\npath = \"/tmp/a.log\"\nfields = [\"uri\", \"status\"]\nbuffer = 16\n"
    );
    let log = parse(&file).expect("valid").access_log.expect("enabled");
    assert_eq!(log.output, LogOutput::File("/tmp/a.log".into()));
    assert_eq!(log.fields, [LogField::Uri, LogField::Status]);
    assert_eq!(log.buffer, 16);
    let clf = format!("{MINIMAL}\n[access_log]\nenabled = true\npath = \"-\"\nformat = \"combined\"\n");
    let log = parse(&clf).expect("valid").access_log.expect("enabled");
    assert_eq!((log.output, log.format), (LogOutput::Stdout, LogFormat::Combined));
}

#[test]
fn access_log_errors_name_their_key() {
    // Checked even while the log is off.
    let e = errors(&format!(
        "{MINIMAL}\n[access_log]\nformat = \"clf\"\nfields = [\"status\", \"cookie\", \"status\"]\nbuffer = 0\n"
    ));
    for needle in [
        "access_log.format: must be \"json\", \"common\" or \"combined\", got \"clf\"",
        "access_log.fields[1]: \"cookie\" is not a field; expected one of time, client_ip,",
        "access_log.fields[2]: \"status\" is listed twice",
        "access_log.buffer: must be between 1 and 1048576, got 0",
    ] {
        assert!(has(&e, needle), "missing {needle:?} in {e:#?}");
    }
    let e = errors(&format!(
        "{MINIMAL}\n[access_log]\nenabled = true\nformat = \"common\"\nfields = [\"status\"]\npath = \"\"\n"
    ));
    assert!(
        has(&e, "access_log.fields: applies to format = \"json\" only"),
        "{e:?}"
    );
    assert!(has(&e, "access_log.path: must be a file path"), "{e:?}");
    let e = errors(&format!("{MINIMAL}\n[access_log]\nenabled = true\nfields = []\n"));
    assert!(
        has(&e, "access_log.fields: must name at least one field"),
        "{e:?}"
    );
    let e = errors(&format!("{MINIMAL}\n[access_log]\nenable = true\n"));
    assert!(has(&e, "access_log.enable: unknown field `enable`"), "{e:?}");
}

#[test]
fn an_admin_listener_off_loopback_needs_a_token() {
    let open = format!("[admin]\nlisten = \"0.0.0.0:9901\"\n{MINIMAL}");
    assert!(has(
        &errors(&open),
        "admin.token: required when admin.listen (0.0.0.0:9901)"
    ));
    let short = format!("[admin]\nlisten = \"0.0.0.0:9901\"\ntoken = \"abc\"\n{MINIMAL}");
    assert!(has(&errors(&short), "admin.token: must be at least 16"));
    let good = format!("[admin]\nlisten = \"0.0.0.0:9901\"\ntoken = \"0123456789abcdef\"\n{MINIMAL}");
    let c = parse(&good).expect("valid");
    assert_eq!(c.admin.token, Some(Secret("0123456789abcdef".into())));
    assert!(!format!("{:?}", c.admin).contains("0123456789abcdef"));
    // On loopback a token is optional.
    assert_eq!(parse(MINIMAL).expect("valid").admin.token, None);
}

#[test]
fn the_shown_document_hides_secrets() {
    let text = format!(
        "[admin]\ntoken = \"0123456789abcdef\"\n[redis]\naddress = \"127.0.0.1:6379\"\npassword = \"hunter2\"\n{MINIMAL}"
    );
    let c = parse(&text).expect("valid");
    let shown = c.document.to_string();
    assert!(
        !shown.contains("hunter2") && !shown.contains("0123456789abcdef"),
        "{shown}"
    );
    assert!(shown.contains(REDACTED), "{shown}");
    assert!(
        shown.contains("127.0.0.1:6379"),
        "what is not secret stays: {shown}"
    );
    assert!(shown.contains("127.0.0.1:9101"), "{shown}");
}

/// `MINIMAL`'s route with `fault` as its `[route.fault]` table.
fn with_fault(fault: &str) -> String {
    MINIMAL.replace(
        "upstream = \"app\"\n",
        &format!("upstream = \"app\"\n[route.fault]\n{fault}\n"),
    )
}

#[test]
fn route_faults_parse_with_their_shares() {
    let c = parse(&with_fault(
        "delay = \"250ms\"\ndelay_percent = 12.5\nabort_status = 503\nabort_grpc_status = 14\n\
         response_rate = 1024\nheaders = true\nheaders_from = [\"127.0.0.1/32\"]",
    ))
    .expect("valid");
    let f = c.routes[0].fault.as_ref().expect("faults");
    let delay = f.faults.delay.expect("delay");
    assert_eq!(delay.duration, Duration::from_millis(250));
    assert_eq!(delay.share.percent(), 12.5);
    let abort = f.faults.abort.expect("abort");
    assert_eq!(
        (abort.status, abort.grpc_status, abort.share.percent()),
        (503, Some(14), 100.0)
    );
    assert_eq!(f.faults.response_rate.map(|r| r.bytes_per_second), Some(1024));
    assert!(f.faults.headers && f.headers_from.contains("127.0.0.1".parse().unwrap()));
    assert_eq!(
        parse(MINIMAL).expect("valid").routes[0].fault,
        None,
        "off by default"
    );
}

#[test]
fn route_fault_errors_name_their_key() {
    let e = errors(&with_fault(
        "delay = \"soon\"\ndelay_percent = 150\nabort_status = 200\nabort_grpc_status = 99\n\
         response_rate_percent = 5\nheaders = true",
    ));
    for expected in [
        "route[0].fault.delay:",
        "route[0].fault.delay_percent: must be between 0 and 100, got 150",
        "route[0].fault.abort_status: must be between 400 and 599, got 200",
        "route[0].fault.abort_grpc_status: must be between 1 and 16, got 99",
        "route[0].fault.response_rate_percent: has no fault to apply to",
        "route[0].fault.headers: needs headers_from or server.trusted_proxies",
    ] {
        assert!(has(&e, expected), "missing {expected:?} in {e:#?}");
    }
    let e = errors(&with_fault("headers = false"));
    assert!(has(&e, "route[0].fault: injects nothing"), "{e:#?}");
    let e = errors(&with_fault("abort_grpc_status = 14"));
    assert!(
        has(&e, "route[0].fault.abort_grpc_status: needs abort_status"),
        "{e:#?}"
    );
}
