//! The lab registry's credential gate: a small HTTP front for `docker-registry` that makes some
//! repositories require credentials, the two ways registries do it, so that nodes' image pull
//! secrets can be tested against a real registry:
//!
//! * `private/basic/…`: HTTP Basic — `401` with `WWW-Authenticate: Basic realm="keel-lab"`
//!   until the request carries the user's `Authorization: Basic …`;
//! * `private/token/…`: bearer tokens as Docker Hub does — `401` with
//!   `WWW-Authenticate: Bearer realm="http://<host>/token",service="keel-lab",scope="repository:<name>:pull"`;
//!   `GET /token` answers `{"token": …}` to the user's Basic credentials (and `401` to anyone
//!   else); requests with `Authorization: Bearer <token>` pass.
//!
//! Everything else passes unchanged (anonymous pulls and pushes of the other repositories).
//! The gate reads each request head, decides, and relays the connection to the registry for
//! one request (`Connection: close` both ways), which keeps it a plain byte relay.

use std::net::SocketAddr;

use base64::Engine;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Repositories under this prefix need HTTP Basic credentials.
pub const BASIC_PREFIX: &str = "private/basic/";
/// Repositories under this prefix need a bearer token from the gate's `/token`.
pub const TOKEN_PREFIX: &str = "private/token/";
const SERVICE: &str = "keel-lab";
const MAX_HEAD: usize = 64 * 1024;

/// Who may pull the private repositories.
#[derive(Clone, Debug)]
pub struct Gate {
    pub upstream: SocketAddr,
    pub user: String,
    pub password: String,
}

/// What to do with one request.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    /// Answer 401 with this `WWW-Authenticate`.
    Challenge(String),
    /// Answer the token request with this token.
    Token(String),
}

impl Gate {
    fn basic(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", self.user, self.password))
    }

    /// The one token the gate hands out (derived from the credentials: no state to keep).
    pub fn token(&self) -> String {
        hex::encode(Sha256::digest(format!(
            "keel-lab-token\0{}\0{}",
            self.user, self.password
        )))
    }

    /// Decides about a request for `target` (path and query) with these `Authorization` and
    /// `Host` headers.
    pub fn decide(&self, target: &str, authorization: Option<&str>, host: &str) -> Verdict {
        let path = target.split('?').next().unwrap_or(target);
        let basic_ok = authorization.is_some_and(|a| {
            a.strip_prefix("Basic ")
                .or_else(|| a.strip_prefix("basic "))
                .is_some_and(|b| b.trim() == self.basic())
        });
        if path == "/token" {
            return if basic_ok {
                Verdict::Token(self.token())
            } else {
                Verdict::Challenge(format!("Basic realm=\"{SERVICE}\""))
            };
        }
        let Some(name) = path.strip_prefix("/v2/") else {
            return Verdict::Pass;
        };
        if name.starts_with(BASIC_PREFIX) {
            if basic_ok {
                return Verdict::Pass;
            }
            return Verdict::Challenge(format!("Basic realm=\"{SERVICE}\""));
        }
        if name.starts_with(TOKEN_PREFIX) {
            let bearer_ok = authorization.is_some_and(|a| {
                a.strip_prefix("Bearer ")
                    .is_some_and(|t| t.trim() == self.token())
            });
            if bearer_ok {
                return Verdict::Pass;
            }
            // The repository name ends where the API's own path begins.
            let repo = ["/manifests/", "/blobs/", "/tags/"]
                .iter()
                .filter_map(|m| name.find(m))
                .min()
                .map_or(name, |i| &name[..i]);
            return Verdict::Challenge(format!(
                "Bearer realm=\"http://{host}/token\",service=\"{SERVICE}\",scope=\"repository:{repo}:pull\""
            ));
        }
        Verdict::Pass
    }
}

/// Serves the gate on `listener` until the process ends.
pub async fn serve(listener: TcpListener, gate: Gate) {
    loop {
        let Ok((conn, _)) = listener.accept().await else {
            continue;
        };
        let gate = gate.clone();
        tokio::spawn(async move {
            if let Err(e) = handle(conn, &gate).await {
                tracing::debug!(error = %e, "registry gate connection");
            }
        });
    }
}

/// Reads one request head (up to the blank line) and whatever body bytes came with it.
async fn read_head(conn: &mut TcpStream) -> std::io::Result<(Vec<u8>, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let rest = buf.split_off(end + 4);
            return Ok((buf, rest));
        }
        if buf.len() > MAX_HEAD {
            return Err(std::io::Error::other("request head too large"));
        }
        let n = conn.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "connection closed before the request head ended",
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

