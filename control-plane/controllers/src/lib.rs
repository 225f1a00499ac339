//! The workload controllers of the control plane.
//!
//! Every controller is one file of policy — a `reconcile(obj, ctx)` function — driven by the one
//! shared [`runner`] (watch the primary kind and the kinds it owns, a de-duplicating work queue
//! of object keys, level-triggered passes that return "done" or "requeue after"), after the
//! shape of kube-rs controllers. They touch the cluster only through
//! [`keel_api::client::ApiClient`], the verbs any out-of-process client has, so they can move out
//! of the server process unchanged.
//!
//! * [`replicaset`]: ReplicaSets and ReplicationControllers (pods from a template).
//! * [`deployment`]: Deployments (ReplicaSets per template, rolling update and recreate,
//!   revisions, history cleanup, rollout status conditions).
//! * [`statefulset`]: StatefulSets (ordered pods with stable names and claims, rolling update).
//! * [`daemonset`]: DaemonSets (a pod per eligible node, ControllerRevisions, rolling update).
//! * [`endpoints`]: the Endpoints of Services with selectors.
//! * [`job`]: Jobs (completions, parallelism, backoff limit, deadline, suspend).
//! * [`cronjob`]: CronJobs (Jobs on a cron schedule, concurrency policy, history limits).
//! * [`endpointslice`]: EndpointSlices mirrored from Endpoints.
//! * [`namespace_defaults`]: each namespace's `default` ServiceAccount and `kube-root-ca.crt`.
//! * [`volume_binder`]: PersistentVolumes Available/Released, claims bound to the smallest fit.
//! * [`taint_eviction`]: pods evicted by `NoExecute` taints; pods of deleted nodes removed.
//! * [`hpa`]: HorizontalPodAutoscalers (autoscaling/v2 over the resource metrics).
//! * [`disruption`]: PodDisruptionBudget status (healthy, desired, disruptions allowed).
//!
//! Entry point: [`run_all`].

pub mod cronjob;
pub mod daemonset;
pub mod deployment;
pub mod disruption;
pub mod endpoints;
pub mod endpointslice;
pub mod events;
pub mod hpa;
pub mod informers;
pub mod job;
pub mod kinds;
pub mod namespace_defaults;
pub mod pods;
pub mod replicaset;
pub mod runner;
pub mod selecting;
pub mod statefulset;
pub mod taint_eviction;
pub mod volume_binder;

use std::future::Future;
use std::sync::Arc;

use keel_api::client::ApiClient;
use serde_json::Value;

pub use kinds::Kinds;
pub use runner::{Action, Controller, Error, ObjectRef};

/// What every reconcile gets: the client and the resource types.
pub struct Context {
    pub client: Arc<dyn ApiClient>,
    pub kinds: Kinds,
}

impl Context {
    pub fn new(client: Arc<dyn ApiClient>) -> Result<Self, Error> {
        Ok(Context {
            client,
            kinds: Kinds::resolve()?,
        })
    }

    /// Records an Event about `involved` in the background (best effort).
    pub fn record(
        &self,
        component: &'static str,
        involved: &Value,
        type_: &'static str,
        reason: &'static str,
        message: &str,
    ) {
        let client = self.client.clone();
        let events = self.kinds.events;
        let involved = involved.clone();
        let message = message.to_string();
        tokio::spawn(async move {
            events::record(
                client.as_ref(),
                events,
                component,
                &involved,
                type_,
                reason,
                &message,
            )
            .await;
        });
    }
}

/// Runs every controller until `shutdown` completes.
pub async fn run_all(
    client: Arc<dyn ApiClient>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    run_all_with(client, Options::default(), shutdown).await
}

/// Cluster facts some controllers need.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// PEM of the cluster CA, published in every namespace as `kube-root-ca.crt`.
    pub ca_pem: Option<String>,
    /// Where the HPA controller reads pod usage (what `metrics.k8s.io` serves).
    pub metrics: Option<Arc<dyn keel_api::metrics::MetricsSource>>,
    /// The HPAs' default scale-down stabilization window (`None`: 5 minutes).
    pub hpa_downscale_stabilization: Option<std::time::Duration>,
}

