//! Bootstrap tokens, as kubeadm makes them: `<id>.<secret>` with `id` = `[a-z0-9]{6}` and
//! `secret` = `[a-z0-9]{16}`, stored as a Secret `bootstrap-token-<id>` in `kube-system` of type
//! `bootstrap.kubernetes.io/token`.
//!
//! A token authenticates as `system:bootstrap:<id>` in `system:bootstrappers` (plus the groups
//! of its `auth-extra-groups`) while its Secret allows authentication and has not expired. The
//! Secret is looked up by the caller (this crate does no I/O) and passed in as JSON.

use std::fmt;
use std::time::SystemTime;

use base64::Engine as _;
use rand::Rng as _;
use serde_json::{json, Value};

use crate::{constant_time_eq, UserInfo};

/// The `type` of bootstrap-token Secrets.
pub const BOOTSTRAP_TOKEN_SECRET_TYPE: &str = "bootstrap.kubernetes.io/token";
/// Where bootstrap-token Secrets live.
pub const BOOTSTRAP_TOKEN_NAMESPACE: &str = "kube-system";
/// The group every bootstrap token is in.
pub const GROUP_BOOTSTRAPPERS: &str = "system:bootstrappers";
/// kubeadm's extra group for tokens that join nodes.
pub const GROUP_DEFAULT_NODE_TOKEN: &str = "system:bootstrappers:kubeadm:default-node-token";

const ID_LEN: usize = 6;
const SECRET_LEN: usize = 16;
const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";

/// Why a bootstrap token was not accepted. Messages never contain the token's secret part.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BootstrapTokenError {
    #[error("a bootstrap token has the form [a-z0-9]{{6}}.[a-z0-9]{{16}}")]
    Malformed,
    #[error("secret {name} is not a bootstrap token (type {found:?})")]
    WrongSecretType { name: String, found: String },
    #[error("secret {name} lacks {field}")]
    MissingField { name: String, field: &'static str },
    #[error("bootstrap token {id} does not match its secret")]
    Mismatch { id: String },
    #[error("bootstrap token {id} expired at {expiration}")]
    Expired { id: String, expiration: String },
    #[error("bootstrap token {id} has an unreadable expiration {expiration:?}")]
    BadExpiration { id: String, expiration: String },
    #[error("bootstrap token {id} may not be used for authentication")]
    NotForAuthentication { id: String },
    #[error("bootstrap token {id} names extra group {group:?}, which must start with system:bootstrappers:")]
    BadExtraGroup { id: String, group: String },
}

/// A parsed bootstrap token. `Debug` and `Display` show only the public id.
#[derive(Clone, PartialEq, Eq)]
pub struct BootstrapToken {
    id: String,
    secret: String,
}

impl fmt::Debug for BootstrapToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BootstrapToken({}.<redacted>)", self.id)
    }
}

impl fmt::Display for BootstrapToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.<redacted>", self.id)
    }
}

