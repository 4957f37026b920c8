//! TLS: termination for listeners (certificates from PEM files, chosen by
//! SNI) and origination to upstreams (the system's roots or a configured
//! CA, SNI, an optional client certificate).
//!
//! The files are read when a config is applied (at start, on every reload
//! and by `levee check`), so a reload picks up renewed certificates and a
//! bad file is refused with the config path that names it, leaving the
//! running config in place. Handshakes then only pick among keys already
//! loaded: nothing on the accept path touches the disk.

use std::collections::HashMap;
use std::sync::Arc;

use levee_config::{Config, EndpointAddress, Protocol, Tls, TlsVersion, UpstreamTls};
use levee_core::id::{ListenerName, UpstreamName};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore, ServerConfig, version};

/// A problem with a certificate file, with the config path it came from.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct TlsError {
    pub path: String,
    pub message: String,
}

/// The TLS settings of a config: listeners that terminate TLS, upstreams
/// reached over it.
#[derive(Default)]
pub(crate) struct Loaded {
    pub acceptors: HashMap<ListenerName, Arc<ServerConfig>>,
    pub connectors: HashMap<UpstreamName, Arc<Connector>>,
}

/// How to open TLS to one upstream's endpoints.
pub(crate) struct Connector {
    pub connector: tokio_rustls::TlsConnector,
    /// The configured name; without one, each endpoint's own.
    pub sni: Option<ServerName<'static>>,
    /// What it was built from: the settings, the protocol (its ALPN) and
    /// the files' contents. A reload keeps the running connector, and the
    /// connections pooled with it, only when this is unchanged.
    pub fingerprint: u64,
}

impl Connector {
    /// The name to send and verify for an endpoint.
    pub fn name_for(&self, address: &EndpointAddress) -> Option<ServerName<'static>> {
        self.sni.clone().or_else(|| match address {
            EndpointAddress::Ip(addr) => Some(ServerName::IpAddress(addr.ip().into())),
            EndpointAddress::Dns { host, .. } => ServerName::try_from(host.clone()).ok(),
        })
    }
}

/// Reads every certificate, key and CA file `config` names, reporting all
/// problems at once.
pub fn check(config: &Config) -> Result<(), Vec<TlsError>> {
    load(config).map(|_| ())
}

pub(crate) fn load(config: &Config) -> Result<Loaded, Vec<TlsError>> {
    let mut errors = Vec::new();
    let mut out = Loaded::default();
    for l in &config.listeners {
        let Some(tls) = &l.tls else { continue };
        match server_config(&format!("listener.{}.tls", l.name), tls) {
            Ok(c) => {
                out.acceptors.insert(l.name.clone(), Arc::new(c));
            }
            Err(mut e) => errors.append(&mut e),
        }
    }
    for u in &config.upstreams {
        let Some(tls) = &u.tls else { continue };
        match client_config(&format!("upstream.{}.tls", u.name), tls, u.protocol) {
            Ok(c) => {
                let connector = Connector {
                    connector: tokio_rustls::TlsConnector::from(Arc::new(c)),
                    sni: tls
                        .sni
                        .as_ref()
                        .and_then(|n| ServerName::try_from(n.clone()).ok()),
                    fingerprint: fingerprint(tls, u.protocol),
                };
                out.connectors.insert(u.name.clone(), Arc::new(connector));
            }
            Err(mut e) => errors.append(&mut e),
        }
    }
    if errors.is_empty() { Ok(out) } else { Err(errors) }
}

/// A hash of what a connector is built from. The files were just read
/// successfully, so reading them again only fails in a race with their
/// replacement, which then shows as a change.
fn fingerprint(tls: &UpstreamTls, protocol: Protocol) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    tls.hash(&mut h);
    (protocol == Protocol::Http2).hash(&mut h);
    let files = [
        tls.ca.as_deref(),
        tls.client_certificate.as_ref().map(|c| c.cert.as_path()),
        tls.client_certificate.as_ref().map(|c| c.key.as_path()),
    ];
    for file in files.into_iter().flatten() {
        std::fs::read(file).ok().hash(&mut h);
    }
    h.finish()
}

