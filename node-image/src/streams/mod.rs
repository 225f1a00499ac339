//! `kubectl logs / exec / attach / port-forward` on this node.
//!
//! The control plane never dials a node: it sends a `StreamRequest` down the session, and the
//! agent answers by opening a `Stream` RPC on the same mutual-TLS channel whose first frame is the
//! request's id ([`spawn`]). Then one of the operations runs until it is done or the control
//! plane goes away (its side of the RPC ends):
//!
//! * [`logs`]: the container's CRI log files (`/var/log/pods/…/<container>/<run>.log`), with
//!   tail, since, timestamps, previous, limitBytes and follow;
//! * [`exec`]: the `keel-node exec` helper (`crate::runtime::exec`) with pipes, or a terminal
//!   for `tty`;
//! * attach ([`logs::attach`]): the container's output from now on (stdin is not attachable:
//!   containers run with it closed);
//! * [`portforward`]: a TCP connection to the port on the pod's own loopback;
//!
//! Every stream ends with a `StreamEnd`; failures are its `error` text, in upstream's words.

pub mod exec;
pub mod logs;
pub mod portforward;

use std::path::PathBuf;
use std::sync::OnceLock;

use keel_proto::node_gate_client::NodeGateClient;
use keel_proto::stream_frame::Frame;
use keel_proto::stream_request::Op;
use keel_proto::{StreamData, StreamEnd, StreamFrame, StreamRequest};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::Streaming;

/// Where pods keep their state and logs (the pod manager's settings).
#[derive(Clone, Debug)]
pub struct Paths {
    /// `<state>/pods/<uid>/containers/<name>-<run>/bundle/pid`.
    pub pods_dir: PathBuf,
    /// `/var/log/pods/<ns>_<pod>_<uid>/<name>/<run>.log`.
    pub log_dir: PathBuf,
}

static PATHS: OnceLock<Paths> = OnceLock::new();

/// How long a finished stream waits for the control plane to take its last frames.
const LINGER: std::time::Duration = std::time::Duration::from_secs(30);

/// Set once by the agent when it runs pods.
pub fn configure(paths: Paths) {
    let _ = PATHS.set(paths);
}

/// One operation's end of the stream.
pub struct Io {
    pub tx: mpsc::Sender<StreamFrame>,
    pub inbound: Streaming<StreamFrame>,
}

impl Io {
    /// Sends one frame; false if the control plane went away.
    pub async fn send(&self, f: Frame) -> bool {
        self.tx.send(StreamFrame { frame: Some(f) }).await.is_ok()
    }

    pub async fn data(&self, channel: u32, data: Vec<u8>) -> bool {
        self.send(Frame::Data(StreamData { channel, data })).await
    }

    pub async fn end(&self, end: StreamEnd) {
        let _ = self.send(Frame::End(end)).await;
    }

    pub async fn fail(&self, code: u32, reason: &str, message: impl Into<String>) {
        self.end(StreamEnd {
            exit_code: None,
            error: message.into(),
            code,
            reason: reason.to_string(),
        })
        .await
    }

    /// Closes our side and waits (a while) for the control plane to close its side: dropping
    /// the RPC's response early would reset it and lose frames still queued towards it.
    pub async fn linger(self) {
        let Io { tx, mut inbound } = self;
        drop(tx);
        let _ = tokio::time::timeout(LINGER, async {
            while let Ok(Some(_)) = inbound.message().await {}
        })
        .await;
    }

    /// The next frame from the control plane; `None` once it went away.
    pub async fn next(&mut self) -> Option<Frame> {
        loop {
            match self.inbound.message().await {
                Ok(Some(StreamFrame { frame: Some(f) })) => return Some(f),
                Ok(Some(StreamFrame { frame: None })) => continue,
                Ok(None) | Err(_) => return None,
            }
        }
    }
}

/// Answers a stream request in the background.
pub fn spawn(channel: Channel, req: StreamRequest) {
    tokio::spawn(async move {
        let id = req.id.clone();
        if let Err(e) = serve(channel, req).await {
            eprintln!("keel: stream {id}: {e}");
        }
    });
}

async fn serve(channel: Channel, req: StreamRequest) -> Result<(), tonic::Status> {
    let (tx, rx) = mpsc::channel::<StreamFrame>(16);
    let _ = tx
        .send(StreamFrame {
            frame: Some(Frame::Open(req.id.clone())),
        })
        .await;
    let inbound = NodeGateClient::new(channel)
        .stream(ReceiverStream::new(rx))
        .await?
        .into_inner();
    let mut io = Io { tx, inbound };
    let Some(paths) = PATHS.get() else {
        io.fail(400, "BadRequest", "this node runs no pods").await;
        io.linger().await;
        return Ok(());
    };
    let pod = PodRef {
        namespace: req.namespace.clone(),
        name: req.pod.clone(),
        uid: req.pod_uid.clone(),
    };
    match req.op {
        Some(Op::Logs(l)) => logs::serve(paths, &pod, &req.container, &l, &mut io).await,
        Some(Op::Exec(e)) => exec::serve(paths, &pod, &req.container, &e, &mut io).await,
        Some(Op::Attach(a)) => logs::attach(paths, &pod, &req.container, &a, &mut io).await,
        Some(Op::PortForward(p)) => portforward::serve(paths, &pod, p.port, &mut io).await,
        None => io.fail(400, "BadRequest", "empty stream request").await,
    }
    io.linger().await;
    Ok(())
}

/// The pod a stream is about.
#[derive(Clone, Debug)]
pub struct PodRef {
    pub namespace: String,
    pub name: String,
    pub uid: String,
}

impl PodRef {
    /// The directory of a container's log files.
    pub fn log_dir(&self, paths: &Paths, container: &str) -> PathBuf {
        paths
            .log_dir
            .join(format!("{}_{}_{}", self.namespace, self.name, self.uid))
            .join(container)
    }

    /// The host PID of the container's current run, if it is running.
    pub fn running_pid(&self, paths: &Paths, container: &str) -> Option<(u32, i32)> {
        let dir = paths.pods_dir.join(&self.uid).join("containers");
        let prefix = format!("{container}-");
        let mut runs: Vec<u32> = std::fs::read_dir(&dir)
            .ok()?
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                e.file_name()
                    .to_str()
                    .and_then(|n| n.strip_prefix(&prefix))
                    .and_then(|r| r.parse().ok())
            })
            .collect();
        runs.sort_unstable();
        let run = *runs.last()?;
        let pid = pid_of(&dir.join(format!("{container}-{run}")).join("bundle").join("pid"))?;
        alive(pid).then_some((run, pid))
    }
}

impl PodRef {
    /// The host PID of any running container of the pod (they share its network namespace).
    pub fn any_running_pid(&self, paths: &Paths) -> Option<i32> {
        let dir = paths.pods_dir.join(&self.uid).join("containers");
        std::fs::read_dir(&dir)
            .ok()?
            .filter_map(|e| e.ok())
            .filter_map(|e| pid_of(&e.path().join("bundle").join("pid")))
            .find(|pid| alive(*pid))
    }
}

fn pid_of(path: &std::path::Path) -> Option<i32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// The process exists and is not a zombie.
pub fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}
