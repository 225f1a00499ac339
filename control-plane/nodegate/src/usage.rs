//! Resource usage reported by nodes, kept for `metrics.k8s.io` and the HPA.
//!
//! Each node sends a `UsageReport` every few seconds: cumulative CPU counters and memory working
//! sets, for itself and every container of its pods, stamped with its monotonic clock. Like
//! metrics-server, the gate keeps only the latest two samples of each counter and answers with
//! the rate between them; nothing is stored. A report replaces the node's pod set, so pods and
//! containers that are gone are forgotten at once; a node that stops reporting (powered off,
//! deleted) is no longer answered for after [`STALE_AFTER`] and forgotten at the next report of
//! any node, so memory stays bounded by what runs.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use keel_api::metrics::{self, ContainerUsage, CpuSample, MetricsSource, NodeUsage, PodUsage, Usage};
use keel_proto::UsageReport;

/// Samples older than this are not answered for (three missed reports at the default 10 s,
/// plus slack); metrics-server likewise drops nodes it failed to scrape.
pub const STALE_AFTER: Duration = Duration::from_secs(45);

#[derive(Clone, Copy, Debug)]
struct Sample {
    cpu: CpuSample,
    unix_millis: i64,
    memory: u64,
}

/// A counter's latest two samples.
#[derive(Clone, Copy, Debug)]
struct Series {
    prev: Option<Sample>,
    last: Sample,
}

impl Series {
    fn new(s: Sample) -> Series {
        Series { prev: None, last: s }
    }

    /// Takes a new sample; a counter that went backwards (restart) drops the old one.
    fn push(&mut self, s: Sample) {
        let continues = s.cpu.monotonic_millis > self.last.cpu.monotonic_millis
            && s.cpu.cpu_usage_nanos >= self.last.cpu.cpu_usage_nanos;
        self.prev = continues.then_some(self.last);
        self.last = s;
    }

    /// The rate over the last window, with its end and length.
    fn usage(&self) -> Option<(Usage, i64, u64)> {
        let (cpu, window) = metrics::cpu_rate(self.prev?.cpu, self.last.cpu)?;
        Some((
            Usage {
                cpu_nanocores: cpu,
                memory_bytes: self.last.memory,
            },
            self.last.unix_millis,
            window,
        ))
    }
}

#[derive(Debug)]
struct PodSeries {
    namespace: String,
    name: String,
    containers: HashMap<String, Series>,
}

#[derive(Debug)]
struct NodeSeries {
    received: Instant,
    node: Series,
    /// By pod uid.
    pods: HashMap<String, PodSeries>,
}

/// The latest samples of every node, implementing [`MetricsSource`].
#[derive(Debug, Default)]
pub struct UsageStore {
    nodes: Mutex<HashMap<String, NodeSeries>>,
}

impl UsageStore {
    pub fn new() -> UsageStore {
        UsageStore::default()
    }

    /// Takes a node's report (the node's name comes from its certificate, never the message).
    pub fn record(&self, node: &str, report: &UsageReport) {
        self.record_at(node, report, Instant::now());
    }

    fn record_at(&self, node: &str, report: &UsageReport, now: Instant) {
        let Ok(mut nodes) = self.nodes.lock() else {
            return;
        };
        nodes.retain(|n, s| n == node || now.saturating_duration_since(s.received) < STALE_AFTER);
        let sample = |cpu: u64, memory: u64| Sample {
            cpu: CpuSample {
                monotonic_millis: report.monotonic_millis,
                cpu_usage_nanos: cpu,
            },
            unix_millis: report.timestamp_unix_millis,
            memory,
        };
        let node_sample = sample(report.node_cpu_usage_nanos, report.node_memory_working_set_bytes);
        let entry = match nodes.entry(node.to_string()) {
            Entry::Occupied(o) => {
                let e = o.into_mut();
                e.node.push(node_sample);
                e.received = now;
                e
            }
            Entry::Vacant(v) => v.insert(NodeSeries {
                received: now,
                node: Series::new(node_sample),
                pods: HashMap::new(),
            }),
        };
        let mut pods = std::mem::take(&mut entry.pods);
        for p in &report.pods {
            let mut old = pods.remove(&p.uid);
            let containers = p
                .containers
                .iter()
                .map(|c| {
                    let s = sample(c.cpu_usage_nanos, c.memory_working_set_bytes);
                    let series = match old.as_mut().and_then(|o| o.containers.remove(&c.name)) {
                        Some(mut series) => {
                            series.push(s);
                            series
                        }
                        None => Series::new(s),
                    };
                    (c.name.clone(), series)
                })
                .collect();
            entry.pods.insert(
                p.uid.clone(),
                PodSeries {
                    namespace: p.namespace.clone(),
                    name: p.name.clone(),
                    containers,
                },
            );
        }
    }

    fn fresh<T>(&self, f: impl FnOnce(Vec<(&String, &NodeSeries)>) -> T) -> T {
        let now = Instant::now();
        let nodes = match self.nodes.lock() {
            Ok(n) => n,
            Err(poisoned) => poisoned.into_inner(),
        };
        let fresh: Vec<(&String, &NodeSeries)> = nodes
            .iter()
            .filter(|(_, s)| now.saturating_duration_since(s.received) < STALE_AFTER)
            .collect();
        f(fresh)
    }
}

impl MetricsSource for UsageStore {
    fn nodes(&self) -> Vec<NodeUsage> {
        self.fresh(|nodes| {
            nodes
                .into_iter()
                .filter_map(|(name, s)| {
                    let (usage, ts, window) = s.node.usage()?;
                    Some(NodeUsage {
                        name: name.clone(),
                        timestamp_unix_millis: ts,
                        window_millis: window,
                        usage,
                    })
                })
                .collect()
        })
    }

