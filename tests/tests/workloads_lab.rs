//! The self-healing cluster of the seeds (issue 6) on real QEMU nodes, with the real kubectl:
//! one lab of three nodes (a fourth joins later), and the seed scenarios one after the other —
//! a ReplicationController behind a NodePort that keeps its replicas and scales, a Deployment
//! rolled forward and back, a DaemonSet on every node (including the one that joins), a Job, a
//! CronJob, a StatefulSet's ordered start, taints, tolerations, node selectors, node affinity
//! and pod anti-affinity, `kubectl drain` held back by a PodDisruptionBudget, and a node
//! powered off whose pods are recreated elsewhere once their (shortened) toleration runs out.

use std::collections::BTreeSet;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use keel_e2e::*;
use serde_json::Value;

/// How long pods tolerate an unreachable node here (keel-server's
/// `--default-unreachable-toleration-seconds`; 300 s by default).
const TOLERATION_SECONDS: u64 = 15;

struct T {
    lab: Lab,
    start: Instant,
}

impl T {
    fn step(&self, what: &str) {
        eprintln!("[{:>6.1}s] {what}", self.start.elapsed().as_secs_f64());
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self
            .lab
            .kubectl(args)
            .unwrap_or_else(|e| panic!("kubectl {}: {e}", args.join(" ")));
        assert!(
            out.success(),
            "kubectl {} failed:\n{}\n{}",
            args.join(" "),
            out.stderr,
            self.state()
        );
        out.stdout
    }

    fn apply(&self, manifest: &str) {
        let out = self
            .lab
            .kubectl_stdin(&["apply", "-f", "-"], manifest)
            .unwrap_or_else(|e| panic!("kubectl apply: {e}"));
        assert!(out.success(), "kubectl apply failed: {}\n{manifest}", out.stderr);
    }

    /// What the cluster looks like, for failure messages.
    fn state(&self) -> String {
        let get = |args: &[&str]| {
            self.lab
                .kubectl(args)
                .map(|o| o.stdout + &o.stderr)
                .unwrap_or_default()
        };
        format!(
            "--- nodes ---\n{}--- pods ---\n{}--- events ---\n{}",
            get(&["get", "nodes", "-o", "wide"]),
            get(&["get", "pods", "-o", "wide"]),
            get(&["get", "events", "--sort-by=.lastTimestamp"]),
        )
    }

    /// Polls `probe` until it returns Some; on timeout fails with the cluster's state and logs.
    fn wait<R>(&self, what: &str, secs: u64, mut probe: impl FnMut() -> Option<R>) -> R {
        let r = wait_for(what, Duration::from_secs(secs), || match probe() {
            Some(v) => Poll::Ready(v),
            None => Poll::Pending(String::new()),
        });
        match r {
            Ok(v) => {
                self.step(&format!("  {what}"));
                v
            }
            Err(e) => panic!("{e}\n{}\n{}", self.state(), self.lab.logs(30)),
        }
    }

    fn json(&self, args: &[&str]) -> Value {
        let mut a = args.to_vec();
        a.extend(["-o", "json"]);
        serde_json::from_str(&self.ok(&a)).unwrap_or(Value::Null)
    }

