//! The pod scheduler: places every unscheduled pod (`spec.nodeName` empty, `schedulerName`
//! `default-scheduler`) on a node, after upstream's kube-scheduler.
//!
//! * [`filter`]: what a node must offer a pod (resources, selectors and node affinity, taints
//!   and tolerations, host ports, schedulability and readiness) and how nodes are scored.
//! * [`interpod`]: inter-pod affinity and anti-affinity.
//! * [`resources`]: quantities and pod requests.
//! * `scheduler`: the loop — incremental per-node state fed by watches, assumed decisions,
//!   concurrent bindings, unschedulable pods retried when the cluster changes.
//!
//! Like the controllers, it uses only [`keel_api::client::ApiClient`]. Entry point: [`run`].

pub mod filter;
pub mod interpod;
pub mod resources;
mod scheduler;

use std::future::Future;
use std::sync::Arc;

use keel_api::client::ApiClient;
use keel_api::registry;
use tokio::sync::mpsc;

pub use scheduler::RETRY_UNSCHEDULABLE;

/// Why the scheduler could not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the resource registry has no {0}")]
    MissingResource(&'static str),
}

/// Tunables.
#[derive(Clone, Debug)]
pub struct Options {
    /// Pods with this `spec.schedulerName` are ours.
    pub scheduler_name: String,
    /// Bindings in flight at once.
    pub bind_concurrency: usize,
    /// Whether a `Scheduled` Event is written per pod (upstream does; it costs a write).
    pub record_scheduled_events: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            scheduler_name: "default-scheduler".into(),
            bind_concurrency: 64,
            record_scheduled_events: true,
        }
    }
}

/// Schedules pods until `shutdown` completes.
pub async fn run(
    client: Arc<dyn ApiClient>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    run_with(client, Options::default(), shutdown).await
}

/// [`run`] with explicit [`Options`].
pub async fn run_with(
    client: Arc<dyn ApiClient>,
    opts: Options,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    let pods = registry::find("", "v1", "pods").ok_or(Error::MissingResource("pods"))?;
    let nodes = registry::find("", "v1", "nodes").ok_or(Error::MissingResource("nodes"))?;
    let events = registry::find("", "v1", "events").ok_or(Error::MissingResource("events"))?;
    let (tx, rx) = mpsc::unbounded_channel();
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(scheduler::follow(
        client.clone(),
        nodes,
        scheduler::Kind::Node,
        tx.clone(),
    ));
    tasks.spawn(scheduler::follow(
        client.clone(),
        pods,
        scheduler::Kind::Pod,
        tx.clone(),
    ));
    let sched = scheduler::Scheduler::new(client, pods, events, opts, tx);
    tasks.spawn(sched.run(rx));
    tracing::info!("scheduler running");
    shutdown.await;
    tasks.abort_all();
    while tasks.join_next().await.is_some() {}
    Ok(())
}
