//! The cluster PKI: one CA (ECDSA P-256, CN `keel-ca`) and everything it signs.
//!
//! Layout under the data directory, as kubeadm's `/etc/kubernetes`:
//!
//! ```text
//! pki/ca.crt  pki/ca.key (0600)  pki/server.crt  pki/server.key (0600)  admin.kubeconfig (0600)
//! ```
//!
//! [`Pki::load_or_create`] is idempotent: the first start creates what is missing, later starts
//! reuse it. The serving certificate is re-issued only when it no longer fits — its SAN set
//! changed (new host address, new `extra_sans`), it expires within 30 days, or it was not signed
//! by the current CA. The admin kubeconfig likewise. The CA itself is never replaced
//! automatically: every node trusts it by its pin.
//!
//! Everything TLS here uses the `ring` provider explicitly, so the result does not depend on
//! which process-wide default provider (if any) was installed.

use std::collections::BTreeSet;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use rustls::client::danger::ServerCertVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{
    CertificateDer, CertificateSigningRequestDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime,
};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use sha2::{Digest, Sha256};
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::files::{create_dir, read_optional, write_file};
use crate::kubeconfig::{self, render_kubeconfig};
use crate::user::{GROUP_NODES, NODE_USER_PREFIX};
use crate::{host, Error, Result};

const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 86400);
const LEAF_VALIDITY: Duration = Duration::from_secs(365 * 86400);
/// Certificates closer than this to their end are re-issued on start.
const RENEW_BEFORE: Duration = Duration::from_secs(30 * 86400);
/// Backdating of `notBefore`, for clocks a little behind ours.
const CLOCK_SKEW: Duration = Duration::from_secs(5 * 60);

/// The service IP of the `kubernetes` Service (first address of the service CIDR).
const KUBERNETES_SERVICE_IP: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 96, 0, 1));
const KUBERNETES_DNS_NAMES: &[&str] = &[
    "localhost",
    "kubernetes",
    "kubernetes.default",
    "kubernetes.default.svc",
    "kubernetes.default.svc.cluster.local",
];

/// How to set up the PKI.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PkiOptions {
    /// More names and addresses for the serving certificate (e.g. `10.0.2.100`, `cp.example`).
    pub extra_sans: Vec<String>,
    /// The server URL written into `admin.kubeconfig`.
    pub kubeconfig_server: String,
}

impl Default for PkiOptions {
    fn default() -> Self {
        PkiOptions {
            extra_sans: Vec::new(),
            kubeconfig_server: "https://127.0.0.1:6443".to_string(),
        }
    }
}

/// A certificate the CA signed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IssuedCertificate {
    pub der: Vec<u8>,
    pub pem: String,
}

/// A client certificate with its private key (PEM). `Debug` hides the key.
#[derive(Clone, PartialEq, Eq)]
pub struct ClientCredentials {
    pub cert_pem: String,
    key_pem: String,
}

impl ClientCredentials {
    /// PKCS#8 PEM of the private key. Secret: never log it.
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    fn der_pair(&self) -> Result<(CertificateDer<'static>, PrivateKeyDer<'static>)> {
        let cert = first_pem_der(&self.cert_pem, "CERTIFICATE")
            .ok_or_else(|| Error::InvalidCertificate("client certificate is not PEM".into()))?;
        let key = first_pem_der(&self.key_pem, "PRIVATE KEY")
            .ok_or_else(|| Error::InvalidCertificate("client key is not PKCS#8 PEM".into()))?;
        Ok((
            CertificateDer::from(cert),
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key)),
        ))
    }
}

impl fmt::Debug for ClientCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientCredentials")
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

/// The cluster CA and the serving identity, loaded and ready to sign.
pub struct Pki {
    dir: PathBuf,
    ca: Ca,
    ca_pem: String,
    ca_pin: String,
    /// The serving config without ALPN; [`Pki::server_tls_config`] clones it.
    server_base: ServerConfig,
}

/// The CA's certificate and key, and the verifiers built on it.
struct Ca {
    der: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
    provider: Arc<CryptoProvider>,
    roots: Arc<RootCertStore>,
}

impl fmt::Debug for Pki {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pki")
            .field("dir", &self.dir)
            .field("ca_pin", &self.ca_pin)
            .finish_non_exhaustive()
    }
}

/// A subject alternative name, ordered so that sets of them compare.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum San {
    Dns(String),
    Ip(IpAddr),
}

