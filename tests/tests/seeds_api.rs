//! The seed documents' manifests and kubectl commands at the API level (FEATURES.md §20, §23,
//! §25): every manifest of `tests/manifests/seeds/` (re-indented, API versions updated) is
//! accepted by the real kubectl against a private `keel-server` and reads back as upstream prints
//! it, and every seed error kept in `tests/manifests/seeds/negative/` is rejected with upstream's
//! message. No nodes: Pods stay Pending, nothing runs. Most tests run the API alone
//! (`Server::start`); those about what controllers do with the objects (`start_full`) say so.

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::Server;
use keel_lab::Kubectl;

/// Every positive manifest with the objects `kubectl apply` reports, in the order applied.
/// YAML-12 is missing on purpose: its Pod has YAML-11's name (see `create_and_delete_by_file`).
const POSITIVE: &[(&str, &[&str])] = &[
    (
        "yaml-01-apiserver-to-kubelet-rbac.yaml",
        &[
            "clusterrole.rbac.authorization.k8s.io/system:kube-apiserver-to-kubelet",
            "clusterrolebinding.rbac.authorization.k8s.io/system:kube-apiserver",
        ],
    ),
    ("yaml-05-pod-mytomcat.yaml", &["pod/mytomcat"]),
    ("yaml-06-pod-myweb.yaml", &["pod/myweb"]),
    ("yaml-07-pod-db-resources.yaml", &["pod/db"]),
    (
        "yaml-08-rc-service-nginx.yaml",
        &["replicationcontroller/nginx", "service/nginx"],
    ),
    ("yaml-09-deployment-frontend.yaml", &["deployment.apps/frontend"]),
    (
        "yaml-10-deployment-service-hpa.yaml",
        &[
            "deployment.apps/nginx-deployment",
            "service/nginx-svc",
            "horizontalpodautoscaler.autoscaling/nginx-hpa",
        ],
    ),
    ("yaml-11-pod-emptydir.yaml", &["pod/test-pd"]),
    ("yaml-13-deployment-redis-nfs.yaml", &["deployment.apps/redis"]),
    (
        "yaml-14-pv.yaml",
        &[
            "persistentvolume/pv001",
            "persistentvolume/pv002",
            "persistentvolume/pv003",
            "persistentvolume/pv004",
            "persistentvolume/pv005",
        ],
    ),
    (
        "yaml-15-pvc-pod.yaml",
        &["persistentvolumeclaim/mypvc", "pod/vol-pvc"],
    ),
    ("yaml-16-secret.yaml", &["secret/mysecret"]),
    ("yaml-17-pod-secret-volume.yaml", &["pod/seret-test"]),
    (
        "yaml-18-deployment-secret-env.yaml",
        &["deployment.apps/pod-deployment"],
    ),
    ("yaml-19-pod-imagepullsecrets.yaml", &["pod/foo"]),
    (
        "yaml-20-configmaps.yaml",
        &["configmap/special-config", "configmap/env-config"],
    ),
    ("yaml-21-pod-configmap-env.yaml", &["pod/dapi-test-pod"]),
    (
        "yaml-22-namespace-pod.yaml",
        &["namespace/development", "pod/busybox"],
    ),
    ("yaml-24-rc-mywebapp.yaml", &["replicationcontroller/mywebapp"]),
    ("yaml-25-service-mywebapp.yaml", &["service/mywebapp-service"]),
    ("yaml-26-service-multiport.yaml", &["service/mywebapp-multiport"]),
    (
        "yaml-27-service-endpoints.yaml",
        &["service/my-service", "endpoints/my-service"],
    ),
    ("yaml-28-pod-goproxy.yaml", &["pod/goproxy"]),
    (
        "yaml-29-pod-required-nodeaffinity.yaml",
        &["pod/with-required-nodeaffinity"],
    ),
    (
        "yaml-30-deployment-preferred-nodeaffinity.yaml",
        &["deployment.apps/myapp-deploy-with-node-affinity"],
    ),
    ("yaml-31-pod-affinity.yaml", &["pod/with-pod-affinity"]),
    (
        "yaml-32-deployment-preferred-podaffinity.yaml",
        &["deployment.apps/myapp-with-preferred-pod-affinity"],
    ),
    (
        "yaml-33-pods-antiaffinity.yaml",
        &["pod/pod-first", "pod/pod-second"],
    ),
    ("yaml-34-pod-tolerations.yaml", &["pod/toleration-demo"]),
    (
        "yaml-35-deployment-tolerations.yaml",
        &["deployment.apps/myapp-deploy"],
    ),
    (
        "yaml-36-role-pod-reader.yaml",
        &["role.rbac.authorization.k8s.io/pod-reader"],
    ),
    (
        "yaml-37-clusterrole-secret-reader.yaml",
        &["clusterrole.rbac.authorization.k8s.io/secret-reader"],
    ),
    (
        "yaml-38-rolebinding-read-pods.yaml",
        &["rolebinding.rbac.authorization.k8s.io/read-pods"],
    ),
    (
        "yaml-39-rolebinding-read-secrets.yaml",
        &["rolebinding.rbac.authorization.k8s.io/read-secrets"],
    ),
    (
        "yaml-40-clusterrolebinding-read-secrets-global.yaml",
        &["clusterrolebinding.rbac.authorization.k8s.io/read-secrets-global"],
    ),
    (
        "yaml-41-role-pod-and-pod-logs-reader.yaml",
        &["role.rbac.authorization.k8s.io/pod-and-pod-logs-reader"],
    ),
    (
        "yaml-42-role-configmap-updater.yaml",
        &["role.rbac.authorization.k8s.io/configmap-updater"],
    ),
    (
        "yaml-43-role-grantor.yaml",
        &[
            "namespace/user-1-namespace",
            "clusterrole.rbac.authorization.k8s.io/role-grantor",
            "rolebinding.rbac.authorization.k8s.io/role-grantor-binding",
        ],
    ),
    (
        "yaml-44-clusterrolebinding-heapster.yaml",
        &["clusterrolebinding.rbac.authorization.k8s.io/heapster"],
    ),
    (
        "yaml-45-deployment-heapster.yaml",
        &["serviceaccount/heapster", "deployment.apps/heapster"],
    ),
    (
        "yaml-46-deployment-grafana.yaml",
        &["deployment.apps/monitoring-grafana"],
    ),
    (
        "yaml-47-helm-nginx-rendered.yaml",
        &["deployment.apps/web", "service/web"],
    ),
    ("yaml-48-ingress.yaml", &["ingress.networking.k8s.io/web-ingress"]),
    ("yaml-49-helm-configmap-range-rendered.yaml", &["configmap/web"]),
];

/// The seed errors (FEATURES.md §25) kept as files under `negative/`.
const NEGATIVE: &[&str] = &[
    "yaml-04-pod-imagespullpolicy.yaml",
    "yaml-07-pod-sepc.yaml",
    "yaml-08-service-nodeport-3333.yaml",
    "yaml-09-deployment-extensions-v1beta1.yaml",
    "yaml-23-service-matadata.yaml",
    "yaml-25-service-uppercase-name.yaml",
    "yaml-27-endpoints-IP.yaml",
    "yaml-35-deployment-v1.yaml",
    "yaml-36-role-resource-typo.yaml",
    "yaml-37-clusterrole-no-name.yaml",
];

const DNS1035: &str = "a DNS-1035 label must consist of lower case alphanumeric characters \
    or '-', start with an alphabetic character, and end with an alphanumeric character (e.g. \
    'my-name',  or 'abc-123', regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')";

/// Nodes for the seed's node commands (KCTL-42, KCTL-45..52); the API accepts Node objects from
/// an administrator like any other.
const NODES: &str = r#"
apiVersion: v1
kind: Node
metadata:
  name: kube-node1
---
apiVersion: v1
kind: Node
metadata:
  name: node2
"#;

fn seeds_dir() -> PathBuf {
    common::workspace_root()
        .join("tests")
        .join("manifests")
        .join("seeds")
}

/// The path of a positive manifest, as a string for kubectl's command line.
fn manifest(name: &str) -> String {
    let p = seeds_dir().join(name);
    assert!(p.is_file(), "missing manifest {}", p.display());
    p.display().to_string()
}

/// The path of a negative manifest.
fn negative(name: &str) -> String {
    let p = seeds_dir().join("negative").join(name);
    assert!(p.is_file(), "missing manifest {}", p.display());
    p.display().to_string()
}

