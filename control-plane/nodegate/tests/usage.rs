//! Usage reports up the session, as a node with its certificate sends them: the gate keeps the
//! last two samples under the certificate's node name and answers rates from them (what
//! `metrics.k8s.io` and the HPA read).

mod support;

use std::time::Duration;

use keel_api::metrics::MetricsSource;
use keel_proto::node_gate_client::NodeGateClient;
use keel_proto::node_message::Msg as NodeMsg;
use keel_proto::{ContainerUsage, NodeMessage, NodeReport, PodUsage, UsageReport};
use support::{wait_for, Gate};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

/// Opens a session as `node` (its own client certificate); returns the sending side.
async fn session(gate: &Gate, node: &str) -> mpsc::Sender<NodeMessage> {
    let channel = gate.node_channel(node).await;
    let (up, rx) = mpsc::channel(8);
    let down = NodeGateClient::new(channel)
        .session(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    // Keep the receiving side alive (and drained) for as long as the test runs.
    tokio::spawn(async move {
        let mut down = down;
        while let Ok(Some(_)) = down.message().await {}
    });
    up
}

fn report(at_millis: u64, node_cpu: u64, container_cpu: u64) -> UsageReport {
    UsageReport {
        timestamp_unix_millis: 1_700_000_000_000 + at_millis as i64,
        monotonic_millis: at_millis,
        node_cpu_usage_nanos: node_cpu,
        node_memory_working_set_bytes: 300 << 20,
        pods: vec![PodUsage {
            namespace: "default".into(),
            name: "burn".into(),
            uid: "uid-burn".into(),
            containers: vec![ContainerUsage {
                name: "burn".into(),
                cpu_usage_nanos: container_cpu,
                memory_working_set_bytes: 4 << 20,
            }],
        }],
    }
}

fn usage(r: UsageReport) -> NodeMessage {
    NodeMessage {
        msg: Some(NodeMsg::Usage(r)),
    }
}

#[tokio::test]
async fn usage_reports_become_rates_under_the_certificates_node_name() {
    let mut gate = Gate::start(Duration::from_secs(40), 10).await;
    let up = session(&gate, "node-u").await;
    up.send(NodeMessage {
        msg: Some(NodeMsg::Report(NodeReport::default())),
    })
    .await
    .unwrap();
    up.send(usage(report(10_000, 0, 0))).await.unwrap();
    // 10 s later: the node was half busy, the container used 200m.
    up.send(usage(report(20_000, 5_000_000_000, 2_000_000_000)))
        .await
        .unwrap();
    let store = gate.usage.clone();
    let nodes = wait_for("the node's rate", || {
        let n = store.nodes();
        (!n.is_empty()).then_some(n)
    })
    .await;
    assert_eq!(nodes.len(), 1);
    assert_eq!(nodes[0].name, "node-u");
    assert_eq!(nodes[0].usage.cpu_nanocores, 500_000_000);
    assert_eq!(nodes[0].usage.memory_bytes, 300 << 20);
    assert_eq!(nodes[0].window_millis, 10_000);
    let pods = store.pods(Some("default"));
    assert_eq!(pods.len(), 1);
    assert_eq!(
        (pods[0].name.as_str(), pods[0].uid.as_str()),
        ("burn", "uid-burn")
    );
    assert_eq!(pods[0].containers[0].usage.cpu_nanocores, 200_000_000);
    assert_eq!(pods[0].containers[0].usage.memory_bytes, 4 << 20);

    // The pod stopped: the next report no longer lists it, and it is forgotten.
    let mut last = report(30_000, 6_000_000_000, 0);
    last.pods.clear();
    up.send(usage(last)).await.unwrap();
    wait_for("the pod to be forgotten", || {
        store.pods(None).is_empty().then_some(())
    })
    .await;
    assert_eq!(store.nodes()[0].usage.cpu_nanocores, 100_000_000);
    gate.stop().await;
}
