//! Pods on this node, with the kubelet's semantics (first slice): the desired set from the
//! control plane in, containers started, restarted and stopped, statuses and events out.
//!
//! * [`manager`]: one worker per pod uid, driven by each `DesiredPods` snapshot;
//! * [`worker`]: one pod's sandbox, containers, status and teardown;
//! * [`lifecycle`]: one container's pull → start → wait → restart-with-back-off loop (init
//!   containers run one after the other to success before the others start);
//! * [`spec`]: the pod JSON as the node reads it (own serde structs, no Kubernetes crates) and
//!   the command line, environment and limits derived from it;
//! * [`status`]: the PodStatus as the kubelet computes it (pure, tested);
//! * [`probes`]: readiness and liveness probes (exec, tcpSocket, httpGet), also the handlers of
//!   postStart and preStop hooks;
//! * [`volumes`]: emptyDir (disk or memory), hostPath, configMap, secret and downwardAPI
//!   volumes, updated in place, and the containers' mounts of them;
//! * [`outbox`]: statuses and events waiting for the session to send them;
//! * [`record`]: each pod's record on disk, from which an agent that restarted adopts the
//!   sandboxes and containers still running (same container IDs and restart counts);
//! * [`usage`]: the node's and its containers' CPU and memory, sampled for `kubectl top`.
//!
//! Not yet: startup probes, sidecar (restartable) init containers, projected volumes (the
//! service account token needs the TokenRequest API).

pub mod lifecycle;
pub mod manager;
pub mod outbox;
pub mod probes;
pub mod record;
pub mod spec;
pub mod status;
pub mod usage;
pub mod volumes;
pub mod worker;

pub use manager::Settings;
