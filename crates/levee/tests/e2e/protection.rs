//! The front door's defences: access lists, connection caps, who the client
//! is behind trusted proxies and PROXY protocol, requests per connection,
//! and TLS termination. Clients are told apart by their loopback source
//! address (127.0.0.10, 127.0.0.11, ...).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use levee_testkit::{Backend, RawConn, RawResponse};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::strict::assert_generated;
use crate::support::*;

fn ip(s: &str) -> IpAddr {
    s.parse().expect("ip")
}

/// Listener "main" (with `listener` keys), `server` keys, one route "all"
/// (with `route` keys) to one endpoint.
fn gateway(server: &str, listener: &str, route: &str, backend: SocketAddr) -> String {
    format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n\n[server]\n{server}\n\n[listener.main]\naddress = \"127.0.0.1:0\"\n{listener}\n\n\
         [[route]]\nname = \"all\"\nupstream = \"app\"\n{route}\n\n\
         [upstream.app.region.local]\nendpoints = [\"{backend}\"]\n"
    )
}

async fn get_from(from: &str, addr: SocketAddr, extra: &str) -> anyhow::Result<RawResponse> {
    let mut conn = RawConn::connect_from(ip(from), addr).await?;
    conn.send(format!("GET / HTTP/1.1\r\nHost: a\r\n{extra}\r\n").as_bytes())
        .await?;
    conn.read_response(SETTLE).await
}

