//! Usage reports: every [`INTERVAL`] the node's and its pods' cumulative CPU and memory working
//! sets ([`crate::runtime::stats`]) go up the session as one `UsageReport`, for
//! `metrics.k8s.io` (`kubectl top`) and the HPA.
//!
//! Which pods to measure comes from the desired set (namespace, name, uid and container names);
//! a container is measured through its cgroup (`kubepods/<pod uid>/<container>`), so a container
//! that is not running has no cgroup and simply no sample. Reports are not queued across
//! outages: a report that cannot be sent right now is dropped, the next one is fresh.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use keel_proto::node_message::Msg;
use keel_proto::{ContainerUsage, PodUsage, UsageReport};
use serde_json::Value;
use tokio::sync::{mpsc, watch};

use super::manager::Snapshot;
use crate::runtime::stats;

/// How often usage is sampled and sent unless `keel.usage-interval=` says otherwise
/// (metrics-server scrapes every 15 s by default).
pub const INTERVAL: Duration = Duration::from_secs(10);

/// One report from a desired set and the cgroup tree at `cgroup_root`.
pub fn sample(pods: &[Value], cgroup_root: &Path) -> Option<UsageReport> {
    let (monotonic_millis, node_cpu, node_mem) = stats::node_usage()?;
    let timestamp_unix_millis = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    Some(UsageReport {
        timestamp_unix_millis,
        monotonic_millis,
        node_cpu_usage_nanos: node_cpu,
        node_memory_working_set_bytes: node_mem,
        pods: pod_usage(pods, cgroup_root),
    })
}

/// The pods' containers that have a cgroup, with their counters.
pub fn pod_usage(pods: &[Value], cgroup_root: &Path) -> Vec<PodUsage> {
    let s = |p: &Value, ptr: &str| p.pointer(ptr).and_then(Value::as_str).unwrap_or("").to_string();
    pods.iter()
        .filter_map(|p| {
            let uid = s(p, "/metadata/uid");
            if uid.is_empty() || uid.contains('/') || uid.contains("..") {
                return None;
            }
            let pod_dir = cgroup_root.join("kubepods").join(&uid);
            let containers: Vec<ContainerUsage> = p
                .pointer("/spec/containers")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|c| {
                    let name = c.get("name").and_then(Value::as_str)?;
                    if name.is_empty() || name.contains('/') || name.contains("..") {
                        return None;
                    }
                    let (cpu, mem) = stats::cgroup_usage(&pod_dir.join(name))?;
                    Some(ContainerUsage {
                        name: name.to_string(),
                        cpu_usage_nanos: cpu,
                        memory_working_set_bytes: mem,
                    })
                })
                .collect();
            (!containers.is_empty()).then(|| PodUsage {
                namespace: s(p, "/metadata/namespace"),
                name: s(p, "/metadata/name"),
                uid,
                containers,
            })
        })
        .collect()
}

/// Samples every `interval` until the agent ends.
pub async fn serve<S: Snapshot>(
    cgroup_root: PathBuf,
    interval: Duration,
    desired: watch::Receiver<Option<Arc<S>>>,
    up: mpsc::Sender<Msg>,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let set = desired.borrow().clone();
        let pods: &[Value] = set.as_deref().map(|s| s.pods()).unwrap_or(&[]);
        let Some(report) = sample(pods, &cgroup_root) else {
            continue;
        };
        match up.try_send(Msg::Usage(report)) {
            Ok(()) | Err(mpsc::error::TrySendError::Full(_)) => {}
            Err(mpsc::error::TrySendError::Closed(_)) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::fs;

    #[test]
    fn containers_with_cgroups_are_measured() {
        let root = tempfile::tempdir().expect("tempdir");
        let c = root.path().join("kubepods/u1/app");
        fs::create_dir_all(&c).expect("mkdir");
        fs::write(c.join("cpu.stat"), "usage_usec 10\n").expect("write");
        fs::write(c.join("memory.current"), "8192\n").expect("write");
        let pods = vec![
            json!({"metadata": {"namespace": "ns", "name": "p1", "uid": "u1"},
                   "spec": {"containers": [{"name": "app"}, {"name": "stopped"}]}}),
            json!({"metadata": {"namespace": "ns", "name": "p2", "uid": "u2"},
                   "spec": {"containers": [{"name": "app"}]}}),
            json!({"metadata": {"namespace": "ns", "name": "p3", "uid": "../u1"},
                   "spec": {"containers": [{"name": "app"}]}}),
        ];
        let usage = pod_usage(&pods, root.path());
        assert_eq!(usage.len(), 1);
        assert_eq!(usage[0].name, "p1");
        assert_eq!(usage[0].uid, "u1");
        assert_eq!(
            usage[0].containers,
            vec![ContainerUsage {
                name: "app".into(),
                cpu_usage_nanos: 10_000,
                memory_working_set_bytes: 8192,
            }]
        );
    }
}
