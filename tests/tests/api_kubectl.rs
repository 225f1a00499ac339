//! The Kubernetes API as `kubectl` users see it, with no nodes: each test starts its own
//! `keel-server` on a fresh data directory and drives the real kubectl (fresh HOME) against it,
//! asserting the output a user of a real cluster would see.

mod common;

use common::Server;
use serde_json::Value;

fn json(s: &str) -> Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not JSON ({e}): {s}"))
}

const DEPLOYMENT: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  labels: {app: web}
spec:
  replicas: 2
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
      - name: nginx
        image: nginx:1.25
        ports:
        - containerPort: 80
"#;

#[test]
fn system_namespaces_and_kubernetes_service_exist_from_the_start() {
    let s = Server::start();
    let k = s.kubectl();
    let out = s.ok(&k, &["get", "namespaces"]);
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines[0].starts_with("NAME") && lines[0].contains("STATUS") && lines[0].contains("AGE"),
        "{out}"
    );
    for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
        assert!(
            lines.iter().any(|l| l.starts_with(ns) && l.contains("Active")),
            "{ns} missing in\n{out}"
        );
    }
    let svc = s.ok(&k, &["get", "svc", "kubernetes", "-o", "wide"]);
    assert!(
        svc.contains("ClusterIP") && svc.contains("10.96.0.1") && svc.contains("443/TCP"),
        "{svc}"
    );
    assert!(
        svc.lines().next().unwrap_or("").contains("SELECTOR"),
        "wide column missing: {svc}"
    );
    let info = s.ok(&k, &["cluster-info"]);
    assert!(
        info.contains("Kubernetes control plane is running at https://127.0.0.1:"),
        "{info}"
    );
    let version = s.ok(&k, &["version", "-o", "json"]);
    assert_eq!(json(&version)["serverVersion"]["minor"], "32");
}

#[test]
fn apply_twice_scale_label_and_select() {
    let s = Server::start();
    let k = s.kubectl();
    assert!(s.apply(&k, DEPLOYMENT).contains("deployment.apps/web created"));
    assert!(s.apply(&k, DEPLOYMENT).contains("deployment.apps/web unchanged"));
    let changed = DEPLOYMENT
        .replace("replicas: 2", "replicas: 3")
        .replace("nginx:1.25", "nginx:1.26");
    assert!(s.apply(&k, &changed).contains("deployment.apps/web configured"));
    let d = json(&s.ok(&k, &["get", "deploy", "web", "-o", "json"]));
    assert_eq!(d["spec"]["replicas"], 3);
    assert_eq!(
        d["spec"]["template"]["spec"]["containers"][0]["image"],
        "nginx:1.26"
    );
    assert_eq!(d["metadata"]["generation"], 2);
    assert!(d["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied-configuration"].is_string());

    // Both forms of scale: the merge patch on /scale, and the PUT with a precondition.
    assert!(s
        .ok(&k, &["scale", "deploy", "web", "--replicas=5"])
        .contains("scaled"));
    assert!(s
        .ok(
            &k,
            &["scale", "deploy", "web", "--current-replicas=5", "--replicas=4"]
        )
        .contains("scaled"));
    let wrong = k
        .run(&["scale", "deploy", "web", "--current-replicas=9", "--replicas=1"])
        .unwrap();
    assert!(!wrong.success(), "a wrong --current-replicas must fail");
    assert_eq!(
        s.ok(&k, &["get", "deploy", "web", "-o", "jsonpath={.spec.replicas}"]),
        "4"
    );

    s.ok(&k, &["label", "deploy", "web", "tier=frontend"]);
    s.ok(&k, &["annotate", "deploy", "web", "note=hello"]);
    let wide = s.ok(&k, &["get", "deploy", "-o", "wide", "--show-labels"]);
    assert!(
        wide.contains("CONTAINERS") && wide.contains("nginx:1.26") && wide.contains("tier=frontend"),
        "{wide}"
    );
    assert!(s
        .ok(&k, &["get", "deploy", "-l", "tier=frontend", "-o", "name"])
        .contains("deployment.apps/web"));
    let none = k.run(&["get", "deploy", "-l", "tier!=frontend"]).unwrap();
    assert!(
        none.stderr.contains("No resources found in default namespace."),
        "{none:?}"
    );
    let by_field = s.ok(
        &k,
        &[
            "get",
            "deploy",
            "--field-selector",
            "metadata.name=web",
            "-o",
            "name",
        ],
    );
    assert_eq!(by_field.trim(), "deployment.apps/web");
    let bad = k
        .run(&["get", "pods", "--field-selector", "spec.bogus=1"])
        .unwrap();
    assert!(
        bad.stderr.contains("field label not supported: spec.bogus"),
        "{bad:?}"
    );
    s.ok(&k, &["label", "deploy", "web", "tier-"]);
    assert!(!s
        .ok(&k, &["get", "deploy", "web", "--show-labels"])
        .contains("tier="));
}

