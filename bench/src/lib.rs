//! Benchmarks of the control plane: the figures of the "Control plane" issue.
//!
//! * [`store`]: the embedded store against etcd 3.4, side by side in one run on the same disk —
//!   durable compare-and-swap write latency and point-get latency, and their ratio.
//! * [`api`]: a real `keel-server` on loopback driven through `kube` (kube-rs): create, update
//!   and get latency at a fixed rate, listing 10,000 pods, one change reaching 1,000 watchers, and
//!   the server's resident memory idle and loaded.
//!
//! * [`control`]: the scheduler and controllers at scale with 1,000 hollow nodes
//!   (`keel-node hollow`): bind rate, a 10,000-replica Deployment, memory with 30,000 pods
//!   (`bench-control`, `make bench-control`).
//!
//! The `bench-api` binary runs both and prints [`report::Table`]; `make bench-api` builds the
//! release server first. Everything is a measurement: a missed goal is marked, not an error.

pub mod api;
pub mod control;
pub mod etcd;
pub mod load;
pub mod report;
pub mod stats;
pub mod store;
