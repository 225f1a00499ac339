//! Services and cluster DNS on a three-node lab, as a user sees them (one lab for every check):
//!
//! * the seed smoke test: `kubectl create deployment web --image=keel/echo --replicas=3`,
//!   `kubectl expose deployment web --port=80 --target-port=8080 --type=NodePort`; every node's
//!   NodePort answers from the host, and across the fetches every replica (one per node)
//!   answers, whichever node was asked (externalTrafficPolicy Cluster: masqueraded);
//! * a pod on keel-1 fetches a pod on keel-2 by its pod IP and the Service by its ClusterIP;
//! * cluster DNS from pods (busybox `nslookup` through the pod's resolv.conf, dnsPolicy
//!   ClusterFirst; names with a dot through the C library's resolver, as busybox's nslookup
//!   skips the search path for them): `web`, `web.default`, `web.default.svc.cluster.local`,
//!   `kubernetes.default`,
//!   a headless Service (its pods' IPs), a StatefulSet pod's name through it, an SRV record of a
//!   named port, NXDOMAIN for an unknown cluster name; dnsPolicy None takes only dnsConfig;
//! * readiness: a pod whose readiness probe fails leaves the rotation behind a NodePort and
//!   comes back once it passes again;
//! * partition: a node cut off the lab segment cannot be reached at its pod IPs from the others,
//!   and can again once healed; a killed node goes NotReady, its pods turn not ready and its
//!   endpoint leaves the rotation;
//! * `type: LoadBalancer` is `<pending>` with a healthCheckNodePort; its
//!   externalTrafficPolicy Local NodePort answers only from the node's own replica and keeps the
//!   client's address (Cluster masquerades); sessionAffinity ClientIP keeps one client on one
//!   replica; a multi-port Service with named targetPorts, a pod reaching itself through its
//!   Service (hairpin) and a selector-less Service with manual Endpoints work.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use keel_e2e::*;

const NODES: [&str; 3] = ["keel-1", "keel-2", "keel-3"];

fn jsonpath(lab: &Lab, args: &[&str]) -> String {
    kubectl_ok(lab, args).trim().to_string()
}

/// The pods of `selector` that are Ready: name → (node, pod IP).
fn ready_pods(lab: &Lab, selector: &str) -> BTreeMap<String, (String, String)> {
    let out = jsonpath(
        lab,
        &[
            "get",
            "pods",
            "-l",
            selector,
            "-o",
            r#"jsonpath={range .items[*]}{.metadata.name} {.spec.nodeName} {.status.podIP} {.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}"#,
        ],
    );
    out.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() == 4 && f[3] == "True").then(|| (f[0].to_string(), (f[1].to_string(), f[2].to_string())))
        })
        .collect()
}

/// Runs a `restartPolicy: Never` busybox pod `name` on `node` with `script`; its phase is the
/// answer. Returns at once; see [`wait_checks`].
fn start_check(lab: &Lab, name: &str, node: &str, script: &str) {
    let script = script.replace('\\', "\\\\").replace('"', "\\\"");
    apply(
        lab,
        &format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  labels: {{role: check}}\nspec:\n  \
             nodeName: {node}\n  restartPolicy: Never\n  containers:\n  - name: check\n    \
             image: busybox:1.35\n    command: [\"sh\", \"-c\", \"{script}\"]\n"
        ),
    );
}

/// Waits for every check pod of `names` to finish; panics naming those that failed.
fn wait_checks(lab: &Lab, names: &[&str]) {
    let mut failed = Vec::new();
    for name in names {
        let phase = wait_for(
            &format!("check {name} to finish"),
            POD_READY_TIMEOUT,
            || match jsonpath(lab, &["get", "pod", name, "-o", "jsonpath={.status.phase}"]).as_str() {
                p @ ("Succeeded" | "Failed") => Poll::Ready(p.to_string()),
                other => Poll::Pending(other.to_string()),
            },
        )
        .unwrap_or_else(|e| panic!("{e}"));
        if phase != "Succeeded" {
            failed.push(*name);
        }
    }
    if !failed.is_empty() {
        let consoles: String = NODES
            .iter()
            .map(|n| {
                let text = lab.console(n).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(30).collect();
                format!(
                    "--- {n} ---\n{}\n",
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                )
            })
            .collect();
        panic!("checks failed: {failed:?}\n{consoles}");
    }
}

