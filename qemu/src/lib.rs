//! The QEMU lab: everything `make qemu-cluster` and the end-to-end tests need to run Keel nodes
//! on this machine, rootless and without traffic leaving it.
//!
//! * [`switch`]: the L2 segment the nodes' second NIC attaches to, with fault injection;
//! * [`relay`]: the per-connection program behind QEMU's `guestfwd=…-cmd:`, the nodes' only way
//!   to the control plane and the registry;
//! * [`image`] and [`registry`]: test images built from Debian packages and the local
//!   `docker-registry` that serves them as the nodes' docker.io mirror; [`registry_gate`] in
//!   front of it when some repositories must require credentials (Basic or bearer tokens);
//! * [`lab`]: starting, inspecting and stopping a whole lab (control plane, registry, switch,
//!   QEMU nodes), as a library for tests and behind `keel-lab up|down|status`;
//! * [`kubectl`], [`wait`], [`proc`]: running the real kubectl with an isolated HOME, waiting
//!   with deadlines, and the processes the lab owns.

pub mod image;
pub mod kubectl;
pub mod lab;
pub mod node;
pub mod ports;
pub mod proc;
pub mod registry;
pub mod registry_gate;
pub mod relay;
pub mod switch;
pub mod wait;

pub use kubectl::{Kubectl, KubectlOutput};
pub use lab::{Binaries, Lab, LabError, LabOptions};
pub use wait::{wait_for, Poll, WaitError};