/// [`run_all`] with [`Options`].
pub async fn run_all_with(
    client: Arc<dyn ApiClient>,
    options: Options,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    let defaults = Arc::new(namespace_defaults::NamespaceDefaults::new(
        client.clone(),
        options.ca_pem,
    )?);
    let mirror = Arc::new(endpointslice::Mirror::new(client.clone())?);
    let binder = Arc::new(volume_binder::Binder::new(client.clone())?);
    let ctx = Arc::new(Context::new(client.clone())?);
    let k = ctx.kinds;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    let informers = informers::Informers::new(client);
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(
        Controller::new("replicaset", &informers, k.replica_sets)
            .owns(k.pods)
            .run(
                |rs, ctx| replicaset::reconcile(rs, ctx, replicaset::Flavor::ReplicaSet),
                ctx.clone(),
                stopped(),
            ),
    );
    tasks.spawn(
        Controller::new("replicationcontroller", &informers, k.replication_controllers)
            .owns(k.pods)
            .run(
                |rc, ctx| replicaset::reconcile(rc, ctx, replicaset::Flavor::ReplicationController),
                ctx.clone(),
                stopped(),
            ),
    );
    tasks.spawn(
        Controller::new("deployment", &informers, k.deployments)
            .owns(k.replica_sets)
            .run(deployment::reconcile, ctx.clone(), stopped()),
    );
    tasks.spawn(Controller::new("job", &informers, k.jobs).owns(k.pods).run(
        job::reconcile,
        ctx.clone(),
        stopped(),
    ));
    let known = Arc::new(daemonset::Known::default());
    tasks.spawn(
        Controller::new("daemonset", &informers, k.daemon_sets)
            .watches(k.daemon_sets, known.daemonset_mapper())
            .watches(k.nodes, known.node_mapper())
            .owns(k.pods)
            .run(daemonset::reconcile, ctx.clone(), stopped()),
    );
    let selectors = Arc::new(endpoints::Selectors::default());
    tasks.spawn(
        Controller::new("endpoints", &informers, k.services)
            .watches(k.services, selectors.service_mapper())
            .watches(k.pods, selectors.pod_mapper())
            .run_with_cleanup(
                endpoints::reconcile,
                Some(endpoints::cleanup()),
                ctx.clone(),
                stopped(),
            ),
    );
    tasks.spawn(
        Controller::new("namespace-defaults", &informers, defaults.namespaces())
            .watches(
                defaults.service_accounts(),
                namespace_defaults::namespace_mapper(),
            )
            .watches(defaults.config_maps(), namespace_defaults::namespace_mapper())
            .run(namespace_defaults::reconcile, defaults.clone(), stopped()),
    );
    tasks.spawn(
        Controller::new("endpointslice-mirroring", &informers, mirror.endpoints()).run(
            endpointslice::reconcile,
            mirror.clone(),
            stopped(),
        ),
    );
    tasks.spawn(
        Controller::new("persistentvolume-binder", &informers, binder.claims())
            .watches(binder.volumes(), binder.volume_mapper())
            .run(volume_binder::reconcile, binder.clone(), stopped()),
    );
    tasks.spawn(
        Controller::new("persistentvolume-phase", &informers, binder.volumes())
            .watches(binder.claims(), {
                // A deleted claim releases its volume: look at every volume again.
                Arc::new(|_: &Value| Vec::new())
            })
            .run(volume_binder::reconcile_volume, binder.clone(), stopped()),
    );
    tasks.spawn(
        Controller::new("taint-eviction", &informers, k.nodes)
            .watches(k.pods, taint_eviction::pod_mapper())
            .run_with_cleanup(
                taint_eviction::reconcile,
                Some(taint_eviction::cleanup()),
                ctx.clone(),
                stopped(),
            ),
    );
    tasks.spawn(
        Controller::new("cronjob", &informers, k.cron_jobs)
            .owns(k.jobs)
            .run(cronjob::reconcile, ctx.clone(), stopped()),
    );
    let budgets = Arc::new(disruption::Budgets::default());
    tasks.spawn(
        Controller::new("disruption", &informers, k.pod_disruption_budgets)
            .watches(k.pod_disruption_budgets, budgets.budget_mapper())
            .watches(k.pods, budgets.pod_mapper())
            .run(disruption::reconcile, ctx.clone(), stopped()),
    );
    tasks.spawn(
        Controller::new("statefulset", &informers, k.stateful_sets)
            .owns(k.pods)
            .run(statefulset::reconcile, ctx.clone(), stopped()),
    );
    let autoscaler = Arc::new(hpa::Autoscaler::new(
        ctx.client.clone(),
        options.metrics.clone(),
        options
            .hpa_downscale_stabilization
            .unwrap_or(hpa::DEFAULT_DOWNSCALE_STABILIZATION),
    )?);
    tasks.spawn(
        Controller::new("horizontal-pod-autoscaler", &informers, autoscaler.hpas).run_with_cleanup(
            hpa::reconcile,
            Some(hpa::cleanup()),
            autoscaler.clone(),
            stopped(),
        ),
    );
    // Every controller has subscribed: now the watches may begin.
    informers.start();
    tracing::info!("controllers running");
    shutdown.await;
    let _ = stop_tx.send(true);
    while tasks.join_next().await.is_some() {}
    Ok(())
}
