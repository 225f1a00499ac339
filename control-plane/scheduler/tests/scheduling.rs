//! The scheduler against the real in-process API: fake Ready nodes (Node objects with
//! allocatable resources, no agent), pods that fit and pods that fit nowhere.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use keel_api::client::{ApiClient, ListParams, WriteOptions};
use keel_api::registry::{self, ResourceType};
use serde_json::{json, Value};
use tokio::sync::watch;

struct Cluster {
    client: Arc<dyn ApiClient>,
    stop: watch::Sender<bool>,
    _dir: tempfile::TempDir,
}

fn rt(plural: &str) -> &'static ResourceType {
    registry::find("", "v1", plural).expect("registry row")
}

impl Cluster {
    async fn start() -> Cluster {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_env("KEEL_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .with_test_writer()
            .try_init();
        let dir = tempfile::tempdir().expect("temp dir");
        let store = keel_store::embedded::EmbeddedStore::open(dir.path().join("store"), Default::default())
            .expect("store");
        let objects = Arc::new(keel_apiserver::Objects::new(
            Arc::new(store),
            Arc::new(keel_apiserver::Config::default()),
        ));
        keel_apiserver::gc::spawn(objects.clone());
        keel_apiserver::bootstrap::ensure(&objects)
            .await
            .expect("bootstrap");
        let client: Arc<dyn ApiClient> = Arc::new(keel_apiserver::client::InProcessClient::new(objects));
        let (stop, _) = watch::channel(false);
        Cluster {
            client,
            stop,
            _dir: dir,
        }
    }

    fn run_scheduler(&self, opts: keel_scheduler::Options) {
        let client = self.client.clone();
        let mut rx = self.stop.subscribe();
        tokio::spawn(async move {
            let stopped = async move {
                let _ = rx.wait_for(|s| *s).await;
            };
            keel_scheduler::run_with(client, opts, stopped)
                .await
                .expect("scheduler")
        });
    }

    /// A Ready node with the given allocatable CPU, 8Gi of memory and 110 pods.
    async fn node(&self, name: &str, cpu: &str, taints: Value) {
        let node = json!({"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
            "spec": {"taints": taints}});
        let mut node = self
            .client
            .create(rt("nodes"), None, node, WriteOptions::default())
            .await
            .expect("node");
        let resources = json!({"cpu": cpu, "memory": "8Gi", "pods": "110"});
        node["status"] = json!({"capacity": resources, "allocatable": resources,
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady"}]});
        self.client
            .update(
                rt("nodes"),
                None,
                node,
                Some("status".into()),
                WriteOptions::default(),
            )
            .await
            .expect("node status");
    }

    async fn pod(&self, name: &str, cpu: &str) {
        let pod = json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"containers": [{"name": "c", "image": "busybox", "resources": {"requests": {"cpu": cpu}}}]}});
        self.client
            .create(rt("pods"), Some("default".into()), pod, WriteOptions::default())
            .await
            .expect("pod");
    }

    async fn get_pod(&self, name: &str) -> Value {
        self.client
            .get(rt("pods"), Some("default".into()), name.into())
            .await
            .expect("get pod")
    }