/// An open keep-alive connection that has been served once.
async fn held_from(from: &str, addr: SocketAddr) -> RawConn {
    let mut conn = RawConn::connect_from(ip(from), addr).await.expect("connect");
    conn.send(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .expect("send");
    let res = conn.read_response(SETTLE).await.expect("served");
    assert_eq!(res.status, 200);
    conn
}

/// A connection the gate turned away: closed before any response.
async fn assert_refused(from: &str, addr: SocketAddr) {
    let mut conn = match RawConn::connect_from(ip(from), addr).await {
        Ok(c) => c,
        // Reset during the handshake counts as refused too.
        Err(_) => return,
    };
    let _ = conn.send(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").await;
    let bytes = conn.read_to_end_within(SETTLE).await;
    assert!(
        bytes.is_empty(),
        "{from}: expected a closed connection, got {:?}",
        String::from_utf8_lossy(&bytes)
    );
}

#[tokio::test]
async fn a_denied_address_is_closed_at_accept_and_never_reaches_the_backend() {
    let backend = Backend::start("b1").await;
    let h = Harness::start(&gateway("", "deny = [\"127.0.0.10\"]", "", backend.addr())).await;
    assert_refused("127.0.0.10", h.addr).await;
    assert!(backend.ledger().is_empty());
    let res = get_from("127.0.0.11", h.addr, "").await.expect("served");
    assert_eq!(res.status, 200);
    assert_eq!(
        h.metric("levee_listener_connections_refused_total{listener=\"main\",reason=\"denied\"}")
            .await,
        1.0
    );

    // An allow list lets in only what it lists.
    let h = Harness::start(&gateway("", "allow = [\"127.0.0.20/31\"]", "", backend.addr())).await;
    assert_eq!(
        get_from("127.0.0.21", h.addr, "").await.expect("allowed").status,
        200
    );
    assert_refused("127.0.0.22", h.addr).await;
}

#[tokio::test]
async fn a_route_access_list_answers_403_with_proxy_status() {
    let backend = Backend::start("b1").await;
    let h = Harness::start(&gateway("", "", "deny = [\"127.0.0.10\"]", backend.addr())).await;
    let res = get_from("127.0.0.10", h.addr, "").await.expect("answered");
    assert_generated("route deny", &res, 403, "http_request_denied");
    assert!(backend.ledger().is_empty());
    assert_eq!(
        get_from("127.0.0.11", h.addr, "").await.expect("served").status,
        200
    );
}

#[tokio::test]
async fn connections_per_address_are_capped_and_come_back() {
    let backend = Backend::start("b1").await;
    let h = Harness::start(&gateway("max_connections_per_ip = 2", "", "", backend.addr())).await;
    let first = held_from("127.0.0.10", h.addr).await;
    let _second = held_from("127.0.0.10", h.addr).await;
    assert_refused("127.0.0.10", h.addr).await;
    // Another client is not affected.
    let _other = held_from("127.0.0.11", h.addr).await;
    assert_eq!(
        h.metric(
            "levee_listener_connections_refused_total{listener=\"main\",reason=\"max_connections_per_ip\"}"
        )
        .await,
        1.0
    );
    // Closing one gives its place back (once levee has seen the close).
    drop(first);
    levee_testkit::eventually_async(SETTLE, "the place comes back", || async {
        get_from("127.0.0.10", h.addr, "")
            .await
            .is_ok_and(|res| res.status == 200)
    })
    .await;
}

#[tokio::test]
async fn connections_in_all_are_capped() {
    let backend = Backend::start("b1").await;
    let h = Harness::start(&gateway(
        "max_connections = 3\nmax_connections_per_ip = 3",
        "",
        "",
        backend.addr(),
    ))
    .await;
    let _a = held_from("127.0.0.10", h.addr).await;
    let _b = held_from("127.0.0.11", h.addr).await;
    let _c = held_from("127.0.0.12", h.addr).await;
    assert_refused("127.0.0.13", h.addr).await;
    assert_eq!(
        h.metric("levee_listener_connections_refused_total{listener=\"main\",reason=\"max_connections\"}")
            .await,
        1.0
    );
}

#[tokio::test]
async fn the_client_behind_a_trusted_proxy_is_the_one_it_names() {
    let backend = Backend::start("b1").await;
    let h = Harness::start(&gateway(
        "trusted_proxies = [\"127.0.0.1\"]",
        "",
        "deny = [\"203.0.113.9\"]",
        backend.addr(),
    ))
    .await;
    // The trusted proxy says the client is a denied address.
    let res = get_from("127.0.0.1", h.addr, "X-Forwarded-For: 203.0.113.9\r\n")
        .await
        .expect("answered");
    assert_generated("denied behind proxy", &res, 403, "http_request_denied");
    // A client forging the leftmost entry is not believed: the proxy's own
    // entry (the rightmost untrusted one) is the client.
    let res = get_from(
        "127.0.0.1",
        h.addr,
        "X-Forwarded-For: 203.0.113.9, 198.51.100.4\r\n",
    )
    .await
    .expect("answered");
    assert_eq!(res.status, 200);
    // An untrusted peer claiming the denied address is not believed either.
    let res = get_from("127.0.0.2", h.addr, "X-Forwarded-For: 203.0.113.9\r\n")
        .await
        .expect("answered");
    assert_eq!(res.status, 200);
    // The forwarded chain records hops: the peer is appended, not replaced.
    let seen = backend.ledger().arrivals();
    let xff: Vec<&str> = seen.iter().filter_map(|a| a.header("x-forwarded-for")).collect();
    assert_eq!(
        xff,
        ["203.0.113.9, 198.51.100.4, 127.0.0.1", "203.0.113.9, 127.0.0.2"]
    );
}

#[tokio::test]
async fn proxy_protocol_names_the_client_when_a_trusted_balancer_sends_it() {
    let backend = Backend::start("b1").await;
    let h = Harness::start(&gateway(
        "trusted_proxies = [\"127.0.0.1\"]",
        "proxy_protocol = true",
        "deny = [\"198.51.100.66\"]",
        backend.addr(),
    ))
    .await;
    let via_balancer = |source: &str| {
        let header = levee_proxy::proxy_v2_header(source.parse().expect("addr"), h.addr);
        async move {
            let mut conn = RawConn::connect_from(ip("127.0.0.1"), h.addr).await?;
            let mut bytes = header;
            bytes.extend_from_slice(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n");
            conn.send(&bytes).await?;
            conn.read_response(SETTLE).await
        }
    };
    let res = via_balancer("198.51.100.7:40000").await.expect("served");
    assert_eq!(res.status, 200);
    let res = via_balancer("198.51.100.66:40000").await.expect("answered");
    assert_generated("denied via PROXY", &res, 403, "http_request_denied");
    let seen = backend.ledger().arrivals();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].header("x-forwarded-for"), Some("198.51.100.7"));

    // An untrusted peer may not send the header; a trusted one must.
    let mut untrusted = RawConn::connect_from(ip("127.0.0.2"), h.addr)
        .await
        .expect("connect");
    let mut bytes = levee_proxy::proxy_v2_header("198.51.100.7:1".parse().expect("addr"), h.addr);
    bytes.extend_from_slice(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n");
    let _ = untrusted.send(&bytes).await;
    assert!(untrusted.read_to_end_within(SETTLE).await.is_empty());
    assert_refused("127.0.0.1", h.addr).await;
    assert_eq!(backend.ledger().len(), 1);
}

#[tokio::test]
async fn a_connection_closes_after_its_request_limit() {
    let backend = Backend::start("b1").await;
    let h = Harness::start(&gateway(
        "max_requests_per_connection = 2",
        "",
        "",
        backend.addr(),
    ))
    .await;
    let mut conn = RawConn::connect(h.addr).await.expect("connect");
    conn.send(b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .expect("send");
    let first = conn.read_response(SETTLE).await.expect("first");
    assert_eq!(first.header("connection"), None);
    conn.send(b"GET /2 HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .expect("send");
    let second = conn.read_response(SETTLE).await.expect("second");
    assert_eq!(second.status, 200);
    assert_eq!(second.header("connection"), Some("close"));
    assert!(conn.closed_within(SETTLE).await);
}

/// A CA and two server certificates it signed, written as PEM files.
struct Pki {
    dir: tempfile::TempDir,
    ca: rustls::pki_types::CertificateDer<'static>,
}

impl Pki {
    fn new() -> Pki {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca_key = rcgen::KeyPair::generate().expect("key");
        let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).expect("ca");
        std::fs::write(dir.path().join("ca.crt"), ca.pem()).expect("write");
        for (name, san) in [
            ("default", "localhost"),
            ("other", "*.other.test"),
            ("client", "client.test"),
        ] {
            let key = rcgen::KeyPair::generate().expect("key");
            let params = rcgen::CertificateParams::new(vec![san.to_string()]).expect("params");
            let cert = params.signed_by(&key, &ca).expect("sign");
            std::fs::write(dir.path().join(format!("{name}.crt")), cert.pem()).expect("write");
            std::fs::write(dir.path().join(format!("{name}.key")), key.serialize_pem()).expect("write");
        }
        Pki {
            ca: ca.der().clone(),
            dir,
        }
    }

    fn path(&self, file: &str) -> String {
        self.dir.path().join(file).display().to_string()
    }

    fn listener_keys(&self) -> String {
        format!(
            "[listener.main.tls]\ncertificates = [\n  {{ cert = \"{}\", key = \"{}\" }},\n  {{ cert = \"{}\", key = \"{}\" }},\n]\n",
            self.path("default.crt"),
            self.path("default.key"),
            self.path("other.crt"),
            self.path("other.key"),
        )
    }

    fn connector(&self, alpn: &[&[u8]]) -> tokio_rustls::TlsConnector {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca.clone()).expect("root");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        tokio_rustls::TlsConnector::from(Arc::new(config))
    }
}

/// A TLS listener: its config (the TLS table must follow the listener's
/// own keys, so the route and upstream come after it).
fn tls_gateway(pki: &Pki, backend: SocketAddr) -> String {
    format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n\n[listener.main]\naddress = \"127.0.0.1:0\"\n\n{}\n\
         [[route]]\nname = \"all\"\nupstream = \"app\"\n\n\
         [upstream.app.region.local]\nendpoints = [\"{backend}\"]\n",
        pki.listener_keys()
    )
}

#[tokio::test]
async fn tls_serves_http1_and_h2_by_alpn_and_picks_the_certificate_by_sni() {
    let backend = Backend::start("b1").await;
    let pki = Pki::new();
    let h = Harness::start(&tls_gateway(&pki, backend.addr())).await;

    // HTTP/1.1 by ALPN.
    let tcp = tokio::net::TcpStream::connect(h.addr).await.expect("connect");
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    let mut tls = pki
        .connector(&[b"http/1.1"])
        .connect(name, tcp)
        .await
        .expect("handshake for localhost");
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    tls.write_all(b"GET /one HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .expect("send");
    let mut text = String::new();
    tokio::time::timeout(SETTLE, tls.read_to_string(&mut text))
        .await
        .expect("in time")
        .expect("read");
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");

    // h2 by ALPN, to the name only the second certificate covers: the
    // handshake succeeds only if SNI chose it.
    let tcp = tokio::net::TcpStream::connect(h.addr).await.expect("connect");
    let name = rustls::pki_types::ServerName::try_from("api.other.test").expect("name");
    let tls = pki
        .connector(&[b"h2", b"http/1.1"])
        .connect(name, tcp)
        .await
        .expect("handshake for api.other.test");
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tls),
    )
    .await
    .expect("h2 handshake");
    let driver = tokio::spawn(conn);
    let req = http::Request::get("https://api.other.test/two")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .expect("request");
    let res = tokio::time::timeout(SETTLE, sender.send_request(req))
        .await
        .expect("in time")
        .expect("response");
    assert_eq!(res.status(), 200);
    drop(sender);
    driver.abort();

    // The backend heard both over plain HTTP, told the client used https.
    let seen = backend.ledger().arrivals();
    assert_eq!(seen.len(), 2);
    for a in &seen {
        assert_eq!(a.header("x-forwarded-proto"), Some("https"), "{}", a.path);
    }
}

