//! Pods down the session, seen by a plain gRPC client holding a node certificate: the snapshot
//! carries each pod's ConfigMaps and Secrets, follows their changes, and a node may finish the
//! deletion of its own pods only.

mod support;

use std::time::Duration;

use base64::Engine as _;
use keel_proto::control_message::Msg as ControlMsg;
use keel_proto::node_gate_client::NodeGateClient;
use keel_proto::node_message::Msg as NodeMsg;
use keel_proto::{
    ControlMessage, DesiredPods, NodeMessage, NodeReport, OverlayEndpoint, OverlayPeers, PodStatusReport,
};
use serde_json::{json, Value};
use support::{pods, rt, wait_for, Gate, DEADLINE};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;

struct NodeSession {
    up: mpsc::Sender<NodeMessage>,
    down: Streaming<ControlMessage>,
}

async fn node_session(gate: &Gate, node: &str) -> NodeSession {
    let channel = gate.node_channel(node).await;
    let (up, rx) = mpsc::channel(8);
    let down = NodeGateClient::new(channel)
        .session(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    NodeSession { up, down }
}

impl NodeSession {
    /// The next DesiredPods, skipping the Welcome.
    async fn next_pods(&mut self) -> DesiredPods {
        loop {
            let m = tokio::time::timeout(DEADLINE, self.down.message())
                .await
                .expect("no message from the gate")
                .unwrap()
                .expect("session ended");
            if let Some(ControlMsg::Pods(p)) = m.msg {
                return p;
            }
        }
    }
}

impl NodeSession {
    /// The pod CIDR of the next Welcome that carries one.
    async fn next_pod_cidr(&mut self) -> String {
        loop {
            let m = tokio::time::timeout(DEADLINE, self.down.message())
                .await
                .expect("no message from the gate")
                .unwrap()
                .expect("session ended");
            if let Some(ControlMsg::Welcome(w)) = m.msg {
                if !w.pod_cidr.is_empty() {
                    return w.pod_cidr;
                }
            }
        }
    }
}

impl NodeSession {
    /// The next OverlayPeers that satisfies `f`.
    async fn peers_until(&mut self, f: impl Fn(&OverlayPeers) -> bool) -> OverlayPeers {
        loop {
            let m = tokio::time::timeout(DEADLINE, self.down.message())
                .await
                .expect("no message from the gate")
                .unwrap()
                .expect("session ended");
            if let Some(ControlMsg::Peers(p)) = m.msg {
                if f(&p) {
                    return p;
                }
            }
        }
    }
}

fn pod_json(p: &DesiredPods, i: usize) -> Value {
    serde_json::from_slice(&p.pods_json[i]).unwrap()
}

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

#[tokio::test]
async fn snapshots_carry_resolved_references_and_follow_their_changes() {
    let mut gate = Gate::start(Duration::from_secs(40), 10).await;
    let configmaps = rt("", "v1", "configmaps");
    let secrets = rt("", "v1", "secrets");
    gate.api.seed(
        configmaps,
        Some("default"),
        json!({"kind": "ConfigMap", "metadata": {"name": "app", "namespace": "default"}, "data": {"mode": "fast"}}),
    );
    gate.api.seed(
        secrets,
        Some("default"),
        json!({"kind": "Secret", "metadata": {"name": "db", "namespace": "default"}, "data": {"password": b64("s3cret")}}),
    );
    let pod = |name: &str, node: &str| {
        json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "default", "uid": format!("uid-{name}")},
            "spec": {"nodeName": node,
                "volumes": [{"name": "cfg", "configMap": {"name": "app"}}, {"name": "gone", "configMap": {"name": "missing"}}],
                "containers": [{"name": "c", "image": "busybox",
                    "env": [{"name": "PW", "valueFrom": {"secretKeyRef": {"name": "db", "key": "password"}}}]}]}})
    };
    gate.api.seed(pods(), Some("default"), pod("web", "node-x"));
    gate.api.seed(pods(), Some("default"), pod("other", "node-y"));

    let mut s = node_session(&gate, "node-x").await;
    let snap = s.next_pods().await;
    assert_eq!(snap.pods_json.len(), 1, "only the pods bound to node-x");
    let web = pod_json(&snap, 0);
    assert_eq!(web["metadata"]["name"], "web");
    let resolved = &web["keelResolved"];
    assert_eq!(resolved["configMaps"]["app"], json!({"mode": "fast"}));
    assert_eq!(resolved["secrets"]["db"], json!({"password": "s3cret"}));
    assert!(resolved["configMaps"].get("missing").is_none());

    // A referenced ConfigMap changes: a new snapshot, with a newer version.
    gate.api.seed(
        configmaps,
        Some("default"),
        json!({"kind": "ConfigMap", "metadata": {"name": "app", "namespace": "default"}, "data": {"mode": "safe"}}),
    );
    let next = s.next_pods().await;
    assert!(next.version > snap.version);
    assert_eq!(
        pod_json(&next, 0)["keelResolved"]["configMaps"]["app"]["mode"],
        "safe"
    );

    // A pod is bound to the node: it joins the set.
    gate.api.seed(pods(), Some("default"), pod("api", "node-x"));
    let next = s.next_pods().await;
    let mut names: Vec<String> = (0..next.pods_json.len())
        .map(|i| {
            pod_json(&next, i)["metadata"]["name"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    names.sort();
    assert_eq!(names, ["api", "web"]);
    drop(s.up);
    gate.stop().await;
}

#[tokio::test]
async fn a_node_finishes_deleting_only_its_own_pods() {
    let mut gate = Gate::start(Duration::from_secs(40), 10).await;
    let deleting = |name: &str, node: &str| {
        json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "default", "uid": format!("uid-{name}"),
                         "deletionTimestamp": "2026-01-01T00:00:00Z"},
            "spec": {"nodeName": node, "containers": [{"name": "c", "image": "busybox"}]}})
    };
    gate.api.seed(pods(), Some("default"), deleting("mine", "node-x"));
    gate.api
        .seed(pods(), Some("default"), deleting("theirs", "node-y"));
    let s = node_session(&gate, "node-x").await;
    let gone = |name: &str| NodeMessage {
        msg: Some(NodeMsg::PodStatus(PodStatusReport {
            namespace: "default".into(),
            name: name.into(),
            uid: format!("uid-{name}"),
            status_json: Vec::new(),
            gone: true,
        })),
    };
    s.up.send(gone("theirs")).await.unwrap();
    s.up.send(gone("mine")).await.unwrap();
    wait_for("node-x's pod to be removed", || {
        gate.api
            .object(pods(), Some("default"), "mine")
            .is_none()
            .then_some(())
    })
    .await;
    // Messages are handled in order: by now the other node's pod was considered, and kept.
    assert!(gate.api.object(pods(), Some("default"), "theirs").is_some());
    gate.stop().await;
}

