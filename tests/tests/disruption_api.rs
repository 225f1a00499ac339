//! PodDisruptionBudgets, the `pods/eviction` subresource and `kubectl drain`, with the real
//! kubectl against a private `keel-server` running its scheduler and controllers. No QEMU: three
//! Nodes are registered by hand and a small stand-in kubelet (kube-rs, polling) marks bound
//! pods Running and Ready and finishes graceful deletions, so the test controls readiness.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::Server;
use k8s_openapi::api::core::v1::{Node, Pod};
use keel_lab::Kubectl;
use kube::api::{Api, DeleteParams, EvictParams, ListParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use serde_json::{json, Value};

async fn client(s: &Server) -> Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let kc = Kubeconfig::read_from(s.kubeconfig()).expect("read admin.kubeconfig");
    let mut config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .expect("kube config");
    // kube-rs retries 429s by itself with backoff; here a 429 is the answer under test.
    config.default_retry = false;
    Client::try_from(config).expect("kube client")
}

/// Registers a Ready node with room for a few pods.
async fn ready_node(c: &Client, name: &str) {
    let nodes: Api<Node> = Api::all(c.clone());
    let node: Node = serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}}
    }))
    .expect("node");
    nodes
        .create(&PostParams::default(), &node)
        .await
        .expect("create node");
    let status = json!({"status": {
        "capacity": {"cpu": "4", "memory": "8Gi", "pods": "110"},
        "allocatable": {"cpu": "4", "memory": "8Gi", "pods": "110"},
        "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
            "message": "kubelet is posting ready status"}],
    }});
    nodes
        .patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .expect("node status");
}