#[tokio::test]
async fn a_plain_text_request_on_a_tls_listener_is_not_served() {
    let backend = Backend::start("b1").await;
    let pki = Pki::new();
    let h = Harness::start(&tls_gateway(&pki, backend.addr())).await;
    let mut conn = RawConn::connect(h.addr).await.expect("connect");
    conn.send(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .expect("send");
    let bytes = conn.read_to_end_within(SETTLE).await;
    assert!(
        !bytes.starts_with(b"HTTP/"),
        "{:?}",
        String::from_utf8_lossy(&bytes)
    );
    assert!(backend.ledger().is_empty());
}

/// A weight change through the admin API rebuilds the balancers with the
/// certificates already in memory: a key file broken since the start
/// refuses a reload, not the weight change.
#[tokio::test]
async fn a_weight_change_reads_no_certificate_file() {
    let backend = Backend::start("b1").await;
    let pki = Pki::new();
    let h = Harness::start_file(&tls_gateway(&pki, backend.addr()), false).await;
    std::fs::write(pki.path("other.key"), "not a key").expect("write");
    assert_eq!(api_reload(h.admin).await.expect("reload").status, 422);
    let req = http::Request::put(format!(
        "/api/v1/upstreams/app/endpoints/{}/weight",
        backend.addr()
    ))
    .header("content-type", "application/json")
    .body(http_body_util::Full::new(bytes::Bytes::from_static(
        br#"{"weight": 2}"#,
    )))
    .expect("request");
    let r = levee_testkit::Client::http1(h.admin)
        .send(req)
        .await
        .expect("reply");
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.text().contains("\"weight\":2"), "{}", r.text());
}

