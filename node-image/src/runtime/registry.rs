//! A small client for the OCI distribution API: `GET` with `Accept`, bearer-token auth when the
//! registry asks for it, redirects, plain HTTP or HTTPS (rustls with ring).
//!
//! It is hyper's HTTP/1.1 client connection over a tokio socket — one connection per request,
//! which is what pulling a handful of blobs needs — rather than a full HTTP client crate, to
//! keep the node binary small. HTTPS trusts the image's CA bundle ([`CA_BUNDLE`], or
//! `SSL_CERT_FILE`) rather than roots compiled in. Token auth follows the Docker registry spec: a `401` with
//! `WWW-Authenticate: Bearer realm=…,service=…,scope=…` is answered by fetching a token from the
//! realm and retrying once; tokens are cached per realm, scope and credentials. Credentials
//! come from the pod's `imagePullSecrets` ([`Client::set_credentials`]): HTTP Basic for the
//! registry's host, sent to the token realm (Docker's flow) or to a registry that asks for
//! Basic itself; anonymous otherwise.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Empty};
use hyper::body::{Bytes, Incoming};
use hyper::{header, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const HEADERS_TIMEOUT: Duration = Duration::from_secs(30);
const MAX_REDIRECTS: usize = 5;
/// The image's CA bundle (Debian's `ca-certificates`, shipped by `boot/build-image.sh`).
pub const CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// A body that sends nothing for this long is given up (a stalled registry must not hold the
/// node's pulls forever).
pub const STALL_TIMEOUT: Duration = Duration::from_secs(60);
/// Manifests, indexes and configs are small; anything bigger is refused.
pub const MAX_SMALL_BODY: usize = 4 << 20;

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("invalid URL {0:?}")]
    Url(String),
    #[error("cannot connect to {addr}: {detail}")]
    Connect { addr: String, detail: String },
    #[error("TLS with {host}: {detail}")]
    Tls { host: String, detail: String },
    #[error("HTTP with {url}: {detail}")]
    Http { url: String, detail: String },
    #[error("{url}: {status}{detail}")]
    Status {
        url: String,
        status: StatusCode,
        detail: String,
    },
    /// containerd's words for a registry that wants credentials the pod did not give.
    #[error("pull access denied, repository does not exist or may require authorization: authorization failed: no {scheme} auth credentials")]
    NeedsCredentials { url: String, scheme: String },
    /// The registry refused the credentials (or the token) it was given.
    #[error(
        "pull access denied, repository does not exist or may require authorization: authorization failed"
    )]
    Denied { url: String },
    #[error("failed to authorize: {detail}")]
    Token { realm: String, detail: String },
    #[error("{0}: response too large")]
    TooLarge(String),
}

/// `scheme://host:port/path?query`, split.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Url {
    pub https: bool,
    pub host: String,
    pub port: u16,
    /// Path and query, starting with `/`.
    pub path: String,
}

impl Url {
    pub fn parse(s: &str) -> Result<Url, RegistryError> {
        let bad = || RegistryError::Url(s.to_string());
        let (https, rest) = if let Some(r) = s.strip_prefix("https://") {
            (true, r)
        } else if let Some(r) = s.strip_prefix("http://") {
            (false, r)
        } else {
            return Err(bad());
        };
        let (authority, path) = match rest.find(['/', '?']) {
            Some(i) => (&rest[..i], rest[i..].to_string()),
            None => (rest, "/".to_string()),
        };
        let path = if path.starts_with('?') {
            format!("/{path}")
        } else {
            path
        };
        let default_port = if https { 443 } else { 80 };
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || authority.starts_with('[') => {
                (h.to_string(), p.parse().map_err(|_| bad())?)
            }
            _ => (authority.to_string(), default_port),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']').to_string();
        if host.is_empty() || host.contains(|c: char| c.is_whitespace() || c == '@') {
            return Err(bad());
        }
        Ok(Url {
            https,
            host,
            port,
            path,
        })
    }

    fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// Resolves a `Location` header against this URL.
    fn join(&self, location: &str) -> Result<Url, RegistryError> {
        if location.starts_with("http://") || location.starts_with("https://") {
            Url::parse(location)
        } else if location.starts_with('/') {
            Ok(Url {
                path: location.to_string(),
                ..self.clone()
            })
        } else {
            Err(RegistryError::Url(location.to_string()))
        }
    }
}

