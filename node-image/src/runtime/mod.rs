//! The container runtime: images, sandboxes, containers, cgroups — no external programs.
//!
//! * [`reference`]: image names and which registry endpoints (mirrors first) to ask;
//! * [`registry`]: a small OCI distribution client (bearer tokens, redirects, HTTP or HTTPS);
//! * [`image`]: pulling into the content-addressed store under `/var/lib/keel/images`;
//! * [`unpack`]: one layer into one directory, OCI whiteouts turned into overlayfs ones;
//! * [`sandbox`]: the process that holds a pod's UTS/IPC (and network) namespaces;
//! * [`container`]: the `keel-node container` helper that builds a container's mount and PID
//!   namespaces over an overlayfs root and execs its command;
//! * [`logs`]: container output as CRI log lines;
//! * [`exec`]: the `keel-node exec` helper that runs a command inside a running container;
//! * [`process`]: helper and sandbox processes that outlive the agent, found again by pid and
//!   start time and waited for through a pidfd;
//! * [`cgroup`]: cgroup v2 limits under `/sys/fs/cgroup/kubepods/<pod uid>/<container>`;
//! * [`stats`]: CPU and memory counters of the node and of container cgroups;
//! * [`sys`]: the syscall wrappers, the only `unsafe` of the runtime.
//!
//! Policy (what to run, when to restart, what to report) is not here but in [`crate::pods`].

pub mod cgroup;
pub mod container;
pub mod exec;
pub mod image;
pub mod logs;
pub mod process;
pub mod pty;
pub mod reference;
pub mod registry;
pub mod sandbox;
pub mod stats;
pub mod sys;
pub mod unpack;
