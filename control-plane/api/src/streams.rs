//! The seam between the API server and whatever reaches a pod's node for `pods/log`,
//! `pods/exec`, `pods/attach` and `pods/portforward` (the node gate in `keel-server`).
//!
//! The API server validates the request against the Pod, then asks a [`PodStreams`] for a
//! [`NodeStream`] to the node the pod is bound to: a pair of channels carrying the remote-command
//! channels of Kubernetes (0 stdin, 1 stdout, 2 stderr) one way and the other, ended by
//! [`Down::End`]. How the bytes travel (the node dials out; the control plane never dials a node)
//! is the implementor's business; this module only names the shapes, so that the API server does
//! not depend on the node gate.

use std::future::Future;
use std::pin::Pin;

use futures::channel::mpsc;

use crate::status::ApiError;

/// Which pod, on which node.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StreamTarget {
    pub node: String,
    pub namespace: String,
    pub pod: String,
    pub pod_uid: String,
    /// Empty for port-forward.
    pub container: String,
}

/// `pods/log` options, resolved (times absolute).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LogOptions {
    pub follow: bool,
    pub previous: bool,
    pub tail_lines: Option<i64>,
    pub since_unix_nanos: Option<i64>,
    pub timestamps: bool,
    pub limit_bytes: Option<i64>,
}

/// `pods/exec` and `pods/attach` options (attach: `command` empty).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ExecOptions {
    pub command: Vec<String>,
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub tty: bool,
}

#[derive(Clone, Debug, PartialEq)]
pub enum StreamOp {
    Logs(LogOptions),
    Exec(ExecOptions),
    Attach(ExecOptions),
    PortForward { port: u16 },
}

/// Towards the node.
#[derive(Clone, Debug, PartialEq)]
pub enum Up {
    Data(u8, Vec<u8>),
    /// Nothing more on this channel (stdin EOF, TCP half-close).
    Close(u8),
    Resize {
        width: u16,
        height: u16,
    },
}

/// From the node.
#[derive(Clone, Debug, PartialEq)]
pub enum Down {
    Data(u8, Vec<u8>),
    Close(u8),
    /// The last message: how the operation ended.
    End(StreamEnd),
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct StreamEnd {
    /// Exec: the command's exit status.
    pub exit_code: Option<i32>,
    /// The operation failed.
    pub error: Option<ApiError>,
}

/// An open stream to a node; dropping `up` tells the node the client went away.
pub struct NodeStream {
    pub up: mpsc::Sender<Up>,
    pub down: mpsc::Receiver<Down>,
}

pub type OpenFuture<'a> = Pin<Box<dyn Future<Output = Result<NodeStream, ApiError>> + Send + 'a>>;

/// Opens streams to the node a pod is bound to.
pub trait PodStreams: Send + Sync {
    fn open(&self, target: StreamTarget, op: StreamOp) -> OpenFuture<'_>;
}

/// Maps a node's error (HTTP code and reason text) to an [`ApiError`] with a known reason.
pub fn node_error(code: u32, reason: &str, message: String) -> ApiError {
    let reason: &'static str = match reason {
        "BadRequest" => "BadRequest",
        "NotFound" => "NotFound",
        "Forbidden" => "Forbidden",
        "Timeout" => "Timeout",
        _ => "InternalError",
    };
    let code = match u16::try_from(code) {
        Ok(c) if (400..600).contains(&c) => c,
        _ => 500,
    };
    ApiError::new(code, reason, message)
}
