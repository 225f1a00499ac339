//! Who may do what at the gate, checked with a plain gRPC client: the CA is public, a session
//! needs a node certificate, and a join signs only what the token holder asked for itself.

mod support;

use std::time::Duration;

use keel_auth::ClientCredentials;
use keel_proto::node_gate_client::NodeGateClient;
use keel_proto::{ClusterInfoRequest, JoinRequest, NodeMessage, RenewRequest};
use rustls::pki_types::pem::PemObject;
use support::{csrs, Gate};
use tonic::transport::Channel;
use tonic::Code;

async fn client(gate: &Gate, identity: Option<&ClientCredentials>) -> NodeGateClient<Channel> {
    let channel = gate.channel(identity).await;
    NodeGateClient::new(channel)
}

async fn open_session(c: &mut NodeGateClient<Channel>) -> Result<(), tonic::Status> {
    let outbound = futures::stream::pending::<NodeMessage>();
    c.session(outbound).await.map(|_| ())
}

fn csr_for(cn: &str) -> Vec<u8> {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(rcgen::DnType::CommonName, cn);
    params.serialize_request(&key).unwrap().der().to_vec()
}

#[tokio::test]
async fn the_ca_is_public_but_sessions_need_a_node_certificate() {
    let mut gate = Gate::start(Duration::from_secs(40), 10).await;

    let mut anonymous = client(&gate, None).await;
    let info = anonymous
        .get_cluster_info(ClusterInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.ca_pem, gate.pki.ca_pem());
    assert_eq!(info.cluster_name, "keel");
    let err = open_session(&mut anonymous).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");

    let admin = gate
        .pki
        .issue_client_certificate("kubernetes-admin", &["system:masters"], Duration::from_secs(600))
        .unwrap();
    let err = open_session(&mut client(&gate, Some(&admin)).await)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert!(err.message().contains("not a node identity"), "{}", err.message());

    // A certificate named like a node but without the system:nodes group is no node either.
    let impostor = gate
        .pki
        .issue_client_certificate("system:node:node-x", &[], Duration::from_secs(600))
        .unwrap();
    let err = open_session(&mut client(&gate, Some(&impostor)).await)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");

    let node = gate
        .pki
        .issue_client_certificate("system:node:node-x", &["system:nodes"], Duration::from_secs(600))
        .unwrap();
    open_session(&mut client(&gate, Some(&node)).await).await.unwrap();
    gate.stop().await;
}

#[tokio::test]
async fn a_join_signs_only_a_csr_for_the_requested_name() {
    let mut gate = Gate::start(Duration::from_secs(40), 10).await;
    let token = gate.new_token();
    let mut c = client(&gate, None).await;

    let err = c
        .join(JoinRequest {
            token: token.expose(),
            node_name: "node-a".into(),
            csr_der: csr_for("system:node:node-b"),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("does not match"), "{}", err.message());

    let err = c
        .join(JoinRequest {
            token: token.expose(),
            node_name: "Not_A_Name".into(),
            csr_der: csr_for("system:node:Not_A_Name"),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");

    let err = c
        .join(JoinRequest {
            token: "not-a-token".into(),
            node_name: "node-a".into(),
            csr_der: csr_for("system:node:node-a"),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert!(gate.api.all(csrs()).is_empty());

    let ok = c
        .join(JoinRequest {
            token: token.expose(),
            node_name: "node-a".into(),
            csr_der: csr_for("system:node:node-a"),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ok.node_name, "node-a");
    assert_eq!(ok.ca_pem, gate.pki.ca_pem());
    assert!(ok.certificate_pem.starts_with("-----BEGIN CERTIFICATE-----"));
    let recorded = gate.api.all(csrs());
    assert_eq!(recorded.len(), 1);
    assert_eq!(
        recorded[0]["spec"]["signerName"],
        "kubernetes.io/kube-apiserver-client-kubelet"
    );
    assert_eq!(recorded[0]["status"]["conditions"][0]["reason"], "AutoApproved");
    gate.stop().await;
}

#[tokio::test]
async fn a_node_renews_only_its_own_certificate() {
    let mut gate = Gate::start(Duration::from_secs(40), 10).await;
    let node = gate
        .pki
        .issue_client_certificate("system:node:node-x", &["system:nodes"], Duration::from_secs(600))
        .unwrap();
    let mut c = client(&gate, Some(&node)).await;

    let renewed = c
        .renew(RenewRequest {
            csr_der: csr_for("system:node:node-x"),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(renewed.node_name, "node-x");
    let der = rustls::pki_types::CertificateDer::from_pem_slice(renewed.certificate_pem.as_bytes()).unwrap();
    let user = keel_auth::authenticate_cert(&der).unwrap();
    assert_eq!(user.node_name(), Some("node-x"));
    let recorded = gate.api.all(csrs());
    assert_eq!(
        recorded[0]["status"]["conditions"][0]["reason"],
        "AutoApprovedRenewal"
    );

    let err = c
        .renew(RenewRequest {
            csr_der: csr_for("system:node:node-y"),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");

    let mut anonymous = client(&gate, None).await;
    let err = anonymous
        .renew(RenewRequest {
            csr_der: csr_for("system:node:node-x"),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    gate.stop().await;
}
