//! Streams for `kubectl logs / exec / attach / port-forward`, without ever dialing a node.
//!
//! The API server asks [`Streams::open`] (through [`keel_api::streams::PodStreams`]) for a stream
//! to the node a pod is bound to. That sends a `StreamRequest` with a random id down the node's
//! session and waits; the node answers by opening a `Stream` RPC over mutual TLS whose first
//! frame is that id ([`Streams::answer`]). The pairing checks that the node answering is the node
//! asked (the identity of its certificate), and gives up after [`ANSWER_TIMEOUT`]. From then on
//! two small pumps translate between the RPC's frames and the API server's channels.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::channel::mpsc as fmpsc;
use futures::{SinkExt, StreamExt};
use keel_api::status::ApiError;
use keel_api::streams::{Down, NodeStream, OpenFuture, PodStreams, StreamEnd, StreamOp, StreamTarget, Up};
use keel_proto::control_message::Msg as ControlMsg;
use keel_proto::stream_frame::Frame;
use keel_proto::stream_request::Op;
use keel_proto::{
    ControlMessage, ExecOp, LogsOp, PortForwardOp, StreamData, StreamFrame, StreamRequest, TerminalSize,
};
use tokio::sync::{mpsc, oneshot};
use tonic::{Status, Streaming};

use crate::session::Outbound;

/// How long a node has to open the stream it was asked for.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// Frames towards a node on its `Stream` RPC.
pub(crate) type StreamOut = mpsc::Sender<Result<StreamFrame, Status>>;

struct Answer {
    inbound: Streaming<StreamFrame>,
    out: StreamOut,
}

struct Pending {
    node: String,
    reply: oneshot::Sender<Answer>,
}

#[derive(Default)]
struct Inner {
    /// Each connected node's session (the newest one), with a generation to detach the right one.
    sessions: HashMap<String, (u64, Outbound)>,
    next_generation: u64,
    pending: HashMap<String, Pending>,
}

/// The gate's stream broker; shared between the gate and the API server.
pub struct Streams {
    inner: Mutex<Inner>,
    answer_timeout: Duration,
}

impl Default for Streams {
    fn default() -> Self {
        Streams {
            inner: Mutex::default(),
            answer_timeout: ANSWER_TIMEOUT,
        }
    }
}

impl Streams {
    pub fn new() -> Arc<Streams> {
        Arc::new(Streams::default())
    }

