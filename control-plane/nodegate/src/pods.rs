//! The pods a node should run, pushed down its session as level-triggered snapshots.
//!
//! On connect, and after every change to a pod bound to the node (`spec.nodeName`), the node
//! gets the *whole* set again as a `DesiredPods` with the list's resourceVersion as its
//! version. Deltas would be smaller, but a snapshot can never be misapplied: a node that missed
//! anything (a reconnect, a dropped message) is right again with the next one.
//!
//! Changes are found by watching from the list's version; any event (or the watch ending)
//! leads to a fresh list, so correctness never depends on interpreting events. Lists are at
//! least [`MIN_INTERVAL`] apart, which also coalesces bursts (a Deployment scaling up).
//!
//! Each pod travels with what it references (ConfigMaps and Secrets from volumes, env,
//! envFrom, projected volumes and imagePullSecrets), resolved here so the node never reads the
//! API: an extra top-level field [`RESOLVED_FIELD`] of the pod JSON holds
//! `{"configMaps": {NAME: {KEY: VALUE}}, "secrets": {…}}`, values as text (Secret data
//! decoded), objects that do not exist left out. Changes to ConfigMaps and Secrets
//! wake the loop too; a snapshot is sent only when its content differs from the last one.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use keel_api::client::{ListParams, WatchEventKind};
use keel_proto::control_message::Msg as ControlMsg;
use keel_proto::{ControlMessage, DesiredPods};

use base64::Engine as _;
use serde_json::{json, Map, Value};
use tokio::time::Instant;

use crate::gate::{stopped, Gate};
use crate::session::Outbound;

/// The top-level field of a pod's JSON that carries its resolved references.
pub(crate) const RESOLVED_FIELD: &str = "keelResolved";

/// The shortest time between two lists for one node.
const MIN_INTERVAL: Duration = Duration::from_millis(200);
/// How long to wait after a failed list or watch.
const RETRY: Duration = Duration::from_secs(1);

/// The ConfigMaps and Secrets a pod references, by name (all in the pod's namespace).
#[derive(Debug, Default, PartialEq)]
pub(crate) struct References {
    pub config_maps: BTreeSet<String>,
    pub secrets: BTreeSet<String>,
}

pub(crate) fn references(pod: &Value) -> References {
    let mut r = References::default();
    let spec = &pod["spec"];
    let name = |v: &Value, ptr: &str| v.pointer(ptr).and_then(Value::as_str).map(str::to_string);
    let items = |v: &Value, key: &str| v.get(key).and_then(Value::as_array).cloned().unwrap_or_default();
    for vol in items(spec, "volumes") {
        r.config_maps.extend(name(&vol, "/configMap/name"));
        r.secrets.extend(name(&vol, "/secret/secretName"));
        for src in vol
            .pointer("/projected/sources")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            r.config_maps.extend(name(src, "/configMap/name"));
            r.secrets.extend(name(src, "/secret/name"));
        }
    }
    for list in ["initContainers", "containers", "ephemeralContainers"] {
        for c in items(spec, list) {
            for e in items(&c, "env") {
                r.config_maps.extend(name(&e, "/valueFrom/configMapKeyRef/name"));
                r.secrets.extend(name(&e, "/valueFrom/secretKeyRef/name"));
            }
            for e in items(&c, "envFrom") {
                r.config_maps.extend(name(&e, "/configMapRef/name"));
                r.secrets.extend(name(&e, "/secretRef/name"));
            }
        }
    }
    for s in items(spec, "imagePullSecrets") {
        r.secrets.extend(name(&s, "/name"));
    }
    r
}

/// The `KEY: VALUE` text map of a ConfigMap (`data`, plus `binaryData` decoded) or a Secret
/// (`data` decoded, `stringData` as is).
pub(crate) fn text_data(obj: &Value) -> Map<String, Value> {
    let decode = |v: &Value| {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(v.as_str().unwrap_or_default())
            .unwrap_or_default();
        Value::String(String::from_utf8_lossy(&bytes).into_owned())
    };
    let mut out = Map::new();
    let is_secret = obj["kind"] == "Secret";
    if let Some(m) = obj.get("binaryData").and_then(Value::as_object) {
        out.extend(m.iter().map(|(k, v)| (k.clone(), decode(v))));
    }
    if let Some(m) = obj.get("data").and_then(Value::as_object) {
        out.extend(
            m.iter()
                .map(|(k, v)| (k.clone(), if is_secret { decode(v) } else { v.clone() })),
        );
    }
    if let Some(m) = obj.get("stringData").and_then(Value::as_object) {
        out.extend(m.iter().map(|(k, v)| (k.clone(), v.clone())));
    }
    out
}

/// Resolves one pod's references; objects that do not exist are left out.
async fn resolve(gate: &Gate, pod: &Value) -> Value {
    let ns = pod
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .unwrap_or("default")
        .to_string();
    let refs = references(pod);
    let fetch = |rt, names: BTreeSet<String>| {
        let ns = ns.clone();
        async move {
            let mut out = Map::new();
            for n in names {
                match gate.client.get(rt, Some(ns.clone()), n.clone()).await {
                    Ok(obj) => {
                        out.insert(n, Value::Object(text_data(&obj)));
                    }
                    Err(e) if e.code == 404 => {}
                    Err(e) => {
                        tracing::warn!(namespace = %ns, name = %n, error = %e, "resolving a pod reference failed")
                    }
                }
            }
            out
        }
    };
    let config_maps = fetch(gate.kinds.configmaps, refs.config_maps).await;
    let secrets = fetch(gate.kinds.secrets, refs.secrets).await;
    json!({"configMaps": config_maps, "secrets": secrets})
}