impl std::fmt::Display for Url {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = if self.https { "https" } else { "http" };
        write!(f, "{scheme}://{}{}", self.authority(), self.path)
    }
}

/// A `WWW-Authenticate` challenge.
#[derive(Debug, PartialEq, Eq)]
pub struct Challenge {
    pub scheme: String,
    pub params: HashMap<String, String>,
}

/// Parses `Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="…"`.
pub fn parse_challenge(value: &str) -> Option<Challenge> {
    let value = value.trim();
    let (scheme, rest) = value.split_once(' ').unwrap_or((value, ""));
    let mut params = HashMap::new();
    let mut rest = rest.trim();
    while !rest.is_empty() {
        let (key, after) = rest.split_once('=')?;
        let key = key.trim().to_ascii_lowercase();
        let after = after.trim_start();
        let (val, remainder) = if let Some(q) = after.strip_prefix('"') {
            let end = q.find('"')?;
            (q[..end].to_string(), &q[end + 1..])
        } else {
            let end = after.find(',').unwrap_or(after.len());
            (after[..end].trim().to_string(), &after[end..])
        };
        params.insert(key, val);
        rest = remainder.trim_start().trim_start_matches(',').trim_start();
    }
    Some(Challenge {
        scheme: scheme.to_ascii_lowercase(),
        params,
    })
}

fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The registry client. Cheap to clone the TLS config; the token cache is per client.
pub struct Client {
    tls: Arc<rustls::ClientConfig>,
    /// `realm + scope + credentials` → token.
    tokens: HashMap<String, String>,
    /// Registry host (normalised, see [`normalize_host`]) → base64 `user:password`.
    credentials: Vec<(String, String)>,
}

/// A registry host as docker config files and image references name it: no scheme, no path,
/// Docker Hub's several names folded into `docker.io`.
pub fn normalize_host(s: &str) -> String {
    let s = s.trim();
    let s = s
        .strip_prefix("https://")
        .or_else(|| s.strip_prefix("http://"))
        .unwrap_or(s);
    let host = s.split('/').next().unwrap_or(s).to_ascii_lowercase();
    match host.as_str() {
        "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" => "docker.io".into(),
        _ => host,
    }
}

