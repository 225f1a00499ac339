use std::os::unix::fs::PermissionsExt;

use rcgen::PublicKeyData as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;
use crate::{authenticate_cert, GROUP_AUTHENTICATED};

fn opts(extra: &[&str]) -> PkiOptions {
    PkiOptions {
        extra_sans: extra.iter().map(|s| s.to_string()).collect(),
        kubeconfig_server: "https://127.0.0.1:6443".into(),
    }
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap()
}

fn server_sans(dir: &Path) -> BTreeSet<San> {
    let der = first_pem_der(&read(&dir.join("pki/server.crt")), "CERTIFICATE").unwrap();
    sans_of(&parse_cert(&der).unwrap())
}

#[test]
fn first_start_creates_everything_with_safe_modes() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::load_or_create(dir.path(), &opts(&["10.0.2.100", "cp.example"])).unwrap();
    for (f, m) in [
        ("pki/ca.crt", 0o644),
        ("pki/ca.key", 0o600),
        ("pki/server.crt", 0o644),
        ("pki/server.key", 0o600),
        ("admin.kubeconfig", 0o600),
    ] {
        assert_eq!(mode(&dir.path().join(f)), m, "{f}");
    }
    assert_eq!(read(&dir.path().join("pki/ca.crt")), pki.ca_pem());

    let ca = parse_cert(pki.ca_cert_der()).unwrap();
    assert_eq!(
        ca.subject().iter_common_name().next().unwrap().as_str().unwrap(),
        "keel-ca"
    );
    assert!(ca.is_ca());

    let sans = server_sans(dir.path());
    for want in [
        San::Ip("127.0.0.1".parse().unwrap()),
        San::Ip("::1".parse().unwrap()),
        San::Ip("10.0.2.100".parse().unwrap()),
        San::Dns("localhost".into()),
        San::Dns("cp.example".into()),
        San::Dns("kubernetes.default.svc.cluster.local".into()),
    ] {
        assert!(sans.contains(&want), "{want:?} missing from {sans:?}");
    }
    for a in host::host_addresses() {
        assert!(sans.contains(&San::Ip(a)), "host address {a} missing");
    }
}

#[test]
fn ca_pin_is_sha256_of_the_ca_public_key_info() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::load_or_create(dir.path(), &opts(&[])).unwrap();
    let key = KeyPair::from_pem(&read(&dir.path().join("pki/ca.key"))).unwrap();
    let expected = format!(
        "sha256:{}",
        hex::encode(Sha256::digest(key.subject_public_key_info()))
    );
    assert_eq!(pki.ca_pin(), expected);
    assert_eq!(pki.ca_pin().len(), 7 + 64);
}

#[test]
fn later_starts_reuse_and_reissue_only_what_changed() {
    let dir = tempfile::tempdir().unwrap();
    let first = Pki::load_or_create(dir.path(), &opts(&["10.0.2.100"])).unwrap();
    let server1 = read(&dir.path().join("pki/server.crt"));
    let kube1 = read(&dir.path().join("admin.kubeconfig"));

    let second = Pki::load_or_create(dir.path(), &opts(&["10.0.2.100"])).unwrap();
    assert_eq!(first.ca_pin(), second.ca_pin());
    assert_eq!(read(&dir.path().join("pki/server.crt")), server1);
    assert_eq!(read(&dir.path().join("admin.kubeconfig")), kube1);

    let third = Pki::load_or_create(dir.path(), &opts(&["10.0.2.100", "10.0.2.101"])).unwrap();
    assert_eq!(first.ca_pin(), third.ca_pin());
    assert_ne!(read(&dir.path().join("pki/server.crt")), server1);
    assert!(server_sans(dir.path()).contains(&San::Ip("10.0.2.101".parse().unwrap())));
    assert_eq!(read(&dir.path().join("admin.kubeconfig")), kube1);

    // A different server URL rewrites the kubeconfig (same CA).
    let mut o = opts(&["10.0.2.100", "10.0.2.101"]);
    o.kubeconfig_server = "https://10.0.2.100:6443".into();
    Pki::load_or_create(dir.path(), &o).unwrap();
    let kube2 = read(&dir.path().join("admin.kubeconfig"));
    assert!(kube2.contains("server: \"https://10.0.2.100:6443\""));
}