    fn pods(&self, namespace: Option<&str>) -> Vec<PodUsage> {
        self.fresh(|nodes| {
            let mut out = Vec::new();
            for (_, n) in nodes {
                for (uid, p) in &n.pods {
                    if namespace.is_some_and(|ns| ns != p.namespace) || p.containers.is_empty() {
                        continue;
                    }
                    // As metrics-server: a pod is answered for only when every container is.
                    let mut containers = Vec::with_capacity(p.containers.len());
                    let mut end = (0, 0);
                    for (name, series) in &p.containers {
                        let Some((usage, ts, window)) = series.usage() else {
                            containers.clear();
                            break;
                        };
                        end = end.max((ts, window));
                        containers.push(ContainerUsage {
                            name: name.clone(),
                            usage,
                        });
                    }
                    if containers.len() != p.containers.len() {
                        continue;
                    }
                    containers.sort_by(|a, b| a.name.cmp(&b.name));
                    out.push(PodUsage {
                        namespace: p.namespace.clone(),
                        name: p.name.clone(),
                        uid: uid.clone(),
                        timestamp_unix_millis: end.0,
                        window_millis: end.1,
                        containers,
                    });
                }
            }
            out
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel_proto::{ContainerUsage as PContainer, PodUsage as PPod};

    fn report(t: u64, node_cpu: u64, pods: Vec<PPod>) -> UsageReport {
        UsageReport {
            timestamp_unix_millis: 1_700_000_000_000 + t as i64,
            monotonic_millis: t,
            node_cpu_usage_nanos: node_cpu,
            node_memory_working_set_bytes: 1 << 30,
            pods,
        }
    }

    fn pod(uid: &str, containers: &[(&str, u64)]) -> PPod {
        PPod {
            namespace: "default".into(),
            name: format!("pod-{uid}"),
            uid: uid.into(),
            containers: containers
                .iter()
                .map(|(n, cpu)| PContainer {
                    name: n.to_string(),
                    cpu_usage_nanos: *cpu,
                    memory_working_set_bytes: 4096,
                })
                .collect(),
        }
    }

    #[test]
    fn rates_need_two_samples_and_follow_the_pods() {
        let s = UsageStore::new();
        let t0 = Instant::now();
        s.record_at("n1", &report(10_000, 0, vec![pod("a", &[("c", 0)])]), t0);
        assert!(s.nodes().is_empty(), "one sample is no rate");
        assert!(s.pods(None).is_empty());
        let t1 = t0 + Duration::from_secs(10);
        s.record_at(
            "n1",
            &report(
                20_000,
                10_000_000_000,
                vec![pod("a", &[("c", 2_500_000_000)]), pod("b", &[("c", 9)])],
            ),
            t1,
        );
        let nodes = s.nodes();
        assert_eq!(nodes.len(), 1);
        assert_eq!(nodes[0].usage.cpu_nanocores, 1_000_000_000);
        assert_eq!(nodes[0].window_millis, 10_000);
        assert_eq!(nodes[0].usage.memory_bytes, 1 << 30);
        // Pod b has one sample only.
        let pods = s.pods(Some("default"));
        assert_eq!(pods.len(), 1);
        assert_eq!(pods[0].name, "pod-a");
        assert_eq!(pods[0].containers[0].usage.cpu_nanocores, 250_000_000);
        assert!(s.pods(Some("other")).is_empty());
        // Pod a goes; b stays with a rate.
        s.record_at(
            "n1",
            &report(30_000, 10_000_000_000, vec![pod("b", &[("c", 10_000_009)])]),
            t1 + Duration::from_secs(10),
        );
        let pods = s.pods(None);
        assert_eq!(pods.len(), 1);
        assert_eq!(pods[0].uid, "b");
        assert_eq!(pods[0].containers[0].usage.cpu_nanocores, 1_000_000);
        assert_eq!(s.nodes()[0].usage.cpu_nanocores, 0);
    }

    #[test]
    fn restarts_and_partial_pods() {
        let s = UsageStore::new();
        let t0 = Instant::now();
        s.record_at(
            "n1",
            &report(1_000, 0, vec![pod("a", &[("x", 100), ("y", 0)])]),
            t0,
        );
        // Container x restarted (counter back to 5); y continues.
        s.record_at(
            "n1",
            &report(2_000, 0, vec![pod("a", &[("x", 5), ("y", 1_000_000)])]),
            t0 + Duration::from_secs(1),
        );
        assert!(s.pods(None).is_empty(), "x has no window after its restart");
        s.record_at(
            "n1",
            &report(3_000, 0, vec![pod("a", &[("x", 1_000_005), ("y", 2_000_000)])]),
            t0 + Duration::from_secs(2),
        );
        let pods = s.pods(None);
        assert_eq!(pods.len(), 1);
        let names: Vec<&str> = pods[0].containers.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["x", "y"]);
        assert_eq!(pods[0].total().cpu_nanocores, 2_000_000);
    }

    #[test]
    fn silent_nodes_go_stale_and_are_forgotten() {
        let s = UsageStore::new();
        let t0 = Instant::now() - STALE_AFTER - Duration::from_secs(20);
        s.record_at("old", &report(1_000, 0, vec![]), t0);
        s.record_at("old", &report(2_000, 10, vec![]), t0 + Duration::from_secs(10));
        assert!(s.nodes().is_empty(), "stale");
        let now = Instant::now();
        s.record_at("new", &report(1_000, 0, vec![]), now);
        assert_eq!(
            s.nodes.lock().map(|n| n.len()).unwrap_or(0),
            1,
            "the stale node is dropped"
        );
    }
}
