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
//! Not yet: the ConfigMaps and Secrets a pod references are not resolved into the snapshot.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use keel_api::client::{ListParams, WatchEventKind};
use keel_proto::control_message::Msg as ControlMsg;
use keel_proto::{ControlMessage, DesiredPods};
use serde_json::Value;
use tokio::time::Instant;

use crate::gate::{stopped, Gate};
use crate::session::Outbound;

/// The shortest time between two lists for one node.
const MIN_INTERVAL: Duration = Duration::from_millis(200);
/// How long to wait after a failed list or watch.
const RETRY: Duration = Duration::from_secs(1);

/// (uid, resourceVersion) of each pod: what decides whether a new snapshot differs.
fn fingerprint(items: &[Value]) -> Vec<(String, String)> {
    let s = |p: &Value, ptr: &str| {
        p.pointer(ptr)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    let mut f: Vec<_> = items
        .iter()
        .map(|p| (s(p, "/metadata/uid"), s(p, "/metadata/resourceVersion")))
        .collect();
    f.sort();
    f
}

/// Feeds `out` until it closes or the gate shuts down.
pub(crate) async fn feed(gate: Arc<Gate>, node: String, out: Outbound) {
    let mut shutdown = gate.shutdown.clone();
    let selector = format!("spec.nodeName={node}");
    let mut last_sent: Option<Vec<(String, String)>> = None;
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
        let print = fingerprint(&items);
        if last_sent.as_ref() != Some(&print) {
            let msg = ControlMessage {
                msg: Some(ControlMsg::Pods(DesiredPods {
                    version: version.parse().unwrap_or(0),
                    pods_json: items.iter().map(|p| p.to_string().into_bytes()).collect(),
                })),
            };
            if out.send(Ok(msg)).await.is_err() {
                return;
            }
            tracing::debug!(node = %node, pods = items.len(), version = %version, "sent desired pods");
            last_sent = Some(print);
        }

        let watch = ListParams {
            resource_version: Some(version),
            allow_bookmarks: false,
            ..params
        };
        let mut events = match gate.client.watch(gate.kinds.pods, None, watch).await {
            Ok(s) => s,
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
    use serde_json::json;

    #[test]
    fn fingerprints_ignore_order_and_see_updates() {
        let a = json!({"metadata": {"uid": "a", "resourceVersion": "1"}});
        let b = json!({"metadata": {"uid": "b", "resourceVersion": "2"}});
        let b2 = json!({"metadata": {"uid": "b", "resourceVersion": "3"}});
        assert_eq!(
            fingerprint(&[a.clone(), b.clone()]),
            fingerprint(&[b.clone(), a.clone()])
        );
        assert_ne!(fingerprint(&[a.clone(), b]), fingerprint(&[a, b2]));
    }
}
