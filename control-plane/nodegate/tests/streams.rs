//! The stream broker over real mutual TLS: a request for a pod's logs goes down the session of the
//! node the pod is bound to, that node answers by opening a `Stream` with the request's id, and
//! the frames flow both ways. Another node cannot answer it, and a node that is not connected
//! is an immediate, clear error.

mod support;

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use keel_api::streams::{Down, LogOptions, StreamOp, StreamTarget, Up};
use keel_proto::control_message::Msg as ControlMsg;
use keel_proto::node_gate_client::NodeGateClient;
use keel_proto::node_message::Msg as NodeMsg;
use keel_proto::stream_frame::Frame;
use keel_proto::stream_request::Op;
use keel_proto::{NodeMessage, NodeReport, StreamData, StreamEnd, StreamFrame, StreamRequest};
use support::Gate;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

/// A channel to the gate with `node`'s own client certificate.
async fn channel(gate: &Gate, node: &str) -> Channel {
    gate.node_channel(node).await
}

/// Opens `node`'s session; returns its channel and the stream requests it receives.
async fn session(
    gate: &Gate,
    node: &str,
) -> (Channel, mpsc::Receiver<StreamRequest>, mpsc::Sender<NodeMessage>) {
    let ch = channel(gate, node).await;
    let (up, rx) = mpsc::channel(8);
    up.send(NodeMessage {
        msg: Some(NodeMsg::Report(NodeReport::default())),
    })
    .await
    .unwrap();
    let mut down = NodeGateClient::new(ch.clone())
        .session(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let (req_tx, req_rx) = mpsc::channel(8);
    tokio::spawn(async move {
        while let Ok(Some(m)) = down.message().await {
            if let Some(ControlMsg::StreamRequest(r)) = m.msg {
                let _ = req_tx.send(r).await;
            }
        }
    });
    (ch, req_rx, up)
}

fn frame(f: Frame) -> StreamFrame {
    StreamFrame { frame: Some(f) }
}

fn target(node: &str) -> StreamTarget {
    StreamTarget {
        node: node.into(),
        namespace: "default".into(),
        pod: "web".into(),
        pod_uid: "uid-web".into(),
        container: "c".into(),
    }
}

#[tokio::test]
async fn requests_go_to_the_pods_node_and_only_it_answers() {
    let gate = Gate::start(Duration::from_secs(40), 10).await;
    let (ch_a, mut requests_a, _keep_a) = session(&gate, "node-a").await;
    let (ch_b, _requests_b, _keep_b) = session(&gate, "node-b").await;

    // Not connected: a clear error at once.
    let e = gate
        .streams
        .open(target("node-z"), StreamOp::Logs(LogOptions::default()))
        .await
        .err()
        .expect("node-z is not connected");
    assert_eq!(e.code, 500);
    assert!(
        e.message.contains("error dialing backend") && e.message.contains("node-z"),
        "{e:?}"
    );

    // Sessions register as the gate takes them up: retry while node-a is not there yet.
    let opener = {
        let streams = gate.streams.clone();
        tokio::spawn(async move {
            loop {
                let op = StreamOp::Logs(LogOptions {
                    tail_lines: Some(5),
                    ..Default::default()
                });
                match streams.open(target("node-a"), op).await {
                    Err(e) if e.message.contains("not connected") => {
                        tokio::time::sleep(Duration::from_millis(20)).await
                    }
                    r => return r,
                }
            }
        })
    };
    let req = tokio::time::timeout(Duration::from_secs(10), requests_a.recv())
        .await
        .expect("a stream request down node-a's session")
        .expect("session open");
    assert_eq!(
        (req.namespace.as_str(), req.pod.as_str(), req.pod_uid.as_str()),
        ("default", "web", "uid-web")
    );
    let Some(Op::Logs(l)) = &req.op else {
        unreachable!()
    };
    assert_eq!(l.tail_lines, Some(5));

    // node-b cannot take node-a's request.
    let (tx_b, rx_b) = mpsc::channel(4);
    tx_b.send(frame(Frame::Open(req.id.clone()))).await.unwrap();
    let refused = NodeGateClient::new(ch_b).stream(ReceiverStream::new(rx_b)).await;
    assert_eq!(
        refused.err().map(|s| s.code()),
        Some(tonic::Code::PermissionDenied)
    );

    // node-a answers: frames flow both ways, then the end.
    let (tx_a, rx_a) = mpsc::channel(4);
    tx_a.send(frame(Frame::Open(req.id.clone()))).await.unwrap();
    let mut from_gate = NodeGateClient::new(ch_a)
        .stream(ReceiverStream::new(rx_a))
        .await
        .expect("node-a's answer accepted")
        .into_inner();
    let mut stream = opener.await.unwrap().expect("the stream opened");
    tx_a.send(frame(Frame::Data(StreamData {
        channel: 1,
        data: b"hello\n".to_vec(),
    })))
    .await
    .unwrap();
    stream.up.send(Up::Data(0, b"typed".to_vec())).await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(10), from_gate.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(
        got.frame,
        Some(Frame::Data(StreamData {
            channel: 0,
            data: b"typed".to_vec()
        }))
    );
    assert_eq!(stream.down.next().await, Some(Down::Data(1, b"hello\n".to_vec())));
    tx_a.send(frame(Frame::End(StreamEnd {
        exit_code: Some(3),
        ..Default::default()
    })))
    .await
    .unwrap();
    match stream.down.next().await {
        Some(Down::End(end)) => {
            assert_eq!(end.exit_code, Some(3));
            assert!(end.error.is_none());
        }
        other => panic!("expected the end, got {other:?}"),
    }
    // The API side lets go: node-a's stream ends cleanly.
    drop(stream);
    let closed = tokio::time::timeout(Duration::from_secs(10), from_gate.message()).await;
    assert!(matches!(closed, Ok(Ok(None))), "{closed:?}");

    // A node that never answers: the request gives up after the answer timeout (2 s here).
    let started = std::time::Instant::now();
    let e = gate
        .streams
        .open(target("node-b"), StreamOp::PortForward { port: 80 })
        .await
        .err()
        .expect("node-b does not answer");
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(e.code, 500);
    assert!(e.message.contains("did not open the stream within 2s"), "{e:?}");

    // A request id nobody waits for is refused.
    let (tx, rx) = mpsc::channel(4);
    tx.send(frame(Frame::Open("no-such-id".into()))).await.unwrap();
    let ch = channel(&gate, "node-a").await;
    let r = NodeGateClient::new(ch).stream(ReceiverStream::new(rx)).await;
    assert_eq!(r.err().map(|s| s.code()), Some(tonic::Code::NotFound));
}
