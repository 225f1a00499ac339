//! TLS for the agent: rustls (ring) under a tonic channel, with our own connector.
//!
//! Three trust modes, one per step of the protocol:
//! * [`Trust::PinnedLater`]: `GetClusterInfo` before the node knows the CA. The server is not
//!   verified here (there is nothing to verify it against yet); the CA it returns is checked
//!   against the `keel.ca-hash` pin before anything is sent that matters.
//! * [`Trust::Ca`]: `Join`, server verified by the now-trusted CA.
//! * [`Trust::Mutual`]: `Session`, server verified by the CA, and the node presents its
//!   certificate.
//!
//! tonic's own TLS feature is not used: the channel dials through the connector in [`channel`], which does the
//! handshake itself and notes whether it failed for a certificate reason, so the agent can tell
//! "the control plane is down" (retry) from "the cluster no longer knows me" (join again).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use sha2::{Digest, Sha256};
use tonic::transport::{Channel, Endpoint, Uri};
use x509_parser::prelude::{FromDer, X509Certificate};

/// Why TLS could not be set up from stored material.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{0} is not valid PEM")]
    Pem(&'static str),
    #[error("certificate cannot be parsed: {0}")]
    Parse(String),
    #[error("TLS: {0}")]
    Rustls(#[from] rustls::Error),
}

/// Where the control plane listens, from `keel.server=https://HOST[:PORT]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerAddr {
    pub host: String,
    pub port: u16,
}

/// The node gate's port when the URL names none.
pub const DEFAULT_PORT: u16 = 9443;

impl ServerAddr {
    pub fn parse(url: &str) -> Option<ServerAddr> {
        let rest = url.trim().strip_prefix("https://").unwrap_or(url.trim());
        let rest = rest.split('/').next()?;
        let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
            let (h, after) = v6.split_once(']')?;
            let port = match after.strip_prefix(':') {
                Some(p) => p.parse().ok()?,
                None if after.is_empty() => DEFAULT_PORT,
                None => return None,
            };
            (h.to_string(), port)
        } else {
            match rest.rsplit_once(':') {
                Some((h, p)) => (h.to_string(), p.parse().ok()?),
                None => (rest.to_string(), DEFAULT_PORT),
            }
        };
        (!host.is_empty()).then_some(ServerAddr { host, port })
    }

    fn server_name(&self) -> Option<ServerName<'static>> {
        ServerName::try_from(self.host.clone()).ok()
    }
}

impl std::fmt::Display for ServerAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// `sha256:<hex>` of the SubjectPublicKeyInfo of the first certificate in `ca_pem`.
pub fn ca_pin(ca_pem: &str) -> Result<String, TlsError> {
    let der = CertificateDer::from_pem_slice(ca_pem.as_bytes()).map_err(|_| TlsError::Pem("CA"))?;
    let (_, cert) = X509Certificate::from_der(&der).map_err(|e| TlsError::Parse(e.to_string()))?;
    Ok(format!(
        "sha256:{}",
        hex::encode(Sha256::digest(cert.tbs_certificate.subject_pki.raw))
    ))
}

/// How the agent trusts the server, and whether it shows its own certificate.
pub enum Trust<'a> {
    PinnedLater,
    Ca {
        ca_pem: &'a str,
    },
    Mutual {
        ca_pem: &'a str,
        cert_pem: &'a str,
        key_pem: &'a str,
    },
}

pub fn client_config(trust: Trust<'_>) -> Result<Arc<ClientConfig>, TlsError> {
    let provider = provider();
    let builder =
        ClientConfig::builder_with_provider(provider.clone()).with_safe_default_protocol_versions()?;
    let mut cfg = match trust {
        Trust::PinnedLater => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyServer { provider }))
            .with_no_client_auth(),
        Trust::Ca { ca_pem } => builder
            .with_root_certificates(roots(ca_pem)?)
            .with_no_client_auth(),
        Trust::Mutual {
            ca_pem,
            cert_pem,
            key_pem,
        } => {
            let cert = CertificateDer::from_pem_slice(cert_pem.as_bytes())
                .map_err(|_| TlsError::Pem("node certificate"))?;
            let key =
                PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|_| TlsError::Pem("node key"))?;
            builder
                .with_root_certificates(roots(ca_pem)?)
                .with_client_auth_cert(vec![cert], key)?
        }
    };
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(cfg))
}