#[tokio::test]
async fn each_node_gets_its_own_pod_cidr_and_keeps_it() {
    let mut gate = Gate::start(Duration::from_secs(40), 10).await;
    let report = || NodeMessage {
        msg: Some(NodeMsg::Report(NodeReport::default())),
    };
    let mut a = node_session(&gate, "node-a").await;
    a.up.send(report()).await.unwrap();
    assert_eq!(a.next_pod_cidr().await, "10.244.0.0/24");
    let mut b = node_session(&gate, "node-b").await;
    b.up.send(report()).await.unwrap();
    assert_eq!(b.next_pod_cidr().await, "10.244.1.0/24");

    // A reconnect keeps the range, and the first Welcome already says so.
    drop(a);
    let mut again = node_session(&gate, "node-a").await;
    assert_eq!(again.next_pod_cidr().await, "10.244.0.0/24");
    gate.stop().await;
}

#[tokio::test]
async fn overlay_peers_are_the_other_nodes_with_their_ranges_and_endpoints() {
    let mut gate = Gate::start(Duration::from_secs(40), 10).await;
    let report = |addr: &str, mac: &str| NodeMessage {
        msg: Some(NodeMsg::Report(NodeReport {
            overlay: Some(OverlayEndpoint {
                address: addr.into(),
                vtep_mac: mac.into(),
            }),
            ..Default::default()
        })),
    };
    let mut a = node_session(&gate, "node-a").await;
    a.up.send(report("192.168.50.1", "0e:00:00:00:00:01"))
        .await
        .unwrap();
    // Alone in the cluster: an empty list (sent on connect).
    a.peers_until(|p| p.peers.is_empty()).await;

    let mut b = node_session(&gate, "node-b").await;
    b.up.send(report("192.168.50.2", "0e:00:00:00:00:02"))
        .await
        .unwrap();
    let seen_by_a = a.peers_until(|p| !p.peers.is_empty()).await;
    assert_eq!(seen_by_a.peers.len(), 1);
    let peer = &seen_by_a.peers[0];
    assert_eq!(peer.node_name, "node-b");
    assert_eq!(peer.address, "192.168.50.2");
    assert_eq!(peer.vtep_mac, "0e:00:00:00:00:02");
    assert_eq!(peer.pod_cidr, "10.244.1.0/24");
    let seen_by_b = b.peers_until(|p| !p.peers.is_empty()).await;
    assert_eq!(seen_by_b.peers[0].node_name, "node-a");
    assert_eq!(seen_by_b.peers[0].pod_cidr, "10.244.0.0/24");

    // The endpoint is on the Node for everyone to see.
    let node_b = gate.node("node-b").unwrap();
    assert_eq!(
        node_b["metadata"]["annotations"]["keel.dev/overlay-address"],
        "192.168.50.2"
    );

    // A node moves its endpoint: the others hear of it.
    b.up.send(report("192.168.50.22", "0e:00:00:00:00:22"))
        .await
        .unwrap();
    a.peers_until(|p| p.peers.first().is_some_and(|x| x.address == "192.168.50.22"))
        .await;
    gate.stop().await;
}

#[tokio::test]
async fn a_deleted_node_registers_again_while_connected() {
    let mut gate = Gate::start(Duration::from_secs(40), 10).await;
    let s = node_session(&gate, "node-d").await;
    let send = |m: NodeMsg| s.up.send(NodeMessage { msg: Some(m) });
    send(NodeMsg::Report(NodeReport::default())).await.unwrap();
    let first = wait_for("the Node", || gate.node("node-d")).await;

    // `kubectl delete node`: the Node goes, and its Lease with it (owner reference).
    use keel_api::client::ApiClient as _;
    gate.api
        .delete(support::nodes(), None, "node-d".into(), Value::Null)
        .await
        .unwrap();
    gate.api
        .delete(
            support::leases(),
            Some("kube-node-lease".into()),
            "node-d".into(),
            Value::Null,
        )
        .await
        .unwrap();
    let again = loop {
        send(NodeMsg::Heartbeat(Default::default())).await.unwrap();
        if let Some(n) = gate.node("node-d") {
            break n;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_ne!(again["metadata"]["uid"], first["metadata"]["uid"]);
    wait_for("the status on the new Node", || {
        support::condition(&gate.node("node-d")?, "Ready").map(|_| ())
    })
    .await;
    gate.stop().await;
}
