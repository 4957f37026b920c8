//! One POST to a receiver: a fresh HTTP/1.1 connection (TLS for https),
//! one request, the response status, the connection closed. Notifications
//! are rare, so nothing is pooled; every step is bounded by one deadline.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Request, Uri, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// Response bytes read (and dropped) at most, so that the exchange ends
/// cleanly without letting a receiver make levee read without end.
const MAX_RESPONSE_BODY: usize = 64 * 1024;

/// Where a notifier posts: resolved once from its URL.
#[derive(Clone)]
pub struct Target {
    host: String,
    port: u16,
    authority: String,
    path: String,
    tls: Option<(Arc<rustls::ClientConfig>, ServerName<'static>)>,
}

/// Why an attempt failed. Messages never contain the URL, which may be a
/// credential.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The URL cannot be used (no TLS roots, a bad host name).
    Setup(String),
    Connect(String),
    Tls(String),
    /// No complete answer within the notifier's `timeout`.
    Timeout(Duration),
    /// The connection broke during the exchange.
    Io(String),
    /// The receiver answered, but not with a 2xx.
    Status(u16),
}

impl Failure {
    /// Whether trying again may help: not for a refusal of the request
    /// itself (a 4xx other than 408 and 429) or a URL that cannot work.
    pub fn retryable(&self) -> bool {
        match self {
            Failure::Setup(_) => false,
            Failure::Status(s) => *s == 408 || *s == 429 || *s >= 500,
            _ => true,
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Setup(why) => write!(f, "cannot send: {why}"),
            Failure::Connect(why) => write!(f, "connect: {why}"),
            Failure::Tls(why) => write!(f, "tls: {why}"),
            Failure::Timeout(d) => write!(f, "no answer within {}ms", d.as_millis()),
            Failure::Io(why) => write!(f, "exchange: {why}"),
            Failure::Status(s) => write!(f, "answered HTTP {s}"),
        }
    }
}

impl Target {
    /// The target of `url` (validated by the config: http or https, with
    /// a host). https loads the system's CA certificates.
    pub fn new(url: &Uri) -> Result<Target, Failure> {
        let authority = url
            .authority()
            .ok_or_else(|| Failure::Setup("the URL has no host".to_string()))?;
        let https = url.scheme_str() == Some("https");
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
        let path = url.path_and_query().map_or("/", |p| p.as_str()).to_string();
        let tls = if https {
            let name = ServerName::try_from(host.clone())
                .map_err(|_| Failure::Setup("the URL's host is not a valid TLS server name".to_string()))?;
            Some((tls_config()?, name))
        } else {
            None
        };
        Ok(Target {
            host,
            port,
            authority: authority.as_str().to_string(),
            path,
            tls,
        })
    }

    /// The same target with `suffix` appended to its path (Alertmanager's
    /// `/api/v2/alerts` under the configured base URL).
    pub fn join(mut self, suffix: &str) -> Target {
        let base = self.path.split('?').next().unwrap_or("/").trim_end_matches('/');
        self.path = format!("{base}{suffix}");
        self
    }

    /// POSTs `body` as JSON with `headers`; the whole exchange, connect
    /// included, within `timeout`. `Ok` is a 2xx answer.
    pub async fn post(
        &self,
        headers: &[(HeaderName, HeaderValue)],
        body: Bytes,
        timeout: Duration,
    ) -> Result<u16, Failure> {
        match tokio::time::timeout(timeout, self.exchange(headers, body)).await {
            Ok(r) => r,
            Err(_) => Err(Failure::Timeout(timeout)),
        }
    }

    async fn exchange(&self, headers: &[(HeaderName, HeaderValue)], body: Bytes) -> Result<u16, Failure> {
        let mut request = Request::post(self.path.as_str())
            .header(header::HOST, self.authority.as_str())
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::USER_AGENT, concat!("levee/", env!("CARGO_PKG_VERSION")))
            .header(header::CONNECTION, "close")
            .body(Full::new(body))
            .map_err(|e| Failure::Setup(e.to_string()))?;
        for (name, value) in headers {
            request.headers_mut().insert(name.clone(), value.clone());
        }
        let tcp = TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|e| Failure::Connect(e.to_string()))?;
        let _ = tcp.set_nodelay(true);
        match &self.tls {
            None => send(TokioIo::new(tcp), request).await,
            Some((config, name)) => {
                let stream = TlsConnector::from(config.clone())
                    .connect(name.clone(), tcp)
                    .await
                    .map_err(|e| Failure::Tls(e.to_string()))?;
                send(TokioIo::new(stream), request).await
            }
        }
    }
}

/// One request on a new HTTP/1.1 connection, driven to its end.
async fn send<I>(io: I, request: Request<Full<Bytes>>) -> Result<u16, Failure>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| Failure::Io(e.to_string()))?;
    let exchange = async move {
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| Failure::Io(e.to_string()))?;
        let status = response.status().as_u16();
        // The body is read so the connection ends cleanly; its content is
        // not kept (a receiver's error page could echo the request).
        let _ = Limited::new(response.into_body(), MAX_RESPONSE_BODY)
            .collect()
            .await;
        // Dropping the sender lets the connection future finish.
        drop(sender);
        if (200..300).contains(&status) {
            Ok(status)
        } else {
            Err(Failure::Status(status))
        }
    };
    // The connection is driven here, not spawned: it ends with the exchange.
    let (result, _) = tokio::join!(exchange, conn);
    result
}

/// Client TLS with the system's CA certificates, shared by every https
/// notifier (loading them reads many files: once is enough).
fn tls_config() -> Result<Arc<rustls::ClientConfig>, Failure> {
    static CONFIG: std::sync::OnceLock<Result<Arc<rustls::ClientConfig>, Failure>> =
        std::sync::OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let mut roots = rustls::RootCertStore::empty();
            let found = rustls_native_certs::load_native_certs();
            let (added, _) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                return Err(Failure::Setup("no system CA certificates found".to_string()));
            }
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let mut config = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map_err(|e| Failure::Setup(e.to_string()))?
                .with_root_certificates(roots)
                .with_no_client_auth();
            config.alpn_protocols = vec![b"http/1.1".to_vec()];
            Ok(Arc::new(config))
        })
        .clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_keep_path_and_query_and_join_below_the_path() {
        let t = Target::new(&"http://127.0.0.1:9093/am/?x=1".parse().unwrap()).unwrap();
        assert_eq!((t.host.as_str(), t.port), ("127.0.0.1", 9093));
        assert_eq!(t.path, "/am/?x=1");
        assert_eq!(t.join("/api/v2/alerts").path, "/am/api/v2/alerts");
        let t = Target::new(&"http://[::1]/".parse().unwrap()).unwrap();
        assert_eq!((t.host.as_str(), t.port), ("::1", 80));
        assert_eq!(t.join("/api/v2/alerts").path, "/api/v2/alerts");
    }

    #[test]
    fn only_failures_that_may_pass_are_retried() {
        assert!(Failure::Status(500).retryable());
        assert!(Failure::Status(429).retryable());
        assert!(!Failure::Status(400).retryable());
        assert!(!Failure::Status(404).retryable());
        assert!(Failure::Timeout(Duration::from_secs(1)).retryable());
        assert!(Failure::Connect("refused".into()).retryable());
    }
}