    /// Pods matching `selector` that are not being deleted.
    fn pods(&self, selector: &str) -> Vec<Pod> {
        self.json(&["get", "pods", "-l", selector])["items"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .filter(|p| p.pointer("/metadata/deletionTimestamp").is_none())
            .map(Pod::from)
            .collect()
    }

    /// Waits until `selector` has exactly `n` Ready pods (and no other live ones).
    fn ready(&self, selector: &str, n: usize, secs: u64) -> Vec<Pod> {
        self.ready_off(selector, n, "", secs)
    }

    /// [`T::ready`], with none of the pods on node `avoid`.
    fn ready_off(&self, selector: &str, n: usize, avoid: &str, secs: u64) -> Vec<Pod> {
        self.wait(&format!("{n} ready pods {selector} off {avoid:?}"), secs, || {
            let pods = self.pods(selector);
            (pods.len() == n && pods.iter().all(|p| p.ready && p.node != avoid)).then_some(pods)
        })
    }

    fn wait_complete(&self, job: &str) {
        self.ok(&[
            "wait",
            "--for=condition=complete",
            &format!("job/{job}"),
            "--timeout=150s",
        ]);
        self.step(&format!("  job/{job} complete"));
    }
}

#[derive(Clone, Debug)]
struct Pod {
    name: String,
    node: String,
    ready: bool,
    image: String,
    created: String,
    ready_at: String,
}

impl From<&Value> for Pod {
    fn from(p: &Value) -> Pod {
        let s = |ptr: &str| p.pointer(ptr).and_then(Value::as_str).unwrap_or("").to_string();
        let ready_cond = p["status"]["conditions"]
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["type"] == "Ready").cloned())
            .unwrap_or(Value::Null);
        Pod {
            name: s("/metadata/name"),
            node: s("/spec/nodeName"),
            ready: ready_cond["status"] == "True",
            image: s("/spec/containers/0/image"),
            created: s("/metadata/creationTimestamp"),
            ready_at: ready_cond["lastTransitionTime"]
                .as_str()
                .unwrap_or("")
                .to_string(),
        }
    }
}