impl San {
    fn parse(s: &str) -> Result<San> {
        let s = s.trim();
        if let Ok(ip) = s.parse::<IpAddr>() {
            return Ok(San::Ip(ip));
        }
        let ok = !s.is_empty()
            && s.len() <= 253
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'*');
        if ok {
            Ok(San::Dns(s.to_ascii_lowercase()))
        } else {
            Err(Error::InvalidSan(s.to_string()))
        }
    }

    fn to_rcgen(&self) -> Result<SanType> {
        Ok(match self {
            San::Ip(ip) => SanType::IpAddress(*ip),
            San::Dns(d) => SanType::DnsName(d.as_str().try_into().map_err(|_| Error::InvalidSan(d.clone()))?),
        })
    }
}

fn generate_err(what: &str) -> impl FnOnce(rcgen::Error) -> Error + '_ {
    move |source| Error::Generate {
        what: what.to_string(),
        source,
    }
}

fn validity(duration: Duration) -> Result<(time::OffsetDateTime, time::OffsetDateTime)> {
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs() as i64;
    let at = |secs: i64| {
        time::OffsetDateTime::from_unix_timestamp(secs)
            .map_err(|e| Error::InvalidCertificate(format!("validity out of range: {e}")))
    };
    Ok((
        at(now - CLOCK_SKEW.as_secs() as i64)?,
        at(now + duration.as_secs() as i64)?,
    ))
}

fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] &= 0x7f; // positive
    bytes[0] |= 0x01; // and never shortened by leading zeros
    SerialNumber::from_slice(&bytes)
}

fn leaf_params(
    cn: &str,
    orgs: &[&str],
    eku: ExtendedKeyUsagePurpose,
    valid_for: Duration,
) -> Result<CertificateParams> {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    for o in orgs {
        dn.push(DnType::OrganizationName, *o);
    }
    dn.push(DnType::CommonName, cn);
    p.distinguished_name = dn;
    (p.not_before, p.not_after) = validity(valid_for)?;
    p.serial_number = Some(random_serial());
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![eku];
    p.use_authority_key_identifier_extension = true;
    Ok(p)
}

/// The DER of the first PEM block with this label.
fn first_pem_der(pem: &str, label: &str) -> Option<Vec<u8>> {
    let mut reader = pem.as_bytes();
    for item in rustls_pemfile::read_all(&mut reader) {
        match (item.ok()?, label) {
            (rustls_pemfile::Item::X509Certificate(c), "CERTIFICATE") => return Some(c.to_vec()),
            (rustls_pemfile::Item::Pkcs8Key(k), "PRIVATE KEY") => return Some(k.secret_pkcs8_der().to_vec()),
            _ => {}
        }
    }
    None
}

fn pem_encode(label: &str, der: &[u8]) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

fn parse_cert(der: &[u8]) -> Result<X509Certificate<'_>> {
    X509Certificate::from_der(der)
        .map(|(_, c)| c)
        .map_err(|e| Error::InvalidCertificate(format!("cannot parse certificate: {e}")))
}

/// `sha256:<hex>` over the certificate's SubjectPublicKeyInfo (kubeadm's CA pin format).
fn spki_pin(cert_der: &[u8]) -> Result<String> {
    let cert = parse_cert(cert_der)?;
    let digest = Sha256::digest(cert.tbs_certificate.subject_pki.raw);
    Ok(format!("sha256:{}", hex::encode(digest)))
}

fn sans_of(cert: &X509Certificate<'_>) -> BTreeSet<San> {
    let mut out = BTreeSet::new();
    if let Ok(Some(ext)) = cert.subject_alternative_name() {
        for name in &ext.value.general_names {
            match name {
                GeneralName::DNSName(d) => {
                    out.insert(San::Dns(d.to_ascii_lowercase()));
                }
                GeneralName::IPAddress(b) => {
                    if let Ok(v4) = <[u8; 4]>::try_from(*b) {
                        out.insert(San::Ip(IpAddr::V4(Ipv4Addr::from(v4))));
                    } else if let Ok(v6) = <[u8; 16]>::try_from(*b) {
                        out.insert(San::Ip(IpAddr::V6(Ipv6Addr::from(v6))));
                    }
                }
                _ => {}
            }
        }
    }
    out
}

fn expires_soon(cert: &X509Certificate<'_>) -> bool {
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs() as i64;
    cert.validity().not_after.timestamp() < now + RENEW_BEFORE.as_secs() as i64
}