/// The stand-in kubelet: bound pods become Running and Ready; pods being deleted go at once.
/// While `hold` is set it does nothing, so the test can look at a cluster in mid-disruption.
async fn kubelet(c: Client, stop: Arc<AtomicBool>, hold: Arc<AtomicBool>) {
    let pods: Api<Pod> = Api::all(c);
    let mut ip = 10;
    while !stop.load(Ordering::Relaxed) {
        if hold.load(Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        }
        if let Ok(list) = pods.list(&ListParams::default()).await {
            for p in list.items {
                let name = p.metadata.name.clone().unwrap_or_default();
                let ns = p.metadata.namespace.clone().unwrap_or_default();
                let api: Api<Pod> = Api::namespaced(pods.clone().into_client(), &ns);
                if p.metadata.deletion_timestamp.is_some() {
                    let _ = api.delete(&name, &DeleteParams::default().grace_period(0)).await;
                    continue;
                }
                let bound = p.spec.as_ref().and_then(|s| s.node_name.clone()).is_some();
                let ready = p
                    .status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
                if bound && !ready {
                    ip += 1;
                    let now = keel_now();
                    let status = json!({"status": {"phase": "Running", "podIP": format!("10.244.9.{ip}"),
                        "conditions": [
                            {"type": "Ready", "status": "True", "lastTransitionTime": now},
                            {"type": "ContainersReady", "status": "True", "lastTransitionTime": now}]}});
                    let _ = api
                        .patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
                        .await;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn keel_now() -> String {
    let out = Command::new("date")
        .args(["-u", "+%Y-%m-%dT%H:%M:%SZ"])
        .output()
        .expect("date");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Polls `probe` until it returns Some, for up to `secs` seconds.
async fn wait_for<T>(secs: u64, what: &str, mut probe: impl AsyncFnMut() -> Option<T>) -> T {
    let start = Instant::now();
    let deadline = start + Duration::from_secs(secs);
    loop {
        if let Some(v) = probe().await {
            eprintln!("{what}: {:?}", start.elapsed());
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {secs}s waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The server and one kubectl (one HOME, so discovery is cached across calls).
struct Api2 {
    s: Server,
    k: Kubectl,
}

fn kubectl(s: &Api2, args: &[&str]) -> (bool, String, String) {
    let t = Instant::now();
    let out = s.k.run(args).expect("kubectl runs");
    if t.elapsed() > Duration::from_secs(2) {
        eprintln!("slow kubectl {args:?}: {:?}", t.elapsed());
    }
    (out.success(), out.stdout, out.stderr)
}

fn kubectl_ok(s: &Api2, args: &[&str]) -> String {
    let (ok, out, err) = kubectl(s, args);
    assert!(ok, "kubectl {args:?} failed:\n{out}\n{err}\n{}", s.s.log_tail());
    out
}

fn pdb_status(s: &Api2) -> Value {
    let out = kubectl_ok(s, &["get", "pdb", "web", "-o", "json"]);
    let v: Value = serde_json::from_str(&out).expect("pdb json");
    v["status"].clone()
}

/// The names of the `app=web` pods that are not being deleted, with their nodes.
fn web_pods(s: &Api2) -> Vec<(String, String, bool)> {
    let out = kubectl_ok(s, &["get", "pods", "-l", "app=web", "-o", "json"]);
    let v: Value = serde_json::from_str(&out).expect("pods json");
    v["items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .filter(|p| p.pointer("/metadata/deletionTimestamp").is_none())
        .map(|p| {
            let ready = p["status"]["conditions"]
                .as_array()
                .is_some_and(|cs| cs.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"));
            (
                p["metadata"]["name"].as_str().unwrap_or("").to_string(),
                p["spec"]["nodeName"].as_str().unwrap_or("").to_string(),
                ready,
            )
        })
        .collect()
}

const DEPLOYMENT: &str = "apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  replicas: 3
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
      - name: web
        image: keel/echo:latest
";

const PDB_MIN3: &str = "apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: web
spec:
  minAvailable: 3
  selector:
    matchLabels: {app: web}
";

fn eviction_body(pod: &str, dry_run: bool) -> String {
    let mut e = json!({"apiVersion": "policy/v1", "kind": "Eviction",
        "metadata": {"name": pod, "namespace": "default"}});
    if dry_run {
        e["deleteOptions"] = json!({"dryRun": ["All"]});
    }
    e.to_string()
}

fn evict_raw(s: &Api2, pod: &str, dry_run: bool) -> (bool, String, String) {
    let dir = tempfile::tempdir().expect("tmp");
    let file = dir.path().join("eviction.json");
    std::fs::write(&file, eviction_body(pod, dry_run)).expect("write eviction");
    let path = format!("/api/v1/namespaces/default/pods/{pod}/eviction");
    kubectl(s, &["create", "--raw", &path, "-f", &file.to_string_lossy()])
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn budgets_gate_evictions_and_drain() {
    let server = Server::start_full(&["--node-grace-period", "1h"]);
    let c = client(&server).await;
    let s = Api2 {
        k: server.kubectl(),
        s: server,
    };
    for n in ["n1", "n2", "n3"] {
        ready_node(&c, n).await;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let hold = Arc::new(AtomicBool::new(false));
    let kubelet_task = tokio::spawn(kubelet(c.clone(), stop.clone(), hold.clone()));

    s.s.apply(&s.k, DEPLOYMENT);
    s.s.apply(&s.k, PDB_MIN3);
    wait_for(60, "3 ready web pods", async || {
        let pods = web_pods(&s);
        (pods.len() == 3 && pods.iter().all(|p| p.2)).then_some(())
    })
    .await;

    // minAvailable 3 of 3: healthy, but nothing may be disrupted.
    let status = wait_for(30, "the budget's status", async || {
        let st = pdb_status(&s);
        (st["currentHealthy"] == 3).then_some(st)
    })
    .await;
    assert_eq!(status["desiredHealthy"], 3, "{status}");
    assert_eq!(status["expectedPods"], 3, "{status}");
    assert_eq!(status["disruptionsAllowed"], 0, "{status}");
    assert_eq!(status["observedGeneration"], 1, "{status}");
    assert_eq!(status["conditions"][0]["type"], "DisruptionAllowed", "{status}");
    assert_eq!(status["conditions"][0]["status"], "False", "{status}");
    assert_eq!(status["conditions"][0]["reason"], "InsufficientPods", "{status}");
    let table = kubectl_ok(&s, &["get", "pdb", "web"]);
    let row: Vec<&str> = table.lines().nth(1).unwrap_or("").split_whitespace().collect();
    assert_eq!(row.get(..4), Some(&["web", "3", "N/A", "0"][..]), "{table}");

    // An eviction now is refused with upstream's 429 and its DisruptionBudget cause.
    let pods = web_pods(&s);
    let victim = pods[0].0.clone();
    let (ok, _, err) = evict_raw(&s, &victim, false);
    assert!(!ok);
    assert!(
        err.contains("Error from server (TooManyRequests): Cannot evict pod as it would violate the pod's disruption budget."),
        "{err}"
    );
    let api: Api<Pod> = Api::default_namespaced(c.clone());
    match api.evict(&victim, &EvictParams::default()).await {
        Err(kube::Error::Api(st)) => {
            assert_eq!(st.code, 429);
            assert_eq!(st.reason, "TooManyRequests");
            let causes = st.details.map(|d| d.causes).unwrap_or_default();
            assert_eq!(causes.len(), 1, "{causes:?}");
            assert_eq!(causes[0].reason, "DisruptionBudget");
            assert_eq!(
                causes[0].message,
                "The disruption budget web needs 3 healthy pods and has 3 currently"
            );
        }
        other => panic!("eviction should be refused: {other:?}"),
    }
    assert!(
        web_pods(&s).iter().any(|p| p.0 == victim),
        "the refused pod is still there"
    );

    // maxUnavailable 1 against the Deployment's scale of 3: one disruption allowed.
    kubectl_ok(
        &s,
        &[
            "patch",
            "pdb",
            "web",
            "--type=merge",
            "-p",
            r#"{"spec":{"minAvailable":null,"maxUnavailable":1}}"#,
        ],
    );
    let status = wait_for(30, "the budget at generation 2", async || {
        let st = pdb_status(&s);
        (st["observedGeneration"] == 2).then_some(st)
    })
    .await;
    assert_eq!(status["expectedPods"], 3, "{status}");
    assert_eq!(status["desiredHealthy"], 2, "{status}");
    assert_eq!(status["disruptionsAllowed"], 1, "{status}");
    assert_eq!(status["conditions"][0]["reason"], "SufficientPods", "{status}");

    // A dry run charges nothing and deletes nothing.
    let (ok, _, err) = evict_raw(&s, &victim, true);
    assert!(ok, "{err}");
    assert!(web_pods(&s).iter().any(|p| p.0 == victim));
    assert_eq!(pdb_status(&s)["disruptionsAllowed"], 1);

    // A real one is charged and recorded, and the pod goes; the ReplicaSet replaces it.
    // The kubelet holds still, so neither the deletion nor a replacement can restore the
    // budget before the second eviction.
    hold.store(true, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(300)).await;
    api.evict(&victim, &EvictParams::default())
        .await
        .expect("an allowed eviction");
    match api.evict(&pods[1].0, &EvictParams::default()).await {
        Err(kube::Error::Api(st)) => assert_eq!(st.code, 429, "{st:?}"),
        other => panic!("a second eviction within the same budget must wait: {other:?}"),
    }
    // The evicted pod is terminating and no longer counts; nothing more may go.
    wait_for(30, "the budget to see the eviction", async || {
        let st = pdb_status(&s);
        (st["currentHealthy"] == 2 && st["disruptionsAllowed"] == 0).then_some(())
    })
    .await;
    hold.store(false, Ordering::Relaxed);
    wait_for(30, "the evicted pod to be replaced", async || {
        let now = web_pods(&s);
        (now.len() == 3 && now.iter().all(|p| p.2) && !now.iter().any(|p| p.0 == victim)).then_some(())
    })
    .await;
    wait_for(30, "the budget to allow a disruption again", async || {
        let st = pdb_status(&s);
        (st["disruptionsAllowed"] == 1 && st["currentHealthy"] == 3).then_some(())
    })
    .await;

    // Back to minAvailable 3: drain blocks on the budget…
    kubectl_ok(
        &s,
        &[
            "patch",
            "pdb",
            "web",
            "--type=merge",
            "-p",
            r#"{"spec":{"minAvailable":3,"maxUnavailable":null}}"#,
        ],
    );
    wait_for(30, "the budget at generation 3", async || {
        let st = pdb_status(&s);
        (st["observedGeneration"] == 3 && st["disruptionsAllowed"] == 0).then_some(())
    })
    .await;
    let node = web_pods(&s)[0].1.clone();
    let on_node: Vec<String> = web_pods(&s)
        .into_iter()
        .filter(|p| p.1 == node)
        .map(|p| p.0)
        .collect();
    let logs = tempfile::tempdir().expect("tmp");
    let (out_path, err_path) = (logs.path().join("out"), logs.path().join("err"));
    let k = &s.k;
    let mut drain = Command::new(std::env::var("KUBECTL").unwrap_or_else(|_| "kubectl".into()))
        .arg("--kubeconfig")
        .arg(k.kubeconfig())
        .args([
            "drain",
            &node,
            "--ignore-daemonsets",
            "--delete-emptydir-data",
            "--timeout=120s",
        ])
        .env("HOME", k.home())
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path).expect("out"))
        .stderr(std::fs::File::create(&err_path).expect("err"))
        .spawn()
        .expect("kubectl drain");
    wait_for(30, "drain to be refused by the budget", async || {
        read(&err_path)
            .contains("Cannot evict pod as it would violate the pod's disruption budget.")
            .then_some(())
    })
    .await;
    assert!(
        read(&err_path).contains("(will retry after 5s)"),
        "{}",
        read(&err_path)
    );
    assert!(drain.try_wait().expect("drain status").is_none(), "drain waits");
    let now = web_pods(&s);
    for p in &on_node {
        assert!(
            now.iter().any(|q| &q.0 == p),
            "{p} was evicted against the budget"
        );
    }
    let unschedulable = kubectl_ok(
        &s,
        &["get", "node", &node, "-o", "jsonpath={.spec.unschedulable}"],
    );
    assert_eq!(unschedulable, "true", "drain cordons first");

    // …and completes once there is a spare ready pod elsewhere to keep three healthy.
    kubectl_ok(&s, &["scale", "deployment", "web", "--replicas=4"]);
    let deadline = Instant::now() + Duration::from_secs(90);
    let status = loop {
        if let Some(st) = drain.try_wait().expect("drain status") {
            break st;
        }
        assert!(
            Instant::now() < deadline,
            "drain did not finish:\n{}\n{}\n{}",
            read(&out_path),
            read(&err_path),
            s.s.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let out = read(&out_path);
    assert!(status.success(), "drain failed:\n{out}\n{}", read(&err_path));
    assert!(out.contains(&format!("node/{node} cordoned")), "{out}");
    for p in &on_node {
        assert!(out.contains(&format!("pod/{p} evicted")), "{out}");
    }
    assert!(out.contains(&format!("node/{node} drained")), "{out}");
    let now = web_pods(&s);
    assert_eq!(now.len(), 4, "{now:?}");
    assert!(
        now.iter().all(|p| p.1 != node),
        "no web pod left on {node}: {now:?}"
    );
    wait_for(30, "four healthy pods under the budget", async || {
        let st = pdb_status(&s);
        (st["currentHealthy"] == 4 && st["disruptionsAllowed"] == 1).then_some(())
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    let _ = kubelet_task.await;
}
