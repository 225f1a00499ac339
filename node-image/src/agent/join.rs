//! Joining the cluster, kubeadm-style:
//!
//! 1. `GetClusterInfo` over TLS without server verification → the cluster CA;
//! 2. the CA's public key must hash to `keel.ca-hash`, else stop (someone else answered);
//! 3. a fresh ECDSA P-256 key and a CSR for `system:node:<name>`;
//! 4. `Join` with the bootstrap token, now verifying the server by the pinned CA (the token
//!    is only ever sent to a server that proved it holds the cluster's certificate);
//! 5. the returned certificate and the key become the node's [`Identity`].

use keel_proto::node_gate_client::NodeGateClient;
use keel_proto::{ClusterInfoRequest, JoinRequest, RenewRequest};
use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair};
use tonic::Code;

use std::path::Path;
use std::time::Duration;

use super::identity::{self, Identity};
use super::tls::{self, CertRejected, ServerAddr, Trust};

/// What a join needs from the node's configuration.
pub struct JoinParams<'a> {
    pub server: &'a str,
    pub token: &'a str,
    pub ca_hash: &'a str,
    pub node_name: &'a str,
}

#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    #[error("keel.server={0} is not a valid https://HOST[:PORT] URL")]
    BadServer(String),
    #[error("cannot reach the control plane at {server}: {message}")]
    Unreachable { server: String, message: String },
    #[error("the cluster CA does not match keel.ca-hash={expected} (the server presented {actual}); refusing to join")]
    PinMismatch { expected: String, actual: String },
    #[error("{0}")]
    Refused(String),
    #[error("{0}")]
    Local(String),
}

impl JoinError {
    /// Whether trying again later can help without changing the configuration.
    pub fn is_transient(&self) -> bool {
        matches!(self, JoinError::Unreachable { .. })
    }
}

fn unreachable(server: &ServerAddr, e: impl std::fmt::Display) -> JoinError {
    JoinError::Unreachable {
        server: server.to_string(),
        message: e.to_string(),
    }
}

fn from_status(server: &ServerAddr, s: tonic::Status) -> JoinError {
    match s.code() {
        Code::PermissionDenied | Code::Unauthenticated | Code::InvalidArgument | Code::AlreadyExists => {
            JoinError::Refused(s.message().to_string())
        }
        _ => unreachable(server, format!("{}: {}", s.code(), s.message())),
    }
}

pub async fn join(p: &JoinParams<'_>) -> Result<Identity, JoinError> {
    let addr = ServerAddr::parse(p.server).ok_or_else(|| JoinError::BadServer(p.server.to_string()))?;
    let local = |e: tls::TlsError| JoinError::Local(e.to_string());

    let insecure = tls::client_config(Trust::PinnedLater).map_err(local)?;
    let channel = tls::channel(&addr, insecure, CertRejected::default())
        .await
        .map_err(|e| unreachable(&addr, error_chain(&e)))?;
    let info = NodeGateClient::new(channel)
        .get_cluster_info(ClusterInfoRequest {})
        .await
        .map_err(|s| from_status(&addr, s))?
        .into_inner();
    let actual = tls::ca_pin(&info.ca_pem).map_err(local)?;
    if !actual.eq_ignore_ascii_case(p.ca_hash.trim()) {
        return Err(JoinError::PinMismatch {
            expected: p.ca_hash.to_string(),
            actual,
        });
    }

    let (key, csr_der) = key_and_csr(p.node_name)?;

    let trusted = tls::client_config(Trust::Ca { ca_pem: &info.ca_pem }).map_err(local)?;
    let channel = tls::channel(&addr, trusted, CertRejected::default())
        .await
        .map_err(|e| unreachable(&addr, error_chain(&e)))?;
    let resp = NodeGateClient::new(channel)
        .join(JoinRequest {
            token: p.token.to_string(),
            node_name: p.node_name.to_string(),
            csr_der,
        })
        .await
        .map_err(|s| from_status(&addr, s))?
        .into_inner();
    Ok(Identity {
        node_name: resp.node_name,
        server: p.server.to_string(),
        ca_pem: info.ca_pem,
        cert_pem: resp.certificate_pem,
        key_pem: key.serialize_pem(),
    })
}

