//! The streaming pod subresources: `pods/log`, `pods/exec`, `pods/attach`, `pods/portforward`.
//!
//! Each request is checked against the Pod the way upstream's registry and the kubelet check it
//! (container name, node assignment, container state; upstream's texts), then a
//! [`PodStreams`](keel_api::streams::PodStreams) opens a stream to the node the pod is bound to
//! and this module translates between it and the client's protocol:
//!
//! * `log`: a plain `text/plain` response, chunked while `follow=true`;
//! * `exec` and `attach`: a WebSocket upgrade speaking the remote-command channel protocols
//!   `v5.channel.k8s.io` (kubectl ≥ 1.30) and `v4.channel.k8s.io` ([`websocket`]);
//! * `portforward`: a WebSocket upgrade carrying either SPDY/3.1 frames
//!   (`SPDY/3.1+portforward.k8s.io`, kubectl; [`spdy`]) or the plain `portforward.k8s.io`
//!   channel protocol with `ports=` (other clients) ([`portforward`]).
//!
//! SPDY without WebSocket (the old `Upgrade: SPDY/3.1` POST) is refused with 400; kubectl 1.32
//! only falls back to it when the WebSocket upgrade failed.

pub(crate) mod logs;
pub(crate) mod portforward;
pub(crate) mod remote;
pub(crate) mod spdy;
pub(crate) mod websocket;

use std::sync::Arc;

use http::{header, HeaderMap, HeaderValue, Response, StatusCode};
use keel_api::registry::{self, ResourceType};
use keel_api::status::{ApiError, ApiResult};
use keel_api::streams::{PodStreams, StreamTarget};
use serde_json::Value;

use crate::http::Body;

/// A WebSocket upgrade the client asked for, taken from the request before its body is read.
pub struct Upgrade {
    pub key: String,
    /// `Sec-WebSocket-Protocol`, in the client's order.
    pub protocols: Vec<String>,
    pub on_upgrade: std::sync::Mutex<Option<hyper::upgrade::OnUpgrade>>,
}

impl Upgrade {
    /// The WebSocket upgrade of `req`, if it is one (HTTP/1.1 `Upgrade: websocket`).
    pub fn of<B>(req: &mut http::Request<B>) -> Option<Upgrade> {
        let headers = req.headers();
        let is_ws = headers
            .get(header::UPGRADE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("websocket")));
        if !is_ws {
            return None;
        }
        let key = headers
            .get(header::SEC_WEBSOCKET_KEY)
            .and_then(|v| v.to_str().ok())?
            .trim()
            .to_string();
        let protocols = protocols(headers);
        let on_upgrade = hyper::upgrade::on(req);
        Some(Upgrade {
            key,
            protocols,
            on_upgrade: std::sync::Mutex::new(Some(on_upgrade)),
        })
    }

    fn take(&self) -> Option<hyper::upgrade::OnUpgrade> {
        self.on_upgrade.lock().ok().and_then(|mut g| g.take())
    }

    /// The `101 Switching Protocols` answer choosing `protocol`.
    fn switching(&self, protocol: &str) -> ApiResult<Response<Body>> {
        let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(self.key.as_bytes());
        let mut resp = Response::new(crate::http::empty_body());
        *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let h = resp.headers_mut();
        h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert(
            header::SEC_WEBSOCKET_ACCEPT,
            HeaderValue::from_str(&accept).map_err(|e| ApiError::internal(e.to_string()))?,
        );
        h.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_str(protocol).map_err(|e| ApiError::internal(e.to_string()))?,
        );
        Ok(resp)
    }
}

fn protocols(headers: &HeaderMap) -> Vec<String> {
    headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|p| p.trim().to_string())
        .filter(|p| !p.is_empty())
        .collect()
}

/// What the stream handlers need from the HTTP layer.
pub(crate) struct StreamRequest<'a> {
    pub streams: Option<&'a Arc<dyn PodStreams>>,
    pub query: &'a [(String, String)],
    pub upgrade: Option<&'a Upgrade>,
}

impl StreamRequest<'_> {
    fn q(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn all(&self, name: &str) -> Vec<String> {
        self.query
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .collect()
    }

    fn flag(&self, name: &str) -> bool {
        matches!(self.q(name), Some("true" | "1" | "True" | "TRUE" | "t" | "T"))
    }

    fn streams(&self) -> ApiResult<&Arc<dyn PodStreams>> {
        self.streams.ok_or_else(|| {
            ApiError::service_unavailable("this API server has no node gate to reach pods through")
        })
    }
}

fn pods() -> ApiResult<&'static ResourceType> {
    registry::find("", "v1", "pods").ok_or_else(|| ApiError::internal("no v1 pods in the registry"))
}

fn names(list: Option<&Value>) -> Vec<String> {
    list.and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|c| c.get("name").and_then(Value::as_str))
        .map(str::to_string)
        .collect()
}

/// The container a request is for, as upstream's `LogLocation`/`streamLocation` resolve it.
fn container_of(pod: &Value, name: &str, asked: Option<&str>) -> ApiResult<String> {
    let spec = pod.get("spec");
    let containers = names(spec.and_then(|s| s.get("containers")));
    let init = names(spec.and_then(|s| s.get("initContainers")));
    let ephemeral = names(spec.and_then(|s| s.get("ephemeralContainers")));
    match asked.filter(|c| !c.is_empty()) {
        Some(c) => {
            if containers.iter().chain(&init).chain(&ephemeral).any(|n| n == c) {
                Ok(c.to_string())
            } else {
                Err(ApiError::bad_request(format!(
                    "container {c} is not valid for pod {name}"
                )))
            }
        }
        None => match containers.as_slice() {
            [one] => Ok(one.clone()),
            [] => Err(ApiError::bad_request(format!(
                "a container name must be specified for pod {name}"
            ))),
            many => {
                let mut msg = format!(
                    "a container name must be specified for pod {name}, choose one of: [{}]",
                    many.join(" ")
                );
                if !init.is_empty() {
                    msg.push_str(&format!(" or one of the init containers: [{}]", init.join(" ")));
                }
                Err(ApiError::bad_request(msg))
            }
        },
    }
}

/// The status of `container` (regular, init or ephemeral), if the node reported one.
fn container_status<'a>(pod: &'a Value, container: &str) -> Option<&'a Value> {
    let status = pod.get("status")?;
    [
        "containerStatuses",
        "initContainerStatuses",
        "ephemeralContainerStatuses",
    ]
    .iter()
    .filter_map(|k| status.get(*k).and_then(Value::as_array))
    .flatten()
    .find(|s| s.get("name").and_then(Value::as_str) == Some(container))
}

fn target(pod: &Value, ns: &str, name: &str, container: String) -> ApiResult<StreamTarget> {
    let node = pod
        .pointer("/spec/nodeName")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if node.is_empty() {
        return Err(ApiError::bad_request(format!(
            "pod {name} does not have a host assigned"
        )));
    }
    Ok(StreamTarget {
        node: node.to_string(),
        namespace: ns.to_string(),
        pod: name.to_string(),
        pod_uid: pod
            .pointer("/metadata/uid")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string(),
        container,
    })
}