#[test]
fn errors_read_as_upstream() {
    let s = Server::start();
    let k = s.kubectl();
    let missing = k.run(&["get", "pod", "nope"]).unwrap();
    assert_eq!(
        missing.stderr.trim(),
        "Error from server (NotFound): pods \"nope\" not found"
    );
    s.apply(
        &k,
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c1}\ndata: {a: b}\n",
    );
    let again = k
        .run_with_stdin(
            &["create", "-f", "-"],
            Some("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c1}\n"),
        )
        .unwrap();
    assert!(
        again.stderr.contains("Error from server (AlreadyExists)")
            && again.stderr.contains("configmaps \"c1\" already exists"),
        "{again:?}"
    );
    // Strict field validation is the server's: kubectl sends fieldValidation=Strict.
    let typo = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c2}\ndatta: {a: b}\n";
    let strict = k.run_with_stdin(&["create", "-f", "-"], Some(typo)).unwrap();
    assert!(
        strict
            .stderr
            .contains("strict decoding error: unknown field \"datta\""),
        "{strict:?}"
    );
    let warn = k
        .run_with_stdin(&["create", "--validate=warn", "-f", "-"], Some(typo))
        .unwrap();
    assert!(
        warn.success() && warn.stderr.contains("unknown field \"datta\""),
        "{warn:?}"
    );
    let svc = "apiVersion: v1\nkind: Service\nmetadata: {name: s}\nspec:\n  type: NodePort\n  selector: {app: x}\n  ports:\n  - port: 80\n    nodePort: 3333\n";
    let port = k.run_with_stdin(&["create", "-f", "-"], Some(svc)).unwrap();
    assert!(
        port.stderr.contains("spec.ports[0].nodePort: Invalid value: 3333: provided port is not in the valid range. The range of valid ports is 30000-32767"),
        "{port:?}"
    );
}

