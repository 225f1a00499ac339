//! The lab's OCI registry: Debian's `docker-registry` on loopback with a config file of ours (the
//! packaged one listens on every interface), and a small client that pushes [`Image`]s to it
//! over plain HTTP with the distribution API:
//!
//! `HEAD /v2/<repo>/blobs/<digest>` (skip what is there) → `POST /v2/<repo>/blobs/uploads/` →
//! `PUT <location>&digest=<digest>` (monolithic upload) → `PUT /v2/<repo>/manifests/<tag>`.
//!
//! One connection per request keeps the client trivially correct; the lab pushes a handful of
//! blobs, so connection reuse would buy nothing measurable.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;

use crate::image::{Image, MANIFEST_MEDIA_TYPE};
use crate::proc::{Lifetime, ProcError, Supervised};
use crate::wait::{wait_for, Poll, WaitError};

/// Errors talking to a registry.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("cannot reach the registry at {addr}: {source}")]
    Connect {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("HTTP exchange with {addr} failed: {source}")]
    Http {
        addr: String,
        #[source]
        source: hyper::Error,
    },
    #[error("registry answered {status} to {what}: {body}")]
    Status {
        what: String,
        status: StatusCode,
        body: String,
    },
    #[error("registry answered {what} without a Location header")]
    NoLocation { what: String },
    #[error("bad request for {what}: {detail}")]
    Request { what: String, detail: String },
    #[error("cannot write {path}: {source}")]
    Config {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Process(#[from] ProcError),
    #[error("registry did not come up: {0}")]
    NotReady(#[from] WaitError),
    #[error("cannot start an async runtime: {0}")]
    Runtime(#[source] std::io::Error),
}

struct Response {
    status: StatusCode,
    location: Option<String>,
    body: Bytes,
}

async fn exchange(
    addr: &str,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: Bytes,
) -> Result<Response, RegistryError> {
    let what = format!("{method} {path}");
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|source| RegistryError::Connect {
            addr: addr.to_owned(),
            source,
        })?;
    let http_err = |source| RegistryError::Http {
        addr: addr.to_owned(),
        source,
    };
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(http_err)?;
    let conn_task = tokio::spawn(conn);
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header(http::header::HOST, addr)
        .header(http::header::CONTENT_LENGTH, body.len());
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let req = req.body(Full::new(body)).map_err(|e| RegistryError::Request {
        what: what.clone(),
        detail: e.to_string(),
    })?;
    let resp = sender.send_request(req).await.map_err(http_err)?;
    let status = resp.status();
    let location = resp
        .headers()
        .get(http::header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = resp.into_body().collect().await.map_err(http_err)?.to_bytes();
    conn_task.abort();
    Ok(Response {
        status,
        location,
        body,
    })
}

fn expect(resp: &Response, what: &str, ok: &[StatusCode]) -> Result<(), RegistryError> {
    if ok.contains(&resp.status) {
        Ok(())
    } else {
        Err(RegistryError::Status {
            what: what.to_owned(),
            status: resp.status,
            body: String::from_utf8_lossy(&resp.body).chars().take(500).collect(),
        })
    }
}

/// `Location` may be absolute (`http://host/v2/…`) or a path; the request needs the path.
fn location_path(location: &str) -> &str {
    match location.split_once("://") {
        Some((_, rest)) => rest.find('/').map_or("/", |i| &rest[i..]),
        None => location,
    }
}

async fn push_blob(addr: &str, repo: &str, digest: &str, blob: &[u8]) -> Result<bool, RegistryError> {
    let head = exchange(
        addr,
        Method::HEAD,
        &format!("/v2/{repo}/blobs/{digest}"),
        &[],
        Bytes::new(),
    )
    .await?;
    if head.status == StatusCode::OK {
        return Ok(false);
    }
    let what = format!("upload start for {repo}");
    let start = exchange(
        addr,
        Method::POST,
        &format!("/v2/{repo}/blobs/uploads/"),
        &[],
        Bytes::new(),
    )
    .await?;
    expect(&start, &what, &[StatusCode::ACCEPTED])?;
    let location = start.location.ok_or(RegistryError::NoLocation { what })?;
    let path = location_path(&location);
    let sep = if path.contains('?') { '&' } else { '?' };
    let put_path = format!("{path}{sep}digest={digest}");
    let put = exchange(
        addr,
        Method::PUT,
        &put_path,
        &[("content-type", "application/octet-stream")],
        Bytes::copy_from_slice(blob),
    )
    .await?;
    expect(
        &put,
        &format!("upload of {digest} to {repo}"),
        &[StatusCode::CREATED],
    )?;
    Ok(true)
}

/// Pushes one image; blobs the registry already has are skipped. Returns how many blobs were
/// uploaded.
pub async fn push(addr: &str, image: &Image) -> Result<usize, RegistryError> {
    let repo = &image.repository;
    let mut uploaded = 0;
    for layer in &image.layers {
        uploaded += usize::from(push_blob(addr, repo, &layer.digest, &layer.blob).await?);
    }
    let config_digest = crate::image::digest(&image.config);
    uploaded += usize::from(push_blob(addr, repo, &config_digest, &image.config).await?);
    let put = exchange(
        addr,
        Method::PUT,
        &format!("/v2/{repo}/manifests/{}", image.tag),
        &[("content-type", MANIFEST_MEDIA_TYPE)],
        Bytes::copy_from_slice(&image.manifest),
    )
    .await?;
    expect(
        &put,
        &format!("manifest {}", image.reference()),
        &[StatusCode::CREATED],
    )?;
    Ok(uploaded)
}

/// Pushes images from synchronous code (the lab library and the CLI are synchronous).
pub fn push_blocking(addr: &str, images: &[Image]) -> Result<usize, RegistryError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(RegistryError::Runtime)?;
    rt.block_on(async {
        let mut uploaded = 0;
        for image in images {
            uploaded += push(addr, image).await?;
        }
        Ok(uploaded)
    })
}

/// Whether `GET /v2/` answers 200: the registry is up.
pub fn is_up(addr: &str) -> bool {
    let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
        return false;
    };
    rt.block_on(async {
        matches!(
            tokio::time::timeout(
                Duration::from_secs(2),
                exchange(addr, Method::GET, "/v2/", &[], Bytes::new())
            )
            .await,
            Ok(Ok(Response {
                status: StatusCode::OK,
                ..
            }))
        )
    })
}

/// Fetches a manifest by tag (tests and `status` use it to show what the registry holds).
pub fn manifest(addr: &str, repository: &str, tag: &str) -> Result<Vec<u8>, RegistryError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(RegistryError::Runtime)?;
    rt.block_on(async {
        let path = format!("/v2/{repository}/manifests/{tag}");
        let resp = exchange(
            addr,
            Method::GET,
            &path,
            &[("accept", MANIFEST_MEDIA_TYPE)],
            Bytes::new(),
        )
        .await?;
        expect(&resp, &format!("GET {path}"), &[StatusCode::OK])?;
        Ok(resp.body.to_vec())
    })
}

