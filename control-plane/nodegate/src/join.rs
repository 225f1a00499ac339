//! `Join`: a node proves itself with a bootstrap token and gets its client certificate.
//!
//! The token is checked against its `bootstrap-token-<id>` Secret in `kube-system` (read through
//! the API client, as any controller would), the CSR is signed right away (a valid token is the
//! approval, as kubeadm's auto-approver does for `system:bootstrappers:kubeadm:default-node-token`),
//! and the issuance is recorded as an approved and issued CertificateSigningRequest so that
//! `kubectl get csr` shows who joined when. The token never appears in logs.

use std::time::SystemTime;

use base64::Engine as _;
use keel_api::client::WriteOptions;
use keel_auth::BootstrapToken;
use keel_proto::{JoinRequest, JoinResponse};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tonic::Status;

use crate::gate::Gate;

const BOOTSTRAP_NAMESPACE: &str = "kube-system";
const KUBELET_SIGNER: &str = "kubernetes.io/kube-apiserver-client-kubelet";

pub(crate) async fn join(gate: &Gate, req: JoinRequest) -> Result<JoinResponse, Status> {
    let token = BootstrapToken::parse(req.token.trim()).map_err(|e| {
        tracing::info!(node = %req.node_name, "join refused: malformed bootstrap token");
        Status::permission_denied(format!("join refused: {e}"))
    })?;
    let secret = match gate
        .client
        .get(
            gate.kinds.secrets,
            Some(BOOTSTRAP_NAMESPACE.to_string()),
            token.secret_name(),
        )
        .await
    {
        Ok(s) => s,
        Err(e) if e.code == 404 => {
            tracing::info!(node = %req.node_name, token_id = token.id(), "join refused: unknown bootstrap token");
            return Err(Status::permission_denied(format!(
                "join refused: bootstrap token {} does not exist (expired and removed, or mistyped)",
                token.id()
            )));
        }
        Err(e) => {
            tracing::warn!(error = %e, "join: reading the bootstrap token secret failed");
            return Err(Status::unavailable(
                "join: cannot read bootstrap tokens right now",
            ));
        }
    };
    let user = token.authenticate(&secret, SystemTime::now()).map_err(|e| {
        tracing::info!(node = %req.node_name, token_id = token.id(), reason = %e, "join refused");
        Status::permission_denied(format!("join refused: {e}"))
    })?;

    let issued = gate
        .pki
        .sign_node_csr(&req.csr_der, &req.node_name)
        .map_err(|e| {
            tracing::info!(node = %req.node_name, error = %e, "join refused: bad request");
            Status::invalid_argument(format!("join refused: {e}"))
        })?;
    tracing::info!(
        node = %req.node_name,
        token_id = token.id(),
        "node joined: issued client certificate system:node:{}",
        req.node_name
    );
    record_csr(
        gate,
        &req.node_name,
        &req.csr_der,
        &user,
        &issued.pem,
        Approval::BootstrapToken,
    )
    .await;
    Ok(JoinResponse {
        certificate_pem: issued.pem,
        ca_pem: gate.pki.ca_pem().to_string(),
        node_name: req.node_name,
    })
}

/// Why a node certificate was issued without a human approving it.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Approval {
    /// A valid bootstrap token joined the node.
    BootstrapToken,
    /// The node renewed its own certificate over mutual TLS.
    Renewal,
}

impl Approval {
    fn reason(self) -> &'static str {
        match self {
            Approval::BootstrapToken => "AutoApproved",
            Approval::Renewal => "AutoApprovedRenewal",
        }
    }

    fn because(self) -> &'static str {
        match self {
            Approval::BootstrapToken => "after bootstrap token validation",
            Approval::Renewal => "renewing the node's own certificate",
        }
    }
}

/// The CertificateSigningRequest a kubelet would have created, approved and issued.
pub(crate) fn csr_object(
    node_name: &str,
    csr_der: &[u8],
    user: &keel_auth::UserInfo,
    cert_pem: &str,
    approval: Approval,
) -> Value {
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    let csr_pem = pem("CERTIFICATE REQUEST", csr_der);
    let digest = hex::encode(Sha256::digest(csr_der));
    let now = keel_api::time::now_rfc3339();
    json!({
        "apiVersion": "certificates.k8s.io/v1",
        "kind": "CertificateSigningRequest",
        "metadata": {"name": format!("node-csr-{}", &digest[..20])},
        "spec": {
            "request": b64(csr_pem.as_bytes()),
            "signerName": KUBELET_SIGNER,
            "usages": ["digital signature", "client auth"],
            "username": user.name,
            "groups": user.groups,
        },
        "status": {
            "conditions": [{
                "type": "Approved",
                "status": "True",
                "reason": approval.reason(),
                "message": format!("Auto approving node client certificate for {node_name} {}.", approval.because()),
                "lastUpdateTime": now,
                "lastTransitionTime": now,
            }],
            "certificate": b64(cert_pem.as_bytes()),
        },
    })
}

/// Records an issued node certificate as an approved and issued CertificateSigningRequest.
/// Best effort: a failure is logged, the certificate stands.
pub(crate) async fn record_csr(
    gate: &Gate,
    node_name: &str,
    csr_der: &[u8],
    user: &keel_auth::UserInfo,
    cert_pem: &str,
    approval: Approval,
) {
    let obj = csr_object(node_name, csr_der, user, cert_pem, approval);
    let created = match gate
        .client
        .create(gate.kinds.csrs, None, obj.clone(), WriteOptions::default())
        .await
    {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(node = %node_name, error = %e, "could not record the CertificateSigningRequest");
            return;
        }
    };
    // Creation drops status (it is a subresource); write it through `status`.
    let mut with_status = created;
    with_status["status"] = obj["status"].clone();
    if let Err(e) = gate
        .client
        .update(
            gate.kinds.csrs,
            None,
            with_status,
            Some("status".into()),
            WriteOptions::default(),
        )
        .await
    {
        tracing::warn!(node = %node_name, error = %e, "could not record the approval of the CSR");
    }
}

fn pem(label: &str, der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}