#[test]
fn lists_paginate_and_watches_follow() {
    let s = Server::start();
    let k = s.kubectl();
    let mut docs = String::new();
    for i in 0..7 {
        docs.push_str(&format!("---\napiVersion: v1\nkind: ConfigMap\nmetadata: {{name: cm{i}, labels: {{n: \"{i}\"}}}}\ndata: {{k: v}}\n"));
    }
    s.apply(&k, &docs);
    let chunked = s.ok(&k, &["get", "cm", "--chunk-size=2", "-o", "name"]);
    let names: Vec<&str> = chunked
        .lines()
        .filter(|l| l.starts_with("configmap/cm"))
        .collect();
    assert_eq!(names.len(), 7, "{chunked}");
    let all = s.ok(&k, &["get", "cm", "-A", "-o", "wide"]);
    assert!(all.lines().next().unwrap_or("").starts_with("NAMESPACE"), "{all}");

    // A watch started now sees a later change.
    let mut watch = s.kubectl_spawn(&k, &["get", "cm", "-w", "--output-watch-events"]);
    watch.wait_for_line(|l| l.starts_with("ADDED") && l.contains("cm6"));
    s.ok(&k, &["patch", "cm", "cm3", "-p", r#"{"data":{"k":"changed"}}"#]);
    watch.wait_for_line(|l| l.starts_with("MODIFIED") && l.contains("cm3"));
    s.ok(&k, &["delete", "cm", "cm5"]);
    watch.wait_for_line(|l| l.starts_with("DELETED") && l.contains("cm5"));
}

#[test]
fn patches_of_three_kinds_and_deletes_that_finish() {
    let s = Server::start();
    let k = s.kubectl();
    s.apply(&k, DEPLOYMENT);
    s.ok(
        &k,
        &[
            "patch",
            "deploy",
            "web",
            "--type",
            "merge",
            "-p",
            r#"{"spec":{"replicas":7}}"#,
        ],
    );
    s.ok(
        &k,
        &[
            "patch",
            "deploy",
            "web",
            "--type",
            "json",
            "-p",
            r#"[{"op":"replace","path":"/spec/replicas","value":8}]"#,
        ],
    );
    s.ok(
        &k,
        &[
            "patch",
            "deploy",
            "web",
            "-p",
            r#"{"spec":{"template":{"spec":{"containers":[{"name":"nginx","image":"nginx:1.27"}]}}}}"#,
        ],
    );
    let d = json(&s.ok(&k, &["get", "deploy", "web", "-o", "json"]));
    assert_eq!(d["spec"]["replicas"], 8);
    assert_eq!(
        d["spec"]["template"]["spec"]["containers"][0]["image"],
        "nginx:1.27"
    );
    assert_eq!(
        d["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"], 80,
        "SMP merged by name"
    );

    // Namespace deletion removes the contents and returns.
    s.ok(&k, &["create", "namespace", "scratch"]);
    s.apply(
        &k,
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x, namespace: scratch}\n",
    );
    assert!(s
        .ok(&k, &["delete", "namespace", "scratch"])
        .contains("namespace \"scratch\" deleted"));
    let gone = k.run(&["get", "namespace", "scratch"]).unwrap();
    assert!(gone.stderr.contains("NotFound"), "{gone:?}");
    assert!(k
        .run(&["get", "cm", "x", "-n", "scratch"])
        .unwrap()
        .stderr
        .contains("NotFound"));

    // Cascading delete: a ReplicaSet owned by the Deployment goes with it.
    let uid = s.ok(&k, &["get", "deploy", "web", "-o", "jsonpath={.metadata.uid}"]);
    let rs = format!(
        "apiVersion: apps/v1\nkind: ReplicaSet\nmetadata:\n  name: web-1\n  ownerReferences: [{{apiVersion: apps/v1, kind: Deployment, name: web, uid: {uid}, controller: true}}]\nspec:\n  selector: {{matchLabels: {{app: web}}}}\n  template:\n    metadata: {{labels: {{app: web}}}}\n    spec: {{containers: [{{name: nginx, image: nginx}}]}}\n"
    );
    s.apply(&k, &rs);
    s.ok(&k, &["delete", "deploy", "web"]);
    s.ok(&k, &["wait", "--for=delete", "rs/web-1", "--timeout=20s"]);
}

#[test]
fn discovery_and_explain() {
    let s = Server::start();
    let k = s.kubectl();
    let res = s.ok(&k, &["api-resources"]);
    for line in ["deployments", "deploy", "apps/v1", "Deployment"] {
        assert!(res.contains(line), "{line} missing:\n{res}");
    }
    let explain = s.ok(&k, &["explain", "pods.spec.containers.image"]);
    assert!(explain.contains("Container image name."), "{explain}");
}

#[test]
fn server_side_apply_conflicts_and_force() {
    let s = Server::start();
    let k = s.kubectl();
    s.apply(&k, DEPLOYMENT);
    let four = DEPLOYMENT.replace("replicas: 2", "replicas: 4");
    let conflict = k
        .run_with_stdin(&["apply", "--server-side", "-f", "-"], Some(&four))
        .unwrap();
    assert!(!conflict.success());
    assert!(
        conflict.stderr.contains(
            "Apply failed with 1 conflict: conflict with \"kubectl-client-side-apply\" using apps/v1: .spec.replicas"
        ),
        "{conflict:?}"
    );
    let forced = k
        .run_with_stdin(
            &["apply", "--server-side", "--force-conflicts", "-f", "-"],
            Some(&four),
        )
        .unwrap();
    assert!(
        forced.success() && forced.stdout.contains("deployment.apps/web serverside-applied"),
        "{forced:?}"
    );
    assert_eq!(
        s.ok(&k, &["get", "deploy", "web", "-o", "jsonpath={.spec.replicas}"]),
        "4"
    );
    let managers = s.ok(
        &k,
        &[
            "get",
            "deploy",
            "web",
            "--show-managed-fields",
            "-o",
            "jsonpath={.metadata.managedFields[*].manager}",
        ],
    );
    assert!(
        managers.contains("kubectl") && managers.contains("kubectl-client-side-apply"),
        "{managers}"
    );

    // A new object through server-side apply is created.
    let cm = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: ssa}\ndata: {a: \"1\"}\n";
    let created = k
        .run_with_stdin(&["apply", "--server-side", "-f", "-"], Some(cm))
        .unwrap();
    assert!(
        created.stdout.contains("configmap/ssa serverside-applied"),
        "{created:?}"
    );

    // kubectl diff shows the server's dry-run result and exits 1 when there is a difference.
    let diff = k.run_with_stdin(&["diff", "-f", "-"], Some(DEPLOYMENT)).unwrap();
    assert_eq!(diff.status.code(), Some(1), "{diff:?}");
    assert!(
        diff.stdout.contains("-  replicas: 4") && diff.stdout.contains("+  replicas: 2"),
        "{}",
        diff.stdout
    );
    assert_eq!(
        s.ok(&k, &["get", "deploy", "web", "-o", "jsonpath={.spec.replicas}"]),
        "4",
        "diff must not write"
    );
}

const NODE: &str = r#"
apiVersion: v1
kind: Node
metadata:
  name: node1
  labels: {kubernetes.io/hostname: node1}
status:
  conditions:
  - {type: Ready, status: "True", reason: KubeletReady, message: kubelet is posting ready status}
  addresses: [{type: InternalIP, address: 10.0.0.1}]
  nodeInfo: {kernelVersion: 6.1.0, osImage: Keel 0.1.0, containerRuntimeVersion: keel://0.1.0, kubeletVersion: v1.32.0, architecture: amd64, operatingSystem: linux, bootID: a, machineID: b, systemUUID: c, kubeProxyVersion: v1.32.0}
"#;

#[test]
fn nodes_taint_cordon_run_and_expose() {
    let s = Server::start();
    let k = s.kubectl();
    s.apply(&k, NODE);
    let wide = s.ok(&k, &["get", "nodes", "-o", "wide"]);
    for col in [
        "INTERNAL-IP",
        "OS-IMAGE",
        "KERNEL-VERSION",
        "CONTAINER-RUNTIME",
        "10.0.0.1",
        "Keel 0.1.0",
        "keel://0.1.0",
    ] {
        assert!(wide.contains(col), "{col} missing:\n{wide}");
    }
    s.ok(&k, &["taint", "nodes", "node1", "key=val:NoSchedule"]);
    s.ok(&k, &["cordon", "node1"]);
    assert!(s.ok(&k, &["get", "nodes"]).contains("Ready,SchedulingDisabled"));
    let spec = json(&s.ok(&k, &["get", "node", "node1", "-o", "jsonpath={.spec}"]));
    assert_eq!(spec["taints"][0]["key"], "key");
    assert_eq!(spec["unschedulable"], true);
    s.ok(&k, &["uncordon", "node1"]);
    s.ok(&k, &["taint", "nodes", "node1", "key-"]);
    assert_eq!(
        s.ok(&k, &["get", "node", "node1", "-o", "jsonpath={.spec}"]),
        "{}"
    );

    assert!(s
        .ok(&k, &["run", "r1", "--image=nginx", "--labels=app=r1"])
        .contains("pod/r1 created"));
    let pods = s.ok(&k, &["get", "pods", "-o", "wide"]);
    assert!(
        pods.contains("r1") && pods.contains("Pending") && pods.contains("NOMINATED NODE"),
        "{pods}"
    );
    let pod = json(&s.ok(&k, &["get", "pod", "r1", "-o", "json"]));
    assert_eq!(pod["spec"]["restartPolicy"], "Always", "defaults applied");
    assert_eq!(pod["spec"]["containers"][0]["imagePullPolicy"], "Always");
    s.ok(&k, &["expose", "pod", "r1", "--port=80", "--type=NodePort"]);
    let svc = json(&s.ok(&k, &["get", "svc", "r1", "-o", "json"]));
    let node_port = svc["spec"]["ports"][0]["nodePort"].as_u64().unwrap_or(0);
    assert!((30000..=32767).contains(&node_port), "{svc}");
    assert_eq!(svc["spec"]["selector"]["app"], "r1");
    s.ok(&k, &["delete", "pod", "r1"]);
    s.ok(&k, &["wait", "--for=delete", "pod/r1", "--timeout=10s"]);
}

#[test]
fn rollout_history_undo_restart_pause_and_status() {
    let s = Server::start();
    let k = s.kubectl();
    s.apply(&k, DEPLOYMENT);
    let uid = s.ok(&k, &["get", "deploy", "web", "-o", "jsonpath={.metadata.uid}"]);
    for r in 1..=2 {
        s.apply(
            &k,
            &format!(
                "apiVersion: apps/v1\nkind: ReplicaSet\nmetadata:\n  name: web-rev{r}\n  annotations: {{deployment.kubernetes.io/revision: \"{r}\", kubernetes.io/change-cause: \"step {r}\"}}\n  labels: {{app: web, pod-template-hash: rev{r}}}\n  ownerReferences: [{{apiVersion: apps/v1, kind: Deployment, name: web, uid: {uid}, controller: true}}]\nspec:\n  replicas: 0\n  selector: {{matchLabels: {{app: web, pod-template-hash: rev{r}}}}}\n  template:\n    metadata: {{labels: {{app: web, pod-template-hash: rev{r}}}}}\n    spec: {{containers: [{{name: nginx, image: \"nginx:1.2{r}\"}}]}}\n"
            ),
        );
    }
    let history = s.ok(&k, &["rollout", "history", "deploy/web"]);
    assert!(
        history.contains("REVISION  CHANGE-CAUSE")
            && history.contains("1         step 1")
            && history.contains("2         step 2"),
        "{history}"
    );
    s.ok(&k, &["rollout", "undo", "deploy/web", "--to-revision=1"]);
    assert_eq!(
        s.ok(
            &k,
            &[
                "get",
                "deploy",
                "web",
                "-o",
                "jsonpath={.spec.template.spec.containers[0].image}"
            ]
        ),
        "nginx:1.21"
    );
    s.ok(&k, &["rollout", "restart", "deploy/web"]);
    let restarted = s.ok(
        &k,
        &[
            "get",
            "deploy",
            "web",
            "-o",
            "jsonpath={.spec.template.metadata.annotations}",
        ],
    );
    assert!(
        restarted.contains("kubectl.kubernetes.io/restartedAt"),
        "{restarted}"
    );
    s.ok(&k, &["rollout", "pause", "deploy/web"]);
    assert_eq!(
        s.ok(&k, &["get", "deploy", "web", "-o", "jsonpath={.spec.paused}"]),
        "true"
    );
    s.ok(&k, &["rollout", "resume", "deploy/web"]);
    assert_eq!(
        s.ok(&k, &["get", "deploy", "web", "-o", "jsonpath={.spec.paused}"]),
        ""
    );
    s.ok(&k, &["set", "image", "deploy/web", "nginx=nginx:1.99"]);
    assert_eq!(
        s.ok(
            &k,
            &[
                "get",
                "deploy",
                "web",
                "-o",
                "jsonpath={.spec.template.spec.containers[0].image}"
            ]
        ),
        "nginx:1.99"
    );

    // kubectl edit through an EDITOR that changes the replicas.
    let editor = s.dir.path().join("editor.sh");
    std::fs::write(&editor, "#!/bin/sh\nsed -i 's/replicas: 2/replicas: 6/' \"$1\"\n").unwrap();
    let mut perms = std::fs::metadata(&editor).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
    std::fs::set_permissions(&editor, perms).unwrap();
    let edit = std::process::Command::new(std::env::var("KUBECTL").unwrap_or_else(|_| "kubectl".into()))
        .args(["--kubeconfig"])
        .arg(k.kubeconfig())
        .args(["edit", "deploy", "web"])
        .env("HOME", k.home())
        .env("EDITOR", &editor)
        .output()
        .unwrap();
    assert!(edit.status.success(), "{}", String::from_utf8_lossy(&edit.stderr));
    assert_eq!(
        s.ok(&k, &["get", "deploy", "web", "-o", "jsonpath={.spec.replicas}"]),
        "6"
    );

    // rollout status reads the status a controller would write.
    let generation = s.ok(
        &k,
        &["get", "deploy", "web", "-o", "jsonpath={.metadata.generation}"],
    );
    let status = format!(
        r#"{{"status":{{"observedGeneration":{generation},"replicas":6,"updatedReplicas":6,"availableReplicas":6,"readyReplicas":6}}}}"#
    );
    s.ok(
        &k,
        &[
            "patch",
            "deploy",
            "web",
            "--subresource=status",
            "--type=merge",
            "-p",
            &status,
        ],
    );
    let rolled = s.ok(&k, &["rollout", "status", "deploy/web", "--timeout=10s"]);
    assert!(
        rolled.contains("deployment \"web\" successfully rolled out"),
        "{rolled}"
    );
}

#[test]
fn delete_cascades_foreground_background_and_orphan() {
    let s = Server::start();
    let k = s.kubectl();
    let owned = |owner: &str, uid: &str| {
        format!("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {owner}-child\n  ownerReferences: [{{apiVersion: apps/v1, kind: Deployment, name: {owner}, uid: {uid}}}]\n")
    };
    for (name, cascade, child_survives) in [
        ("fg", "foreground", false),
        ("bg", "background", false),
        ("or", "orphan", true),
    ] {
        s.apply(&k, &DEPLOYMENT.replace("name: web", &format!("name: {name}")));
        let uid = s.ok(&k, &["get", "deploy", name, "-o", "jsonpath={.metadata.uid}"]);
        s.apply(&k, &owned(name, &uid));
        s.ok(&k, &["delete", "deploy", name, &format!("--cascade={cascade}")]);
        assert!(
            k.run(&["get", "deploy", name])
                .unwrap()
                .stderr
                .contains("NotFound"),
            "{cascade}: owner still there"
        );
        let child = format!("cm/{name}-child");
        if child_survives {
            let refs = s.ok(&k, &["get", &child, "-o", "jsonpath={.metadata.ownerReferences}"]);
            assert_eq!(refs, "", "orphaned child keeps no owner reference");
        } else {
            s.ok(&k, &["wait", "--for=delete", &child, "--timeout=10s"]);
        }
    }
}

#[test]
fn typed_client_verbs_send_protobuf_and_work() {
    let s = Server::start();
    let k = s.kubectl();
    let cases: &[(&[&str], &str)] = &[
        (&["create", "namespace", "n1"], "namespace/n1 created"),
        (
            &["create", "deployment", "d1", "--image=nginx", "--replicas=2"],
            "deployment.apps/d1 created",
        ),
        (
            &["create", "deployment", "d0", "--image=nginx", "--replicas=0"],
            "deployment.apps/d0 created",
        ),
        (
            &["create", "configmap", "c1", "--from-literal=a=b"],
            "configmap/c1 created",
        ),
        (
            &["create", "secret", "generic", "s1", "--from-literal=user=admin"],
            "secret/s1 created",
        ),
        (
            &["create", "service", "nodeport", "np1", "--tcp=80:8080"],
            "service/np1 created",
        ),
        (
            &["create", "job", "j1", "--image=busybox", "--", "echo", "hi"],
            "job.batch/j1 created",
        ),
        (
            &[
                "create",
                "cronjob",
                "cj1",
                "--image=busybox",
                "--schedule=*/1 * * * *",
                "--",
                "echo",
                "hi",
            ],
            "cronjob.batch/cj1 created",
        ),
        (&["create", "serviceaccount", "sa1"], "serviceaccount/sa1 created"),
        (
            &["create", "role", "r1", "--verb=get", "--resource=pods"],
            "role.rbac.authorization.k8s.io/r1 created",
        ),
        (
            &["create", "rolebinding", "rb1", "--role=r1", "--user=jane"],
            "rolebinding.rbac.authorization.k8s.io/rb1 created",
        ),
        (
            &[
                "create",
                "poddisruptionbudget",
                "pdb1",
                "--selector=app=x",
                "--min-available=1",
            ],
            "poddisruptionbudget.policy/pdb1 created",
        ),
        (
            &["create", "ingress", "i1", "--rule=foo.com/=svc:80"],
            "ingress.networking.k8s.io/i1 created",
        ),
        (
            &["autoscale", "deploy", "d1", "--max=3", "--cpu-percent=60"],
            "horizontalpodautoscaler.autoscaling/d1 autoscaled",
        ),
        (&["auth", "can-i", "create", "pods"], "yes"),
    ];
    for (args, expected) in cases {
        let out = s.ok(&k, args);
        assert!(out.contains(expected), "kubectl {}: {out}", args.join(" "));
    }
    // Explicit zeros survive protobuf decoding; secrets decode to what was given.
    assert_eq!(
        s.ok(&k, &["get", "deploy", "d0", "-o", "jsonpath={.spec.replicas}"]),
        "0"
    );
    assert_eq!(
        s.ok(&k, &["get", "secret", "s1", "-o", "jsonpath={.data.user}"]),
        "YWRtaW4="
    );
    let hpa = json(&s.ok(
        &k,
        &[
            "get",
            "--raw",
            "/apis/autoscaling/v1/namespaces/default/horizontalpodautoscalers/d1",
        ],
    ));
    assert_eq!(hpa["spec"]["targetCPUUtilizationPercentage"], 60, "{hpa}");
    let whoami = s.ok(&k, &["auth", "whoami"]);
    assert!(
        whoami.contains("kubernetes-admin") && whoami.contains("system:masters"),
        "{whoami}"
    );

    // certificate approve: PUT .../approval with a protobuf body.
    let csr = "apiVersion: certificates.k8s.io/v1\nkind: CertificateSigningRequest\nmetadata: {name: csr1}\nspec:\n  signerName: kubernetes.io/kube-apiserver-client\n  usages: [client auth]\n  request: LS0tLS1CRUdJTiBDRVJUSUZJQ0FURSBSRVFVRVNULS0tLS0KTUlIeU1JR1pBZ0VBTURjeEZUQVRCZ05WQkFvVERITjVjM1JsYlRwdWIyUmxjekVlTUJ3R0ExVUVBeE1WYzNsegpkR1Z0T201dlpHVTZkMjl5YTJWeUxURXdXVEFUQmdjcWhrak9QUUlCQmdncWhrak9QUU1CQndOQ0FBUXRaOWtzCkE4V1UrZ1ZFR0FLTExoN3V3VTB4bXRYQTFZVkRFSmw3NHRXeVpRamxuZ2hMWTBHS1lXbFBNcURDeldoSk9rSVYKSkRIaWRoeklzMW16S2ZMdG9BQXdDZ1lJS29aSXpqMEVBd0lEU0FBd1JRSWdRRHhnb2lKSHRyZXZYSzFkdmlzawpEUDJUMEpFT0ovK0JBdkJvdm1mMXZKRUNJUUR4d1d2amFWOG9WeWJDWlpzZEtDS08xSEJFYWMwZEZmdVhiVlRJCllrbnZ1Zz09Ci0tLS0tRU5EIENFUlRJRklDQVRFIFJFUVVFU1QtLS0tLQo=\n";
    s.apply(&k, csr);
    assert!(s
        .ok(&k, &["certificate", "approve", "csr1"])
        .contains("certificatesigningrequest.certificates.k8s.io/csr1 approved"));
    let cond = s.ok(
        &k,
        &[
            "get",
            "csr",
            "csr1",
            "-o",
            "jsonpath={.status.conditions[0].type} {.status.conditions[0].reason}",
        ],
    );
    assert_eq!(cond, "Approved KubectlApprove");
    assert!(s.ok(&k, &["get", "csr"]).contains("Approved"));
}

/// A kubeconfig for the same server with a bearer token instead of the admin certificate.
fn token_kubeconfig(s: &Server, token: &str) -> std::path::PathBuf {
    let admin = std::fs::read_to_string(s.kubeconfig()).unwrap();
    let ca = admin
        .lines()
        .find_map(|l| l.trim().strip_prefix("certificate-authority-data:"))
        .map(|v| v.trim().trim_matches('"').to_string())
        .expect("CA in the admin kubeconfig");
    let path = s.dir.path().join(format!("token-{}.kubeconfig", token.len()));
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: https://127.0.0.1:{}\n    certificate-authority-data: {ca}\nusers:\n- name: u\n  user:\n    token: {token}\ncontexts:\n- name: x\n  context: {{cluster: c, user: u}}\ncurrent-context: x\n",
        s.port
    );
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn authentication_by_certificate_token_file_and_bootstrap_token() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens.csv");
    std::fs::write(&tokens, "s3cret-token-value,alice,1001,\"dev,ops\"\n").unwrap();
    let s = Server::start_with(&["--token-auth-file", tokens.to_str().unwrap()]);
    let kubectl =
        |cfg: &std::path::Path| keel_lab::Kubectl::new(std::path::Path::new("kubectl"), cfg).unwrap();

    let alice = kubectl(&token_kubeconfig(&s, "s3cret-token-value"));
    let who = alice
        .run(&[
            "auth",
            "whoami",
            "-o",
            "jsonpath={.status.userInfo.username} {.status.userInfo.groups}",
        ])
        .unwrap();
    assert!(who.success(), "{who:?}\n{}", s.log_tail());
    assert!(
        who.stdout.starts_with("alice ")
            && who.stdout.contains("dev")
            && who.stdout.contains("system:authenticated"),
        "{who:?}"
    );

    let stranger = kubectl(&token_kubeconfig(&s, "wrong-token"));
    let denied = stranger.run(&["get", "pods"]).unwrap();
    assert!(!denied.success());
    // Discovery fails first, so kubectl words it as for a real cluster with a bad token.
    assert!(
        denied
            .stderr
            .contains("error: You must be logged in to the server"),
        "{denied:?}"
    );

    // A bootstrap token from `keel-server token create` authenticates as system:bootstrap:<id>.
    let out = std::process::Command::new(common::server_binary())
        .arg("--data-dir")
        .arg(s.data_dir())
        .args(["token", "create", "--server", &format!("127.0.0.1:{}", s.port)])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let token = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(
        token.len() == 23 && token.as_bytes()[6] == b'.',
        "kubeadm token format: {token}"
    );
    let node = kubectl(&token_kubeconfig(&s, &token));
    let who = node
        .run(&["auth", "whoami", "-o", "jsonpath={.status.userInfo.username}"])
        .unwrap();
    assert_eq!(who.stdout, format!("system:bootstrap:{}", &token[..6]), "{who:?}");
}

#[test]
fn describe_and_output_formats() {
    let s = Server::start();
    let k = s.kubectl();
    s.apply(&k, DEPLOYMENT);
    s.apply(&k, "apiVersion: v1\nkind: Namespace\nmetadata: {name: other}\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: o1, namespace: other}\n");
    let describe = s.ok(&k, &["describe", "deploy", "web"]);
    let field = |name: &str| {
        describe
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}:")).map(|v| v.trim().to_string()))
            .unwrap_or_default()
    };
    assert_eq!(field("Name"), "web", "{describe}");
    assert_eq!(field("Selector"), "app=web");
    assert!(field("Replicas").starts_with("2 desired"), "{describe}");
    assert_eq!(field("StrategyType"), "RollingUpdate");
    assert!(describe.contains("nginx:1.25"));
    let yaml = s.ok(&k, &["get", "deploy", "web", "-o", "yaml"]);
    assert!(
        yaml.contains("apiVersion: apps/v1")
            && yaml.contains("kind: Deployment")
            && yaml.contains("resourceVersion:"),
        "{yaml}"
    );
    assert!(!yaml.contains("managedFields"), "kubectl hides managedFields");
    let all = s.ok(&k, &["get", "cm", "-A"]);
    assert!(
        all.lines().any(|l| l.starts_with("other") && l.contains("o1")),
        "{all}"
    );
    let names = s.ok(&k, &["get", "deploy,svc", "-o", "name"]);
    assert!(
        names.contains("deployment.apps/web") && names.contains("service/kubernetes"),
        "{names}"
    );
    let json_list = json(&s.ok(&k, &["get", "ns", "-o", "json"]));
    assert_eq!(json_list["kind"], "List");
    assert!(json_list["items"].as_array().map(Vec::len).unwrap_or(0) >= 5);
}