async fn handle(mut conn: TcpStream, gate: &Gate) -> std::io::Result<()> {
    let (head, early_body) = read_head(&mut conn).await?;
    let text = String::from_utf8_lossy(&head).into_owned();
    let mut lines = text.split("\r\n");
    let request_line = lines.next().unwrap_or_default().to_string();
    let target = request_line.split_whitespace().nth(1).unwrap_or("/").to_string();
    let mut authorization = None;
    let mut host = gate.upstream.to_string();
    let mut forwarded = vec![request_line.clone()];
    for l in lines.filter(|l| !l.is_empty()) {
        let Some((name, value)) = l.split_once(':') else {
            continue;
        };
        let value = value.trim();
        match name.trim().to_ascii_lowercase().as_str() {
            "authorization" => authorization = Some(value.to_string()),
            "host" => host = value.to_string(),
            "connection" | "keep-alive" => continue,
            _ => {}
        }
        forwarded.push(l.to_string());
    }
    match gate.decide(&target, authorization.as_deref(), &host) {
        Verdict::Challenge(challenge) => {
            let body =
                r#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required","detail":null}]}"#;
            let resp = format!(
                "HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: {challenge}\r\nContent-Type: application/json\r\n\
                 Docker-Distribution-Api-Version: registry/2.0\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            conn.write_all(resp.as_bytes()).await?;
            conn.shutdown().await
        }
        Verdict::Token(token) => {
            let body = format!(r#"{{"token":"{token}","access_token":"{token}","expires_in":3600}}"#);
            let resp = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            conn.write_all(resp.as_bytes()).await?;
            conn.shutdown().await
        }
        Verdict::Pass => {
            let mut up = TcpStream::connect(gate.upstream).await?;
            forwarded.push("Connection: close".into());
            let head = format!("{}\r\n\r\n", forwarded.join("\r\n"));
            up.write_all(head.as_bytes()).await?;
            up.write_all(&early_body).await?;
            tokio::io::copy_bidirectional(&mut conn, &mut up).await?;
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate() -> Gate {
        Gate {
            upstream: "127.0.0.1:1".parse().unwrap(),
            user: "keel".into(),
            password: "s3cret".into(),
        }
    }

    #[test]
    fn private_repositories_are_challenged_until_credentials_come() {
        let g = gate();
        let basic = format!("Basic {}", g.basic());
        let bearer = format!("Bearer {}", g.token());
        let m = "/v2/private/basic/busybox/manifests/1.35";
        assert_eq!(
            g.decide(m, None, "h:5000"),
            Verdict::Challenge("Basic realm=\"keel-lab\"".into())
        );
        assert_eq!(
            g.decide(m, Some("Basic a2VlbDp3cm9uZw=="), "h:5000"),
            Verdict::Challenge("Basic realm=\"keel-lab\"".into())
        );
        assert_eq!(g.decide(m, Some(&basic), "h:5000"), Verdict::Pass);
        let t = "/v2/private/token/busybox/blobs/sha256:ab";
        assert_eq!(
            g.decide(t, Some(&basic), "10.0.2.100:5000"),
            Verdict::Challenge(
                "Bearer realm=\"http://10.0.2.100:5000/token\",service=\"keel-lab\",scope=\"repository:private/token/busybox:pull\""
                    .into()
            )
        );
        assert_eq!(g.decide(t, Some(&bearer), "h"), Verdict::Pass);
        assert_eq!(
            g.decide("/token?service=keel-lab&scope=x", Some(&basic), "h"),
            Verdict::Token(g.token())
        );
        assert!(matches!(g.decide("/token", None, "h"), Verdict::Challenge(_)));
        assert_eq!(
            g.decide("/v2/library/busybox/manifests/1.35", None, "h"),
            Verdict::Pass
        );
        assert_eq!(g.decide("/v2/", None, "h"), Verdict::Pass);
    }

    #[tokio::test]
    async fn passing_requests_reach_the_registry_and_others_get_401() {
        // A stand-in registry that answers every request with its request line.
        let upstream = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let up_addr = upstream.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (mut c, _) = upstream.accept().await.unwrap();
                tokio::spawn(async move {
                    let (head, _) = read_head(&mut c).await.unwrap();
                    let line = String::from_utf8_lossy(&head)
                        .lines()
                        .next()
                        .unwrap_or("")
                        .to_string();
                    // The gate asks for one request per connection.
                    let closes = String::from_utf8_lossy(&head).contains("Connection: close");
                    let body = format!("{line}{}", if closes { " (close)" } else { "" });
                    let resp = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}", body.len());
                    c.write_all(resp.as_bytes()).await.unwrap();
                });
            }
        });
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(serve(
            listener,
            Gate {
                upstream: up_addr,
                ..gate()
            },
        ));
        let get = |path: &str, auth: Option<String>| {
            let path = path.to_string();
            async move {
                let mut c = TcpStream::connect(addr).await.unwrap();
                let auth = auth
                    .map(|a| format!("Authorization: {a}\r\n"))
                    .unwrap_or_default();
                c.write_all(
                    format!("GET {path} HTTP/1.1\r\nHost: lab:5000\r\n{auth}Connection: keep-alive\r\n\r\n")
                        .as_bytes(),
                )
                .await
                .unwrap();
                let mut out = String::new();
                c.read_to_string(&mut out).await.unwrap();
                out
            }
        };
        let open = get("/v2/library/busybox/manifests/1.35", None).await;
        assert!(
            open.starts_with("HTTP/1.1 200")
                && open.ends_with("GET /v2/library/busybox/manifests/1.35 HTTP/1.1 (close)"),
            "{open}"
        );
        let denied = get("/v2/private/token/x/manifests/1", None).await;
        assert!(denied.starts_with("HTTP/1.1 401"), "{denied}");
        assert!(denied.contains("realm=\"http://lab:5000/token\""), "{denied}");
        let token = get(
            "/token?scope=repository:private/token/x:pull",
            Some(format!("Basic {}", gate().basic())),
        )
        .await;
        assert!(token.contains(&gate().token()), "{token}");
        let ok = get(
            "/v2/private/token/x/manifests/1",
            Some(format!("Bearer {}", gate().token())),
        )
        .await;
        assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
    }
}