fn random_string(len: usize) -> String {
    let mut rng = rand::rng();
    (0..len)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

fn is_token_part(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

impl BootstrapToken {
    /// A new random token.
    pub fn generate() -> Self {
        BootstrapToken {
            id: random_string(ID_LEN),
            secret: random_string(SECRET_LEN),
        }
    }

    pub fn parse(s: &str) -> Result<Self, BootstrapTokenError> {
        let (id, secret) = s.split_once('.').ok_or(BootstrapTokenError::Malformed)?;
        if !is_token_part(id, ID_LEN) || !is_token_part(secret, SECRET_LEN) {
            return Err(BootstrapTokenError::Malformed);
        }
        Ok(BootstrapToken {
            id: id.to_string(),
            secret: secret.to_string(),
        })
    }

    /// The public part.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The whole token `<id>.<secret>`: for the join command shown to the operator. Do not log.
    pub fn expose(&self) -> String {
        format!("{}.{}", self.id, self.secret)
    }

    /// `bootstrap-token-<id>`.
    pub fn secret_name(&self) -> String {
        format!("bootstrap-token-{}", self.id)
    }

    /// The user this token authenticates as.
    pub fn user_name(&self) -> String {
        format!("system:bootstrap:{}", self.id)
    }

    /// The Secret kubeadm stores for a node-joining token (in `kube-system`), usable for
    /// authentication and signing, in group `system:bootstrappers:kubeadm:default-node-token`.
    pub fn to_secret(&self, expiration: Option<SystemTime>, description: &str) -> Value {
        let b64 = |s: &str| Value::String(base64::engine::general_purpose::STANDARD.encode(s));
        let mut data = serde_json::Map::new();
        if !description.is_empty() {
            data.insert("description".into(), b64(description));
        }
        data.insert("token-id".into(), b64(&self.id));
        data.insert("token-secret".into(), b64(&self.secret));
        if let Some(exp) = expiration {
            data.insert("expiration".into(), b64(&format_rfc3339(exp)));
        }
        data.insert("usage-bootstrap-authentication".into(), b64("true"));
        data.insert("usage-bootstrap-signing".into(), b64("true"));
        data.insert("auth-extra-groups".into(), b64(GROUP_DEFAULT_NODE_TOKEN));
        json!({
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": self.secret_name(), "namespace": BOOTSTRAP_TOKEN_NAMESPACE},
            "type": BOOTSTRAP_TOKEN_SECRET_TYPE,
            "data": data,
        })
    }

    /// Checks this token against its Secret (JSON as the API returns it) at time `now`, and
    /// returns the user it authenticates as.
    pub fn authenticate(&self, secret: &Value, now: SystemTime) -> Result<UserInfo, BootstrapTokenError> {
        let name = self.secret_name();
        let found_type = secret.get("type").and_then(Value::as_str).unwrap_or_default();
        if found_type != BOOTSTRAP_TOKEN_SECRET_TYPE {
            return Err(BootstrapTokenError::WrongSecretType {
                name,
                found: found_type.to_string(),
            });
        }
        let field = |key: &'static str| secret_field(secret, key);
        let id = field("token-id").ok_or(BootstrapTokenError::MissingField {
            name: name.clone(),
            field: "token-id",
        })?;
        let stored_secret = field("token-secret").ok_or(BootstrapTokenError::MissingField {
            name: name.clone(),
            field: "token-secret",
        })?;
        // Both comparisons always run, so timing says nothing about which part differed.
        let id_ok = constant_time_eq(id.as_bytes(), self.id.as_bytes());
        let secret_ok = constant_time_eq(stored_secret.as_bytes(), self.secret.as_bytes());
        if !(id_ok & secret_ok) {
            return Err(BootstrapTokenError::Mismatch { id: self.id.clone() });
        }
        if let Some(exp) = field("expiration") {
            let t: jiff::Timestamp = exp.parse().map_err(|_| BootstrapTokenError::BadExpiration {
                id: self.id.clone(),
                expiration: exp.clone(),
            })?;
            if jiff::Timestamp::try_from(now).is_ok_and(|now| now >= t) {
                return Err(BootstrapTokenError::Expired {
                    id: self.id.clone(),
                    expiration: exp,
                });
            }
        }
        if field("usage-bootstrap-authentication").as_deref() != Some("true") {
            return Err(BootstrapTokenError::NotForAuthentication { id: self.id.clone() });
        }
        let mut groups = vec![GROUP_BOOTSTRAPPERS.to_string()];
        if let Some(extra) = field("auth-extra-groups") {
            for g in extra.split(',').map(str::trim).filter(|g| !g.is_empty()) {
                if !g.starts_with("system:bootstrappers:") {
                    return Err(BootstrapTokenError::BadExtraGroup {
                        id: self.id.clone(),
                        group: g.to_string(),
                    });
                }
                if !groups.iter().any(|x| x == g) {
                    groups.push(g.to_string());
                }
            }
        }
        Ok(UserInfo::authenticated(self.user_name(), String::new(), groups))
    }
}

/// A field of a Secret's `data` (base64), or of `stringData` if a client wrote that.
fn secret_field(secret: &Value, key: &str) -> Option<String> {
    if let Some(v) = secret.pointer(&format!("/data/{key}")).and_then(Value::as_str) {
        let bytes = base64::engine::general_purpose::STANDARD.decode(v).ok()?;
        return String::from_utf8(bytes).ok();
    }
    secret
        .pointer(&format!("/stringData/{key}"))
        .and_then(Value::as_str)
        .map(str::to_string)
}

fn format_rfc3339(t: SystemTime) -> String {
    match jiff::Timestamp::try_from(t) {
        Ok(ts) => ts.strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
        Err(_) => "1970-01-01T00:00:00Z".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::GROUP_AUTHENTICATED;
    use std::time::Duration;

    #[test]
    fn generated_tokens_parse_and_differ() {
        let a = BootstrapToken::generate();
        let b = BootstrapToken::generate();
        assert_ne!(a, b);
        let s = a.expose();
        assert_eq!(s.len(), 23);
        assert_eq!(BootstrapToken::parse(&s).unwrap(), a);
        assert!(!format!("{a:?} {a}").contains(&s[7..]));
    }

    #[test]
    fn rejects_malformed_tokens() {
        for bad in [
            "",
            "abcdef",
            "abcdef.0123456789abcde",
            "abcdef.0123456789abcdefg",
            "ABCDEF.0123456789abcdef",
            "abcde.0123456789abcdef0",
            "abcdef:0123456789abcdef",
            "abcdef.0123456789abcde_",
        ] {
            assert_eq!(
                BootstrapToken::parse(bad),
                Err(BootstrapTokenError::Malformed),
                "{bad}"
            );
        }
    }

    #[test]
    fn secret_has_kubeadms_shape() {
        let t = BootstrapToken::parse("abcdef.0123456789abcdef").unwrap();
        let exp = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let s = t.to_secret(Some(exp), "");
        assert_eq!(s["metadata"]["name"], "bootstrap-token-abcdef");
        assert_eq!(s["metadata"]["namespace"], "kube-system");
        assert_eq!(s["type"], "bootstrap.kubernetes.io/token");
        assert_eq!(secret_field(&s, "token-id").unwrap(), "abcdef");
        assert_eq!(secret_field(&s, "token-secret").unwrap(), "0123456789abcdef");
        assert_eq!(secret_field(&s, "expiration").unwrap(), "2027-01-15T08:00:00Z");
        assert_eq!(secret_field(&s, "usage-bootstrap-signing").unwrap(), "true");
        assert_eq!(
            secret_field(&s, "auth-extra-groups").unwrap(),
            "system:bootstrappers:kubeadm:default-node-token"
        );
    }

    #[test]
    fn authenticates_against_its_secret() {
        let t = BootstrapToken::parse("abcdef.0123456789abcdef").unwrap();
        let now = SystemTime::now();
        let s = t.to_secret(Some(now + Duration::from_secs(3600)), "test");
        let user = t.authenticate(&s, now).unwrap();
        assert_eq!(user.name, "system:bootstrap:abcdef");
        assert_eq!(
            user.groups,
            [GROUP_BOOTSTRAPPERS, GROUP_DEFAULT_NODE_TOKEN, GROUP_AUTHENTICATED]
        );

        let wrong = BootstrapToken::parse("abcdef.0123456789abcdee").unwrap();
        assert_eq!(
            wrong.authenticate(&s, now),
            Err(BootstrapTokenError::Mismatch { id: "abcdef".into() })
        );
        assert!(matches!(
            t.authenticate(&s, now + Duration::from_secs(3601)),
            Err(BootstrapTokenError::Expired { .. })
        ));
        let never = t.to_secret(None, "");
        assert!(t
            .authenticate(&never, now + Duration::from_secs(10 * 365 * 86400))
            .is_ok());
    }

    #[test]
    fn respects_usage_type_and_groups() {
        let t = BootstrapToken::parse("abcdef.0123456789abcdef").unwrap();
        let now = SystemTime::now();
        let mut s = t.to_secret(None, "");
        s["data"]["usage-bootstrap-authentication"] = json!("ZmFsc2U="); // "false"
        assert!(matches!(
            t.authenticate(&s, now),
            Err(BootstrapTokenError::NotForAuthentication { .. })
        ));
        let mut s = t.to_secret(None, "");
        s["type"] = json!("Opaque");
        assert!(matches!(
            t.authenticate(&s, now),
            Err(BootstrapTokenError::WrongSecretType { .. })
        ));
        let mut s = t.to_secret(None, "");
        s["data"]["auth-extra-groups"] = json!("c3lzdGVtOm1hc3RlcnM="); // "system:masters"
        assert!(matches!(
            t.authenticate(&s, now),
            Err(BootstrapTokenError::BadExtraGroup { .. })
        ));
        // stringData, as a client may have written it
        let s = json!({
            "type": BOOTSTRAP_TOKEN_SECRET_TYPE,
            "stringData": {"token-id": "abcdef", "token-secret": "0123456789abcdef",
                           "usage-bootstrap-authentication": "true"}
        });
        assert_eq!(
            t.authenticate(&s, now).unwrap().groups,
            [GROUP_BOOTSTRAPPERS, GROUP_AUTHENTICATED]
        );
    }
}