/// Runs kubectl, which must fail; returns its stderr.
fn fails(s: &Server, k: &Kubectl, args: &[&str]) -> String {
    let out = k
        .run(args)
        .unwrap_or_else(|e| panic!("kubectl {}: {e}", args.join(" ")));
    assert!(
        !out.success(),
        "kubectl {} must fail, but printed:\n{}\n{}",
        args.join(" "),
        out.stdout,
        s.log_tail()
    );
    out.stderr
}

/// Asserts that a failed kubectl printed exactly `expected` (one line, or lines) on stderr.
fn assert_stderr(stderr: &str, expected: &str) {
    assert_eq!(
        stderr.trim_end(),
        expected,
        "\n--- got ---\n{stderr}\n--- expected ---\n{expected}\n"
    );
}

/// One row of a kubectl table, keyed by column header. Columns are found by the header's
/// positions (kubectl pads with spaces), so empty cells read as "". Several tables (`get
/// pod,svc`) are searched one by one.
fn row(table: &str, name: &str) -> BTreeMap<String, String> {
    table
        .split("\n\n")
        .find_map(|block| block_row(block, name))
        .unwrap_or_else(|| panic!("no row {name} in\n{table}"))
}

fn block_row(table: &str, name: &str) -> Option<BTreeMap<String, String>> {
    let mut lines = table.lines();
    let header = lines.next().unwrap_or_default();
    let mut cols: Vec<(usize, String)> = Vec::new();
    let bytes = header.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b' ' && (i == 0 || header[..i].ends_with("  ")) {
            let end = header[i..].find("  ").map_or(header.len(), |e| i + e);
            cols.push((i, header[i..end].to_string()));
            i = end;
        } else {
            i += 1;
        }
    }
    let cells = |line: &str| -> BTreeMap<String, String> {
        cols.iter()
            .enumerate()
            .map(|(n, (start, col))| {
                let end = cols.get(n + 1).map_or(line.len(), |c| c.0.min(line.len()));
                let start = (*start).min(line.len());
                (col.clone(), line[start..end].trim().to_string())
            })
            .collect()
    };
    lines
        .map(cells)
        .find(|r| r.get("NAME").map(String::as_str) == Some(name))
}

/// Standard base64, as `base64 -d` decodes it.
fn base64_decode(s: &str) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut bits = 0u32;
    let mut n = 0;
    let mut out = Vec::new();
    for c in s.trim().bytes().filter(|&c| c != b'=') {
        let v = ALPHABET
            .iter()
            .position(|&a| a == c)
            .unwrap_or_else(|| panic!("not base64: {s:?}")) as u32;
        bits = (bits << 6) | v;
        n += 6;
        if n >= 8 {
            n -= 8;
            out.push((bits >> n) as u8);
            bits &= (1 << n) - 1;
        }
    }
    String::from_utf8(out).expect("utf-8")
}

/// Polls `probe` until it returns Some, for up to `secs` seconds.
fn wait_for<T>(secs: u64, what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = probe() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn apply_all(s: &Server, k: &Kubectl) {
    for (file, objects) in POSITIVE {
        let out = s.ok(k, &["apply", "-f", &manifest(file)]);
        let expected: Vec<String> = objects.iter().map(|o| format!("{o} created")).collect();
        assert_eq!(
            out.lines().collect::<Vec<_>>(),
            expected,
            "kubectl apply -f {file}"
        );
    }
}

#[test]
fn every_seed_file_is_exercised() {
    let listed = |dir: PathBuf| -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .filter_map(Result::ok)
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".yaml"))
            .collect();
        v.sort();
        v
    };
    let mut positive: Vec<String> = POSITIVE.iter().map(|(f, _)| f.to_string()).collect();
    positive.push("yaml-12-pod-hostpath.yaml".into());
    positive.sort();
    assert_eq!(listed(seeds_dir()), positive);
    let mut negatives: Vec<String> = NEGATIVE.iter().map(|f| f.to_string()).collect();
    negatives.sort();
    assert_eq!(listed(seeds_dir().join("negative")), negatives);
    // Each file starts with a comment citing its seed lines.
    for f in listed(seeds_dir()) {
        let text = std::fs::read_to_string(seeds_dir().join(&f)).unwrap();
        assert!(
            text.starts_with("# YAML-") && text.contains("seed 003:"),
            "{f} must start with its citation"
        );
    }
}