fn roots(ca_pem: &str) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for der in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(der.map_err(|_| TlsError::Pem("CA"))?)?;
    }
    if roots.is_empty() {
        return Err(TlsError::Pem("CA"));
    }
    Ok(roots)
}

/// Accepts any server certificate but still checks the handshake signatures (so the peer at
/// least holds the key of the certificate it showed). Used only for `GetClusterInfo`.
#[derive(Debug)]
struct AcceptAnyServer {
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for AcceptAnyServer {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Set when a handshake failed because a certificate was refused (ours or the server's).
#[derive(Clone, Default)]
pub struct CertRejected(Arc<AtomicBool>);

impl CertRejected {
    pub fn get(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

fn is_certificate_rustls_error(e: &rustls::Error) -> bool {
    matches!(
        e,
        rustls::Error::InvalidCertificate(_)
            | rustls::Error::AlertReceived(
                rustls::AlertDescription::BadCertificate
                    | rustls::AlertDescription::UnknownCA
                    | rustls::AlertDescription::CertificateUnknown
                    | rustls::AlertDescription::CertificateExpired
                    | rustls::AlertDescription::CertificateRevoked
                    | rustls::AlertDescription::AccessDenied
            )
    )
}

fn is_certificate_error(e: &std::io::Error) -> bool {
    e.get_ref()
        .and_then(|i| i.downcast_ref::<rustls::Error>())
        .is_some_and(is_certificate_rustls_error)
}

/// Whether an error, or any of its causes, is a refused certificate. With TLS 1.3 the server
/// judges the client's certificate after the client considers the handshake done, so its
/// refusal arrives as an alert inside a later transport error rather than from the connector.
pub fn refused_certificate(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(r) = err.downcast_ref::<rustls::Error>() {
            if is_certificate_rustls_error(r) {
                return true;
            }
        }
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            if is_certificate_error(io) {
                return true;
            }
        }
        cur = err.source();
    }
    false
}

/// A tonic channel to `addr` over TLS with `cfg`. Connects lazily-but-now: the returned
/// channel has completed one connection (so errors show here, not on the first call).
pub async fn channel(
    addr: &ServerAddr,
    cfg: Arc<ClientConfig>,
    rejected: CertRejected,
) -> Result<Channel, tonic::transport::Error> {
    let target = addr.clone();
    let connector = tower::service_fn(move |_: Uri| {
        let target = target.clone();
        let cfg = cfg.clone();
        let rejected = rejected.clone();
        async move {
            let tcp = tokio::net::TcpStream::connect((target.host.as_str(), target.port)).await?;
            let _ = tcp.set_nodelay(true);
            let name = target
                .server_name()
                .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, "bad server name"))?;
            match tokio_rustls::TlsConnector::from(cfg).connect(name, tcp).await {
                Ok(tls) => Ok(TokioIo::new(tls)),
                Err(e) => {
                    if is_certificate_error(&e) {
                        rejected.0.store(true, Ordering::Relaxed);
                    }
                    Err(e)
                }
            }
        }
    });
    // The URI only fills the :authority header; the connector above does the dialling.
    let uri = format!("http://{addr}");
    Endpoint::from_shared(uri)?
        .connect_timeout(Duration::from_secs(5))
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(10))
        .keep_alive_while_idle(true)
        .connect_with_connector(connector)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_urls() {
        let p = |s| ServerAddr::parse(s);
        assert_eq!(
            p("https://10.0.2.100:9443"),
            Some(ServerAddr {
                host: "10.0.2.100".into(),
                port: 9443
            })
        );
        assert_eq!(
            p("https://cp.example"),
            Some(ServerAddr {
                host: "cp.example".into(),
                port: DEFAULT_PORT
            })
        );
        assert_eq!(
            p("10.0.0.1:1234/x"),
            Some(ServerAddr {
                host: "10.0.0.1".into(),
                port: 1234
            })
        );
        assert_eq!(
            p("https://[::1]:9443"),
            Some(ServerAddr {
                host: "::1".into(),
                port: 9443
            })
        );
        assert_eq!(p("https://[::1]:9443").unwrap().to_string(), "[::1]:9443");
        assert_eq!(p("https://host:notaport"), None);
        assert_eq!(p(""), None);
    }
}
