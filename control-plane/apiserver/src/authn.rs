//! Who is asking: client certificates (verified by TLS against the cluster CA), bearer tokens
//! from a token file, and bootstrap tokens (Secrets in `kube-system`). Anything else is
//! anonymous, which may only read the health and version endpoints.

use std::sync::Arc;
use std::time::SystemTime;

use keel_api::registry;
use keel_auth::{BootstrapToken, TokenAuthenticator, UserInfo};

use crate::objects::Objects;

pub struct Authenticator {
    tokens: Option<TokenAuthenticator>,
    objects: Arc<Objects>,
}

impl Authenticator {
    pub fn new(tokens: Option<TokenAuthenticator>, objects: Arc<Objects>) -> Self {
        Authenticator { tokens, objects }
    }

    /// The user of a bearer token, if the token is known and valid.
    pub async fn bearer(&self, token: &str) -> Option<UserInfo> {
        if let Some(user) = self.tokens.as_ref().and_then(|t| t.authenticate(token)) {
            return Some(user);
        }
        let parsed = BootstrapToken::parse(token).ok()?;
        let secrets = registry::find("", "v1", "secrets")?;
        let secret = self
            .objects
            .get(secrets, Some("kube-system"), &parsed.secret_name())
            .await
            .ok()?;
        parsed.authenticate(&secret, SystemTime::now()).ok()
    }
}

/// The user of a verified client certificate.
pub fn from_certificate(der: &[u8]) -> Option<UserInfo> {
    keel_auth::authenticate_cert(der).ok()
}