/// `nslookup` of `name` until an answer line holds `ip` (30 tries, a second apart).
fn lookup(name: &str, ip: &str) -> String {
    format!(
        "for i in $(seq 30); do nslookup {name} | grep -qE '^Address:[[:space:]]+{ip}$' && exit 0; sleep 1; done; \
         nslookup {name}; cat /etc/resolv.conf; exit 1"
    )
}

/// Resolves `name` through the C library's resolver (busybox `wget`, which prints
/// `Connecting to NAME (IP:80)` once resolved) until it gives `ip`: busybox's `nslookup` applies
/// the search path only to names without a dot, the C library to names with fewer than ndots.
fn resolve(name: &str, ip: &str) -> String {
    format!(
        "for i in $(seq 30); do timeout 5 wget -O /dev/null http://{name}/ 2>&1 | \
         grep -qF 'Connecting to {name} ({ip}:80)' && exit 0; sleep 1; done; exit 1"
    )
}

/// `wget` of `url` until its answer contains `needle` (60 tries, a second apart).
fn fetch_until(url: &str, needle: &str) -> String {
    format!("for i in $(seq 60); do wget -q -O- {url} | grep -q '{needle}' && exit 0; sleep 1; done; exit 1")
}

/// Which pods answer `count` fetches of `node`'s NodePort `port` from the host (failed fetches
/// are counted under `""`).
fn answers(lab: &Lab, node: &str, port: u16, count: usize) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    let Some(addr) = lab.nodeport(node, port) else {
        return out;
    };
    for _ in 0..count {
        let pod = match http_get(addr, "/") {
            Ok(r) if r.status == 200 => r
                .body
                .split_whitespace()
                .find_map(|w| w.strip_prefix("pod="))
                .unwrap_or_default()
                .to_string(),
            _ => String::new(),
        };
        *out.entry(pod).or_default() += 1;
    }
    out
}