/// YAML-05..48: `kubectl apply -f` accepts every manifest; applying again changes nothing; and
/// `kubectl get` shows the objects with upstream's columns.
#[test]
fn seed_manifests_apply_and_read_back() {
    let s = Server::start();
    let k = s.kubectl();
    apply_all(&s, &k);

    // A second apply is a no-op, except where upstream also reports a change: Endpoints'
    // `subsets` is an atomic list and the server defaults `protocol: TCP` into it, so the
    // three-way patch always carries it. (YAML-34 comes last, below.)
    for (file, objects) in POSITIVE {
        if *file == "yaml-34-pod-tolerations.yaml" {
            continue;
        }
        let out = s.ok(&k, &["apply", "-f", &manifest(file)]);
        let expected: Vec<String> = objects
            .iter()
            .map(|o| {
                if *o == "endpoints/my-service" {
                    format!("{o} configured")
                } else {
                    format!("{o} unchanged")
                }
            })
            .collect();
        assert_eq!(
            out.lines().collect::<Vec<_>>(),
            expected,
            "second kubectl apply -f {file}"
        );
    }

    // Pods: all Pending, not on a node.
    let pods = s.ok(&k, &["get", "pods", "-o", "wide"]);
    for name in [
        "mytomcat",
        "db",
        "test-pd",
        "vol-pvc",
        "seret-test",
        "foo",
        "dapi-test-pod",
        "goproxy",
        "with-required-nodeaffinity",
        "with-pod-affinity",
        "pod-first",
        "pod-second",
        "toleration-demo",
    ] {
        let r = row(&pods, name);
        assert_eq!(r["READY"], "0/1", "{name}: {pods}");
        assert_eq!(r["STATUS"], "Pending", "{name}: {pods}");
        assert_eq!(r["NODE"], "<none>", "{name}: {pods}");
    }
    assert_eq!(row(&pods, "myweb")["READY"], "0/2", "{pods}");
    let db = s.ok(
        &k,
        &[
            "get",
            "pod",
            "db",
            "-o",
            "jsonpath={.spec.containers[0].resources.limits.memory} {.spec.containers[0].resources.requests.cpu} {.status.qosClass}",
        ],
    );
    assert_eq!(db, "128Mi 250m Burstable");

    // YAML-08: RC DESIRED 3, NodePort Service on 30333.
    let rc = s.ok(&k, &["get", "rc"]);
    assert_eq!(row(&rc, "nginx")["DESIRED"], "3", "{rc}");
    assert_eq!(row(&rc, "mywebapp")["DESIRED"], "2", "{rc}");
    // YAML-24: the RC's selector defaults to its template's labels.
    assert_eq!(
        s.ok(&k, &["get", "rc", "mywebapp", "-o", "jsonpath={.spec.selector}"]),
        r#"{"app":"mywebapp"}"#
    );
    let svc = s.ok(&k, &["get", "svc"]);
    let nginx = row(&svc, "nginx");
    assert_eq!(nginx["TYPE"], "NodePort", "{svc}");
    assert_eq!(nginx["PORT(S)"], "80:30333/TCP", "{svc}");
    assert!(nginx["CLUSTER-IP"].starts_with("10."), "{svc}");
    assert_eq!(row(&svc, "nginx-svc")["PORT(S)"], "80/TCP", "{svc}");
    assert_eq!(row(&svc, "mywebapp-service")["PORT(S)"], "8081/TCP", "{svc}");
    assert_eq!(
        row(&svc, "mywebapp-multiport")["PORT(S)"],
        "8080/TCP,8005/TCP",
        "{svc}"
    );
    assert_eq!(row(&svc, "my-service")["PORT(S)"], "80/TCP", "{svc}");
    // YAML-47: a NodePort Service without a nodePort gets one from the range.
    let web_port: u16 = s
        .ok(
            &k,
            &["get", "svc", "web", "-o", "jsonpath={.spec.ports[0].nodePort}"],
        )
        .parse()
        .expect("nodePort");
    assert!((30000..=32767).contains(&web_port), "{web_port}");
    // YAML-27: the manual Endpoints of the selector-less Service.
    let ep = s.ok(&k, &["get", "endpoints", "my-service"]);
    assert_eq!(row(&ep, "my-service")["ENDPOINTS"], "10.254.74.3:8080", "{ep}");

    // Deployments, including those in kube-system (YAML-45/46).
    let deploys = s.ok(&k, &["get", "deployments", "-A", "-o", "wide"]);
    for (name, ready) in [
        ("frontend", "0/1"),
        ("nginx-deployment", "0/1"),
        ("redis", "0/1"),
        ("pod-deployment", "0/2"),
        ("myapp-deploy-with-node-affinity", "0/2"),
        ("myapp-with-preferred-pod-affinity", "0/3"),
        ("myapp-deploy", "0/3"),
        ("heapster", "0/1"),
        ("monitoring-grafana", "0/1"),
        ("web", "0/3"),
    ] {
        assert_eq!(row(&deploys, name)["READY"], ready, "{name}: {deploys}");
    }
    assert_eq!(row(&deploys, "heapster")["NAMESPACE"], "kube-system");
    assert_eq!(
        row(&deploys, "myapp-deploy")["SELECTOR"],
        "app=myapp,release=canary",
        "{deploys}"
    );
    assert_eq!(row(&deploys, "web")["IMAGES"], "nginx:1.15", "{deploys}");

    // YAML-10: the HPA (served in autoscaling/v2, stored with the v1 CPU target converted).
    let hpa = s.ok(&k, &["get", "hpa"]);
    let r = row(&hpa, "nginx-hpa");
    assert_eq!(r["REFERENCE"], "Deployment/nginx-deployment", "{hpa}");
    assert_eq!(r["TARGETS"], "cpu: <unknown>/50%", "{hpa}");
    assert_eq!((r["MINPODS"].as_str(), r["MAXPODS"].as_str()), ("1", "10"));
    assert_eq!(
        s.ok(
            &k,
            &[
                "get",
                "horizontalpodautoscalers.v1.autoscaling",
                "nginx-hpa",
                "-o",
                "jsonpath={.spec.targetCPUUtilizationPercentage}"
            ]
        ),
        "50"
    );
    assert_eq!(
        s.ok(
            &k,
            &[
                "get",
                "horizontalpodautoscalers.v2.autoscaling",
                "nginx-hpa",
                "-o",
                "jsonpath={.spec.metrics[0].resource.name} {.spec.metrics[0].resource.target.averageUtilization}"
            ]
        ),
        "cpu 50"
    );

    // YAML-14: the PVs' capacity, access modes and reclaim policy.
    let pv = s.ok(&k, &["get", "pv"]);
    for (name, cap, modes) in [
        ("pv001", "2Gi", "RWO,RWX"),
        ("pv002", "5Gi", "RWO"),
        ("pv003", "20Gi", "RWO,RWX"),
        ("pv004", "10Gi", "RWO,RWX"),
        ("pv005", "15Gi", "RWO,RWX"),
    ] {
        let r = row(&pv, name);
        assert_eq!(r["CAPACITY"], cap, "{pv}");
        assert_eq!(r["ACCESS MODES"], modes, "{pv}");
        assert_eq!(r["RECLAIM POLICY"], "Retain", "{pv}");
    }
    // YAML-15: the claim exists with its request.
    assert_eq!(
        s.ok(
            &k,
            &[
                "get",
                "pvc",
                "mypvc",
                "-o",
                "jsonpath={.spec.resources.requests.storage} {.spec.accessModes}"
            ]
        ),
        r#"6Gi ["ReadWriteMany"]"#
    );

    // YAML-16: the Secret decodes to admin / 1f2d1e2e67df.
    let user = s.ok(
        &k,
        &["get", "secret", "mysecret", "-o", "jsonpath={.data.username}"],
    );
    let pass = s.ok(
        &k,
        &["get", "secret", "mysecret", "-o", "jsonpath={.data.password}"],
    );
    assert_eq!(
        (base64_decode(&user).as_str(), base64_decode(&pass).as_str()),
        ("admin", "1f2d1e2e67df")
    );
    assert_eq!(
        s.ok(
            &k,
            &[
                "get",
                "secret",
                "mysecret",
                "-o",
                "go-template={{.data.username | base64decode}}/{{.data.password | base64decode}}"
            ]
        ),
        "admin/1f2d1e2e67df"
    );
    let secrets = s.ok(&k, &["get", "secrets"]);
    let r = row(&secrets, "mysecret");
    assert_eq!((r["TYPE"].as_str(), r["DATA"].as_str()), ("Opaque", "2"));

    // YAML-20: the ConfigMaps' data.
    let cms = s.ok(&k, &["get", "configmaps"]);
    assert_eq!(row(&cms, "special-config")["DATA"], "2", "{cms}");
    assert_eq!(row(&cms, "env-config")["DATA"], "1", "{cms}");
    assert_eq!(
        s.ok(
            &k,
            &[
                "get",
                "configmaps",
                "special-config",
                "-o",
                r"jsonpath={.data.special\.how} {.data.special\.type}"
            ]
        ),
        "very charm"
    );
    // YAML-49: the block scalar the Helm range loop renders.
    assert_eq!(
        s.ok(&k, &["get", "configmap", "web", "-o", "jsonpath={.data.test}"]),
        "1\n2\n3\n"
    );
    let yaml = s.ok(&k, &["get", "configmaps", "env-config", "-o", "yaml"]);
    assert!(yaml.contains("data:\n  log_level: INFO\n"), "{yaml}");

    // YAML-22 / KCTL-39: the Pod lives in development only.
    let dev = s.ok(&k, &["get", "pods", "--namespace=development"]);
    assert_eq!(row(&dev, "busybox")["STATUS"], "Pending", "{dev}");
    assert_stderr(
        &fails(&s, &k, &["get", "pod", "busybox"]),
        r#"Error from server (NotFound): pods "busybox" not found"#,
    );

    // YAML-36..44: RBAC objects and what they bind.
    let rb = s.ok(&k, &["get", "rolebindings", "-A", "-o", "wide"]);
    let r = row(&rb, "read-pods");
    assert_eq!(
        (r["ROLE"].as_str(), r["USERS"].as_str()),
        ("Role/pod-reader", "jane")
    );
    let r = row(&rb, "read-secrets");
    assert_eq!(
        (r["NAMESPACE"].as_str(), r["ROLE"].as_str(), r["USERS"].as_str()),
        ("development", "ClusterRole/secret-reader", "dave")
    );
    let r = row(&rb, "role-grantor-binding");
    assert_eq!(
        (r["NAMESPACE"].as_str(), r["USERS"].as_str()),
        ("user-1-namespace", "user-1")
    );
    let crb = s.ok(&k, &["get", "clusterrolebindings", "-o", "wide"]);
    assert_eq!(row(&crb, "read-secrets-global")["GROUPS"], "manager", "{crb}");
    assert_eq!(
        row(&crb, "heapster")["SERVICEACCOUNTS"],
        "kube-system/heapster",
        "{crb}"
    );
    assert_eq!(row(&crb, "system:kube-apiserver")["USERS"], "kubernetes", "{crb}");
    assert_eq!(
        s.ok(
            &k,
            &[
                "get",
                "role",
                "pod-reader",
                "-o",
                "jsonpath={.rules[0].resources}"
            ]
        ),
        r#"["pods"]"#
    );
    assert_eq!(
        s.ok(
            &k,
            &[
                "get",
                "role",
                "configmap-updater",
                "-o",
                "jsonpath={.rules[0].resources} {.rules[0].resourceNames}"
            ]
        ),
        r#"["configmaps"] ["my-configmap"]"#
    );
    let cr = s.ok(&k, &["get", "clusterroles"]);
    row(&cr, "secret-reader");
    row(&cr, "role-grantor");
    row(&cr, "system:kube-apiserver-to-kubelet");

    // YAML-48: the Ingress.
    let ing = s.ok(&k, &["get", "ingress"]);
    let r = row(&ing, "web-ingress");
    assert_eq!(
        (r["CLASS"].as_str(), r["HOSTS"].as_str(), r["PORTS"].as_str()),
        ("<none>", "example.ctnrs.com", "80"),
        "{ing}"
    );

    // YAML-34 again: the toleration list is atomic, so the patch replaces the live list (which
    // has the DefaultTolerationSeconds additions) with the file's two; the admission plugin runs
    // on updates too and adds the same two back, so the update keeps every existing toleration.
    let out = s.ok(&k, &["apply", "-f", &manifest("yaml-34-pod-tolerations.yaml")]);
    assert_eq!(out.trim_end(), "pod/toleration-demo configured");
    assert_eq!(
        s.ok(
            &k,
            &[
                "get",
                "pod",
                "toleration-demo",
                "-o",
                "jsonpath={.spec.tolerations[*].key}"
            ]
        ),
        "key1 key1 node.kubernetes.io/not-ready node.kubernetes.io/unreachable"
    );
}