    /// A broker that waits `timeout` instead of [`ANSWER_TIMEOUT`] for nodes to answer.
    pub fn with_answer_timeout(timeout: Duration) -> Arc<Streams> {
        Arc::new(Streams {
            answer_timeout: timeout,
            ..Streams::default()
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A session of `node` started; returns its generation for [`Streams::detach`].
    pub(crate) fn attach(&self, node: &str, out: Outbound) -> u64 {
        let mut inner = self.lock();
        inner.next_generation += 1;
        let generation = inner.next_generation;
        inner.sessions.insert(node.to_string(), (generation, out));
        generation
    }

    /// That session ended (a newer one of the same node stays).
    pub(crate) fn detach(&self, node: &str, generation: u64) {
        let mut inner = self.lock();
        if inner.sessions.get(node).is_some_and(|(g, _)| *g == generation) {
            inner.sessions.remove(node);
        }
    }

    /// Asks `target.node` for a stream and waits for it to answer.
    pub async fn open(&self, target: StreamTarget, op: StreamOp) -> Result<NodeStream, ApiError> {
        let node = target.node.clone();
        let id = format!("{:032x}", rand::random::<u128>());
        let (reply, answered) = oneshot::channel();
        let out = {
            let mut inner = self.lock();
            let Some((_, out)) = inner.sessions.get(&node) else {
                return Err(dial_error(
                    &node,
                    "the node is not connected to the control plane",
                ));
            };
            let out = out.clone();
            inner.pending.insert(
                id.clone(),
                Pending {
                    node: node.clone(),
                    reply,
                },
            );
            out
        };
        let request = ControlMessage {
            msg: Some(ControlMsg::StreamRequest(request(&id, target, op))),
        };
        if out.send(Ok(request)).await.is_err() {
            self.lock().pending.remove(&id);
            return Err(dial_error(&node, "the node's session closed"));
        }
        let answer = match tokio::time::timeout(self.answer_timeout, answered).await {
            Ok(Ok(a)) => a,
            Ok(Err(_)) | Err(_) => {
                self.lock().pending.remove(&id);
                return Err(dial_error(
                    &node,
                    &format!(
                        "the node did not open the stream within {:?}",
                        self.answer_timeout
                    ),
                ));
            }
        };
        tracing::debug!(node = %node, id = %id, "node stream opened");
        Ok(pump(answer))
    }

    /// A node opened a `Stream` whose first frame named `id`: hand it to the request waiting.
    pub(crate) fn answer(
        &self,
        node: &str,
        id: &str,
        inbound: Streaming<StreamFrame>,
        out: StreamOut,
    ) -> Result<(), Status> {
        let mut inner = self.lock();
        match inner.pending.get(id) {
            None => return Err(Status::not_found(format!("no stream request {id} is waiting"))),
            Some(p) if p.node != node => {
                tracing::warn!(node = %node, "node answered a stream request meant for another node");
                return Err(Status::permission_denied(
                    "this stream request is not for this node",
                ));
            }
            Some(_) => {}
        }
        let Some(p) = inner.pending.remove(id) else {
            return Err(Status::not_found("stream request vanished"));
        };
        p.reply
            .send(Answer { inbound, out })
            .map_err(|_| Status::cancelled("the client went away"))
    }
}

impl PodStreams for Streams {
    fn open(&self, target: StreamTarget, op: StreamOp) -> OpenFuture<'_> {
        Box::pin(Streams::open(self, target, op))
    }
}

fn dial_error(node: &str, why: &str) -> ApiError {
    ApiError::new(
        500,
        "InternalError",
        format!("error dialing backend: node {node:?}: {why}"),
    )
}

fn request(id: &str, t: StreamTarget, op: StreamOp) -> StreamRequest {
    let exec = |o: keel_api::streams::ExecOptions| ExecOp {
        command: o.command,
        stdin: o.stdin,
        stdout: o.stdout,
        stderr: o.stderr,
        tty: o.tty,
    };
    StreamRequest {
        id: id.to_string(),
        namespace: t.namespace,
        pod: t.pod,
        pod_uid: t.pod_uid,
        container: t.container,
        op: Some(match op {
            StreamOp::Logs(l) => Op::Logs(LogsOp {
                follow: l.follow,
                previous: l.previous,
                tail_lines: l.tail_lines,
                since_unix_nanos: l.since_unix_nanos,
                timestamps: l.timestamps,
                limit_bytes: l.limit_bytes,
            }),
            StreamOp::Exec(o) => Op::Exec(exec(o)),
            StreamOp::Attach(o) => Op::Attach(exec(o)),
            StreamOp::PortForward { port } => Op::PortForward(PortForwardOp {
                port: u32::from(port),
            }),
        }),
    }
}

fn frame(f: Frame) -> StreamFrame {
    StreamFrame { frame: Some(f) }
}

/// Two tasks: API server → node, node → API server.
fn pump(answer: Answer) -> NodeStream {
    let (up_tx, mut up_rx) = fmpsc::channel::<Up>(16);
    let (mut down_tx, down_rx) = fmpsc::channel::<Down>(16);
    let Answer { mut inbound, out } = answer;
    tokio::spawn(async move {
        while let Some(up) = up_rx.next().await {
            let f = match up {
                Up::Data(channel, data) => Frame::Data(StreamData {
                    channel: u32::from(channel),
                    data,
                }),
                Up::Close(channel) => Frame::Close(u32::from(channel)),
                Up::Resize { width, height } => Frame::Resize(TerminalSize {
                    width: u32::from(width),
                    height: u32::from(height),
                }),
            };
            if out.send(Ok(frame(f))).await.is_err() {
                break;
            }
        }
        // Dropping `out` ends the RPC's response stream: the node stops.
    });
    tokio::spawn(async move {
        loop {
            let down = match inbound.message().await {
                Ok(Some(StreamFrame { frame: Some(f) })) => match f {
                    Frame::Data(d) => Down::Data(channel(d.channel), d.data),
                    Frame::Close(c) => Down::Close(channel(c)),
                    Frame::End(e) => Down::End(StreamEnd {
                        exit_code: e.exit_code,
                        error: (!e.error.is_empty())
                            .then(|| keel_api::streams::node_error(e.code, &e.reason, e.error)),
                    }),
                    Frame::Open(_) | Frame::Resize(_) => continue,
                },
                Ok(Some(StreamFrame { frame: None })) => continue,
                Ok(None) => break,
                Err(status) => Down::End(StreamEnd {
                    exit_code: None,
                    error: Some(ApiError::internal(format!(
                        "the stream from the node broke: {}",
                        status.message()
                    ))),
                }),
            };
            let end = matches!(down, Down::End(_));
            if down_tx.send(down).await.is_err() || end {
                break;
            }
        }
    });
    NodeStream {
        up: up_tx,
        down: down_rx,
    }
}

fn channel(c: u32) -> u8 {
    u8::try_from(c).unwrap_or(u8::MAX)
}