/// Renews the node's certificate over mutual TLS with the current one: a fresh key, a CSR for
/// the same name, the same CA. The old identity stays valid until it expires.
pub async fn renew(id: &Identity) -> Result<Identity, JoinError> {
    let addr = ServerAddr::parse(&id.server).ok_or_else(|| JoinError::BadServer(id.server.clone()))?;
    let cfg = tls::client_config(Trust::Mutual {
        ca_pem: &id.ca_pem,
        cert_pem: &id.cert_pem,
        key_pem: &id.key_pem,
    })
    .map_err(|e| JoinError::Local(e.to_string()))?;
    let (key, csr_der) = key_and_csr(&id.node_name)?;
    let channel = tls::channel(&addr, cfg, CertRejected::default())
        .await
        .map_err(|e| unreachable(&addr, error_chain(&e)))?;
    let resp = NodeGateClient::new(channel)
        .renew(RenewRequest { csr_der })
        .await
        .map_err(|s| from_status(&addr, s))?
        .into_inner();
    Ok(Identity {
        node_name: id.node_name.clone(),
        server: id.server.clone(),
        ca_pem: id.ca_pem.clone(),
        cert_pem: resp.certificate_pem,
        key_pem: key.serialize_pem(),
    })
}

/// How long to wait before trying a failed renewal again.
const RENEW_RETRY: Duration = Duration::from_secs(3600);
/// The longest sleep between renewal checks (timers drift across suspend; check daily).
const RENEW_CHECK_MAX: Duration = Duration::from_secs(86400);

/// Renews the node's certificate when it is due, and not more often than every
/// [`RENEW_RETRY`] while renewals fail.
#[derive(Default)]
pub struct Renewer {
    not_before: Option<tokio::time::Instant>,
}

impl Renewer {
    /// Renews `id` (and stores it under `state`) if two thirds of its certificate's lifetime
    /// are used up. Returns how long until the next check is due.
    pub async fn check(&mut self, id: &mut Identity, state: &Path) -> Duration {
        let now = unix_now();
        let until = |cert: &str| {
            let at = identity::renewal_at(cert).unwrap_or(now);
            Duration::from_secs((at - unix_now()).max(1) as u64).min(RENEW_CHECK_MAX)
        };
        if !identity::renewal_due(&id.cert_pem, now) {
            return until(&id.cert_pem);
        }
        if identity::expired(&id.cert_pem, now) {
            // Too late to renew with it; the session refuses it and the node joins again.
            return RENEW_CHECK_MAX;
        }
        if let Some(t) = self.not_before {
            let left = t.saturating_duration_since(tokio::time::Instant::now());
            if !left.is_zero() {
                return left;
            }
        }
        self.not_before = Some(tokio::time::Instant::now() + RENEW_RETRY);
        match renew(id).await {
            Ok(new) => match new.save(state) {
                Ok(()) => {
                    eprintln!("keel: renewed the node certificate of {}", new.node_name);
                    *id = new;
                    self.not_before = None;
                    until(&id.cert_pem)
                }
                Err(e) => {
                    eprintln!("keel: renewed the node certificate but cannot store it: {e}");
                    RENEW_RETRY
                }
            },
            Err(e) => {
                eprintln!("keel: could not renew the node certificate ({e}); trying again in an hour");
                RENEW_RETRY
            }
        }
    }
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// A fresh ECDSA P-256 key and the DER of a CSR for `system:node:<name>` in `system:nodes`.
fn key_and_csr(node_name: &str) -> Result<(KeyPair, Vec<u8>), JoinError> {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(|e| JoinError::Local(format!("generating the node key: {e}")))?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "system:nodes");
    dn.push(DnType::CommonName, format!("system:node:{node_name}"));
    params.distinguished_name = dn;
    let csr = params
        .serialize_request(&key)
        .map_err(|e| JoinError::Local(format!("building the CSR: {e}")))?;
    Ok((key, csr.der().to_vec()))
}

/// An error with its causes, `a: b: c`, for console messages.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let msg = s.to_string();
        if !out.contains(&msg) {
            out.push_str(": ");
            out.push_str(&msg);
        }
        cur = s.source();
    }
    out
}