/// A pod spec's body that sleeps, indented by `indent` spaces (6 in a template, 2 in a Pod).
fn sleeper(name: &str, indent: usize) -> String {
    let body = format!(
        "terminationGracePeriodSeconds: 1
containers:
- name: {name}
  image: busybox:1.35
  command: [\"sh\", \"-c\", \"sleep 3600\"]
"
    );
    body.lines().map(|l| format!("{:indent$}{l}\n", "")).collect()
}

fn workloads() -> String {
    let sleep = sleeper("main", 6);
    format!(
        "apiVersion: v1
kind: ReplicationController
metadata: {{name: rc-web}}
spec:
  replicas: 3
  selector: {{app: rc-web}}
  template:
    metadata: {{labels: {{app: rc-web}}}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: echo
        image: keel/echo:latest
        ports: [{{containerPort: 8080}}]
---
apiVersion: v1
kind: Service
metadata: {{name: rc-web}}
spec:
  type: NodePort
  selector: {{app: rc-web}}
  ports: [{{port: 80, targetPort: 8080, nodePort: 30001}}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: dep}}
spec:
  replicas: 2
  selector: {{matchLabels: {{app: dep}}}}
  template:
    metadata: {{labels: {{app: dep}}}}
    spec:
{sleep}---
apiVersion: apps/v1
kind: DaemonSet
metadata: {{name: ds}}
spec:
  selector: {{matchLabels: {{app: ds}}}}
  template:
    metadata: {{labels: {{app: ds}}}}
    spec:
{sleep}---
apiVersion: batch/v1
kind: Job
metadata: {{name: job}}
spec:
  completions: 3
  parallelism: 2
  template:
    spec:
      restartPolicy: Never
      containers:
      - name: main
        image: busybox:1.35
        command: [\"sh\", \"-c\", \"echo done\"]
---
apiVersion: batch/v1
kind: CronJob
metadata: {{name: cron}}
spec:
  schedule: \"*/1 * * * *\"
  jobTemplate:
    spec:
      template:
        spec:
          restartPolicy: Never
          containers:
          - name: main
            image: busybox:1.35
            command: [\"sh\", \"-c\", \"date\"]
---
apiVersion: v1
kind: Service
metadata: {{name: web}}
spec:
  clusterIP: None
  selector: {{app: web}}
  ports: [{{port: 80}}]
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {{name: web}}
spec:
  serviceName: web
  replicas: 3
  selector: {{matchLabels: {{app: web}}}}
  template:
    metadata: {{labels: {{app: web}}}}
    spec:
{sleep}"
    )
}

/// The placement pods: the seeds' taint, selector and affinity examples.
fn placement() -> String {
    let sleep = sleeper("main", 2);
    let anti = |n: u8| {
        format!(
            "---
apiVersion: v1
kind: Pod
metadata: {{name: anti-{n}, labels: {{spread: anti, place: x}}}}
spec:
  affinity:
    podAntiAffinity:
      requiredDuringSchedulingIgnoredDuringExecution:
      - labelSelector: {{matchLabels: {{spread: anti}}}}
        topologyKey: kubernetes.io/hostname
{sleep}"
        )
    };
    format!(
        "apiVersion: v1
kind: Pod
metadata: {{name: tolerant, labels: {{place: x}}}}
spec:
  nodeSelector: {{kubernetes.io/hostname: keel-1}}
  tolerations:
  - {{key: dedicated, operator: Equal, value: special, effect: NoSchedule}}
{sleep}---
apiVersion: v1
kind: Pod
metadata: {{name: intolerant, labels: {{place: x}}}}
spec:
  nodeSelector: {{kubernetes.io/hostname: keel-1}}
{sleep}---
apiVersion: v1
kind: Pod
metadata: {{name: ssd, labels: {{place: x}}}}
spec:
  nodeSelector: {{disktype: ssd}}
{sleep}---
apiVersion: v1
kind: Pod
metadata: {{name: affine, labels: {{place: x}}}}
spec:
  affinity:
    nodeAffinity:
      requiredDuringSchedulingIgnoredDuringExecution:
        nodeSelectorTerms:
        - matchExpressions:
          - {{key: kubernetes.io/hostname, operator: In, values: [keel-3]}}
{sleep}{}{}{}",
        anti(1),
        anti(2),
        anti(3)
    )
}

fn node_of(t: &T, pod: &str) -> String {
    t.ok(&["get", "pod", pod, "-o", "jsonpath={.spec.nodeName}"])
}

/// The message of the latest `FailedScheduling` event of `pod`.
fn failed_scheduling(t: &T, pod: &str) -> Option<String> {
    let selector = format!("involvedObject.name={pod},reason=FailedScheduling");
    let events = t.json(&["get", "events", "--field-selector", &selector]);
    events["items"]
        .as_array()?
        .last()
        .and_then(|e| e["message"].as_str())
        .map(str::to_string)
}

fn revisions(history: &str) -> Vec<String> {
    history
        .lines()
        .skip(2)
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect()
}

#[test]
fn seed_workloads_heal_place_drain_and_survive_a_lost_node() {
    let mut options = LabOptions::with_nodes(4);
    options.held_nodes = 1;
    options.node_grace_period = Some("10s".into());
    let toleration = format!("--default-unreachable-toleration-seconds={TOLERATION_SECONDS}");
    options.server_args = vec![toleration.clone(), toleration.replace("unreachable", "not-ready")];
    let lab = Lab::start(options).unwrap_or_else(|e| panic!("the lab did not start: {e}"));
    let mut t = T {
        lab,
        start: Instant::now(),
    };
    for n in ["keel-1", "keel-2", "keel-3"] {
        if let Err(e) = t.lab.wait_node_ready(n, true, NODE_READY_TIMEOUT) {
            panic!("{n} not Ready: {e}\n{}", t.lab.logs(30));
        }
    }
    t.step("three nodes Ready");

    t.apply(&workloads());

    // A ReplicationController keeps three pods behind its NodePort, and scales.
    let rc = t.ready("app=rc-web", 3, 180);
    let addr = t.lab.nodeport("keel-1", 30001).expect("NodePort 30001 forwarded");
    t.wait("the NodePort to answer from an rc-web pod", 60, || {
        http_get(addr, "/")
            .ok()
            .filter(|r| r.status == 200 && r.body.contains("pod=rc-web-"))
    });
    t.ok(&["delete", "pod", &rc[0].name, "--wait=false"]);
    let healed = t.ready("app=rc-web", 3, 120);
    assert!(healed.iter().all(|p| p.name != rc[0].name), "{healed:?}");
    t.ok(&["scale", "rc", "rc-web", "--replicas=2"]);
    t.ready("app=rc-web", 2, 60);
    t.ok(&["scale", "rc", "rc-web", "--replicas=3"]);
    t.ready("app=rc-web", 3, 120);

    // A Deployment rolled to a new image, watched, shown in history, rolled back.
    t.ready("app=dep", 2, 120);
    t.ok(&["rollout", "status", "deployment/dep", "--timeout=120s"]);
    t.ok(&["set", "image", "deployment/dep", "main=keel/echo:latest"]);
    t.ok(&["rollout", "status", "deployment/dep", "--timeout=150s"]);
    let pods = t.ready("app=dep", 2, 60);
    assert!(pods.iter().all(|p| p.image == "keel/echo:latest"), "{pods:?}");
    let history = t.ok(&["rollout", "history", "deployment/dep"]);
    assert_eq!(revisions(&history), ["1", "2"], "{history}");
    let undo = t.ok(&["rollout", "undo", "deployment/dep"]);
    assert_eq!(undo.trim(), "deployment.apps/dep rolled back");
    t.ok(&["rollout", "status", "deployment/dep", "--timeout=150s"]);
    let pods = t.ready("app=dep", 2, 60);
    assert!(pods.iter().all(|p| p.image == "busybox:1.35"), "{pods:?}");
    let history = t.ok(&["rollout", "history", "deployment/dep"]);
    assert_eq!(revisions(&history), ["2", "3"], "{history}");
    t.step("deployment rolled forward and back");

    // A DaemonSet pod on every node.
    let ds = t.ready("app=ds", 3, 120);
    let nodes: BTreeSet<&str> = ds.iter().map(|p| p.node.as_str()).collect();
    assert_eq!(nodes, BTreeSet::from(["keel-1", "keel-2", "keel-3"]), "{ds:?}");

    // A Job runs its completions; a CronJob makes a Job on demand.
    t.wait_complete("job");
    assert_eq!(
        t.ok(&["get", "job", "job", "-o", "jsonpath={.status.succeeded}"]),
        "3"
    );
    t.ok(&["create", "job", "manual", "--from=cronjob/cron"]);
    t.wait_complete("manual");

    // A StatefulSet starts web-0, web-1, web-2, each after the previous one is Ready.
    t.ok(&["rollout", "status", "statefulset/web", "--timeout=150s"]);
    let mut web = t.ready("app=web", 3, 60);
    web.sort_by(|a, b| a.name.cmp(&b.name));
    let names: Vec<&str> = web.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["web-0", "web-1", "web-2"]);
    for pair in web.windows(2) {
        assert!(
            pair[1].created >= pair[0].ready_at,
            "{} was created before {} was Ready: {web:?}",
            pair[1].name,
            pair[0].name
        );
    }
    t.step("statefulset started in order");

    // Taints, tolerations, node selectors, node affinity, pod anti-affinity.
    t.ok(&["taint", "nodes", "keel-1", "dedicated=special:NoSchedule"]);
    t.ok(&["label", "nodes", "keel-2", "disktype=ssd"]);
    t.apply(&placement());
    t.wait("placement pods bound", 60, || {
        let bound = t.json(&["get", "pods", "-l", "place=x"])["items"]
            .as_array()
            .map(|ps| ps.iter().filter(|p| p["spec"]["nodeName"].is_string()).count());
        (bound == Some(5)).then_some(())
    });
    assert_eq!(node_of(&t, "tolerant"), "keel-1");
    assert_eq!(node_of(&t, "ssd"), "keel-2");
    assert_eq!(node_of(&t, "affine"), "keel-3");
    assert_eq!(node_of(&t, "intolerant"), "");
    let why = t.wait("intolerant's FailedScheduling", 30, || {
        failed_scheduling(&t, "intolerant")
    });
    assert!(why.contains("untolerated taint {dedicated: special}"), "{why}");
    let anti: Vec<String> = (1..=3).map(|n| node_of(&t, &format!("anti-{n}"))).collect();
    let placed: BTreeSet<&str> = anti
        .iter()
        .map(String::as_str)
        .filter(|n| !n.is_empty())
        .collect();
    assert_eq!(placed, BTreeSet::from(["keel-2", "keel-3"]), "{anti:?}");
    let pending = (1..=3).find(|n| anti[n - 1].is_empty()).unwrap_or(0);
    let why = t.wait("the third anti-affine pod's FailedScheduling", 30, || {
        failed_scheduling(&t, &format!("anti-{pending}"))
    });
    assert!(why.contains("didn't match pod anti-affinity rules"), "{why}");
    t.ok(&["delete", "pods", "-l", "place=x", "--grace-period=0", "--force"]);
    t.ok(&["taint", "nodes", "keel-1", "dedicated-"]);
    t.step("placement as the seeds say");

    // kubectl drain waits for the PodDisruptionBudget, and finishes once a spare pod is up.
    t.apply(
        "apiVersion: policy/v1
kind: PodDisruptionBudget
metadata: {name: rc-web}
spec:
  minAvailable: 3
  selector:
    matchLabels: {app: rc-web}
",
    );
    t.wait("the budget to be computed", 30, || {
        let st = t.json(&["get", "pdb", "rc-web"])["status"].clone();
        (st["currentHealthy"] == 3 && st["disruptionsAllowed"] == 0).then_some(())
    });
    let rc = t.ready("app=rc-web", 3, 30);
    let drained = rc[0].node.clone();
    let on_node: Vec<String> = rc
        .iter()
        .filter(|p| p.node == drained)
        .map(|p| p.name.clone())
        .collect();
    let logs = tempfile::tempdir().expect("temp dir");
    let (out_path, err_path) = (logs.path().join("out"), logs.path().join("err"));
    let k = t.lab.kubectl_client();
    let mut drain = Command::new(&Binaries::discover().kubectl)
        .arg("--kubeconfig")
        .arg(k.kubeconfig())
        .args([
            "drain",
            &drained,
            "--ignore-daemonsets",
            "--delete-emptydir-data",
            "--timeout=150s",
        ])
        .env("HOME", k.home())
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path).expect("out"))
        .stderr(std::fs::File::create(&err_path).expect("err"))
        .spawn()
        .expect("kubectl drain");
    let read = |p: &std::path::Path| std::fs::read_to_string(p).unwrap_or_default();
    t.wait("drain to be held back by the budget", 60, || {
        read(&err_path)
            .contains("Cannot evict pod as it would violate the pod's disruption budget.")
            .then_some(())
    });
    let still: Vec<Pod> = t.pods("app=rc-web");
    for p in &on_node {
        assert!(
            still.iter().any(|q| &q.name == p),
            "{p} evicted against the budget"
        );
    }
    assert!(
        drain.try_wait().ok().flatten().is_none(),
        "drain waits for the budget"
    );
    t.ok(&["scale", "rc", "rc-web", "--replicas=4"]);
    let status = t.wait("drain to finish", 150, || drain.try_wait().ok().flatten());
    let out = read(&out_path);
    assert!(status.success(), "drain failed:\n{out}\n{}", read(&err_path));
    assert!(out.contains(&format!("node/{drained} drained")), "{out}");
    for p in &on_node {
        assert!(out.contains(&format!("pod/{p} evicted")), "{out}");
    }
    let rc = t.ready("app=rc-web", 4, 120);
    assert!(rc.iter().all(|p| p.node != drained), "{rc:?}");
    t.ok(&["uncordon", &drained]);
    t.ok(&["delete", "pdb", "rc-web"]);
    t.step("drain honoured the budget");

    // The node with the most replicated pods loses power: NotReady, tainted unreachable, and
    // after the toleration its pods are replaced on the other nodes.
    let replicated: Vec<Pod> = ["app=rc-web", "app=dep"].iter().flat_map(|s| t.pods(s)).collect();
    let victim = ["keel-1", "keel-2", "keel-3"]
        .into_iter()
        .max_by_key(|n| replicated.iter().filter(|p| p.node == *n).count())
        .unwrap_or("keel-3")
        .to_string();
    let lost: Vec<Pod> = replicated.into_iter().filter(|p| p.node == victim).collect();
    t.lab.kill_node(&victim).expect("kill the node");
    t.step(&format!(
        "{victim} powered off with {} replicated pods",
        lost.len()
    ));
    assert!(!lost.is_empty());
    if let Err(e) = t.lab.wait_node_ready(&victim, false, Duration::from_secs(60)) {
        panic!("{victim} stayed Ready: {e}\n{}", t.state());
    }
    let taints = t.ok(&["get", "node", &victim, "-o", "jsonpath={.spec.taints[*].key}"]);
    assert!(taints.contains("node.kubernetes.io/unreachable"), "{taints}");
    let gone = Instant::now();
    t.ready_off("app=rc-web", 4, &victim, 90);
    t.ready_off("app=dep", 2, &victim, 60);
    assert!(
        gone.elapsed() >= Duration::from_secs(TOLERATION_SECONDS - 5),
        "pods left before their toleration ran out ({:?})",
        gone.elapsed()
    );
    let events = t.ok(&["get", "events", "--field-selector", "reason=TaintManagerEviction"]);
    for p in &lost {
        assert!(
            events.contains(&p.name),
            "no TaintManagerEviction for {}:\n{events}",
            p.name
        );
    }
    t.step("pods of the lost node recreated elsewhere");

    // Deleting the Node removes its pods.
    t.ok(&["delete", "node", &victim]);
    let on_victim = format!("spec.nodeName={victim}");
    t.wait("the pods of the deleted node to be removed", 60, || {
        let left = t.json(&["get", "pods", "--field-selector", &on_victim]);
        left["items"].as_array().is_some_and(Vec::is_empty).then_some(())
    });

    // A node that joins later gets the DaemonSet's pod.
    t.lab.start_node("keel-4").expect("boot keel-4");
    if let Err(e) = t.lab.wait_node_ready("keel-4", true, NODE_READY_TIMEOUT) {
        panic!("keel-4 not Ready: {e}\n{}", t.lab.logs(30));
    }
    let ds = t.ready("app=ds", 3, 120);
    let nodes: BTreeSet<&str> = ds.iter().map(|p| p.node.as_str()).collect();
    let mut expected = BTreeSet::from(["keel-1", "keel-2", "keel-3", "keel-4"]);
    expected.remove(victim.as_str());
    assert_eq!(nodes, expected, "{ds:?}");

    // By now the CronJob has fired on its schedule at least once.
    let job = t.wait("a scheduled run of the CronJob", 75, || {
        let jobs = t.json(&["get", "jobs"]);
        jobs["items"].as_array().and_then(|js| {
            js.iter()
                .find(|j| {
                    j.pointer("/metadata/ownerReferences/0/name") == Some(&Value::from("cron"))
                        && j.pointer("/metadata/name") != Some(&Value::from("manual"))
                })
                .and_then(|j| {
                    j.pointer("/metadata/name")
                        .and_then(Value::as_str)
                        .map(str::to_string)
                })
        })
    });
    t.wait_complete(&job);
    let last = t.ok(&[
        "get",
        "cronjob",
        "cron",
        "-o",
        "jsonpath={.status.lastScheduleTime}",
    ]);
    assert!(!last.is_empty(), "lastScheduleTime is set");
    t.step("done");
}