/// An echo pod on `node` labelled `app: flappy` whose readiness follows `/tmp/unready`, which
/// `GET /cgi-bin/unready` creates and `GET /cgi-bin/ready` removes.
fn flappy_pod(name: &str, node: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: {name}
  labels: {{app: flappy}}
spec:
  nodeName: {node}
  containers:
  - name: echo
    image: keel/echo:latest
    command:
    - sh
    - -c
    - |
      mkdir -p /tmp/www/cgi-bin
      cp /echo/www/cgi-bin/index.cgi /tmp/www/cgi-bin/
      printf '#!/bin/sh\ntouch /tmp/unready\nprintf "Content-Type: text/plain\\r\\n\\r\\nunready\\n"\n' > /tmp/www/cgi-bin/unready
      printf '#!/bin/sh\nrm -f /tmp/unready\nprintf "Content-Type: text/plain\\r\\n\\r\\nready\\n"\n' > /tmp/www/cgi-bin/ready
      chmod +x /tmp/www/cgi-bin/*
      exec httpd -f -p 8080 -h /tmp/www
    readinessProbe:
      exec:
        command: [sh, -c, "test ! -f /tmp/unready"]
      periodSeconds: 1
      failureThreshold: 1
"#
    )
}

#[test]
fn services_node_ports_and_dns_on_three_nodes() {
    let mut options = LabOptions::with_nodes(3);
    // A killed node is NotReady 10 s after its last heartbeat (its endpoints drop then).
    options.node_grace_period = Some("10s".into());
    let mut lab = lab_with(options);

    // --- The seed smoke test ---
    kubectl_ok(
        &lab,
        &[
            "create",
            "deployment",
            "web",
            "--image=keel/echo:latest",
            "--replicas=3",
        ],
    );
    kubectl_ok(
        &lab,
        &[
            "expose",
            "deployment",
            "web",
            "--port=80",
            "--target-port=8080",
            "--type=NodePort",
        ],
    );
    let node_port: u16 = jsonpath(
        &lab,
        &[
            "get",
            "service",
            "web",
            "-o",
            "jsonpath={.spec.ports[0].nodePort}",
        ],
    )
    .parse()
    .expect("web has a nodePort");
    let cluster_ip = jsonpath(
        &lab,
        &["get", "service", "web", "-o", "jsonpath={.spec.clusterIP}"],
    );
    let replicas = wait_for("three web replicas Ready", POD_READY_TIMEOUT, || {
        let pods = ready_pods(&lab, "app=web");
        if pods.len() == 3 {
            Poll::Ready(pods)
        } else {
            Poll::Pending(format!("{pods:?}"))
        }
    })
    .unwrap_or_else(|e| {
        panic!(
            "{e}\n{}",
            lab.kubectl(&["get", "pods", "-o", "wide"])
                .map(|o| o.stdout)
                .unwrap_or_default()
        )
    });
    let nodes_with_replicas: BTreeSet<&str> = replicas.values().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        nodes_with_replicas,
        NODES.into_iter().collect(),
        "the scheduler spreads the replicas: {replicas:?}"
    );

    // Every node's NodePort answers from the host, and across the fetches every replica does.
    let mut answered: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let seen = wait_for(
        "every replica through every node's NodePort",
        Duration::from_secs(120),
        || {
            for node in NODES {
                let Some(addr) = lab.nodeport(node, node_port) else {
                    return Poll::Pending(format!("the lab forwards no NodePort {node_port} of {node}"));
                };
                match http_get(addr, "/") {
                    Ok(r) if r.status == 200 => {
                        let pod = r
                            .body
                            .split_whitespace()
                            .find_map(|w| w.strip_prefix("pod="))
                            .unwrap_or_default()
                            .to_string();
                        answered.entry(node.to_string()).or_default().insert(pod);
                    }
                    Ok(r) => return Poll::Pending(format!("{node}: HTTP {} {}", r.status, r.body)),
                    Err(e) => return Poll::Pending(format!("{node}: {e}")),
                }
            }
            let all: BTreeSet<&String> = answered.values().flatten().collect();
            if answered.len() == NODES.len() && replicas.keys().all(|p| all.contains(p)) {
                Poll::Ready(answered.clone())
            } else {
                Poll::Pending(format!("answers so far: {answered:?}"))
            }
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", lab.logs(40)));
    for (node, pods) in &seen {
        assert!(
            pods.iter().all(|p| replicas.contains_key(p)),
            "{node}'s NodePort answered from a pod that is not a replica: {pods:?}"
        );
    }

    // A pod on keel-1 reaches a replica on keel-2 by its pod IP and the Service by its ClusterIP.
    let (on_2, (_, ip_2)) = replicas
        .iter()
        .find(|(_, (n, _))| n == "keel-2")
        .expect("a replica on keel-2");
    start_check(
        &lab,
        "pod-to-pod",
        "keel-1",
        &fetch_until(&format!("http://{ip_2}:8080/"), &format!("pod={on_2}")),
    );
    start_check(
        &lab,
        "pod-to-clusterip",
        "keel-1",
        &fetch_until(&format!("http://{cluster_ip}/"), "pod=web-"),
    );
    wait_checks(&lab, &["pod-to-pod", "pod-to-clusterip"]);

    // --- Cluster DNS ---
    apply(
        &lab,
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: db\nspec:\n  clusterIP: None\n  selector: {app: db}\n  \
         ports:\n  - name: echo\n    port: 8080\n---\napiVersion: apps/v1\nkind: StatefulSet\nmetadata:\n  name: db\nspec:\n  \
         serviceName: db\n  replicas: 2\n  selector:\n    matchLabels: {app: db}\n  template:\n    metadata:\n      \
         labels: {app: db}\n    spec:\n      containers:\n      - name: echo\n        image: keel/echo:latest\n",
    );
    // Settled (every pod of the current revision and ready) before its pods' addresses are read.
    kubectl_ok(&lab, &["rollout", "status", "statefulset/db", "--timeout=180s"]);
    let db = wait_for("two db replicas Ready", POD_READY_TIMEOUT, || {
        let pods = ready_pods(&lab, "app=db");
        if pods.len() == 2 {
            Poll::Ready(pods)
        } else {
            Poll::Pending(format!("{pods:?}"))
        }
    })
    .unwrap_or_else(|e| panic!("{e}"));
    let db0_ip = &db.get("db-0").expect("a pod db-0").1;
    let db1_ip = &db.get("db-1").expect("a pod db-1").1;
    let checks: Vec<(&str, String)> = vec![
        (
            "resolv-conf",
            "grep -qx 'nameserver 10.96.0.10' /etc/resolv.conf && \
             grep -q '^search default.svc.cluster.local svc.cluster.local cluster.local' /etc/resolv.conf && \
             grep -qx 'options ndots:5' /etc/resolv.conf || { cat /etc/resolv.conf; exit 1; }"
                .to_string(),
        ),
        ("dns-short", lookup("web", &cluster_ip)),
        ("dns-namespace", resolve("web.default", &cluster_ip)),
        ("dns-full", lookup("web.default.svc.cluster.local", &cluster_ip)),
        ("dns-kubernetes", resolve("kubernetes.default", "10.96.0.1")),
        (
            "dns-kubernetes-full",
            lookup("kubernetes.default.svc.cluster.local", "10.96.0.1"),
        ),
        ("dns-headless-0", lookup("db", db0_ip)),
        ("dns-headless-1", lookup("db.default.svc.cluster.local", db1_ip)),
        ("dns-statefulset", resolve("db-0.db", db0_ip)),
        (
            "dns-srv",
            "for i in $(seq 30); do nslookup -type=srv _echo._tcp.db.default.svc.cluster.local | \
             grep -q '8080 db-1.db.default.svc.cluster.local' && exit 0; sleep 1; done; \
             nslookup -type=srv _echo._tcp.db.default.svc.cluster.local; exit 1"
                .to_string(),
        ),
        (
            "dns-nxdomain",
            "nslookup nope.default.svc.cluster.local 2>&1 | grep -q NXDOMAIN || \
             { nslookup nope.default.svc.cluster.local; exit 1; }"
                .to_string(),
        ),
    ];
    for (i, (name, script)) in checks.iter().enumerate() {
        start_check(&lab, name, NODES[i % NODES.len()], script);
    }
    apply(
        &lab,
        r#"apiVersion: v1
kind: Pod
metadata:
  name: dns-none
spec:
  nodeName: keel-2
  restartPolicy: Never
  dnsPolicy: None
  dnsConfig:
    nameservers: [192.0.2.53]
    searches: [my.search]
    options: [{name: ndots, value: "2"}]
  containers:
  - name: check
    image: busybox:1.35
    command:
    - sh
    - -c
    - |
      want='nameserver 192.0.2.53
      search my.search
      options ndots:2'
      test "$(cat /etc/resolv.conf)" = "$want" || { cat /etc/resolv.conf; exit 1; }
"#,
    );
    let mut names: Vec<&str> = checks.iter().map(|(n, _)| *n).collect();
    names.push("dns-none");
    wait_checks(&lab, &names);

    // --- Readiness: out of the rotation while the probe fails, back when it passes ---
    apply(&lab, &flappy_pod("flappy-a", "keel-1"));
    apply(&lab, &flappy_pod("flappy-b", "keel-2"));
    kubectl_ok(
        &lab,
        &[
            "expose",
            "pod",
            "flappy-a",
            "--name=flappy",
            "--selector=app=flappy",
            "--port=80",
            "--target-port=8080",
            "--type=NodePort",
        ],
    );
    let flappy_port: u16 = jsonpath(
        &lab,
        &[
            "get",
            "service",
            "flappy",
            "-o",
            "jsonpath={.spec.ports[0].nodePort}",
        ],
    )
    .parse()
    .expect("flappy has a nodePort");
    let flappy = wait_for("both flappy pods Ready", POD_READY_TIMEOUT, || {
        let pods = ready_pods(&lab, "app=flappy");
        if pods.len() == 2 {
            Poll::Ready(pods)
        } else {
            Poll::Pending(format!("{pods:?}"))
        }
    })
    .unwrap_or_else(|e| panic!("{e}"));
    let a_ip = flappy["flappy-a"].1.clone();
    // Through keel-3, where neither runs: both answer.
    wait_for(
        "both flappy pods behind keel-3's NodePort",
        Duration::from_secs(60),
        || {
            let seen = answers(&lab, "keel-3", flappy_port, 10);
            if seen.contains_key("flappy-a") && seen.contains_key("flappy-b") {
                Poll::Ready(())
            } else {
                Poll::Pending(format!("{seen:?}"))
            }
        },
    )
    .unwrap_or_else(|e| panic!("{e}"));
    start_check(
        &lab,
        "make-unready",
        "keel-3",
        &fetch_until(&format!("http://{a_ip}:8080/cgi-bin/unready"), "unready"),
    );
    wait_checks(&lab, &["make-unready"]);
    wait_for(
        "flappy-a listed not ready in its Endpoints",
        Duration::from_secs(60),
        || {
            let not_ready = jsonpath(
                &lab,
                &[
                    "get",
                    "endpoints",
                    "flappy",
                    "-o",
                    "jsonpath={.subsets[*].notReadyAddresses[*].ip}",
                ],
            );
            if not_ready.split_whitespace().any(|ip| ip == a_ip) {
                Poll::Ready(())
            } else {
                Poll::Pending(not_ready)
            }
        },
    )
    .unwrap_or_else(|e| panic!("{e}"));
    wait_for("flappy-a out of the rotation", Duration::from_secs(30), || {
        let seen = answers(&lab, "keel-3", flappy_port, 20);
        if seen.len() == 1 && seen.get("flappy-b") == Some(&20) {
            Poll::Ready(())
        } else {
            Poll::Pending(format!("{seen:?}"))
        }
    })
    .unwrap_or_else(|e| panic!("{e}"));
    start_check(
        &lab,
        "make-ready",
        "keel-3",
        &fetch_until(&format!("http://{a_ip}:8080/cgi-bin/ready"), "ready"),
    );
    wait_checks(&lab, &["make-ready"]);
    wait_for("flappy-a back in the rotation", Duration::from_secs(60), || {
        let seen = answers(&lab, "keel-3", flappy_port, 10);
        if seen.contains_key("flappy-a") && seen.contains_key("flappy-b") {
            Poll::Ready(())
        } else {
            Poll::Pending(format!("{seen:?}"))
        }
    })
    .unwrap_or_else(|e| panic!("{e}"));

    // --- Partition: keel-2 cut off the lab segment, then healed ---
    lab.cut_node("keel-2").expect("cut keel-2");
    start_check(
        &lab,
        "cut-unreachable",
        "keel-1",
        &format!("! timeout 5 wget -q -O- http://{ip_2}:8080/"),
    );
    wait_checks(&lab, &["cut-unreachable"]);
    lab.heal_node("keel-2").expect("heal keel-2");
    start_check(
        &lab,
        "healed-reachable",
        "keel-1",
        &fetch_until(&format!("http://{ip_2}:8080/"), &format!("pod={on_2}")),
    );
    wait_checks(&lab, &["healed-reachable"]);

    // --- externalTrafficPolicy Local on a LoadBalancer (pending: no load-balancer source) ---
    apply(
        &lab,
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: web-lb\nspec:\n  type: LoadBalancer\n  \
         externalTrafficPolicy: Local\n  selector: {app: web}\n  ports:\n  - port: 80\n    targetPort: 8080\n",
    );
    let lb = kubectl_ok(&lab, &["get", "service", "web-lb"]);
    let row: Vec<&str> = lb.lines().nth(1).unwrap_or_default().split_whitespace().collect();
    assert_eq!(row.get(1), Some(&"LoadBalancer"), "{lb}");
    assert_eq!(row.get(3), Some(&"<pending>"), "EXTERNAL-IP: {lb}");
    let health: u16 = jsonpath(
        &lab,
        &[
            "get",
            "service",
            "web-lb",
            "-o",
            "jsonpath={.spec.healthCheckNodePort}",
        ],
    )
    .parse()
    .expect("web-lb has a healthCheckNodePort");
    let lb_port: u16 = jsonpath(
        &lab,
        &[
            "get",
            "service",
            "web-lb",
            "-o",
            "jsonpath={.spec.ports[0].nodePort}",
        ],
    )
    .parse()
    .expect("web-lb has a nodePort");
    assert_ne!(health, lb_port);
    let (on_1, _) = replicas
        .iter()
        .find(|(_, (n, _))| n == "keel-1")
        .expect("a replica on keel-1");
    let client_of = |body: &str| {
        body.split_whitespace()
            .find_map(|w| w.strip_prefix("client="))
            .unwrap_or_default()
            .to_string()
    };
    wait_for(
        "web-lb's NodePort on keel-1 answers from keel-1's replica only, unmasqueraded",
        Duration::from_secs(60),
        || {
            let addr = lab.nodeport("keel-1", lb_port).expect("forwarded");
            let mut seen = Vec::new();
            for _ in 0..10 {
                match http_get(addr, "/") {
                    Ok(r) if r.status == 200 => seen.push(r.body),
                    other => return Poll::Pending(format!("{other:?}")),
                }
            }
            if seen
                .iter()
                .all(|b| b.contains(&format!("pod={on_1} ")) && !client_of(b).starts_with("10.244."))
            {
                Poll::Ready(())
            } else {
                Poll::Pending(format!("{seen:?}"))
            }
        },
    )
    .unwrap_or_else(|e| panic!("{e}"));
    // Policy Cluster (web) masquerades: the replica sees a node's pod-network address.
    let body = http_get(lab.nodeport("keel-1", node_port).expect("forwarded"), "/")
        .expect("web's NodePort")
        .body;
    assert!(
        client_of(&body).starts_with("10.244."),
        "policy Cluster is masqueraded: {body}"
    );

    // --- sessionAffinity ClientIP: every fetch from the host lands on the same replica ---
    apply(
        &lab,
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: web-sticky\nspec:\n  type: NodePort\n  \
         sessionAffinity: ClientIP\n  sessionAffinityConfig:\n    clientIP: {timeoutSeconds: 600}\n  \
         selector: {app: web}\n  ports:\n  - port: 80\n    targetPort: 8080\n",
    );
    let sticky_port: u16 = jsonpath(
        &lab,
        &[
            "get",
            "service",
            "web-sticky",
            "-o",
            "jsonpath={.spec.ports[0].nodePort}",
        ],
    )
    .parse()
    .expect("web-sticky has a nodePort");
    wait_for("web-sticky answering", Duration::from_secs(60), || {
        let seen = answers(&lab, "keel-2", sticky_port, 1);
        if seen.contains_key("") {
            Poll::Pending(format!("{seen:?}"))
        } else {
            Poll::Ready(())
        }
    })
    .unwrap_or_else(|e| panic!("{e}"));
    let seen = answers(&lab, "keel-2", sticky_port, 12);
    assert_eq!(seen.len(), 1, "one replica for one client: {seen:?}");

    // --- Multi-port with named targetPorts, hairpin, a selector-less Service ---
    let replica_1_ip = &replicas[on_1].1;
    apply(
        &lab,
        &format!(
            r#"apiVersion: v1
kind: Pod
metadata:
  name: multi
  labels: {{app: multi}}
spec:
  nodeName: keel-2
  containers:
  - name: one
    image: keel/echo:latest
    ports: [{{name: web-one, containerPort: 8080}}]
  - name: two
    image: keel/echo:latest
    env: [{{name: PORT, value: "9090"}}]
    ports: [{{name: web-two, containerPort: 9090}}]
---
apiVersion: v1
kind: Service
metadata:
  name: multi
spec:
  selector: {{app: multi}}
  ports:
  - {{name: one, port: 80, targetPort: web-one}}
  - {{name: two, port: 81, targetPort: web-two}}
---
apiVersion: v1
kind: Service
metadata:
  name: hairpin
spec:
  selector: {{app: hairpin}}
  ports:
  - {{port: 80, targetPort: 8080}}
---
apiVersion: v1
kind: Pod
metadata:
  name: hairpin
  labels: {{app: hairpin}}
spec:
  nodeName: keel-1
  restartPolicy: Never
  containers:
  - name: echo
    image: keel/echo:latest
    command:
    - sh
    - -c
    - |
      /echo/serve &
      for i in $(seq 90); do wget -q -O- http://hairpin.default/ | grep -q 'pod=hairpin ' && exit 0; sleep 1; done
      exit 1
---
apiVersion: v1
kind: Service
metadata:
  name: manual
spec:
  ports:
  - {{port: 80}}
---
apiVersion: v1
kind: Endpoints
metadata:
  name: manual
subsets:
- addresses: [{{ip: "{replica_1_ip}"}}]
  ports: [{{port: 8080}}]
"#
        ),
    );
    start_check(
        &lab,
        "multi-one",
        "keel-1",
        &fetch_until("http://multi:80/", "pod=multi "),
    );
    start_check(
        &lab,
        "multi-two",
        "keel-1",
        &fetch_until("http://multi:81/", "pod=multi "),
    );
    // (A pod's own name resolves to itself through its /etc/hosts: the checks are named apart
    // from the Services they fetch, and the hairpin pod asks for `hairpin.default`.)
    start_check(
        &lab,
        "manual-1",
        "keel-1",
        &fetch_until("http://manual/", &format!("pod={on_1} ")),
    );
    start_check(
        &lab,
        "manual-3",
        "keel-3",
        &fetch_until("http://manual/", &format!("pod={on_1} ")),
    );
    start_check(
        &lab,
        "clusterip-3",
        "keel-3",
        &fetch_until(&format!("http://{cluster_ip}/"), "pod=web-"),
    );
    wait_checks(
        &lab,
        &[
            "multi-one",
            "multi-two",
            "manual-1",
            "hairpin",
            "manual-3",
            "clusterip-3",
        ],
    );

    // --- A killed node: NotReady, its pods not ready, its endpoint out of the rotation ---
    let (on_3, (_, ip_3)) = replicas
        .iter()
        .find(|(_, (n, _))| n == "keel-3")
        .expect("a replica on keel-3");
    lab.kill_node("keel-3").expect("kill keel-3");
    lab.wait_node_ready("keel-3", false, Duration::from_secs(90))
        .expect("keel-3 NotReady");
    wait_for(
        &format!("{on_3} out of web's ready addresses"),
        Duration::from_secs(60),
        || {
            let ready = jsonpath(
                &lab,
                &[
                    "get",
                    "endpoints",
                    "web",
                    "-o",
                    "jsonpath={.subsets[*].addresses[*].ip}",
                ],
            );
            if ready.split_whitespace().any(|ip| ip == ip_3) {
                Poll::Pending(ready)
            } else {
                Poll::Ready(())
            }
        },
    )
    .unwrap_or_else(|e| panic!("{e}"));
    wait_for(
        "only the live replicas behind keel-1's NodePort",
        Duration::from_secs(30),
        || {
            let seen = answers(&lab, "keel-1", node_port, 20);
            if seen.keys().all(|p| !p.is_empty() && p != on_3) {
                Poll::Ready(())
            } else {
                Poll::Pending(format!("{seen:?}"))
            }
        },
    )
    .unwrap_or_else(|e| panic!("{e}"));
}
