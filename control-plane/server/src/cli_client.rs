//! The few API calls the command line makes against a running server (as an admin with a
//! short-lived certificate from the local CA): plain HTTP/1.1 over TLS, one request per
//! connection, which is all `token create` needs.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context, Result};
use keel_auth::{BootstrapToken, Pki};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Creates a bootstrap token Secret through the API and returns the token.
pub async fn create_bootstrap_token(pki: &Pki, server: SocketAddr, ttl: Duration) -> Result<String> {
    let token = BootstrapToken::generate();
    let expiration = (!ttl.is_zero()).then(|| SystemTime::now() + ttl);
    let secret = token.to_secret(expiration, "created by keel-server token create");
    let body = serde_json::to_vec(&secret)?;
    let (code, text) = request(
        pki,
        server,
        "POST",
        "/api/v1/namespaces/kube-system/secrets",
        &body,
    )
    .await?;
    if code != 201 {
        bail!("the API server refused the token ({code}): {text}");
    }
    Ok(token.expose())
}

async fn request(
    pki: &Pki,
    server: SocketAddr,
    method: &str,
    path: &str,
    body: &[u8],
) -> Result<(u16, String)> {
    let creds =
        pki.issue_client_certificate("keel-server-cli", &["system:masters"], Duration::from_secs(300))?;
    let tls = pki.client_tls_config(Some(&creds))?;
    let tcp = tokio::net::TcpStream::connect(server)
        .await
        .with_context(|| format!("connecting to {server} (is keel-server running?)"))?;
    let name = rustls::pki_types::ServerName::IpAddress(server.ip().into());
    let mut stream = tokio_rustls::TlsConnector::from(tls)
        .connect(name, tcp)
        .await
        .context("TLS handshake")?;
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {server}\r\nContent-Type: application/json\r\nAccept: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body).await?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.or_else(|e| {
        // Servers may close without a TLS close_notify; what was read is complete.
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            Ok(0)
        } else {
            Err(e)
        }
    })?;
    let text = String::from_utf8_lossy(&response).into_owned();
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse::<u16>().ok())
        .context("the API server sent no HTTP status line")?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((code, body))
}