/// A lower-case RFC 1123 subdomain, as Kubernetes requires of node names.
fn validate_node_name(name: &str) -> Result<()> {
    let bad = |reason| {
        Err(Error::InvalidNodeName {
            name: name.to_string(),
            reason,
        })
    };
    if name.is_empty() || name.len() > 253 {
        return bad("must be 1 to 253 characters");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
    {
        return bad("only lower-case letters, digits, '-' and '.' are allowed");
    }
    if name
        .split('.')
        .any(|l| l.is_empty() || l.starts_with('-') || l.ends_with('-'))
    {
        return bad("each dot-separated part must start and end with a letter or digit");
    }
    Ok(())
}

impl Ca {
    fn new(der: CertificateDer<'static>, key: KeyPair) -> Result<Ca> {
        let issuer = Issuer::from_ca_cert_der(&der, key).map_err(generate_err("CA issuer"))?;
        let mut roots = RootCertStore::empty();
        roots.add(der.clone())?;
        Ok(Ca {
            der,
            issuer,
            provider: Arc::new(rustls::crypto::ring::default_provider()),
            roots: Arc::new(roots),
        })
    }

    fn now() -> UnixTime {
        UnixTime::now()
    }

    /// True if `der` chains to our CA as a serving certificate for 127.0.0.1.
    fn verifies_as_server(&self, der: &CertificateDer<'_>) -> bool {
        let Ok(verifier) = rustls::client::WebPkiServerVerifier::builder_with_provider(
            self.roots.clone(),
            self.provider.clone(),
        )
        .build() else {
            return false;
        };
        let name = ServerName::IpAddress(Ipv4Addr::LOCALHOST.into());
        verifier
            .verify_server_cert(der, &[], &name, &[], Self::now())
            .is_ok()
    }

    /// True if `der` chains to our CA as a client certificate.
    fn verifies_as_client(&self, der: &CertificateDer<'_>) -> bool {
        let Ok(verifier) =
            WebPkiClientVerifier::builder_with_provider(self.roots.clone(), self.provider.clone()).build()
        else {
            return false;
        };
        verifier.verify_client_cert(der, &[], Self::now()).is_ok()
    }

    fn load_or_issue_server_cert(
        &self,
        pki_dir: &Path,
        wanted: &BTreeSet<San>,
        ca_is_new: bool,
    ) -> Result<(CertificateDer<'static>, PrivateKeyDer<'static>)> {
        let crt_path = pki_dir.join("server.crt");
        let key_path = pki_dir.join("server.key");
        if !ca_is_new {
            if let (Some(crt), Some(key)) = (read_optional(&crt_path)?, read_optional(&key_path)?) {
                if let (Some(der), Some(key_der)) = (
                    first_pem_der(&crt, "CERTIFICATE"),
                    first_pem_der(&key, "PRIVATE KEY"),
                ) {
                    let der = CertificateDer::from(der);
                    let fits = parse_cert(&der)
                        .map(|c| sans_of(&c) == *wanted && !expires_soon(&c))
                        .unwrap_or(false);
                    if fits && self.verifies_as_server(&der) {
                        tracing::debug!(path = %crt_path.display(), "reusing serving certificate");
                        return Ok((der, PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key_der))));
                    }
                }
                tracing::info!(
                    path = %crt_path.display(),
                    "serving certificate no longer fits (names, expiry or CA); issuing a new one"
                );
            }
        }
        let key = KeyPair::generate().map_err(generate_err("serving key"))?;
        let mut params = leaf_params(
            "keel-server",
            &[],
            ExtendedKeyUsagePurpose::ServerAuth,
            LEAF_VALIDITY,
        )?;
        params.subject_alt_names = wanted.iter().map(San::to_rcgen).collect::<Result<_>>()?;
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(generate_err("serving certificate"))?;
        write_file(&key_path, key.serialize_pem().as_bytes(), 0o600)?;
        write_file(&crt_path, cert.pem().as_bytes(), 0o644)?;
        tracing::info!(
            path = %crt_path.display(),
            sans = ?wanted,
            "issued serving certificate"
        );
        Ok((
            cert.der().clone(),
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        ))
    }
}