#[test]
fn a_half_present_ca_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    Pki::load_or_create(dir.path(), &opts(&[])).unwrap();
    std::fs::remove_file(dir.path().join("pki/ca.key")).unwrap();
    let err = Pki::load_or_create(dir.path(), &opts(&[])).unwrap_err();
    assert!(
        err.to_string().contains("exactly one of ca.crt and ca.key"),
        "{err}"
    );
}

#[test]
fn invalid_extra_sans_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let err = Pki::load_or_create(dir.path(), &opts(&["not a name"])).unwrap_err();
    assert!(matches!(err, Error::InvalidSan(_)), "{err}");
}

#[test]
fn admin_kubeconfig_embeds_ca_and_system_masters_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::load_or_create(dir.path(), &opts(&[])).unwrap();
    let k = read(&pki.admin_kubeconfig_path());
    assert_eq!(
        kubeconfig::data_field(&k, "certificate-authority-data").unwrap(),
        pki.ca_pem()
    );
    assert_eq!(kubeconfig::field(&k, "current-context"), Some("keel"));
    assert_eq!(
        kubeconfig::field(&k, "server"),
        Some("\"https://127.0.0.1:6443\"")
    );
    let cert_pem = kubeconfig::data_field(&k, "client-certificate-data").unwrap();
    let key_pem = kubeconfig::data_field(&k, "client-key-data").unwrap();
    assert!(key_pem.contains("PRIVATE KEY"));
    let der = first_pem_der(&cert_pem, "CERTIFICATE").unwrap();
    let user = authenticate_cert(&der).unwrap();
    assert_eq!(user.name, "kubernetes-admin");
    assert_eq!(user.groups, ["system:masters", GROUP_AUTHENTICATED]);
    assert!(pki.ca.verifies_as_client(&CertificateDer::from(der)));
}

/// Serves one TLS connection with the PKI's config and returns the user of the client
/// certificate (None without one), or the handshake error.
async fn handshake(
    pki: &Pki,
    client: Arc<ClientConfig>,
) -> std::result::Result<Option<crate::UserInfo>, String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(pki.server_tls_config(&[b"h2"]));
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut tls = acceptor.accept(tcp).await.map_err(|e| e.to_string())?;
        let user = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| authenticate_cert(c).unwrap());
        let mut buf = [0u8; 4];
        tls.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
        tls.write_all(b"pong").await.map_err(|e| e.to_string())?;
        Ok::<_, String>(user)
    });
    let connector = tokio_rustls::TlsConnector::from(client);
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = ServerName::IpAddress(Ipv4Addr::LOCALHOST.into());
    let client_result = async {
        let mut tls = connector.connect(name, tcp).await.map_err(|e| e.to_string())?;
        tls.write_all(b"ping").await.map_err(|e| e.to_string())?;
        let mut buf = [0u8; 4];
        tls.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
        Ok::<_, String>(())
    }
    .await;
    let server_result = server.await.unwrap();
    client_result?;
    server_result
}

#[tokio::test]
async fn tls_round_trip_authenticates_client_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::load_or_create(dir.path(), &opts(&[])).unwrap();

    let creds = pki
        .issue_client_certificate("alice", &["devs"], Duration::from_secs(3600))
        .unwrap();
    assert!(!format!("{creds:?}").contains(creds.key_pem()));
    let user = handshake(&pki, pki.client_tls_config(Some(&creds)).unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(user.name, "alice");
    assert_eq!(user.groups, ["devs", GROUP_AUTHENTICATED]);
    assert!(pki
        .issue_client_certificate("bob", &["a", "b"], Duration::from_secs(60))
        .is_err());

    // No certificate: still served, anonymous.
    let anon = handshake(&pki, pki.client_tls_config(None).unwrap())
        .await
        .unwrap();
    assert_eq!(anon, None);

    // A certificate from another CA is refused.
    let other_dir = tempfile::tempdir().unwrap();
    let other = Pki::load_or_create(other_dir.path(), &opts(&[])).unwrap();
    let foreign = other
        .issue_client_certificate("mallory", &["system:masters"], Duration::from_secs(3600))
        .unwrap();
    let cfg = pki.client_tls_config(Some(&foreign)).unwrap();
    assert!(handshake(&pki, cfg).await.is_err());
}