/// Feeds `out` until it closes or the gate shuts down.
pub(crate) async fn feed(gate: Arc<Gate>, node: String, out: Outbound) {
    let mut shutdown = gate.shutdown.clone();
    let selector = format!("spec.nodeName={node}");
    let mut last_sent: Option<Vec<Vec<u8>>> = None;
    let mut next_list = Instant::now();
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(next_list) => {}
            _ = out.closed() => return,
            _ = stopped(&mut shutdown) => return,
        }
        next_list = Instant::now() + MIN_INTERVAL;
        let params = ListParams {
            field_selector: Some(selector.clone()),
            ..Default::default()
        };
        let list = match gate.client.list(gate.kinds.pods, None, params.clone()).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(node = %node, error = %e, "listing the node's pods failed");
                next_list = Instant::now() + RETRY;
                continue;
            }
        };
        let version = list
            .pointer("/metadata/resourceVersion")
            .and_then(Value::as_str)
            .unwrap_or("0")
            .to_string();
        let items = list["items"].as_array().cloned().unwrap_or_default();
        let mut content = Vec::with_capacity(items.len());
        for pod in &items {
            let mut pod = pod.clone();
            pod[RESOLVED_FIELD] = resolve(&gate, &pod).await;
            content.push(pod.to_string().into_bytes());
        }
        if last_sent.as_ref() != Some(&content) {
            let msg = ControlMessage {
                msg: Some(ControlMsg::Pods(DesiredPods {
                    version: version.parse().unwrap_or(0),
                    pods_json: content.clone(),
                })),
            };
            if out.send(Ok(msg)).await.is_err() {
                return;
            }
            tracing::debug!(node = %node, pods = items.len(), version = %version, "sent desired pods");
            last_sent = Some(content);
        }

        let pods_watch = ListParams {
            resource_version: Some(version.clone()),
            allow_bookmarks: false,
            ..params
        };
        let any_watch = ListParams {
            resource_version: Some(version),
            ..Default::default()
        };
        let watches = futures::future::try_join3(
            gate.client.watch(gate.kinds.pods, None, pods_watch),
            gate.client.watch(gate.kinds.configmaps, None, any_watch.clone()),
            gate.client.watch(gate.kinds.secrets, None, any_watch),
        )
        .await;
        let mut events = match watches {
            Ok((a, b, c)) => futures::stream::select_all([a, b, c]),
            Err(e) => {
                tracing::warn!(node = %node, error = %e, "watching the node's pods failed");
                next_list = Instant::now() + RETRY;
                continue;
            }
        };
        // Wait for the first real change; then list again.
        loop {
            tokio::select! {
                ev = events.next() => match ev {
                    Some(Ok(e)) if e.kind == WatchEventKind::Bookmark => continue,
                    _ => break,
                },
                _ = out.closed() => return,
                _ = stopped(&mut shutdown) => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_every_kind_of_reference() {
        let pod = json!({"spec": {
            "volumes": [
                {"name": "a", "configMap": {"name": "cm-vol"}},
                {"name": "b", "secret": {"secretName": "s-vol"}},
                {"name": "c", "projected": {"sources": [{"configMap": {"name": "cm-proj"}}, {"secret": {"name": "s-proj"}}]}},
                {"name": "d", "emptyDir": {}}
            ],
            "initContainers": [{"name": "i", "envFrom": [{"configMapRef": {"name": "cm-envfrom"}}]}],
            "containers": [{"name": "c", "env": [
                {"name": "X", "valueFrom": {"secretKeyRef": {"name": "s-env", "key": "k"}}},
                {"name": "Y", "valueFrom": {"configMapKeyRef": {"name": "cm-env", "key": "k"}}},
                {"name": "Z", "value": "plain"}
            ], "envFrom": [{"secretRef": {"name": "s-envfrom"}}]}],
            "imagePullSecrets": [{"name": "regcred"}]
        }});
        let r = references(&pod);
        let set = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
        assert_eq!(r.config_maps, set(&["cm-envfrom", "cm-env", "cm-proj", "cm-vol"]));
        assert_eq!(
            r.secrets,
            set(&["regcred", "s-env", "s-envfrom", "s-proj", "s-vol"])
        );
        assert_eq!(references(&json!({})), References::default());
    }

    #[test]
    fn data_becomes_text() {
        let cm = json!({"kind": "ConfigMap", "data": {"a": "1"}, "binaryData": {"b": "aGk="}});
        assert_eq!(Value::Object(text_data(&cm)), json!({"a": "1", "b": "hi"}));
        let secret = json!({"kind": "Secret", "data": {"password": "czNjcmV0"}});
        assert_eq!(Value::Object(text_data(&secret)), json!({"password": "s3cret"}));
    }
}