/// Node keys we accept: what rustls/webpki with ring can verify in a handshake.
fn supported_node_key(alg: &rcgen::SignatureAlgorithm) -> bool {
    [
        &rcgen::PKCS_ECDSA_P256_SHA256,
        &rcgen::PKCS_ECDSA_P384_SHA384,
        &rcgen::PKCS_ED25519,
    ]
    .contains(&alg)
}

impl Pki {
    /// Loads the PKI from `dir` (creating what is missing), as described in the module docs.
    pub fn load_or_create(dir: &Path, opts: &PkiOptions) -> Result<Pki> {
        let pki_dir = dir.join("pki");
        create_dir(&pki_dir, 0o700)?;
        let (ca_der, ca_key, ca_is_new) = load_or_create_ca(&pki_dir)?;
        let ca = Ca::new(ca_der, ca_key)?;
        let wanted = desired_sans(opts)?;
        let (server_der, server_key) = ca.load_or_issue_server_cert(&pki_dir, &wanted, ca_is_new)?;
        let pki = Pki::assemble(dir, ca, server_der, server_key)?;
        pki.ensure_admin_kubeconfig(&opts.kubeconfig_server)?;
        Ok(pki)
    }

    /// Loads an existing PKI exactly as it is on disk: creates, re-issues and rewrites nothing.
    /// For command-line tools running next to a server (`keel-server ca-hash`, `token create`),
    /// which must not change files the running server and its users rely on.
    pub fn load(dir: &Path) -> Result<Pki> {
        let pki_dir = dir.join("pki");
        let missing = |name: &str| Error::BadFile {
            path: pki_dir.join(name),
            message: "missing: no cluster PKI here (start the server once to create it)".into(),
        };
        let (ca_der, ca_key) = match (
            read_optional(&pki_dir.join("ca.crt"))?,
            read_optional(&pki_dir.join("ca.key"))?,
        ) {
            (Some(crt), Some(key)) => parse_ca(&pki_dir, &crt, &key)?,
            (None, _) => return Err(missing("ca.crt")),
            (_, None) => return Err(missing("ca.key")),
        };
        let crt = read_optional(&pki_dir.join("server.crt"))?.ok_or_else(|| missing("server.crt"))?;
        let key = read_optional(&pki_dir.join("server.key"))?.ok_or_else(|| missing("server.key"))?;
        let bad = |name: &str, what: &str| Error::BadFile {
            path: pki_dir.join(name),
            message: format!("no PEM {what}"),
        };
        let server_der =
            first_pem_der(&crt, "CERTIFICATE").ok_or_else(|| bad("server.crt", "certificate"))?;
        let server_key = first_pem_der(&key, "PRIVATE KEY").ok_or_else(|| bad("server.key", "PKCS#8 key"))?;
        Pki::assemble(
            dir,
            Ca::new(ca_der, ca_key)?,
            CertificateDer::from(server_der),
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(server_key)),
        )
    }

    fn assemble(
        dir: &Path,
        ca: Ca,
        server_der: CertificateDer<'static>,
        server_key: PrivateKeyDer<'static>,
    ) -> Result<Pki> {
        let ca_pin = spki_pin(&ca.der)?;
        let ca_pem = pem_encode("CERTIFICATE", &ca.der);
        let verifier = WebPkiClientVerifier::builder_with_provider(ca.roots.clone(), ca.provider.clone())
            .allow_unauthenticated()
            .build()
            .map_err(|e| Error::Tls(rustls::Error::General(e.to_string())))?;
        let server_base = ServerConfig::builder_with_provider(ca.provider.clone())
            .with_safe_default_protocol_versions()?
            .with_client_cert_verifier(verifier)
            .with_single_cert(vec![server_der], server_key)?;
        Ok(Pki {
            dir: dir.to_path_buf(),
            ca,
            ca_pem,
            ca_pin,
            server_base,
        })
    }

    /// The directory the PKI was loaded from.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `<dir>/admin.kubeconfig`.
    pub fn admin_kubeconfig_path(&self) -> PathBuf {
        self.dir.join("admin.kubeconfig")
    }

    /// PEM of the CA certificate.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    pub fn ca_cert_der(&self) -> &CertificateDer<'static> {
        &self.ca.der
    }

    /// `sha256:<hex>` of the CA's SubjectPublicKeyInfo: kubeadm's `--discovery-token-ca-cert-hash`,
    /// Keel's `keel.ca-hash=`.
    pub fn ca_pin(&self) -> String {
        self.ca_pin.clone()
    }

    /// The serving TLS config with these ALPN protocols (e.g. `[b"h2", b"http/1.1"]`): the
    /// serving certificate; client certificates optional, but verified against the CA when
    /// presented (read them from the connection and pass them to [`crate::authenticate_cert`]).
    pub fn server_tls_config(&self, alpn: &[&[u8]]) -> Arc<ServerConfig> {
        let mut cfg = self.server_base.clone();
        cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(cfg)
    }

    /// A client config that trusts the CA, presenting `identity` if given. For in-process
    /// clients and tests.
    pub fn client_tls_config(&self, identity: Option<&ClientCredentials>) -> Result<Arc<ClientConfig>> {
        let builder = ClientConfig::builder_with_provider(self.ca.provider.clone())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(self.ca.roots.clone());
        let cfg = match identity {
            Some(creds) => {
                let (cert, key) = creds.der_pair()?;
                builder.with_client_auth_cert(vec![cert], key)?
            }
            None => builder.with_no_client_auth(),
        };
        Ok(Arc::new(cfg))
    }

    /// A new key and a client certificate for it: CN = `cn`, O = `groups`, valid for `validity`.
    ///
    /// At most one group: rcgen's distinguished names hold one value per attribute type, so a
    /// second Organization cannot be written. Bind further groups with RBAC to the user instead.
    pub fn issue_client_certificate(
        &self,
        cn: &str,
        groups: &[&str],
        validity: Duration,
    ) -> Result<ClientCredentials> {
        if groups.len() > 1 {
            return Err(Error::InvalidCertificate(format!(
                "a client certificate carries at most one group, {} requested",
                groups.len()
            )));
        }
        let key = KeyPair::generate().map_err(generate_err("client key"))?;
        let params = leaf_params(cn, groups, ExtendedKeyUsagePurpose::ClientAuth, validity)?;
        let cert = params
            .signed_by(&key, &self.ca.issuer)
            .map_err(generate_err("client certificate"))?;
        Ok(ClientCredentials {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// Signs a node's PKCS#10 CSR (DER) as `system:node:<node_name>` in `system:nodes`, for
    /// client authentication, valid one year. The CSR's own subject, if any, must already say
    /// `system:node:<node_name>`; its extensions are ignored (the CA decides what to certify).
    pub fn sign_node_csr(&self, csr_der: &[u8], node_name: &str) -> Result<IssuedCertificate> {
        validate_node_name(node_name)?;
        let expected_cn = format!("{NODE_USER_PREFIX}{node_name}");
        let (_, raw) = X509CertificationRequest::from_der(csr_der)
            .map_err(|e| Error::CsrRejected(format!("cannot parse: {e}")))?;
        if let Some(cn) = raw.certification_request_info.subject.iter_common_name().next() {
            let cn = cn.as_str().unwrap_or_default();
            if cn != expected_cn {
                return Err(Error::CsrRejected(format!(
                    "subject CN {cn:?} does not match {expected_cn:?}"
                )));
            }
        }
        let csr = CertificateSigningRequestParams::from_der(&CertificateSigningRequestDer::from(csr_der))
            .map_err(|e| Error::CsrRejected(e.to_string()))?;
        if !supported_node_key(csr.public_key.algorithm()) {
            return Err(Error::CsrRejected(
                "unsupported key type (use ECDSA P-256/P-384 or Ed25519)".into(),
            ));
        }
        let params = leaf_params(
            &expected_cn,
            &[GROUP_NODES],
            ExtendedKeyUsagePurpose::ClientAuth,
            LEAF_VALIDITY,
        )?;
        let cert = params
            .signed_by(&csr.public_key, &self.ca.issuer)
            .map_err(generate_err("node certificate"))?;
        tracing::info!(node = node_name, "issued node client certificate");
        Ok(IssuedCertificate {
            der: cert.der().to_vec(),
            pem: cert.pem(),
        })
    }

    fn ensure_admin_kubeconfig(&self, server: &str) -> Result<()> {
        let path = self.admin_kubeconfig_path();
        if let Some(existing) = read_optional(&path)? {
            let ca_ok = kubeconfig::data_field(&existing, "certificate-authority-data").as_deref()
                == Some(self.ca_pem.as_str());
            let server_ok = kubeconfig::field(&existing, "server")
                == Some(serde_json::Value::String(server.to_string()).to_string().as_str());
            let cert_ok = kubeconfig::data_field(&existing, "client-certificate-data")
                .and_then(|pem| first_pem_der(&pem, "CERTIFICATE"))
                .map(CertificateDer::from)
                .is_some_and(|der| {
                    self.ca.verifies_as_client(&der) && parse_cert(&der).is_ok_and(|c| !expires_soon(&c))
                });
            if ca_ok && server_ok && cert_ok {
                return Ok(());
            }
            tracing::info!(path = %path.display(), "admin kubeconfig is stale; rewriting it");
        }
        let creds = self.issue_client_certificate("kubernetes-admin", &["system:masters"], LEAF_VALIDITY)?;
        write_file(
            &path,
            render_kubeconfig(server, &self.ca_pem, &creds).as_bytes(),
            0o600,
        )?;
        tracing::info!(path = %path.display(), "wrote admin kubeconfig");
        Ok(())
    }
}

/// Parses ca.crt and ca.key (PEM) and checks that they belong together.
fn parse_ca(pki_dir: &Path, crt: &str, key: &str) -> Result<(CertificateDer<'static>, KeyPair)> {
    let crt_path = pki_dir.join("ca.crt");
    let key_path = pki_dir.join("ca.key");
    let der = first_pem_der(crt, "CERTIFICATE").ok_or_else(|| Error::BadFile {
        path: crt_path,
        message: "no PEM certificate".into(),
    })?;
    let key = KeyPair::from_pem(key).map_err(|e| Error::BadFile {
        path: key_path.clone(),
        message: format!("not a usable private key: {e}"),
    })?;
    let cert = parse_cert(&der)?;
    if cert.tbs_certificate.subject_pki.subject_public_key.data.as_ref() != key.public_key_raw() {
        return Err(Error::BadFile {
            path: key_path,
            message: "the key does not belong to ca.crt".into(),
        });
    }
    Ok((CertificateDer::from(der), key))
}

fn load_or_create_ca(pki_dir: &Path) -> Result<(CertificateDer<'static>, KeyPair, bool)> {
    let crt_path = pki_dir.join("ca.crt");
    let key_path = pki_dir.join("ca.key");
    match (read_optional(&crt_path)?, read_optional(&key_path)?) {
        (Some(crt), Some(key)) => {
            let (der, key) = parse_ca(pki_dir, &crt, &key)?;
            tracing::debug!(path = %crt_path.display(), "loaded cluster CA");
            Ok((der, key, false))
        }
        (None, None) => {
            let key = KeyPair::generate().map_err(generate_err("CA key"))?;
            let mut p = CertificateParams::default();
            let mut dn = DistinguishedName::new();
            dn.push(DnType::CommonName, "keel-ca");
            p.distinguished_name = dn;
            p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            p.key_usages = vec![
                KeyUsagePurpose::KeyCertSign,
                KeyUsagePurpose::CrlSign,
                KeyUsagePurpose::DigitalSignature,
            ];
            (p.not_before, p.not_after) = validity(CA_VALIDITY)?;
            p.serial_number = Some(random_serial());
            let cert = p.self_signed(&key).map_err(generate_err("CA certificate"))?;
            write_file(&key_path, key.serialize_pem().as_bytes(), 0o600)?;
            write_file(&crt_path, cert.pem().as_bytes(), 0o644)?;
            tracing::info!(path = %crt_path.display(), "created cluster CA");
            Ok((cert.der().clone(), key, true))
        }
        (Some(_), None) | (None, Some(_)) => Err(Error::BadFile {
            path: pki_dir.to_path_buf(),
            message: "exactly one of ca.crt and ca.key exists; restore the other or remove both".into(),
        }),
    }
}

fn desired_sans(opts: &PkiOptions) -> Result<BTreeSet<San>> {
    let mut out: BTreeSet<San> = KUBERNETES_DNS_NAMES
        .iter()
        .map(|d| San::Dns(d.to_string()))
        .collect();
    out.insert(San::Ip(IpAddr::V4(Ipv4Addr::LOCALHOST)));
    out.insert(San::Ip(IpAddr::V6(Ipv6Addr::LOCALHOST)));
    out.insert(San::Ip(KUBERNETES_SERVICE_IP));
    out.extend(host::host_addresses().into_iter().map(San::Ip));
    if let Some(h) = host::hostname() {
        out.insert(San::Dns(h));
    }
    for s in &opts.extra_sans {
        out.insert(San::parse(s)?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