#[tokio::test]
async fn a_bad_certificate_file_is_refused_with_its_path() {
    let pki = Pki::new();
    std::fs::write(pki.path("other.key"), "not a key").expect("write");
    let config = levee_config::parse(&tls_gateway(&pki, "127.0.0.1:1".parse().expect("addr")))
        .expect("the config itself is valid");
    let errors = levee_proxy::tls::check(&config).expect_err("refused");
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].path, "listener.main.tls.certificates[1].key");
}

/// The CPU time (user + system, in clock ticks) a process has used.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    // Fields after the command name (which is in parentheses).
    let rest = &stat[stat.rfind(')').expect("comm") + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime")
}

#[tokio::test]
async fn running_out_of_file_descriptors_backs_off_and_recovers() {
    let backend = Backend::start("b1").await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let toml = gateway("", "", "", backend.addr()).replacen(
        "[listener.main]\naddress = \"127.0.0.1:0\"",
        &format!("[listener.main]\naddress = \"{addr}\""),
        1,
    );
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("levee.toml");
    std::fs::write(&path, toml).expect("write");
    // levee with 64 file descriptors in all.
    let mut child = std::process::Command::new("prlimit")
        .args(["--nofile=64:64", "--"])
        .arg(env!("CARGO_BIN_EXE_levee"))
        .args(["run", "--no-watch", "-c"])
        .arg(&path)
        .env("LEVEE_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("stderr")).expect("log file"))
        .spawn()
        .expect("spawn levee under prlimit");
    let pid = child.id();
    levee_testkit::eventually_async(SETTLE, "levee serves", || async move {
        levee_testkit::Client::http1(addr)
            .get("/")
            .await
            .is_ok_and(|r| r.status == 200)
    })
    .await;

    // Hold more connections than levee has descriptors for: the kernel
    // queues the rest, and accept fails with EMFILE.
    let mut held = Vec::new();
    for _ in 0..100 {
        held.push(tokio::net::TcpStream::connect(addr).await.expect("connect"));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = cpu_ticks(pid);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let spent = cpu_ticks(pid) - before;
    assert!(
        child.try_wait().expect("wait").is_none(),
        "levee died out of descriptors"
    );
    // 100 ticks is a second of CPU: a spinning accept loop would burn ~200.
    assert!(
        spent < 50,
        "levee used {spent} ticks of CPU in 2 s while out of descriptors"
    );

    // It did run out, and said so without a log storm (at most once a second).
    let log = std::fs::read_to_string(dir.path().join("stderr")).expect("log");
    let warnings = log.matches("accept failed").count();
    assert!((1..=4).contains(&warnings), "{warnings} accept warnings:\n{log}");

    drop(held);
    levee_testkit::eventually_async(SETTLE, "levee serves again", || async move {
        levee_testkit::Client::http1(addr)
            .get("/")
            .await
            .is_ok_and(|r| r.status == 200)
    })
    .await;
    let _ = child.kill();
    let _ = child.wait();
}

/// Front levee -> (TLS) -> back levee terminating TLS -> backend: levee's
/// TLS origination tested against levee's TLS termination.
fn front_and_back(pki: &Pki, back: SocketAddr, protocol: &str, tls_keys: &str) -> String {
    format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n\n[listener.main]\naddress = \"127.0.0.1:0\"\n\n\
         [[route]]\nname = \"all\"\nupstream = \"app\"\n[route.retry]\nattempts = 1\n\n\
         [upstream.app]\nprotocol = \"{protocol}\"\n[upstream.app.tls]\n{tls_keys}\n\
         [upstream.app.region.local]\nendpoints = [\"{back}\"]\n",
    )
    .replace("{ca}", &pki.path("ca.crt"))
}

#[tokio::test]
async fn upstreams_are_reached_over_tls_with_a_configured_ca_over_http1_and_h2() {
    let backend = Backend::start("b1").await;
    let pki = Pki::new();
    let back = Harness::start(&tls_gateway(&pki, backend.addr())).await;
    for protocol in ["http1", "http2"] {
        let front = Harness::start(&front_and_back(
            &pki,
            back.addr,
            protocol,
            "ca = \"{ca}\"\nsni = \"localhost\"",
        ))
        .await;
        let res = front
            .client()
            .get(&format!("/{protocol}"))
            .await
            .expect("response");
        assert_eq!(res.status, 200, "{protocol}: {}", res.text());
    }
    // The back levee received both over TLS.
    let seen = backend.ledger().arrivals();
    assert_eq!(seen.len(), 2);
    assert!(
        seen.iter()
            .all(|a| a.header("x-forwarded-proto") == Some("https"))
    );
}

#[tokio::test]
async fn an_upstream_certificate_levee_cannot_verify_is_a_502_and_fails_its_checks() {
    let backend = Backend::start("b1").await;
    let pki = Pki::new();
    let back = Harness::start(&tls_gateway(&pki, backend.addr())).await;
    // The system's roots do not know the test CA.
    let front = Harness::start(&front_and_back(&pki, back.addr, "http1", "sni = \"localhost\"")).await;
    let mut conn = RawConn::connect(front.addr).await.expect("connect");
    conn.send(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .expect("send");
    let res = conn.read_response(SETTLE).await.expect("response");
    assert_generated("untrusted upstream", &res, 502, "tls_certificate_error");
    // The right CA but a name the certificate does not cover: refused too.
    let front = Harness::start(&front_and_back(
        &pki,
        back.addr,
        "http1",
        "ca = \"{ca}\"\nsni = \"wrong.example\"",
    ))
    .await;
    let mut conn = RawConn::connect(front.addr).await.expect("connect");
    conn.send(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .expect("send");
    let res = conn.read_response(SETTLE).await.expect("response");
    assert_generated("wrong name", &res, 502, "tls_certificate_error");
    assert!(backend.ledger().is_empty());

    // Active checks go over TLS as requests do: an endpoint whose
    // certificate levee refuses fails them and leaves rotation, and one
    // it accepts passes them.
    let checks = "\n[upstream.app.health]\npath = \"/\"\ninterval = \"100ms\"\nrise = 1\nfall = 1";
    let healthy = "levee_upstream_endpoint_healthy{upstream=\"app\",region=\"local\",endpoint=";
    let untrusted = Harness::start(&front_and_back(
        &pki,
        back.addr,
        "http1",
        &format!("sni = \"localhost\"{checks}"),
    ))
    .await;
    let trusted = Harness::start(&front_and_back(
        &pki,
        back.addr,
        "http1",
        &format!("ca = \"{{ca}}\"\nsni = \"localhost\"{checks}"),
    ))
    .await;
    let series = format!("{healthy}\"{}\"}}", back.addr);
    levee_testkit::eventually_async(SETTLE, "the untrusted endpoint fails its checks", || {
        let (h, series) = (&untrusted, series.clone());
        async move { h.metrics().await.contains(&format!("{series} 0")) }
    })
    .await;
    let res = untrusted.client().get("/").await.expect("response");
    assert_eq!(res.status, 503, "out of rotation: {}", res.text());
    // Endpoints start healthy: what shows the trusted one's checks pass is
    // that they run and succeed, and that it stays in rotation.
    let passed = format!(
        "levee_upstream_health_checks_total{{upstream=\"app\",region=\"local\",endpoint=\"{}\",result=\"success\"}}",
        back.addr
    );
    levee_testkit::eventually_async(SETTLE, "the trusted endpoint passes checks", || async {
        trusted.metric(&passed).await >= 2.0
    })
    .await;
    assert_eq!(trusted.metric(&series).await, 1.0);
    assert_eq!(trusted.client().get("/").await.expect("response").status, 200);
}

/// A TLS server that requires a client certificate signed by the test CA
/// and answers every connection's first request with 200 "ok".
async fn mutual_tls_origin(pki: &Pki) -> SocketAddr {
    use rustls::pki_types::pem::PemObject;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(pki.ca.clone()).expect("root");
    let verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .build()
            .expect("verifier");
    let chain = rustls::pki_types::CertificateDer::pem_file_iter(pki.path("default.crt"))
        .expect("pem")
        .collect::<Result<Vec<_>, _>>()
        .expect("certs");
    let key = rustls::pki_types::PrivateKeyDer::from_pem_file(pki.path("default.key")).expect("key");
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .expect("config");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut buf = vec![0u8; 4096];
                let mut got = Vec::new();
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tls.read(&mut buf).await {
                        Ok(n) if n > 0 => got.extend_from_slice(&buf[..n]),
                        _ => return,
                    }
                }
                let _ = tls
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                    .await;
                let _ = tls.shutdown().await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn a_client_certificate_is_presented_to_upstreams_that_require_one() {
    let pki = Pki::new();
    let origin = mutual_tls_origin(&pki).await;
    let with = format!(
        "ca = \"{{ca}}\"\nsni = \"localhost\"\ncert = \"{}\"\nkey = \"{}\"",
        pki.path("client.crt"),
        pki.path("client.key")
    );
    let front = Harness::start(&front_and_back(&pki, origin, "http1", &with)).await;
    let res = front.client().get("/").await.expect("response");
    assert_eq!(res.status, 200);
    assert_eq!(res.text(), "ok");
    // Without one, the origin refuses it. Under TLS 1.3 the server judges
    // the client's certificate after the client has finished its side of
    // the handshake, so the refusal arrives as the connection closing.
    let front = Harness::start(&front_and_back(
        &pki,
        origin,
        "http1",
        "ca = \"{ca}\"\nsni = \"localhost\"",
    ))
    .await;
    let res = front.client().get("/").await.expect("response");
    assert_eq!(res.status, 502);
    let status = res.header("proxy-status").unwrap_or_default();
    assert!(
        status.contains("error=tls_") || status.contains("error=connection_terminated"),
        "{status:?}"
    );
}

#[tokio::test]
async fn a_reload_picks_up_renewed_certificates() {
    let backend = Backend::start("b1").await;
    let pki = Pki::new();
    let h = Harness::start_file(&tls_gateway(&pki, backend.addr()), false).await;
    let served = |h: &Harness| {
        let connector = pki.connector(&[b"http/1.1"]);
        let addr = h.addr;
        async move {
            let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
            let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
            let tls = connector.connect(name, tcp).await.expect("handshake");
            tls.get_ref().1.peer_certificates().expect("certificate")[0].clone()
        }
    };
    let before = served(&h).await;
    // Renew: a new key and certificate for the same name, same paths.
    let renewed = Pki::new();
    for file in ["default.crt", "default.key"] {
        std::fs::copy(renewed.path(file), pki.path(file)).expect("copy");
    }
    // Signed by the other CA: trust it for the second handshake.
    let still_old = served(&h).await;
    assert_eq!(still_old, before, "nothing changes before the reload");
    let reply = api_reload(h.admin).await.expect("reload");
    assert_eq!(reply.status, 200, "{}", reply.text());
    let connector = renewed.connector(&[b"http/1.1"]);
    let tcp = tokio::net::TcpStream::connect(h.addr).await.expect("connect");
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    let tls = connector
        .connect(name, tcp)
        .await
        .expect("handshake with the renewed certificate");
    let after = tls.get_ref().1.peer_certificates().expect("certificate")[0].clone();
    assert_ne!(after, before);
}

#[tokio::test]
async fn behind_proxy_protocol_access_and_caps_apply_to_the_real_client() {
    let backend = Backend::start("b1").await;
    let h = Harness::start(&gateway(
        "trusted_proxies = [\"127.0.0.1\"]\nmax_connections_per_ip = 2",
        "proxy_protocol = true\ndeny = [\"198.51.100.66\"]",
        "",
        backend.addr(),
    ))
    .await;
    // Opens a keep-alive connection through the "balancer" (127.0.0.1) for
    // `source`; Some(connection) if it was served.
    let open = |source: &str| {
        let header = levee_proxy::proxy_v2_header(source.parse().expect("addr"), h.addr);
        async move {
            let mut conn = RawConn::connect_from(ip("127.0.0.1"), h.addr)
                .await
                .expect("connect");
            let mut bytes = header;
            bytes.extend_from_slice(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n");
            conn.send(&bytes).await.ok()?;
            let res = conn.read_response(SETTLE).await.ok()?;
            (res.status == 200).then_some(conn)
        }
    };
    // Many clients through one balancer: its address is not one client.
    let mut held = Vec::new();
    for i in 1..=5 {
        held.push(open(&format!("198.51.100.{i}:4000")).await.expect("served"));
    }
    // One client's own cap still holds.
    held.push(open("198.51.100.1:4001").await.expect("its second connection"));
    assert!(
        open("198.51.100.1:4002").await.is_none(),
        "a third connection for one client"
    );
    // The listener's deny list judges the real client.
    assert!(
        open("198.51.100.66:4000").await.is_none(),
        "a denied client behind the balancer"
    );
    assert_eq!(backend.ledger().len(), 6);
    let refused = h.metrics().await;
    assert!(
        refused.contains(
            "levee_listener_connections_refused_total{listener=\"main\",reason=\"max_connections_per_ip\"} 1"
        ),
        "{refused}"
    );
    assert!(
        refused.contains("levee_listener_connections_refused_total{listener=\"main\",reason=\"denied\"} 1"),
        "{refused}"
    );
}

#[tokio::test]
async fn a_reload_that_changes_the_protocol_renews_the_tls_connector() {
    let backend = Backend::start("b1").await;
    let pki = Pki::new();
    let back = Harness::start(&tls_gateway(&pki, backend.addr())).await;
    let keys = "ca = \"{ca}\"\nsni = \"localhost\"";
    let front = Harness::start_file(&front_and_back(&pki, back.addr, "http1", keys), false).await;
    assert_eq!(front.client().get("/one").await.expect("response").status, 200);
    // Same TLS table, HTTP/2 now: the connector must offer h2 in ALPN.
    std::fs::write(
        front.config_path(),
        front_and_back(&pki, back.addr, "http2", keys),
    )
    .expect("write");
    let reply = api_reload(front.admin).await.expect("reload");
    assert_eq!(reply.status, 200, "{}", reply.text());
    let res = front.client().get("/two").await.expect("response");
    assert_eq!(res.status, 200, "{}", res.text());
    assert_eq!(backend.ledger().len(), 2);
}

#[tokio::test]
async fn a_trusted_proxy_is_not_capped_as_one_client() {
    let backend = Backend::start("b1").await;
    let h = Harness::start(&gateway(
        "trusted_proxies = [\"127.0.0.10\"]\nmax_connections_per_ip = 2",
        "",
        "",
        backend.addr(),
    ))
    .await;
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(held_from("127.0.0.10", h.addr).await);
    }
    held.push(held_from("127.0.0.11", h.addr).await);
    held.push(held_from("127.0.0.11", h.addr).await);
    assert_refused("127.0.0.11", h.addr).await;
}