impl Client {
    pub fn new() -> Result<Client, RegistryError> {
        let mut roots = rustls::RootCertStore::empty();
        let bundle = std::env::var_os("SSL_CERT_FILE")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| CA_BUNDLE.into());
        if let Ok(iter) = CertificateDer::pem_file_iter(&bundle) {
            roots.add_parsable_certificates(iter.flatten());
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| RegistryError::Tls {
                host: "(any)".into(),
                detail: e.to_string(),
            })?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Client {
            tls: Arc::new(tls),
            tokens: HashMap::new(),
            credentials: Vec::new(),
        })
    }

    /// The credentials for the next pulls: (registry host, base64 `user:password`).
    pub fn set_credentials(&mut self, creds: Vec<(String, String)>) {
        self.credentials = creds.into_iter().map(|(h, a)| (normalize_host(&h), a)).collect();
    }

    fn basic_for(&self, url: &Url) -> Option<&str> {
        let host = normalize_host(&url.authority());
        let bare = normalize_host(&url.host);
        self.credentials
            .iter()
            .find(|(h, _)| *h == host || *h == bare)
            .map(|(_, a)| a.as_str())
    }

    /// `GET url` with `accept`, handling auth and redirects. Returns a 2xx response or an error.
    pub async fn get(&mut self, url: &Url, accept: &[&str]) -> Result<Response<Incoming>, RegistryError> {
        let mut current = url.clone();
        let mut auth: Option<String> = None;
        let mut challenged = false;
        let mut challenged_with_credentials = false;
        for _ in 0..=MAX_REDIRECTS {
            let resp = self.send(&current, accept, auth.as_deref()).await?;
            let status = resp.status();
            if status.is_success() {
                return Ok(resp);
            }
            if status.is_redirection() {
                let loc = resp
                    .headers()
                    .get(header::LOCATION)
                    .and_then(|v| v.to_str().ok())
                    .ok_or_else(|| RegistryError::Http {
                        url: current.to_string(),
                        detail: format!("{status} without a Location"),
                    })?;
                let next = current.join(loc)?;
                // Credentials are for the registry, not for the storage it redirects to.
                if next.host != current.host {
                    auth = None;
                }
                current = next;
                continue;
            }
            if status == StatusCode::UNAUTHORIZED && !challenged {
                challenged = true;
                let challenge = resp
                    .headers()
                    .get(header::WWW_AUTHENTICATE)
                    .and_then(|v| v.to_str().ok())
                    .and_then(parse_challenge);
                let basic = self.basic_for(&current).map(str::to_string);
                challenged_with_credentials =
                    basic.is_some() || challenge.as_ref().is_some_and(|c| c.scheme == "bearer");
                match challenge {
                    Some(c) if c.scheme == "bearer" => {
                        auth = Some(format!("Bearer {}", self.token(&c, basic.as_deref()).await?));
                        continue;
                    }
                    Some(c) if c.scheme == "basic" && basic.is_some() => {
                        auth = basic.map(|b| format!("Basic {b}"));
                        continue;
                    }
                    Some(c) => {
                        return Err(RegistryError::NeedsCredentials {
                            url: current.to_string(),
                            scheme: c.scheme,
                        })
                    }
                    None => {}
                }
            }
            if status == StatusCode::UNAUTHORIZED && challenged_with_credentials {
                return Err(RegistryError::Denied {
                    url: current.to_string(),
                });
            }
            let detail = error_detail(resp).await;
            return Err(RegistryError::Status {
                url: current.to_string(),
                status,
                detail,
            });
        }
        Err(RegistryError::Http {
            url: url.to_string(),
            detail: "too many redirects".into(),
        })
    }

    /// A small body (manifest, config, token) read whole.
    pub async fn get_small(
        &mut self,
        url: &Url,
        accept: &[&str],
    ) -> Result<(Option<String>, Bytes), RegistryError> {
        let resp = self.get(url, accept).await?;
        let content_type = resp
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|s| s.split(';').next().unwrap_or(s).trim().to_string());
        let body = read_limited(resp.into_body(), MAX_SMALL_BODY, url).await?;
        Ok((content_type, body))
    }

    async fn token(&mut self, c: &Challenge, basic: Option<&str>) -> Result<String, RegistryError> {
        let realm = c.params.get("realm").cloned().unwrap_or_default();
        let scope = c.params.get("scope").cloned().unwrap_or_default();
        let key = format!("{realm} {scope} {}", basic.unwrap_or(""));
        if let Some(t) = self.tokens.get(&key) {
            return Ok(t.clone());
        }
        let err = |detail: String| RegistryError::Token {
            realm: realm.clone(),
            detail,
        };
        let mut url = Url::parse(&realm).map_err(|_| err("the realm is not a URL".into()))?;
        let mut query = Vec::new();
        if let Some(s) = c.params.get("service") {
            query.push(format!("service={}", percent_encode(s)));
        }
        if !scope.is_empty() {
            query.push(format!("scope={}", percent_encode(&scope)));
        }
        if !query.is_empty() {
            let sep = if url.path.contains('?') { '&' } else { '?' };
            url.path = format!("{}{sep}{}", url.path, query.join("&"));
        }
        let auth = basic.map(|b| format!("Basic {b}"));
        let resp = self.send(&url, &["application/json"], auth.as_deref()).await?;
        if !resp.status().is_success() {
            // containerd's words.
            let status = resp.status();
            let kind = if basic.is_some() { "oauth" } else { "anonymous" };
            return Err(err(format!(
                "failed to fetch {kind} token: unexpected status from GET request to {url}: {status}"
            )));
        }
        let body = read_limited(resp.into_body(), MAX_SMALL_BODY, &url).await?;
        #[derive(serde::Deserialize)]
        struct TokenResponse {
            token: Option<String>,
            access_token: Option<String>,
        }
        let t: TokenResponse = serde_json::from_slice(&body).map_err(|e| err(format!("not JSON: {e}")))?;
        let token = t
            .token
            .or(t.access_token)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| err("no token in the answer".into()))?;
        self.tokens.insert(key, token.clone());
        Ok(token)
    }

    async fn send(
        &self,
        url: &Url,
        accept: &[&str],
        auth: Option<&str>,
    ) -> Result<Response<Incoming>, RegistryError> {
        let addr = url.authority();
        let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&addr))
            .await
            .map_err(|_| RegistryError::Connect {
                addr: addr.clone(),
                detail: format!("timed out after {CONNECT_TIMEOUT:?}"),
            })?
            .map_err(|e| RegistryError::Connect {
                addr: addr.clone(),
                detail: e.to_string(),
            })?;
        let _ = tcp.set_nodelay(true);
        let mut req = Request::get(url.path.as_str())
            .header(header::HOST, addr.as_str())
            .header(
                header::USER_AGENT,
                concat!("keel-node/", env!("CARGO_PKG_VERSION")),
            );
        if !accept.is_empty() {
            req = req.header(header::ACCEPT, accept.join(", "));
        }
        if let Some(a) = auth {
            req = req.header(header::AUTHORIZATION, a);
        }
        let req = req.body(Empty::<Bytes>::new()).map_err(|e| RegistryError::Http {
            url: url.to_string(),
            detail: e.to_string(),
        })?;
        let fut = async {
            if url.https {
                let name = ServerName::try_from(url.host.clone()).map_err(|e| RegistryError::Tls {
                    host: url.host.clone(),
                    detail: e.to_string(),
                })?;
                let tls = tokio_rustls::TlsConnector::from(self.tls.clone())
                    .connect(name, tcp)
                    .await
                    .map_err(|e| RegistryError::Tls {
                        host: url.host.clone(),
                        detail: e.to_string(),
                    })?;
                exchange(TokioIo::new(tls), req, url).await
            } else {
                exchange(TokioIo::new(tcp), req, url).await
            }
        };
        tokio::time::timeout(HEADERS_TIMEOUT, fut)
            .await
            .map_err(|_| RegistryError::Http {
                url: url.to_string(),
                detail: format!("no answer within {HEADERS_TIMEOUT:?}"),
            })?
    }
}