/// The config we give `docker-registry`: loopback only, storage in the lab directory, no auth.
pub fn config_yaml(listen: SocketAddr, storage: &Path) -> String {
    format!(
        "version: 0.1\n\
         log:\n  level: warn\n  accesslog:\n    disabled: true\n\
         storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n\
         http:\n  addr: {listen}\n",
        storage.display()
    )
}

/// Writes `dir/registry.yml` and starts `docker-registry` with storage in `dir/registry-data`
/// and its output in `log`. It is up once [`wait_up`] says so.
pub fn spawn(
    binary: &Path,
    dir: &Path,
    listen: SocketAddr,
    log: &Path,
    pid_file: &Path,
    lifetime: Lifetime,
) -> Result<Supervised, RegistryError> {
    let config = dir.join("registry.yml");
    let storage = dir.join("registry-data");
    std::fs::create_dir_all(&storage).map_err(|source| RegistryError::Config {
        path: storage.clone(),
        source,
    })?;
    std::fs::write(&config, config_yaml(listen, &storage)).map_err(|source| RegistryError::Config {
        path: config.clone(),
        source,
    })?;
    let mut cmd = Command::new(binary);
    cmd.arg("serve").arg(&config).stdin(Stdio::null());
    Ok(Supervised::spawn(
        "docker-registry",
        cmd,
        log,
        pid_file,
        lifetime,
    )?)
}

/// Waits until the registry started by [`spawn`] answers `GET /v2/`.
pub fn wait_up(process: &Supervised, listen: SocketAddr, log: &Path) -> Result<(), RegistryError> {
    let addr = listen.to_string();
    wait_for("the registry to answer /v2/", Duration::from_secs(30), || {
        if process.has_exited() {
            return Poll::Failed(format!("docker-registry exited; see {}", log.display()));
        }
        if is_up(&addr) {
            Poll::Ready(())
        } else {
            Poll::Pending("GET /v2/ does not answer 200 yet".into())
        }
    })?;
    Ok(())
}
