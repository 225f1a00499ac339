//! Who a request comes from: [`UserInfo`], and how a client certificate maps to one.
//!
//! The mapping is Kubernetes': the subject's CommonName is the user name, each Organization is
//! a group, and every authenticated user is also in `system:authenticated`. Nodes are users
//! `system:node:<name>` in group `system:nodes`.

use x509_parser::prelude::{FromDer, X509Certificate};

use crate::{Error, Result};

/// The group every authenticated user belongs to.
pub const GROUP_AUTHENTICATED: &str = "system:authenticated";
/// The group of node identities.
pub const GROUP_NODES: &str = "system:nodes";
/// The user-name prefix of node identities.
pub const NODE_USER_PREFIX: &str = "system:node:";

/// An authenticated identity, as the authorizer and audit see it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UserInfo {
    pub name: String,
    pub uid: String,
    pub groups: Vec<String>,
}

impl UserInfo {
    /// Builds a user with the given groups plus `system:authenticated` (once).
    pub fn authenticated(name: impl Into<String>, uid: impl Into<String>, groups: Vec<String>) -> Self {
        let mut groups = groups;
        if !groups.iter().any(|g| g == GROUP_AUTHENTICATED) {
            groups.push(GROUP_AUTHENTICATED.to_string());
        }
        UserInfo {
            name: name.into(),
            uid: uid.into(),
            groups,
        }
    }

    /// The node name if this is a node identity (`system:node:<name>` in `system:nodes`).
    pub fn node_name(&self) -> Option<&str> {
        let name = self.name.strip_prefix(NODE_USER_PREFIX)?;
        (!name.is_empty() && self.groups.iter().any(|g| g == GROUP_NODES)).then_some(name)
    }
}

/// Maps a client certificate (DER) to its user: CN = name, O = groups, plus
/// `system:authenticated`.
///
/// This does not check the chain: call it only with a certificate the TLS layer has already
/// verified against the cluster CA (the config from [`crate::Pki::server_tls_config`] does).
pub fn authenticate_cert(peer_cert_der: &[u8]) -> Result<UserInfo> {
    let (_, cert) = X509Certificate::from_der(peer_cert_der)
        .map_err(|e| Error::InvalidCertificate(format!("cannot parse client certificate: {e}")))?;
    let subject = cert.subject();
    let name = subject
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .filter(|cn| !cn.is_empty())
        .ok_or_else(|| Error::InvalidCertificate("client certificate has no common name".into()))?
        .to_string();
    let groups = subject
        .iter_organization()
        .filter_map(|o| o.as_str().ok())
        .map(str::to_string)
        .collect();
    Ok(UserInfo::authenticated(name, String::new(), groups))
}