async fn exchange<I>(
    io: I,
    req: Request<Empty<Bytes>>,
    url: &Url,
) -> Result<Response<Incoming>, RegistryError>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let http_err = |e: hyper::Error| RegistryError::Http {
        url: url.to_string(),
        detail: e.to_string(),
    };
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(http_err)?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    sender.send_request(req).await.map_err(http_err)
}

/// The next frame of a body, or an error if none comes within [`STALL_TIMEOUT`].
pub async fn next_frame(
    body: &mut Incoming,
    url: &Url,
) -> Result<Option<Result<hyper::body::Frame<Bytes>, hyper::Error>>, RegistryError> {
    tokio::time::timeout(STALL_TIMEOUT, body.frame())
        .await
        .map_err(|_| RegistryError::Http {
            url: url.to_string(),
            detail: format!("no data for {STALL_TIMEOUT:?}"),
        })
}

/// Reads a body whole, refusing more than `limit` bytes.
pub async fn read_limited(mut body: Incoming, limit: usize, url: &Url) -> Result<Bytes, RegistryError> {
    let mut buf = Vec::new();
    while let Some(frame) = next_frame(&mut body, url).await? {
        let frame = frame.map_err(|e| RegistryError::Http {
            url: url.to_string(),
            detail: e.to_string(),
        })?;
        if let Some(data) = frame.data_ref() {
            if buf.len() + data.len() > limit {
                return Err(RegistryError::TooLarge(url.to_string()));
            }
            buf.extend_from_slice(data);
        }
    }
    Ok(Bytes::from(buf))
}

