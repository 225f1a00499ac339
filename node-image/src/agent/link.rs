//! The seam between the session and whatever runs pods on this node (the pod manager,
//! `crate::pods`): desired pods go one way, pod statuses and events the other, and neither side
//! needs to know whether the control plane is connected right now.
//!
//! * [`PodLink::desired`] always holds the newest snapshot the control plane sent (`None` until
//!   the first). Snapshots are whole sets, so a consumer only ever compares "what should run"
//!   with "what runs" — missed intermediate versions do not matter.
//! * [`PodLink::up`] takes `PodStatusReport`s and `NodeEvent`s; the session forwards them while
//!   connected and drops them while not (a bounded queue never grows across an outage).
//! * [`PodLink::sessions`] counts established sessions: when it changes, the control plane may
//!   have missed reports, so a pod manager sends every pod's status again (level-triggered).
//! * [`PodLink::pod_cidr`] is this node's pod range (`10.244.3.0/24`), empty until the control
//!   plane assigned one; it can arrive after the first pods.
//! * [`PodLink::peers`] holds the newest overlay peer list (every other node's pod CIDR and
//!   VXLAN endpoint); [`PodLink::overlay`] is where the pod network says where this node's own
//!   VXLAN ends, which the session reports to the control plane right away.

use std::sync::Arc;

use keel_proto::node_message::Msg as NodeMsg;
use keel_proto::{DesiredPods, OverlayEndpoint, OverlayPeers};
use serde_json::Value;
use tokio::sync::{mpsc, watch};

/// Reports queued towards the control plane at most (beyond that, senders wait).
const UP_QUEUE: usize = 256;

/// One snapshot of the pods this node should run.
#[derive(Debug, Default, PartialEq)]
pub struct DesiredSet {
    pub version: u64,
    /// Each pod as the control plane sent it (Kubernetes JSON).
    pub pods: Vec<Value>,
}

impl DesiredSet {
    /// Decodes a snapshot; pods that are not JSON objects are skipped and counted.
    pub fn decode(msg: &DesiredPods) -> (DesiredSet, usize) {
        let mut bad = 0;
        let pods = msg
            .pods_json
            .iter()
            .filter_map(|b| match serde_json::from_slice::<Value>(b) {
                Ok(v) if v.is_object() => Some(v),
                _ => {
                    bad += 1;
                    None
                }
            })
            .collect();
        (
            DesiredSet {
                version: msg.version,
                pods,
            },
            bad,
        )
    }

    /// `namespace/name` of each pod, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .pods
            .iter()
            .map(|p| {
                let s = |ptr: &str| p.pointer(ptr).and_then(Value::as_str).unwrap_or("?");
                format!("{}/{}", s("/metadata/namespace"), s("/metadata/name"))
            })
            .collect();
        names.sort();
        names
    }
}

/// The pod manager's end.
pub struct PodLink {
    pub desired: watch::Receiver<Option<Arc<DesiredSet>>>,
    #[allow(dead_code)] // for the pod manager; the interim consumer only reads `desired`
    pub up: mpsc::Sender<NodeMsg>,
    #[allow(dead_code)] // likewise
    pub sessions: watch::Receiver<u64>,
    #[allow(dead_code)] // for the pod network
    pub pod_cidr: watch::Receiver<String>,
    #[allow(dead_code)] // for the pod network
    pub peers: watch::Receiver<Option<Arc<OverlayPeers>>>,
    #[allow(dead_code)] // for the pod network
    pub overlay: watch::Sender<Option<OverlayEndpoint>>,
}

/// The session's end.
pub struct SessionLink {
    pub desired: watch::Sender<Option<Arc<DesiredSet>>>,
    pub up: mpsc::Receiver<NodeMsg>,
    pub sessions: watch::Sender<u64>,
    pub pod_cidr: watch::Sender<String>,
    pub peers: watch::Sender<Option<Arc<OverlayPeers>>>,
    pub overlay: watch::Receiver<Option<OverlayEndpoint>>,
}

impl SessionLink {
    /// Records the pod CIDR a Welcome carried, saying so on the console when it is new.
    pub fn set_pod_cidr(&self, cidr: &str) {
        if !cidr.is_empty() && *self.pod_cidr.borrow() != cidr {
            eprintln!("keel: pod network {cidr}");
            self.pod_cidr.send_replace(cidr.to_string());
        }
    }
}

/// A connected pair.
pub fn pair() -> (SessionLink, PodLink) {
    let (desired_tx, desired_rx) = watch::channel(None);
    let (up_tx, up_rx) = mpsc::channel(UP_QUEUE);
    let (sessions_tx, sessions_rx) = watch::channel(0);
    let (cidr_tx, cidr_rx) = watch::channel(String::new());
    let (peers_tx, peers_rx) = watch::channel(None);
    let (overlay_tx, overlay_rx) = watch::channel(None);
    (
        SessionLink {
            desired: desired_tx,
            up: up_rx,
            sessions: sessions_tx,
            pod_cidr: cidr_tx,
            peers: peers_tx,
            overlay: overlay_rx,
        },
        PodLink {
            desired: desired_rx,
            up: up_tx,
            sessions: sessions_rx,
            pod_cidr: cidr_rx,
            peers: peers_rx,
            overlay: overlay_tx,
        },
    )
}

/// Until a pod manager takes the link: say on the console which pods this node is assigned,
/// whenever that set changes. Ends when the session side goes away.
pub async fn announce_assignments(mut link: PodLink) {
    let mut last: Option<Vec<String>> = None;
    while link.desired.changed().await.is_ok() {
        let Some(set) = link.desired.borrow_and_update().clone() else {
            continue;
        };
        let names = set.names();
        if last.as_ref() != Some(&names) {
            let list = if names.is_empty() {
                "none".to_string()
            } else {
                names.join(", ")
            };
            eprintln!(
                "keel: desired pods v{} ({} pods): {list}",
                set.version,
                names.len()
            );
            last = Some(names);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshots_decode_and_name_their_pods() {
        let msg = DesiredPods {
            version: 7,
            pods_json: vec![
                br#"{"metadata":{"namespace":"default","name":"b"}}"#.to_vec(),
                b"not json".to_vec(),
                br#"{"metadata":{"namespace":"default","name":"a"}}"#.to_vec(),
                b"[1]".to_vec(),
            ],
        };
        let (set, bad) = DesiredSet::decode(&msg);
        assert_eq!(bad, 2);
        assert_eq!(set.version, 7);
        assert_eq!(set.names(), ["default/a", "default/b"]);
    }
}
