//! The overlay peers of each node: every other node's VXLAN endpoint and pod CIDR, pushed down
//! its session as level-triggered `OverlayPeers` snapshots (on connect and whenever the set
//! changes — a node joins, gets its pod CIDR, moves, or is deleted).
//!
//! A node reports its own endpoint (`NodeReport.overlay`); the session keeps it on the Node as
//! two annotations, flannel-style (`keel.dev/overlay-address`, `keel.dev/vtep-mac`, see
//! [`node_status::overlay_of`]), so the peer set is derived from Node objects alone and survives
//! control-plane restarts. A Node with both and a `spec.podCIDR` is a peer of every other node. Deleting the Node removes it from everyone's set (and frees its
//! pod CIDR, which IPAM derives from the Nodes that exist).
//!
//! Like [`crate::pods::feed`], [`feed`] lists, sends if different, watches from the list's
//! version, and lists again on the first change.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use keel_api::client::{ListParams, WatchEventKind};
use keel_proto::control_message::Msg as ControlMsg;
use keel_proto::{ControlMessage, OverlayPeer, OverlayPeers};
use serde_json::Value;
use tokio::time::Instant;

use crate::gate::{stopped, Gate};
use crate::node_status;
use crate::session::Outbound;

/// The shortest time between two lists for one node.
const MIN_INTERVAL: Duration = Duration::from_millis(200);
/// How long to wait after a failed list or watch.
const RETRY: Duration = Duration::from_secs(1);

/// The peers of `me` among `nodes` (a Node list's items), sorted by name.
pub(crate) fn peer_set(nodes: &[Value], me: &str) -> Vec<OverlayPeer> {
    let mut peers: Vec<OverlayPeer> = nodes
        .iter()
        .filter_map(|n| {
            let name = n.pointer("/metadata/name").and_then(Value::as_str)?;
            let cidr = n
                .pointer("/spec/podCIDR")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let (address, vtep_mac) = node_status::overlay_of(n)?;
            let deleting = n
                .pointer("/metadata/deletionTimestamp")
                .is_some_and(|d| !d.is_null());
            if name == me || cidr.is_empty() || deleting {
                return None;
            }
            Some(OverlayPeer {
                node_name: name.to_string(),
                address,
                vtep_mac,
                pod_cidr: cidr.to_string(),
            })
        })
        .collect();
    peers.sort_by(|a, b| a.node_name.cmp(&b.node_name));
    peers
}

/// Feeds `out` with `node`'s peer set until it closes or the gate shuts down.
pub(crate) async fn feed(gate: Arc<Gate>, node: String, out: Outbound) {
    let mut shutdown = gate.shutdown.clone();
    let mut last_sent: Option<Vec<OverlayPeer>> = None;
    let mut next_list = Instant::now();
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(next_list) => {}
            _ = out.closed() => return,
            _ = stopped(&mut shutdown) => return,
        }
        next_list = Instant::now() + MIN_INTERVAL;
        let list = match gate
            .client
            .list(gate.kinds.nodes, None, ListParams::default())
            .await
        {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(node = %node, error = %e, "listing nodes for overlay peers failed");
                next_list = Instant::now() + RETRY;
                continue;
            }
        };
        let version = list
            .pointer("/metadata/resourceVersion")
            .and_then(Value::as_str)
            .unwrap_or("0")
            .to_string();
        let peers = peer_set(
            list["items"].as_array().map(Vec::as_slice).unwrap_or_default(),
            &node,
        );
        if last_sent.as_ref() != Some(&peers) {
            let msg = ControlMessage {
                msg: Some(ControlMsg::Peers(OverlayPeers {
                    version: version.parse().unwrap_or(0),
                    peers: peers.clone(),
                })),
            };
            if out.send(Ok(msg)).await.is_err() {
                return;
            }
            tracing::debug!(node = %node, peers = peers.len(), version = %version, "sent overlay peers");
            last_sent = Some(peers);
        }
        let params = ListParams {
            resource_version: Some(version),
            ..Default::default()
        };
        let mut events = match gate.client.watch(gate.kinds.nodes, None, params).await {
            Ok(w) => w,
            Err(e) => {
                tracing::warn!(node = %node, error = %e, "watching nodes for overlay peers failed");
                next_list = Instant::now() + RETRY;
                continue;
            }
        };
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
    use crate::node_status::{OVERLAY_ADDRESS_ANNOTATION, VTEP_MAC_ANNOTATION};
    use serde_json::json;

    fn node(name: &str, cidr: Option<&str>, addr: Option<&str>) -> Value {
        let mut n = json!({"metadata": {"name": name, "annotations": {}}, "spec": {}});
        if let Some(c) = cidr {
            n["spec"]["podCIDR"] = json!(c);
        }
        if let Some(a) = addr {
            n["metadata"]["annotations"][OVERLAY_ADDRESS_ANNOTATION] = json!(a);
            n["metadata"]["annotations"][VTEP_MAC_ANNOTATION] = json!("0e:4b:c0:a8:32:0c");
        }
        n
    }

    #[test]
    fn peers_are_the_other_complete_nodes() {
        let mut deleting = node("d", Some("10.244.4.0/24"), Some("192.168.50.14"));
        deleting["metadata"]["deletionTimestamp"] = json!("2026-11-23T14:00:00Z");
        let nodes = vec![
            node("c", Some("10.244.3.0/24"), Some("192.168.50.13")),
            node("a", Some("10.244.1.0/24"), Some("192.168.50.11")),
            node("b", Some("10.244.2.0/24"), None), // no endpoint yet
            node("e", None, Some("192.168.50.15")), // no pod CIDR yet
            deleting,
            node("f", Some("10.244.6.0/24"), Some("192.168.50.16")),
        ];
        let peers = peer_set(&nodes, "a");
        let names: Vec<&str> = peers.iter().map(|p| p.node_name.as_str()).collect();
        assert_eq!(names, ["c", "f"]);
        assert_eq!(peers[0].address, "192.168.50.13");
        assert_eq!(peers[0].pod_cidr, "10.244.3.0/24");
        assert_eq!(peers[0].vtep_mac, "0e:4b:c0:a8:32:0c");
        assert_eq!(peer_set(&nodes, "c").len(), 2);
    }
}
