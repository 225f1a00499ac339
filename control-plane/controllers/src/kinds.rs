//! The resource types the controllers use, looked up once in the registry's static table.

use keel_api::registry::{self, ResourceType};

use crate::runner::Error;

/// Every resource type a controller reads or writes.
#[derive(Clone, Copy, Debug)]
pub struct Kinds {
    pub pods: &'static ResourceType,
    pub events: &'static ResourceType,
    pub nodes: &'static ResourceType,
    pub services: &'static ResourceType,
    pub endpoints: &'static ResourceType,
    pub replication_controllers: &'static ResourceType,
    pub replica_sets: &'static ResourceType,
    pub deployments: &'static ResourceType,
    pub daemon_sets: &'static ResourceType,
    pub stateful_sets: &'static ResourceType,
    pub claims: &'static ResourceType,
    pub controller_revisions: &'static ResourceType,
    pub jobs: &'static ResourceType,
    pub cron_jobs: &'static ResourceType,
    pub pod_disruption_budgets: &'static ResourceType,
}

fn find(group: &str, plural: &'static str) -> Result<&'static ResourceType, Error> {
    registry::find(group, "v1", plural).ok_or(Error::MissingResource(plural))
}

impl Kinds {
    pub fn resolve() -> Result<Self, Error> {
        Ok(Kinds {
            pods: find("", "pods")?,
            events: find("", "events")?,
            nodes: find("", "nodes")?,
            services: find("", "services")?,
            endpoints: find("", "endpoints")?,
            replication_controllers: find("", "replicationcontrollers")?,
            replica_sets: find("apps", "replicasets")?,
            deployments: find("apps", "deployments")?,
            daemon_sets: find("apps", "daemonsets")?,
            stateful_sets: find("apps", "statefulsets")?,
            claims: find("", "persistentvolumeclaims")?,
            controller_revisions: find("apps", "controllerrevisions")?,
            jobs: find("batch", "jobs")?,
            cron_jobs: find("batch", "cronjobs")?,
            pod_disruption_budgets: find("policy", "poddisruptionbudgets")?,
        })
    }
}