fn node_csr(cn: Option<&str>, alg: &'static rcgen::SignatureAlgorithm) -> (KeyPair, Vec<u8>) {
    let key = KeyPair::generate_for(alg).unwrap();
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    if let Some(cn) = cn {
        dn.push(DnType::CommonName, cn);
    }
    params.distinguished_name = dn;
    let csr = params.serialize_request(&key).unwrap();
    (key, csr.der().to_vec())
}

#[tokio::test]
async fn node_csrs_are_signed_as_the_node_and_work_for_mutual_tls() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::load_or_create(dir.path(), &opts(&[])).unwrap();
    let (key, csr) = node_csr(Some("system:node:node-1"), &rcgen::PKCS_ECDSA_P256_SHA256);
    let issued = pki.sign_node_csr(&csr, "node-1").unwrap();

    let cert = parse_cert(&issued.der).unwrap();
    let eku = cert.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.client_auth && !eku.server_auth);
    assert_eq!(
        cert.tbs_certificate.subject_pki.subject_public_key.data.as_ref(),
        key.public_key_raw()
    );
    let user = authenticate_cert(&issued.der).unwrap();
    assert_eq!(user.name, "system:node:node-1");
    assert_eq!(user.node_name(), Some("node-1"));
    assert_eq!(user.groups, ["system:nodes", GROUP_AUTHENTICATED]);

    let creds = ClientCredentials {
        cert_pem: issued.pem.clone(),
        key_pem: key.serialize_pem(),
    };
    let seen = handshake(&pki, pki.client_tls_config(Some(&creds)).unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(seen.node_name(), Some("node-1"));

    // A CSR without a subject is fine; Ed25519 keys are accepted too.
    let (_, csr) = node_csr(None, &rcgen::PKCS_ED25519);
    assert!(pki.sign_node_csr(&csr, "node-2").is_ok());
}

#[test]
fn bad_node_csrs_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::load_or_create(dir.path(), &opts(&[])).unwrap();
    let (_, csr) = node_csr(Some("system:node:node-1"), &rcgen::PKCS_ECDSA_P256_SHA256);
    for bad_name in ["", "Node-1", "node_1", "-node", "node..1", &"a".repeat(254)] {
        assert!(
            matches!(
                pki.sign_node_csr(&csr, bad_name),
                Err(Error::InvalidNodeName { .. })
            ),
            "{bad_name:?}"
        );
    }
    assert!(matches!(
        pki.sign_node_csr(&csr, "node-2"),
        Err(Error::CsrRejected(m)) if m.contains("does not match")
    ));
    assert!(matches!(
        pki.sign_node_csr(b"not a csr", "node-1"),
        Err(Error::CsrRejected(_))
    ));
    let mut tampered = csr.clone();
    let last = tampered.len() - 1;
    tampered[last] ^= 0xff;
    assert!(matches!(
        pki.sign_node_csr(&tampered, "node-1"),
        Err(Error::CsrRejected(_))
    ));
}

#[test]
fn read_only_load_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    assert!(matches!(Pki::load(dir.path()), Err(Error::BadFile { .. })));
    let created = Pki::load_or_create(dir.path(), &opts(&["10.0.2.100"])).unwrap();
    let files = [
        "pki/ca.crt",
        "pki/server.crt",
        "pki/server.key",
        "admin.kubeconfig",
    ];
    let before: Vec<String> = files.iter().map(|f| read(&dir.path().join(f))).collect();

    // Different SANs and no kubeconfig server: a read-only load must not act on either.
    let loaded = Pki::load(dir.path()).unwrap();
    assert_eq!(loaded.ca_pin(), created.ca_pin());
    let after: Vec<String> = files.iter().map(|f| read(&dir.path().join(f))).collect();
    assert_eq!(before, after);

    // What it loaded signs and serves like the original.
    let (_, csr) = node_csr(None, &rcgen::PKCS_ECDSA_P256_SHA256);
    let issued = loaded.sign_node_csr(&csr, "n1").unwrap();
    assert!(created.ca.verifies_as_client(&CertificateDer::from(issued.der)));
    let _ = loaded.server_tls_config(&[b"h2"]);
}