/// The registry's own words on an error (`{"errors":[{"code":…,"message":…}]}`), if any.
async fn error_detail(resp: Response<Incoming>) -> String {
    let Ok(Ok(body)) = tokio::time::timeout(Duration::from_secs(5), resp.into_body().collect()).await else {
        return String::new();
    };
    let body = body.to_bytes();
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let msgs: Vec<String> = v
        .get("errors")
        .and_then(|e| e.as_array())
        .map(|errs| {
            errs.iter()
                .map(|e| {
                    format!(
                        "{} {}",
                        e.get("code").and_then(|c| c.as_str()).unwrap_or(""),
                        e.get("message").and_then(|c| c.as_str()).unwrap_or("")
                    )
                    .trim()
                    .to_string()
                })
                .collect()
        })
        .unwrap_or_default();
    if msgs.is_empty() {
        String::new()
    } else {
        format!(" ({})", msgs.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let u = Url::parse("http://10.0.2.100:5000/v2/library/busybox/manifests/1.35").unwrap();
        assert_eq!((u.https, u.host.as_str(), u.port), (false, "10.0.2.100", 5000));
        assert_eq!(u.path, "/v2/library/busybox/manifests/1.35");
        let u = Url::parse("https://auth.docker.io/token?x=1").unwrap();
        assert_eq!((u.https, u.port, u.path.as_str()), (true, 443, "/token?x=1"));
        assert_eq!(u.to_string(), "https://auth.docker.io:443/token?x=1");
        let u = Url::parse("https://h").unwrap();
        assert_eq!(u.path, "/");
        assert_eq!(u.join("/v2/x").unwrap().to_string(), "https://h:443/v2/x");
        assert!(u.join("relative").is_err());
        for bad in ["ftp://x", "http://", "http://a:b/", "http://u@h/"] {
            assert!(Url::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn credentials_match_the_registry_host() {
        let mut c = Client::new().unwrap();
        c.set_credentials(vec![
            ("https://index.docker.io/v1/".into(), "aHViOnB3".into()),
            ("10.0.2.100:5000".into(), "bGFiOnB3".into()),
        ]);
        let u = |s: &str| Url::parse(s).unwrap();
        assert_eq!(
            c.basic_for(&u("https://registry-1.docker.io/v2/")),
            Some("aHViOnB3")
        );
        assert_eq!(c.basic_for(&u("http://10.0.2.100:5000/v2/x")), Some("bGFiOnB3"));
        assert_eq!(c.basic_for(&u("https://quay.io/v2/x")), None);
        assert_eq!(normalize_host("http://Quay.io/v1/"), "quay.io");
    }

    #[test]
    fn challenges() {
        let c = parse_challenge(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/busybox:pull""#,
        )
        .unwrap();
        assert_eq!(c.scheme, "bearer");
        assert_eq!(c.params["realm"], "https://auth.docker.io/token");
        assert_eq!(c.params["service"], "registry.docker.io");
        assert_eq!(c.params["scope"], "repository:library/busybox:pull");
        let c = parse_challenge(r#"Basic realm="Registry Realm""#).unwrap();
        assert_eq!(c.scheme, "basic");
        assert_eq!(percent_encode("repository:a/b:pull"), "repository%3Aa%2Fb%3Apull");
    }
}