    async fn events_of_reason(&self, reason: &str) -> Vec<Value> {
        let list = self
            .client
            .list(rt("events"), Some("default".into()), ListParams::default())
            .await
            .expect("events");
        list["items"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .filter(|e| e["reason"] == reason)
            .collect()
    }

    async fn events_of(&self, name: &str) -> Vec<Value> {
        let list = self
            .client
            .list(rt("events"), Some("default".into()), ListParams::default())
            .await
            .expect("events");
        list["items"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .filter(|e| e["involvedObject"]["name"] == name)
            .collect()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

async fn wait_for<T, F, Fut>(secs: u64, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {secs}s waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn node_name(pod: &Value) -> Option<String> {
    pod.pointer("/spec/nodeName")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binds_what_fits_and_explains_what_does_not() {
    let c = Cluster::start().await;
    c.node("n1", "2", json!([])).await;
    c.node("n2", "2", json!([])).await;
    c.node(
        "gpu",
        "2",
        json!([{"key": "gpu", "value": "yes", "effect": "NoSchedule"}]),
    )
    .await;
    c.run_scheduler(keel_scheduler::Options::default());

    for i in 0..4 {
        c.pod(&format!("small-{i}"), "500m").await;
    }
    c.pod("huge", "3").await;

    // The small pods land on the untainted nodes, two each (least allocated spreads them).
    let nodes = wait_for(20, "4 small pods bound", || async {
        let mut nodes = Vec::new();
        for i in 0..4 {
            nodes.push(node_name(&c.get_pod(&format!("small-{i}")).await)?);
        }
        Some(nodes)
    })
    .await;
    assert!(nodes.iter().all(|n| n == "n1" || n == "n2"), "{nodes:?}");
    assert_eq!(nodes.iter().filter(|n| *n == "n1").count(), 2, "{nodes:?}");
    wait_for(20, "a Scheduled event", || async {
        c.events_of("small-0")
            .await
            .into_iter()
            .find(|e| e["reason"] == "Scheduled")
            .map(|_| ())
    })
    .await;

    // The huge pod fits nowhere: Pending, with upstream's explanation.
    let expected = "0/3 nodes are available: 1 node(s) had untolerated taint {gpu: yes}, 2 Insufficient cpu.";
    let event = wait_for(20, "FailedScheduling", || async {
        c.events_of("huge")
            .await
            .into_iter()
            .find(|e| e["reason"] == "FailedScheduling")
    })
    .await;
    assert_eq!(event["message"], expected);
    assert_eq!(event["type"], "Warning");
    let pod = wait_for(20, "PodScheduled=False", || async {
        let pod = c.get_pod("huge").await;
        let cond = pod["status"]["conditions"]
            .as_array()?
            .iter()
            .find(|c| c["type"] == "PodScheduled")?
            .clone();
        (cond["status"] == "False").then_some(pod)
    })
    .await;
    assert_eq!(node_name(&pod), None);
    assert_eq!(pod["status"]["phase"], "Pending");
    let cond = pod["status"]["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == "PodScheduled").cloned());
    assert_eq!(
        cond.as_ref().map(|c| c["reason"].clone()),
        Some(json!("Unschedulable"))
    );
    assert_eq!(cond.map(|c| c["message"].clone()), Some(json!(expected)));

    // A big enough node appears: the pod is retried and bound there.
    c.node("big", "8", json!([])).await;
    let node = wait_for(20, "the huge pod bound after a node was added", || async {
        node_name(&c.get_pod("huge").await)
    })
    .await;
    assert_eq!(node, "big");
}

/// Scheduling throughput on the real in-process API: `KEEL_BENCH_NODES` nodes (1000) and
/// `KEEL_BENCH_PODS` pods (2000) created unscheduled, then the scheduler started; prints pods/s.
/// `cargo test --release -p keel-scheduler --test scheduling -- --ignored --nocapture`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn throughput() {
    let nodes: usize = std::env::var("KEEL_BENCH_NODES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let pods: usize = std::env::var("KEEL_BENCH_PODS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    let c = Cluster::start().await;
    for i in 0..nodes {
        c.node(&format!("node-{i:04}"), "32", json!([])).await;
    }
    for i in 0..pods {
        c.pod(&format!("p-{i:05}"), "100m").await;
    }
    // Count bindings on a watch rather than by listing: listing thousands of pods would compete
    // with the scheduler for the CPU.
    use futures::StreamExt;
    let list = c
        .client
        .list(
            rt("pods"),
            Some("default".into()),
            ListParams {
                limit: Some(1),
                ..Default::default()
            },
        )
        .await
        .expect("list");
    let version = list["metadata"]["resourceVersion"].as_str().map(str::to_string);
    let mut events = c
        .client
        .watch(
            rt("pods"),
            None,
            ListParams {
                resource_version: version,
                ..Default::default()
            },
        )
        .await
        .expect("watch");
    let started = Instant::now();
    c.run_scheduler(keel_scheduler::Options {
        record_scheduled_events: std::env::var("KEEL_BENCH_EVENTS").is_ok(),
        ..Default::default()
    });
    let mut bound = std::collections::HashSet::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(600);
    while bound.len() < pods {
        let ev = tokio::time::timeout_at(deadline, events.next())
            .await
            .expect("every pod bound in time");
        let ev = ev.expect("watch open").expect("watch event");
        if node_name(&ev.object).is_some() {
            bound.insert(ev.object["metadata"]["name"].as_str().unwrap_or("").to_string());
        }
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "scheduled {pods} pods on {nodes} nodes in {secs:.2}s: {:.0} pods/s",
        pods as f64 / secs
    );
}

/// The API's share of a binding: the same merge patches the scheduler sends, 64 at a time,
/// without the scheduler. `cargo test --release -p keel-scheduler --test scheduling -- --ignored --nocapture`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn bind_patch_throughput() {
    use futures::StreamExt;
    let pods: usize = std::env::var("KEEL_BENCH_PODS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    let c = Cluster::start().await;
    for i in 0..pods {
        c.pod(&format!("p-{i:05}"), "100m").await;
    }
    let started = Instant::now();
    let client = c.client.clone();
    futures::stream::iter(0..pods)
        .for_each_concurrent(64, |i| {
            let client = client.clone();
            async move {
                let patch = keel_api::client::Patch::Merge(json!({"spec": {"nodeName": "n1"}}));
                client
                    .patch(
                        rt("pods"),
                        Some("default".into()),
                        format!("p-{i:05}"),
                        patch,
                        None,
                        WriteOptions::default(),
                    )
                    .await
                    .expect("patch");
            }
        })
        .await;
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{pods} binding patches in {secs:.2}s: {:.0}/s",
        pods as f64 / secs
    );
}

/// With the controllers: a Deployment's replicas are spread over the nodes, and a DaemonSet's
/// pods land each on its own node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployment_replicas_spread_and_daemon_pods_stay_pinned() {
    let c = Cluster::start().await;
    for n in ["a", "b", "c"] {
        c.node(n, "4", json!([])).await;
    }
    c.run_scheduler(keel_scheduler::Options::default());
    let client = c.client.clone();
    let mut rx = c.stop.subscribe();
    tokio::spawn(async move {
        let stopped = async move {
            let _ = rx.wait_for(|s| *s).await;
        };
        keel_controllers::run_all(client, stopped)
            .await
            .expect("controllers")
    });
    let apps = |plural: &str| registry::find("apps", "v1", plural).expect("registry row");
    let template = |app: &str| {
        json!({"metadata": {"labels": {"app": app}},
               "spec": {"containers": [{"name": "c", "image": "nginx", "resources": {"requests": {"cpu": "100m"}}}]}})
    };
    c.client
        .create(
            apps("deployments"),
            Some("default".into()),
            json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "namespace": "default"},
                   "spec": {"replicas": 6, "selector": {"matchLabels": {"app": "web"}}, "template": template("web")}}),
            WriteOptions::default(),
        )
        .await
        .expect("deployment");
    c.client
        .create(
            apps("daemonsets"),
            Some("default".into()),
            json!({"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"name": "agent", "namespace": "default"},
                   "spec": {"selector": {"matchLabels": {"app": "agent"}}, "template": template("agent")}}),
            WriteOptions::default(),
        )
        .await
        .expect("daemonset");
    let placed = wait_for(30, "6 web and 3 agent pods bound", || async {
        let list = c
            .client
            .list(rt("pods"), Some("default".into()), ListParams::default())
            .await
            .ok()?;
        let mut web: HashMap<String, usize> = HashMap::new();
        let mut agent: Vec<String> = Vec::new();
        for p in list["items"].as_array()? {
            let node = node_name(p)?;
            match p["metadata"]["labels"]["app"].as_str() {
                Some("web") => *web.entry(node).or_insert(0) += 1,
                Some("agent") => agent.push(node),
                _ => {}
            }
        }
        agent.sort();
        (web.values().sum::<usize>() == 6 && agent.len() == 3).then_some((web, agent))
    })
    .await;
    let (web, agent) = placed;
    assert_eq!(agent, ["a", "b", "c"]);
    assert!(web.values().all(|n| *n == 2), "replicas spread evenly: {web:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anti_affinity_puts_one_replica_per_node() {
    let c = Cluster::start().await;
    for n in ["a", "b", "c"] {
        c.node(n, "4", json!([])).await;
    }
    c.run_scheduler(keel_scheduler::Options::default());
    for i in 0..4 {
        let pod = json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": format!("r{i}"), "namespace": "default", "labels": {"app": "ha"}},
            "spec": {"containers": [{"name": "c", "image": "busybox"}],
                     "affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
                        {"labelSelector": {"matchLabels": {"app": "ha"}}, "topologyKey": "kubernetes.io/hostname"}]}}}});
        c.client
            .create(rt("pods"), Some("default".into()), pod, WriteOptions::default())
            .await
            .expect("pod");
    }
    let expected = "0/3 nodes are available: 3 node(s) didn't match pod anti-affinity rules.";
    let event = wait_for(20, "one replica left over", || async {
        c.events_of_reason("FailedScheduling").await.into_iter().next()
    })
    .await;
    assert_eq!(event["message"], expected);
    let mut nodes = Vec::new();
    for i in 0..4 {
        if let Some(n) = node_name(&c.get_pod(&format!("r{i}")).await) {
            nodes.push(n);
        }
    }
    nodes.sort();
    assert_eq!(nodes, ["a", "b", "c"]);
}
