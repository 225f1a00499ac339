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
//! One [`PeerIndex`] per gate follows the Nodes; each session's [`feed`] sends its node the
//! set without itself whenever that changes.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use keel_api::client::{ListParams, WatchEventKind};
use keel_proto::control_message::Msg as ControlMsg;
use keel_proto::{ControlMessage, OverlayPeer, OverlayPeers};
use serde_json::Value;
use tokio::sync::watch;

use crate::gate::{feed_snapshots, stopped, Gate};
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

/// The published peer set: `None` until the Nodes have been listed, then the version and every
/// complete node's entry.
type Published = Option<(u64, Arc<Vec<OverlayPeer>>)>;

/// Every node's overlay peer entry, from one list and watch of the Nodes for the whole gate,
/// started by the first feed. It publishes the whole peer set only when an entry changes, so
/// the Nodes' status updates (every node, every minute) wake no feed; before, each session
/// listed every Node on every Node change, which is quadratic in the nodes.
pub(crate) struct PeerIndex {
    started: std::sync::OnceLock<()>,
    all: watch::Sender<Published>,
}

impl Default for PeerIndex {
    fn default() -> Self {
        PeerIndex {
            started: std::sync::OnceLock::new(),
            all: watch::channel(None).0,
        }
    }
}

impl PeerIndex {
    fn start(&self, gate: &Gate) {
        self.started.get_or_init(|| {
            tokio::spawn(follow(
                gate.client.clone(),
                gate.kinds.nodes,
                self.all.clone(),
                gate.shutdown.clone(),
            ));
        });
    }
}

/// The node's own entry, if it is a complete peer.
fn entry(node: &Value) -> Option<OverlayPeer> {
    peer_set(std::slice::from_ref(node), "").pop()
}

fn publish(out: &watch::Sender<Published>, entries: &HashMap<String, OverlayPeer>, version: u64) {
    let mut all: Vec<OverlayPeer> = entries.values().cloned().collect();
    all.sort_by(|a, b| a.node_name.cmp(&b.node_name));
    out.send_replace(Some((version, Arc::new(all))));
}

/// Keeps the peer entries: list, then watch from the list's version; lists again when the watch
/// ends or fails.
async fn follow(
    client: Arc<dyn keel_api::client::ApiClient>,
    rt: &'static keel_api::registry::ResourceType,
    out: watch::Sender<Published>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let list = tokio::select! {
            l = client.list(rt, None, ListParams::default()) => l,
            _ = stopped(&mut shutdown) => return,
        };
        let list = match list {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "listing nodes for overlay peers failed");
                tokio::select! {
                    _ = tokio::time::sleep(RETRY) => continue,
                    _ = stopped(&mut shutdown) => return,
                }
            }
        };
        let version = list
            .pointer("/metadata/resourceVersion")
            .and_then(Value::as_str)
            .unwrap_or("0")
            .to_string();
        let mut entries: HashMap<String, OverlayPeer> = list["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(entry)
            .map(|p| (p.node_name.clone(), p))
            .collect();
        let mut revision: u64 = version.parse().unwrap_or(0);
        publish(&out, &entries, revision);
        let params = ListParams {
            resource_version: Some(version),
            ..Default::default()
        };
        let mut events = match client.watch(rt, None, params).await {
            Ok(w) => w,
            Err(e) => {
                tracing::warn!(error = %e, "watching nodes for overlay peers failed");
                tokio::select! {
                    _ = tokio::time::sleep(RETRY) => continue,
                    _ = stopped(&mut shutdown) => return,
                }
            }
        };
        loop {
            let ev = tokio::select! {
                ev = events.next() => ev,
                _ = stopped(&mut shutdown) => return,
            };
            let e = match ev {
                Some(Ok(e)) if e.kind != WatchEventKind::Error => e,
                _ => break,
            };
            if let Some(rv) = e
                .object
                .pointer("/metadata/resourceVersion")
                .and_then(Value::as_str)
                .and_then(|v| v.parse().ok())
            {
                revision = revision.max(rv);
            }
            let Some(name) = e.object.pointer("/metadata/name").and_then(Value::as_str) else {
                continue;
            };
            let now = match e.kind {
                WatchEventKind::Deleted => None,
                WatchEventKind::Bookmark => continue,
                _ => entry(&e.object),
            };
            if entries.get(name) != now.as_ref() {
                match now {
                    Some(p) => entries.insert(name.to_string(), p),
                    None => entries.remove(name),
                };
                publish(&out, &entries, revision);
            }
        }
    }
}

/// Feeds `out` with `node`'s peer set (every entry but its own) until it closes or the gate
/// shuts down: on connect, then after changes, at most every [`MIN_INTERVAL`], only when it
/// differs from the last one sent.
pub(crate) async fn feed(gate: Arc<Gate>, node: String, out: Outbound) {
    let mut shutdown = gate.shutdown.clone();
    gate.peer_index.start(&gate);
    let changes = gate.peer_index.all.subscribe();
    let all = &gate.peer_index.all;
    let snapshot = || {
        let (version, everyone) = all.borrow().clone()?;
        let peers: Vec<OverlayPeer> = everyone.iter().filter(|p| p.node_name != node).cloned().collect();
        Some((version, peers))
    };
    feed_snapshots(
        changes,
        &out,
        &mut shutdown,
        MIN_INTERVAL,
        snapshot,
        |version, peers| {
            tracing::debug!(node = %node, peers = peers.len(), version, "sending overlay peers");
            ControlMessage {
                msg: Some(ControlMsg::Peers(OverlayPeers {
                    version,
                    peers: peers.clone(),
                })),
            }
        },
    )
    .await;
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