/// The same manifests through server-side apply: every object is applied, a second apply is
/// accepted again, and kubectl's field manager owns the fields it sent.
#[test]
fn seed_manifests_server_side_apply() {
    let s = Server::start();
    let k = s.kubectl();
    // Every file is tried; the mismatches are reported together.
    let mut wrong = Vec::new();
    for round in 0..2 {
        for (file, objects) in POSITIVE {
            let out = k.run(&["apply", "--server-side", "-f", &manifest(file)]).unwrap();
            let expected: Vec<String> = objects
                .iter()
                .map(|o| format!("{o} serverside-applied"))
                .collect();
            if !out.success() || out.stdout.lines().collect::<Vec<_>>() != expected {
                wrong.push(format!(
                    "round {round}: kubectl apply --server-side -f {file}:\n{}{}",
                    out.stdout, out.stderr
                ));
            }
        }
    }
    let managers = s.ok(
        &k,
        &[
            "get",
            "deployment",
            "frontend",
            "--show-managed-fields",
            "-o",
            "jsonpath={.metadata.managedFields[*].manager}/{.metadata.managedFields[*].operation}",
        ],
    );
    assert!(managers.starts_with("kubectl/Apply"), "{managers}");
    assert_eq!(
        s.ok(
            &k,
            &[
                "get",
                "service",
                "nginx",
                "-o",
                "jsonpath={.spec.ports[0].nodePort}"
            ]
        ),
        "30333"
    );
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// KCTL-21 and friends: `kubectl describe` of a few seed objects reads as upstream's.
#[test]
fn describe_seed_objects() {
    let s = Server::start();
    let k = s.kubectl();
    for f in [
        "yaml-06-pod-myweb.yaml",
        "yaml-08-rc-service-nginx.yaml",
        "yaml-09-deployment-frontend.yaml",
        "yaml-10-deployment-service-hpa.yaml",
        "yaml-16-secret.yaml",
        "yaml-47-helm-nginx-rendered.yaml",
        "yaml-48-ingress.yaml",
    ] {
        s.ok(&k, &["apply", "-f", &manifest(f)]);
    }
    let pod = s.ok(&k, &["describe", "pod", "myweb"]);
    for want in [
        "Name:             myweb",
        "Labels:           name=tomcat-redis",
        "Status:           Pending",
        "  tomcat:\n    Image:        tomcat\n    Port:         8080/TCP",
        "  redis:\n    Image:        redis\n    Port:         6379/TCP",
        "QoS Class:        BestEffort",
        "node.kubernetes.io/not-ready:NoExecute op=Exists for 300s",
    ] {
        assert!(pod.contains(want), "missing {want:?} in\n{pod}");
    }
    let svc = s.ok(&k, &["describe", "svc", "nginx"]);
    for want in [
        "Selector:                 app=nginx",
        "Type:                     NodePort",
        "NodePort:                 <unset>  30333/TCP",
        "External Traffic Policy:  Cluster",
    ] {
        assert!(svc.contains(want), "missing {want:?} in\n{svc}");
    }
    let rc = s.ok(&k, &["describe", "rc", "nginx"]);
    for want in ["Selector:     app=nginx", "/ 3 desired", "Image:         nginx"] {
        assert!(rc.contains(want), "missing {want:?} in\n{rc}");
    }
    let d = s.ok(&k, &["describe", "deployment", "frontend"]);
    assert!(d.contains("Replicas:") && d.contains("1 desired"), "{d}");
    assert!(d.contains("tomcat-demo:") && d.contains("8080/TCP"), "{d}");
    let hpa = s.ok(&k, &["describe", "hpa", "nginx-hpa"]);
    for want in [
        "Reference:",
        "Deployment/nginx-deployment",
        "resource cpu on pods  (as a percentage of request):  <unknown> / 50%",
        "Min replicas:",
        "Max replicas:",
    ] {
        assert!(hpa.contains(want), "missing {want:?} in\n{hpa}");
    }
    let secret = s.ok(&k, &["describe", "secret", "mysecret"]);
    assert!(
        secret.contains("Type:  Opaque")
            && secret.contains("password:  12 bytes")
            && secret.contains("username:  5 bytes"),
        "{secret}"
    );
    let ing = s.ok(&k, &["describe", "ingress", "web-ingress"]);
    assert!(
        ing.contains("example.ctnrs.com") && ing.contains("/   web:80"),
        "{ing}"
    );
}

/// KCTL-18/22: `kubectl create -f` and `kubectl delete -f`; YAML-11 and YAML-12 share a name.
#[test]
fn create_and_delete_by_file() {
    let s = Server::start();
    let k = s.kubectl();
    for (file, object) in [
        ("yaml-05-pod-mytomcat.yaml", "pod/mytomcat"),
        ("yaml-16-secret.yaml", "secret/mysecret"),
        (
            "yaml-36-role-pod-reader.yaml",
            "role.rbac.authorization.k8s.io/pod-reader",
        ),
        (
            "yaml-37-clusterrole-secret-reader.yaml",
            "clusterrole.rbac.authorization.k8s.io/secret-reader",
        ),
        ("yaml-11-pod-emptydir.yaml", "pod/test-pd"),
    ] {
        let out = s.ok(&k, &["create", "-f", &manifest(file)]);
        assert_eq!(out.trim_end(), format!("{object} created"));
    }
    // A second create of the same file is refused.
    let path = manifest("yaml-05-pod-mytomcat.yaml");
    assert_stderr(
        &fails(&s, &k, &["create", "-f", &path]),
        &format!(
            r#"Error from server (AlreadyExists): error when creating "{path}": pods "mytomcat" already exists"#
        ),
    );
    // `create` leaves no last-applied annotation; a later `apply` warns and takes over.
    let applied = k.run(&["apply", "-f", &path]).unwrap();
    assert!(applied.success(), "{applied:?}");
    assert!(
        applied.stderr.contains(
            "Warning: resource pods/mytomcat is missing the kubectl.kubernetes.io/last-applied-configuration annotation"
        ),
        "{applied:?}"
    );

    // YAML-12 has YAML-11's Pod name and different volumes: a Pod's spec is immutable.
    let hostpath = manifest("yaml-12-pod-hostpath.yaml");
    let err = fails(&s, &k, &["apply", "-f", &hostpath]);
    assert!(
        err.contains(r#"The Pod "test-pd" is invalid: spec: Forbidden: pod updates may not change fields other than `spec.containers[*].image`"#),
        "{err}"
    );
    // Delete by file (no node, so the Pod goes at once), then YAML-12 applies.
    assert_eq!(
        s.ok(&k, &["delete", "-f", &manifest("yaml-11-pod-emptydir.yaml")])
            .trim_end(),
        r#"pod "test-pd" deleted"#
    );
    assert_eq!(
        s.ok(&k, &["apply", "-f", &hostpath]).trim_end(),
        "pod/test-pd created"
    );
    assert_eq!(
        s.ok(
            &k,
            &[
                "get",
                "pod",
                "test-pd",
                "-o",
                "jsonpath={.spec.volumes[0].hostPath.path}"
            ]
        ),
        "/data"
    );

    // KCTL-53: `kubectl create -f <directory>` takes every manifest in it, in name order.
    let dir = tempfile::tempdir().expect("temp dir");
    for f in [
        "yaml-20-configmaps.yaml",
        "yaml-25-service-mywebapp.yaml",
        "yaml-26-service-multiport.yaml",
    ] {
        std::fs::copy(seeds_dir().join(f), dir.path().join(f)).unwrap();
    }
    assert_eq!(
        s.ok(&k, &["create", "-f", &dir.path().display().to_string()])
            .lines()
            .collect::<Vec<_>>(),
        [
            "configmap/special-config created",
            "configmap/env-config created",
            "service/mywebapp-service created",
            "service/mywebapp-multiport created",
        ]
    );

    // KCTL-23: every Pod (no controller owns these two).
    assert_eq!(
        s.ok(&k, &["delete", "pod", "--all"]).lines().collect::<Vec<_>>(),
        [r#"pod "mytomcat" deleted"#, r#"pod "test-pd" deleted"#]
    );
    let none = k.run(&["get", "pods"]).unwrap();
    assert!(
        none.success() && none.stderr.contains("No resources found in default namespace."),
        "{none:?}"
    );
    // KCTL-22/23: delete by file and by name, for several kinds.
    let out = s.ok(
        &k,
        &[
            "delete",
            "-f",
            &manifest("yaml-08-rc-service-nginx.yaml"),
            "--ignore-not-found",
        ],
    );
    assert_eq!(out, "");
    s.ok(&k, &["apply", "-f", &manifest("yaml-08-rc-service-nginx.yaml")]);
    assert_eq!(
        s.ok(&k, &["delete", "-f", &manifest("yaml-08-rc-service-nginx.yaml")])
            .lines()
            .collect::<Vec<_>>(),
        [
            r#"replicationcontroller "nginx" deleted"#,
            r#"service "nginx" deleted"#
        ]
    );
    assert_stderr(
        &fails(&s, &k, &["get", "svc", "nginx"]),
        r#"Error from server (NotFound): services "nginx" not found"#,
    );
    assert_eq!(
        s.ok(&k, &["delete", "-f", &manifest("yaml-16-secret.yaml")])
            .trim_end(),
        r#"secret "mysecret" deleted"#
    );
    assert_eq!(
        s.ok(
            &k,
            &[
                "delete",
                "-f",
                &manifest("yaml-37-clusterrole-secret-reader.yaml")
            ]
        )
        .trim_end(),
        r#"clusterrole.rbac.authorization.k8s.io "secret-reader" deleted"#
    );
}

/// KCTL-24/25/40: the seed's scale and label-selector commands.
#[test]
fn seed_scale_and_select_commands() {
    let s = Server::start();
    let k = s.kubectl();
    for f in [
        "yaml-08-rc-service-nginx.yaml",
        "yaml-09-deployment-frontend.yaml",
        "yaml-24-rc-mywebapp.yaml",
        "yaml-05-pod-mytomcat.yaml",
    ] {
        s.ok(&k, &["apply", "-f", &manifest(f)]);
    }
    assert_eq!(
        s.ok(&k, &["scale", "rc", "nginx", "--replicas=5"]).trim_end(),
        "replicationcontroller/nginx scaled"
    );
    assert_eq!(row(&s.ok(&k, &["get", "rc", "nginx"]), "nginx")["DESIRED"], "5");
    assert_eq!(
        s.ok(&k, &["scale", "deployment", "frontend", "--replicas", "3"])
            .trim_end(),
        "deployment.apps/frontend scaled"
    );
    assert_eq!(
        s.ok(&k, &["scale", "deployment", "frontend", "--replicas", "1"])
            .trim_end(),
        "deployment.apps/frontend scaled"
    );
    assert_eq!(
        s.ok(
            &k,
            &["get", "deployment", "frontend", "-o", "jsonpath={.spec.replicas}"]
        ),
        "1"
    );
    // `-l app=mywebapp` selects by label: the bare Pod labelled otherwise is not listed.
    s.ok(&k, &["label", "pod", "mytomcat", "app=mywebapp-not"]);
    let listed = s.ok(&k, &["get", "pods", "-l", "app=mywebapp", "-o", "name"]);
    assert!(!listed.contains("pod/mytomcat"), "{listed}");
    s.ok(&k, &["label", "pod", "mytomcat", "app=mywebapp", "--overwrite"]);
    let yaml = s.ok(&k, &["get", "pods", "-l", "app=mywebapp", "-o", "yaml"]);
    assert!(yaml.contains("name: mytomcat"), "{yaml}");
}

/// With the scheduler and controllers running (no nodes needed), RC `mywebapp` makes its 2 Pods, `kubectl get
/// pods -l app=mywebapp` lists them (Pending), and scaling RC `nginx` to 5 makes 5.
#[test]
fn replication_controllers_make_their_pods() {
    let s = Server::start_full(&[]);
    let k = s.kubectl();
    s.ok(&k, &["apply", "-f", &manifest("yaml-24-rc-mywebapp.yaml")]);
    s.ok(&k, &["apply", "-f", &manifest("yaml-08-rc-service-nginx.yaml")]);
    let count = |sel: &str| {
        s.ok(&k, &["get", "pods", "-l", sel, "-o", "name"])
            .lines()
            .count()
    };
    wait_for(30, "2 pods labelled app=mywebapp", || {
        (count("app=mywebapp") == 2).then_some(())
    });
    let yaml = s.ok(&k, &["get", "pods", "-l", "app=mywebapp", "-o", "yaml"]);
    assert_eq!(yaml.matches("kind: ReplicationController").count(), 2, "{yaml}");
    s.ok(&k, &["scale", "rc", "nginx", "--replicas=5"]);
    wait_for(30, "5 pods labelled app=nginx", || {
        (count("app=nginx") == 5).then_some(())
    });
    let rc = s.ok(&k, &["get", "rc", "nginx"]);
    assert_eq!(row(&rc, "nginx")["CURRENT"], "5", "{rc}");
}

/// YAML-14/15 with the volume binder (no nodes needed): the PVs become Available, and `mypvc`
/// (6Gi RWX) binds to pv004, the smallest fit (not what the seed's comment claims, §25 #21).
#[test]
fn persistent_volume_claim_binds_the_smallest_fit() {
    let s = Server::start_full(&[]);
    let k = s.kubectl();
    s.ok(&k, &["apply", "-f", &manifest("yaml-14-pv.yaml")]);
    wait_for(30, "pv001..pv005 Available", || {
        let pv = s.ok(&k, &["get", "pv"]);
        ["pv001", "pv002", "pv003", "pv004", "pv005"]
            .iter()
            .all(|n| row(&pv, n)["STATUS"] == "Available")
            .then_some(())
    });
    s.ok(&k, &["apply", "-f", &manifest("yaml-15-pvc-pod.yaml")]);
    let pvc = wait_for(30, "mypvc Bound", || {
        let pvc = s.ok(&k, &["get", "pvc"]);
        (row(&pvc, "mypvc")["STATUS"] == "Bound").then_some(pvc)
    });
    let r = row(&pvc, "mypvc");
    assert_eq!(
        (
            r["VOLUME"].as_str(),
            r["CAPACITY"].as_str(),
            r["ACCESS MODES"].as_str()
        ),
        ("pv004", "10Gi", "RWO,RWX"),
        "{pvc}"
    );
    let pv = s.ok(&k, &["get", "pv"]);
    assert_eq!(row(&pv, "pv004")["CLAIM"], "default/mypvc", "{pv}");
}

/// Every namespace gets its `default` ServiceAccount (YAML-22's `development` too), which the
/// ServiceAccount admission of its Pods looks up.
#[test]
fn namespaces_get_a_default_service_account() {
    let s = Server::start_full(&[]);
    let k = s.kubectl();
    s.ok(&k, &["apply", "-f", &manifest("yaml-22-namespace-pod.yaml")]);
    let sa = wait_for(30, "ServiceAccount development/default", || {
        k.run(&["get", "serviceaccounts", "-n", "development"])
            .ok()
            .filter(|o| o.success() && o.stdout.contains("default"))
            .map(|o| o.stdout)
    });
    assert_eq!(row(&sa, "default")["SECRETS"], "0", "{sa}");
    let sa = s.ok(&k, &["get", "serviceaccounts"]);
    row(&sa, "default");
}

/// Every namespace also gets the `kube-root-ca.crt` ConfigMap (the cluster CA for in-cluster
/// clients such as YAML-45's heapster).
#[test]
fn namespaces_get_the_root_ca_config_map() {
    let s = Server::start_full(&[]);
    let k = s.kubectl();
    s.ok(&k, &["apply", "-f", &manifest("yaml-22-namespace-pod.yaml")]);
    let ca = wait_for(30, "ConfigMap development/kube-root-ca.crt", || {
        k.run(&[
            "get",
            "configmap",
            "kube-root-ca.crt",
            "-n",
            "development",
            "-o",
            r"jsonpath={.data.ca\.crt}",
        ])
        .ok()
        .filter(|o| o.success())
        .map(|o| o.stdout)
    });
    assert!(ca.starts_with("-----BEGIN CERTIFICATE-----"), "{ca}");
}

/// YAML-08/10/24..27: every Service with a selector gets its Endpoints and EndpointSlice from
/// the controllers even while no Pod is ready (upstream prints `<none>` / `<unset>`); the
/// selector-less `my-service` keeps the Endpoints written by hand.
#[test]
fn services_with_selectors_get_endpoints() {
    let s = Server::start_full(&[]);
    let k = s.kubectl();
    for f in [
        "yaml-08-rc-service-nginx.yaml",
        "yaml-25-service-mywebapp.yaml",
        "yaml-26-service-multiport.yaml",
        "yaml-27-service-endpoints.yaml",
    ] {
        s.ok(&k, &["apply", "-f", &manifest(f)]);
    }
    let ep = wait_for(
        30,
        "Endpoints for nginx, mywebapp-service, mywebapp-multiport",
        || {
            let out = s.ok(&k, &["get", "endpoints"]);
            ["nginx", "mywebapp-service", "mywebapp-multiport"]
                .iter()
                .all(|n| block_row(&out, n).is_some())
                .then_some(out)
        },
    );
    assert_eq!(row(&ep, "nginx")["ENDPOINTS"], "<none>", "{ep}");
    assert_eq!(row(&ep, "my-service")["ENDPOINTS"], "10.254.74.3:8080", "{ep}");
    let slices = wait_for(30, "an EndpointSlice for nginx", || {
        let out = s.ok(
            &k,
            &["get", "endpointslices", "-l", "kubernetes.io/service-name=nginx"],
        );
        (!out.trim().is_empty()).then_some(out)
    });
    let line = slices.lines().nth(1).unwrap_or_default();
    assert!(line.starts_with("nginx-") && line.contains("IPv4"), "{slices}");
}

/// KCTL-42, KCTL-45..52: label and taint nodes as the seed does, including the `NoShedule`
/// typo (§25 #3), rejected by kubectl and by the API server.
#[test]
fn seed_node_label_and_taint_commands() {
    let s = Server::start();
    let k = s.kubectl();
    s.apply(&k, NODES);
    assert_eq!(
        s.ok(&k, &["label", "nodes", "kube-node1", "zone=foo"]).trim_end(),
        "node/kube-node1 labeled"
    );
    assert_eq!(
        s.ok(&k, &["get", "nodes", "-l", "zone=foo", "-o", "name"])
            .trim_end(),
        "node/kube-node1"
    );
    let taints = |node: &str| s.ok(&k, &["get", "nodes", node, "-o", "go-template={{.spec.taints}}"]);

    // KCTL-46: the typo is rejected by kubectl before anything is sent.
    assert_stderr(
        &fails(
            &s,
            &k,
            &["taint", "node", "node2", "node-type=production:NoShedule"],
        ),
        "error: invalid taint effect: NoShedule, unsupported taint effect\n\
         See 'kubectl taint -h' for help and examples",
    );
    assert!(!taints("node2").contains("node-type"));
    // ... and by the API server when it gets there another way.
    let err = fails(
        &s,
        &k,
        &[
            "patch",
            "node",
            "node2",
            "-p",
            r#"{"spec":{"taints":[{"key":"node-type","value":"production","effect":"NoShedule"}]}}"#,
        ],
    );
    assert_stderr(
        &err,
        r#"The Node "node2" is invalid: spec.taints[0].effect: Unsupported value: "NoShedule": supported values: "NoSchedule", "PreferNoSchedule", "NoExecute""#,
    );

    // KCTL-50/47: add and show.
    assert_eq!(
        s.ok(
            &k,
            &["taint", "node", "kube-node1", "node-type=production:NoSchedule"]
        )
        .trim_end(),
        "node/kube-node1 tainted"
    );
    assert_eq!(
        taints("kube-node1"),
        "[map[effect:NoSchedule key:node-type value:production]]"
    );
    // The same key with another effect is another taint (YAML-35's NoExecute).
    assert_eq!(
        s.ok(
            &k,
            &["taint", "node", "kube-node1", "node-type=production:NoExecute"]
        )
        .trim_end(),
        "node/kube-node1 tainted"
    );
    let both = taints("kube-node1");
    assert!(
        both.contains("map[effect:NoExecute key:node-type value:production]")
            && both.contains("map[effect:NoSchedule key:node-type value:production]"),
        "{both}"
    );
    let described = s.ok(&k, &["describe", "node", "kube-node1"]);
    assert!(
        described.contains("Taints:             node-type=production:NoExecute")
            && described.contains("node-type=production:NoSchedule")
            && described.contains("Labels:             zone=foo"),
        "{described}"
    );
    // A duplicate is refused by kubectl.
    let dup = fails(
        &s,
        &k,
        &["taint", "node", "kube-node1", "node-type=production:NoSchedule"],
    );
    assert!(
        dup.contains(
            "node kube-node1 already has node-type taint(s) with same effect(s) and --overwrite is false"
        ),
        "{dup}"
    );

    // KCTL-51: remove by key and effect.
    assert_eq!(
        s.ok(&k, &["taint", "node", "kube-node1", "node-type:NoSchedule-"])
            .trim_end(),
        "node/kube-node1 untainted"
    );
    assert_eq!(
        taints("kube-node1"),
        "[map[effect:NoExecute key:node-type value:production]]"
    );
    // KCTL-52: remove every effect of a key.
    s.ok(
        &k,
        &["taint", "node", "kube-node1", "node-type=production:NoSchedule"],
    );
    assert_eq!(
        s.ok(&k, &["taint", "node", "kube-node1", "node-type-"])
            .trim_end(),
        "node/kube-node1 untainted"
    );
    assert!(!taints("kube-node1").contains("node-type"));
    // KCTL-49: clear every taint with a patch.
    s.ok(
        &k,
        &["taint", "node", "kube-node1", "node-type=production:NoExecute"],
    );
    assert_eq!(
        s.ok(
            &k,
            &["patch", "nodes", "kube-node1", "-p", r#"{"spec":{"taints":[]}}"#]
        )
        .trim_end(),
        "node/kube-node1 patched"
    );
    assert!(!taints("kube-node1").contains("node-type"));
    let cleared = taints("kube-node1");
    // Labels come off as they went on.
    s.ok(&k, &["label", "nodes", "kube-node1", "zone-"]);
    let none = k.run(&["get", "nodes", "-l", "zone=foo"]).unwrap();
    assert!(none.stderr.contains("No resources found"), "{none:?}");
    // Upstream stores no empty list: after the patch `taints` is gone, not `[]` (as after
    // `node-type-` above).
    assert_eq!(cleared, "<no value>");
}

/// FEATURES.md §25: the seed errors kept under `negative/` are rejected with upstream's messages,
/// by `kubectl apply -f` and `kubectl create -f` alike, and nothing is created.
#[test]
fn seed_errors_are_rejected_with_upstream_messages() {
    let s = Server::start();
    let k = s.kubectl();

    // §25 #1: nodePort 3333.
    let f = negative("yaml-08-service-nodeport-3333.yaml");
    let msg = r#"The Service "nginx" is invalid: spec.ports[0].nodePort: Invalid value: 3333: provided port is not in the valid range. The range of valid ports is 30000-32767"#;
    for verb in ["apply", "create"] {
        assert_stderr(&fails(&s, &k, &[verb, "-f", &f]), msg);
    }

    // §25 #2: an upper-case Service name.
    let f = negative("yaml-25-service-uppercase-name.yaml");
    let msg = format!(
        r#"The Service "mywebAppService" is invalid: metadata.name: Invalid value: "mywebAppService": {DNS1035}"#
    );
    for verb in ["apply", "create"] {
        assert_stderr(&fails(&s, &k, &[verb, "-f", &f]), &msg);
    }

    // §25 #4, #13, #17: unknown fields, rejected by strict field validation (kubectl's default).
    for (file, kind, group_kind, field) in [
        (
            "yaml-36-role-resource-typo.yaml",
            "Role",
            "Role",
            "rules[0].resource",
        ),
        (
            "yaml-04-pod-imagespullpolicy.yaml",
            "Pod",
            "Pod",
            "spec.containers[0].imagesPullPolicy",
        ),
        ("yaml-07-pod-sepc.yaml", "Pod", "Pod", "sepc"),
        (
            "yaml-27-endpoints-IP.yaml",
            "Endpoints",
            "Endpoints",
            "subsets[0].addresses[0].IP",
        ),
    ] {
        let f = negative(file);
        let msg = format!(
            r#"Error from server (BadRequest): error when creating "{f}": {kind} in version "v1" cannot be handled as a {group_kind}: strict decoding error: unknown field "{field}""#
        );
        for verb in ["apply", "create"] {
            assert_stderr(&fails(&s, &k, &[verb, "-f", &f]), &msg);
        }
    }
    // `matadata`: kubectl apply finds no name to look up; create sends it and the server refuses.
    let f = negative("yaml-23-service-matadata.yaml");
    assert_stderr(
        &fails(&s, &k, &["create", "-f", &f]),
        &format!(
            r#"Error from server (BadRequest): error when creating "{f}": Service in version "v1" cannot be handled as a Service: strict decoding error: unknown field "matadata""#
        ),
    );
    let err = fails(&s, &k, &["apply", "-f", &f]);
    assert!(err.ends_with("resource name may not be empty\n"), "{err}");

    // With validation off the Role typo is dropped, and the rule then has no resources.
    let f = negative("yaml-36-role-resource-typo.yaml");
    assert_stderr(
        &fails(&s, &k, &["create", "-f", &f, "--validate=false"]),
        r#"The Role "pod-reader" is invalid: rules[0].resources: Required value: resource rules must supply at least one resource"#,
    );
    // On an existing Role, apply patches and the patch is refused the same way.
    s.ok(&k, &["apply", "-f", &manifest("yaml-36-role-pod-reader.yaml")]);
    let err = fails(&s, &k, &["apply", "-f", &f]);
    assert!(
        err.contains(&format!(
            r#"error when patching "{f}": Role in version "v1" cannot be handled as a Role: strict decoding error: unknown field "rules[0].resource""#
        )),
        "{err}"
    );
    assert_eq!(
        s.ok(
            &k,
            &[
                "get",
                "role",
                "pod-reader",
                "-o",
                "jsonpath={.rules[0].resources}"
            ]
        ),
        r#"["pods"]"#
    );

    // §25 #6: a ClusterRole without a name.
    let f = negative("yaml-37-clusterrole-no-name.yaml");
    assert_stderr(
        &fails(&s, &k, &["create", "-f", &f]),
        r#"The ClusterRole "" is invalid: metadata.name: Required value: name or generateName is required"#,
    );
    let err = fails(&s, &k, &["apply", "-f", &f]);
    assert!(err.ends_with("resource name may not be empty\n"), "{err}");

    // §25 #8, #9 with client-side validation off: kubectl finds no such kind.
    for (file, name, ns, version) in [
        ("yaml-35-deployment-v1.yaml", "myapp-deploy", "default", "v1"),
        (
            "yaml-09-deployment-extensions-v1beta1.yaml",
            "frontend",
            "",
            "extensions/v1beta1",
        ),
    ] {
        let f = negative(file);
        let msg = format!(
            "error: resource mapping not found for name: \"{name}\" namespace: \"{ns}\" from \"{f}\": no matches for kind \"Deployment\" in version \"{version}\"\nensure CRDs are installed first"
        );
        for verb in ["apply", "create"] {
            assert_stderr(&fails(&s, &k, &[verb, "-f", &f, "--validate=false"]), &msg);
        }
    }

    // Nothing was created.
    let pods = k
        .run(&["get", "pods,services,endpoints,deployments,roles"])
        .unwrap();
    assert!(!pods.stdout.contains("pull-policy-typo"), "{pods:?}");
    assert!(!pods.stdout.contains("mywebAppService"), "{pods:?}");
    assert!(!pods.stdout.contains("deployment.apps/"), "{pods:?}");
    assert!(!pods.stdout.contains("endpoints/my-service"), "{pods:?}");
    let cr = s.ok(&k, &["get", "clusterroles", "-l", "seed=yaml-37", "-o", "name"]);
    assert_eq!(cr, "");
}

/// §25 #8, #9 with kubectl's defaults: client-side validation consults the OpenAPI documents
/// (v3, then v2 for kinds v3 does not know) before the kind is mapped, so upstream prints the
/// same "no matches for kind" error.
#[test]
fn deployments_in_removed_api_versions_are_unknown_kinds() {
    let s = Server::start();
    let k = s.kubectl();
    for (file, name, ns, version) in [
        ("yaml-35-deployment-v1.yaml", "myapp-deploy", "default", "v1"),
        (
            "yaml-09-deployment-extensions-v1beta1.yaml",
            "frontend",
            "",
            "extensions/v1beta1",
        ),
    ] {
        let f = negative(file);
        let msg = format!(
            "error: resource mapping not found for name: \"{name}\" namespace: \"{ns}\" from \"{f}\": no matches for kind \"Deployment\" in version \"{version}\"\nensure CRDs are installed first"
        );
        for verb in ["apply", "create"] {
            assert_stderr(&fails(&s, &k, &[verb, "-f", &f]), &msg);
        }
    }
}

/// The seed's imperative commands that need no node: KCTL-03/04/05 (create, expose, get
/// pod,svc), KCTL-06 (create clusterrolebinding), KCTL-28/43 (run, with labels), KCTL-31 (the
/// docker-registry Secret YAML-19 pulls with), KCTL-32..35 (ConfigMaps from a directory, a file
/// and literals), KCTL-38 (the patch that rolls a Deployment), KCTL-44 (explain).
#[test]
fn seed_imperative_commands() {
    let s = Server::start();
    let k = s.kubectl();

    assert_eq!(
        s.ok(
            &k,
            &[
                "create",
                "secret",
                "docker-registry",
                "myregistrykey",
                "--docker-server=DOCKER_REGISTRY_SERVER",
                "--docker-username=DOCKER_USER",
                "--docker-password=DOCKER_PASSWORD",
                "--docker-email=DOCKER_EMAIL",
            ]
        )
        .trim_end(),
        "secret/myregistrykey created"
    );
    let r = row(&s.ok(&k, &["get", "secret", "myregistrykey"]), "myregistrykey");
    assert_eq!(
        (r["TYPE"].as_str(), r["DATA"].as_str()),
        ("kubernetes.io/dockerconfigjson", "1")
    );
    let config = s.ok(
        &k,
        &[
            "get",
            "secret",
            "myregistrykey",
            "-o",
            r#"go-template={{index .data ".dockerconfigjson" | base64decode}}"#,
        ],
    );
    assert!(
        config.contains(r#""DOCKER_REGISTRY_SERVER":{"username":"DOCKER_USER","password":"DOCKER_PASSWORD","email":"DOCKER_EMAIL""#),
        "{config}"
    );
    s.ok(
        &k,
        &["apply", "-f", &manifest("yaml-19-pod-imagepullsecrets.yaml")],
    );
    assert_eq!(
        s.ok(
            &k,
            &[
                "get",
                "pod",
                "foo",
                "-o",
                "jsonpath={.spec.imagePullSecrets[0].name}"
            ]
        ),
        "myregistrykey"
    );

    // KCTL-32/33: the seed's two properties files (003:2037-2049).
    let dir = tempfile::tempdir().expect("temp dir");
    let conf = dir.path().join("kubectl");
    std::fs::create_dir(&conf).unwrap();
    std::fs::write(
        conf.join("game.properties"),
        "enemies=aliens\nlives=3\nenemies.cheat=true\nenemies.cheat.level=noGoodRotten\n\
         secret.code.passphrase=UUDDLRLRBABAS\nsecret.code.allowed=true\nsecret.code.lives=30\n",
    )
    .unwrap();
    std::fs::write(
        conf.join("ui.properties"),
        "color.good=purple\ncolor.bad=yellow\nallow.textmode=true\nhow.nice.to.look=fairlyNice\n",
    )
    .unwrap();
    let from_dir = format!("--from-file={}", conf.display());
    assert_eq!(
        s.ok(&k, &["create", "configmap", "game-config", &from_dir])
            .trim_end(),
        "configmap/game-config created"
    );
    let from_file = format!("--from-file={}", conf.join("game.properties").display());
    s.ok(&k, &["create", "configmap", "game-config-2", &from_file]);
    let cms = s.ok(&k, &["get", "configmaps"]);
    assert_eq!(row(&cms, "game-config")["DATA"], "2", "{cms}");
    assert_eq!(row(&cms, "game-config-2")["DATA"], "1", "{cms}");
    let yaml = s.ok(&k, &["get", "configmaps", "game-config-2", "-o", "yaml"]);
    assert!(
        yaml.contains("data:\n  game.properties: |\n    enemies=aliens\n    lives=3\n"),
        "{yaml}"
    );
    // KCTL-35/34.
    s.ok(
        &k,
        &[
            "create",
            "configmap",
            "special-config",
            "--from-literal=special.how=very",
            "--from-literal=special.type=charm",
        ],
    );
    let yaml = s.ok(&k, &["get", "configmaps", "special-config", "-o", "yaml"]);
    assert!(
        yaml.contains("data:\n  special.how: very\n  special.type: charm\n"),
        "{yaml}"
    );

    // KCTL-38: a template annotation is a new revision of the Deployment.
    s.ok(&k, &["create", "deployment", "my-nginx", "--image=nginx"]);
    assert_eq!(
        s.ok(
            &k,
            &[
                "patch",
                "deployment",
                "my-nginx",
                "--patch",
                r#"{"spec": {"template": {"metadata": {"annotations": {"version/config": "20190411" }}}}}"#,
            ]
        )
        .trim_end(),
        "deployment.apps/my-nginx patched"
    );
    assert_eq!(
        s.ok(
            &k,
            &[
                "get",
                "deployment",
                "my-nginx",
                "-o",
                "jsonpath={.metadata.generation} {.spec.template.metadata.annotations.version/config}"
            ]
        ),
        "2 20190411"
    );

    // KCTL-03/04/05 (BOOT-06's smoke test, without curl).
    assert_eq!(
        s.ok(&k, &["create", "deployment", "nginx", "--image=nginx"])
            .trim_end(),
        "deployment.apps/nginx created"
    );
    assert_eq!(
        s.ok(
            &k,
            &["expose", "deployment", "nginx", "--port=80", "--type=NodePort"]
        )
        .trim_end(),
        "service/nginx exposed"
    );
    let both = s.ok(&k, &["get", "pod,svc"]);
    let svc = row(&both, "service/nginx");
    assert_eq!(svc["TYPE"], "NodePort", "{both}");
    assert!(svc["PORT(S)"].starts_with("80:3"), "{both}");
    assert_eq!(
        s.ok(&k, &["get", "svc", "nginx", "-o", "jsonpath={.spec.selector}"]),
        r#"{"app":"nginx"}"#
    );

    // KCTL-06.
    assert_eq!(
        s.ok(
            &k,
            &[
                "create",
                "clusterrolebinding",
                "kubelet-bootstrap",
                "--clusterrole=system:node-bootstrapper",
                "--user=kubelet-bootstrap",
            ]
        )
        .trim_end(),
        "clusterrolebinding.rbac.authorization.k8s.io/kubelet-bootstrap created"
    );
    let crb = s.ok(
        &k,
        &["get", "clusterrolebinding", "kubelet-bootstrap", "-o", "wide"],
    );
    let r = row(&crb, "kubelet-bootstrap");
    assert_eq!(
        (r["ROLE"].as_str(), r["USERS"].as_str()),
        ("ClusterRole/system:node-bootstrapper", "kubelet-bootstrap")
    );

    // KCTL-28/43: modern `kubectl run` makes a Pod (§25 #27), here with YAML-31's tomcat.
    assert_eq!(
        s.ok(&k, &["run", "nginx", "--image", "nginx"]).trim_end(),
        "pod/nginx created"
    );
    assert_eq!(
        s.ok(
            &k,
            &["run", "tomcat", "-l", "app=tomcat", "--image", "tomcat:alpine"]
        )
        .trim_end(),
        "pod/tomcat created"
    );
    assert_eq!(
        s.ok(&k, &["get", "pods", "-l", "app=tomcat", "-o", "name"])
            .trim_end(),
        "pod/tomcat"
    );
    s.ok(&k, &["apply", "-f", &manifest("yaml-31-pod-affinity.yaml")]);
    let wide = s.ok(&k, &["get", "po", "with-pod-affinity", "-o", "wide"]);
    assert_eq!(row(&wide, "with-pod-affinity")["NODE"], "<none>", "{wide}");

    // KCTL-44.
    let explain = s.ok(
        &k,
        &[
            "explain",
            "pod.spec.affinity.podAffinity.requiredDuringSchedulingIgnoredDuringExecution.topologyKey",
        ],
    );
    assert!(
        explain.contains("KIND:       Pod") && explain.contains("FIELD: topologyKey <string>"),
        "{explain}"
    );
}

/// KCTL-07 (003:1062): `kubectl get cs` still answers in v1.32, with a deprecation warning.
#[test]
fn component_statuses_answer_with_a_deprecation_warning() {
    let s = Server::start();
    let k = s.kubectl();
    let out = k.run(&["get", "cs"]).unwrap();
    assert!(out.success(), "{out:?}");
    assert!(
        out.stderr
            .contains("Warning: v1 ComponentStatus is deprecated in v1.19+"),
        "{out:?}"
    );
    for component in ["scheduler", "controller-manager"] {
        assert_eq!(row(&out.stdout, component)["STATUS"], "Healthy", "{out:?}");
    }
}

/// YAML-36..42 as the catalogue suggests checking them (no nodes needed): what each Role and
/// binding grants, through impersonation (`--as`) by the admin, and upstream's Forbidden text.
#[test]
fn seed_rbac_grants_what_it_says() {
    let s = Server::start();
    let k = s.kubectl();
    for f in [
        "yaml-05-pod-mytomcat.yaml",
        "yaml-16-secret.yaml",
        "yaml-22-namespace-pod.yaml",
        "yaml-36-role-pod-reader.yaml",
        "yaml-37-clusterrole-secret-reader.yaml",
        "yaml-38-rolebinding-read-pods.yaml",
        "yaml-39-rolebinding-read-secrets.yaml",
        "yaml-40-clusterrolebinding-read-secrets-global.yaml",
        "yaml-41-role-pod-and-pod-logs-reader.yaml",
        "yaml-42-role-configmap-updater.yaml",
    ] {
        s.ok(&k, &["apply", "-f", &manifest(f)]);
    }
    s.ok(
        &k,
        &[
            "create",
            "rolebinding",
            "logs",
            "--role=pod-and-pod-logs-reader",
            "--user=logger",
        ],
    );
    s.ok(
        &k,
        &[
            "create",
            "rolebinding",
            "cm",
            "--role=configmap-updater",
            "--user=carol",
        ],
    );
    let can_i = |args: &[&str]| -> String {
        let mut all = vec!["auth", "can-i"];
        all.extend_from_slice(args);
        let out = k.run(&all).unwrap();
        out.stdout.trim().to_string()
    };
    // YAML-36/38: jane reads pods in default only, and may not delete them.
    assert_eq!(can_i(&["list", "pods", "--as", "jane"]), "yes");
    assert_eq!(can_i(&["watch", "pods", "--as", "jane"]), "yes");
    assert_eq!(can_i(&["delete", "pods", "--as", "jane"]), "no");
    assert_eq!(
        can_i(&["list", "pods", "--as", "jane", "-n", "kube-system"]),
        "no"
    );
    let pods = s.ok(&k, &["get", "pods", "--as", "jane"]);
    row(&pods, "mytomcat");
    assert_stderr(
        &fails(&s, &k, &["get", "pods", "--as", "jane", "-n", "kube-system"]),
        r#"Error from server (Forbidden): pods is forbidden: User "jane" cannot list resource "pods" in API group "" in the namespace "kube-system""#,
    );
    assert_stderr(
        &fails(&s, &k, &["delete", "pod", "mytomcat", "--as", "jane"]),
        r#"Error from server (Forbidden): pods "mytomcat" is forbidden: User "jane" cannot delete resource "pods" in API group "" in the namespace "default""#,
    );
    // YAML-39: dave reads secrets in development only.
    assert_eq!(
        can_i(&["get", "secrets", "--as", "dave", "-n", "development"]),
        "yes"
    );
    assert_stderr(
        &fails(&s, &k, &["get", "secret", "mysecret", "--as", "dave"]),
        r#"Error from server (Forbidden): secrets "mysecret" is forbidden: User "dave" cannot get resource "secrets" in API group "" in the namespace "default""#,
    );
    // YAML-40: any member of group manager reads secrets everywhere.
    let user = s.ok(
        &k,
        &[
            "get",
            "secret",
            "mysecret",
            "--as",
            "someone",
            "--as-group",
            "manager",
            "-o",
            "jsonpath={.data.username}",
        ],
    );
    assert_eq!(base64_decode(&user), "admin");
    assert_eq!(can_i(&["list", "secrets", "--as", "someone", "-A"]), "no");
    assert_eq!(
        can_i(&[
            "list",
            "secrets",
            "--as",
            "someone",
            "--as-group",
            "manager",
            "-A"
        ]),
        "yes"
    );
    // YAML-41: pods/log but not pods/exec.
    assert_eq!(
        can_i(&["get", "pods", "--subresource=log", "--as", "logger"]),
        "yes"
    );
    assert_eq!(
        can_i(&["create", "pods", "--subresource=exec", "--as", "logger"]),
        "no"
    );
    // YAML-42: only the ConfigMap named my-configmap.
    assert_eq!(
        can_i(&["update", "configmaps/my-configmap", "--as", "carol"]),
        "yes"
    );
    assert_eq!(can_i(&["update", "configmaps/other", "--as", "carol"]), "no");
}