fn client_config(path: &str, tls: &UpstreamTls, protocol: Protocol) -> Result<ClientConfig, Vec<TlsError>> {
    let provider = provider();
    let mut roots = RootCertStore::empty();
    match &tls.ca {
        Some(ca) => {
            let certs = CertificateDer::pem_file_iter(ca)
                .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                .map_err(|e| {
                    vec![TlsError {
                        path: format!("{path}.ca"),
                        message: format!("{}: {}", ca.display(), pem_problem(&e)),
                    }]
                })?;
            let (added, _) = roots.add_parsable_certificates(certs);
            if added == 0 {
                return Err(vec![TlsError {
                    path: format!("{path}.ca"),
                    message: format!("{}: no usable CA certificate in the file", ca.display()),
                }]);
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            let (added, _) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                return Err(vec![TlsError {
                    path: format!("{path}.ca"),
                    message: "no system CA certificates found; name a CA file".to_string(),
                }]);
            }
        }
    }
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&version::TLS13, &version::TLS12])
        .map_err(|e| {
            vec![TlsError {
                path: path.to_string(),
                message: e.to_string(),
            }]
        })?
        .with_root_certificates(roots);
    let mut config = match &tls.client_certificate {
        None => builder.with_no_client_auth(),
        Some(c) => {
            let key = certified_key(path, &c.cert, &c.key, &provider).map_err(|e| vec![e])?;
            let chain = key.cert.clone();
            let der = PrivateKeyDer::from_pem_file(&c.key).map_err(|e| {
                vec![TlsError {
                    path: format!("{path}.key"),
                    message: format!("{}: {}", c.key.display(), pem_problem(&e)),
                }]
            })?;
            builder.with_client_auth_cert(chain, der).map_err(|e| {
                vec![TlsError {
                    path: format!("{path}.key"),
                    message: e.to_string(),
                }]
            })?
        }
    };
    config.alpn_protocols = vec![match protocol {
        Protocol::Http1 => b"http/1.1".to_vec(),
        Protocol::Http2 => b"h2".to_vec(),
    }];
    Ok(config)
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn server_config(path: &str, tls: &Tls) -> Result<ServerConfig, Vec<TlsError>> {
    let provider = provider();
    let mut errors = Vec::new();
    let mut certs = Vec::new();
    for (i, c) in tls.certificates.iter().enumerate() {
        let at = format!("{path}.certificates[{i}]");
        match certified_key(&at, &c.cert, &c.key, &provider) {
            Ok(k) => certs.push(Arc::new(k)),
            Err(e) => errors.push(e),
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    let versions: &[&'static rustls::SupportedProtocolVersion] = match tls.min_version {
        TlsVersion::V1_2 => &[&version::TLS13, &version::TLS12],
        TlsVersion::V1_3 => &[&version::TLS13],
    };
    let builder = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .map_err(|e| {
            vec![TlsError {
                path: format!("{path}.min_version"),
                message: e.to_string(),
            }]
        })?;
    let mut config = builder
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(BySni { certs }));
    config.alpn_protocols = tls.alpn.iter().map(|a| a.id().to_vec()).collect();
    Ok(config)
}

fn certified_key(
    at: &str,
    cert: &std::path::Path,
    key: &std::path::Path,
    provider: &CryptoProvider,
) -> Result<CertifiedKey, TlsError> {
    let err = |field: &str, message: String| TlsError {
        path: format!("{at}.{field}"),
        message,
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| err("cert", format!("{}: {}", cert.display(), pem_problem(&e))))?;
    if chain.is_empty() {
        return Err(err(
            "cert",
            format!("{}: no CERTIFICATE in the file", cert.display()),
        ));
    }
    let der = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| err("key", format!("{}: {}", key.display(), pem_problem(&e))))?;
    CertifiedKey::from_der(chain, der, provider).map_err(|e| {
        err(
            "key",
            format!("{}: does not go with the certificate: {e}", key.display()),
        )
    })
}

fn pem_problem(e: &rustls::pki_types::pem::Error) -> String {
    match e {
        rustls::pki_types::pem::Error::Io(io) => io.to_string(),
        rustls::pki_types::pem::Error::NoItemsFound => "no PEM item of the expected kind".into(),
        other => format!("not valid PEM ({other:?})"),
    }
}

/// Chooses the first certificate valid for the client's SNI name, or the
/// first certificate when none is (or no name was sent): a client that
/// asked for a name levee has no certificate for gets a certificate it
/// will refuse, which is a clearer failure than an aborted handshake.
#[derive(Debug)]
struct BySni {
    certs: Vec<Arc<CertifiedKey>>,
}

impl ResolvesServerCert for BySni {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        // Parsing the certificate again per handshake costs microseconds
        // next to the handshake's signature, and keeps no borrowed state.
        let chosen = hello
            .server_name()
            .and_then(|name| ServerName::try_from(name).ok())
            .and_then(|name| {
                self.certs.iter().find(|k| {
                    k.end_entity_cert()
                        .ok()
                        .and_then(|der| webpki::EndEntityCert::try_from(der).ok())
                        .is_some_and(|ee| ee.verify_is_valid_for_subject_name(&name).is_ok())
                })
            })
            .or_else(|| self.certs.first())?;
        Some(chosen.clone())
    }
}
