//! NetworkPolicy on a two-node lab, as a user applies it with kubectl.
//!
//! An echo server `web` runs on keel-2 (with an HTTP readiness probe: the node's own traffic to
//! its pods must keep passing). Four watcher pods fetch it every second and are Ready exactly
//! while their last fetch answered (an exec readiness probe on a file the loop keeps), so
//! "who reaches web" is read from `kubectl get pods`. (`timeout`, not `wget -T`: Debian's busybox
//! 1.35 wget crashes with `-T`.)
//!
//! | watcher    | node   | namespace | labels         |
//! |------------|--------|-----------|----------------|
//! | `client-1` | keel-1 | default   | `role: client` | (across the overlay)
//! | `client-2` | keel-2 | default   | `role: client` | (same node: over the bridge)
//! | `other-1`  | keel-1 | default   | `role: other`  |
//! | `team-1`   | keel-1 | team      | `role: other`  | (namespace labelled `team: a`)
//!
//! Steps: everyone reaches web; a default-deny ingress policy cuts everyone off (web stays
//! Ready); allowing `role: client` lets both clients back (and other-1 while it is relabelled
//! `role: client`: a set-element update, not a new table); allowing namespaces `team: a` on the
//! named port `http` adds team-1; an egress policy isolating the clients cuts them off again
//! (team-1 still reaches web); an egress rule to `app: web` on port `http` lets them out again;
//! deleting every policy restores everything, other-1 included. Each state must hold for a
//! while (a wrong "blocked" would flip back).
//! Printed: how long each change took to show, and how long the nodes took to program it.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use keel_e2e::*;

const WATCHERS: [(&str, &str, &str, &str); 4] = [
    ("client-1", "keel-1", "default", "client"),
    ("client-2", "keel-2", "default", "client"),
    ("other-1", "keel-1", "default", "other"),
    ("team-1", "keel-1", "team", "other"),
];
/// How long an expected state must hold before it counts.
const HOLD: Duration = Duration::from_secs(5);
/// How long a policy change may take to show in the watchers' readiness.
const CHANGE_TIMEOUT: Duration = Duration::from_secs(60);
/// What the node's network agent prints each time it programs a policy table.
const PROGRAMMED: &str = "keel: network policy v";

fn watcher(name: &str, node: &str, namespace: &str, role: &str, web_ip: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: {namespace}\n  \
         labels: {{role: {role}, watch: web}}\nspec:\n  nodeName: {node}\n  containers:\n  \
         - name: watch\n    image: busybox:1.35\n    command: [\"sh\", \"-c\", \"while true; do \
         if timeout 3 wget -q -O /dev/null http://{web_ip}:8080/; then touch /tmp/ok; \
         else rm -f /tmp/ok; fi; sleep 1; done\"]\n    readinessProbe:\n      exec:\n        \
         command: [\"test\", \"-e\", \"/tmp/ok\"]\n      periodSeconds: 1\n      failureThreshold: 1\n"
    )
}

/// Watcher name → Ready.
fn readiness(lab: &Lab) -> BTreeMap<String, bool> {
    let out = kubectl_ok(
        lab,
        &[
            "get",
            "pods",
            "-A",
            "-l",
            "watch=web",
            "-o",
            r#"jsonpath={range .items[*]}{.metadata.name}={.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}"#,
        ],
    );
    out.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(n, s)| (n.to_string(), s == "True"))
        .collect()
}

fn programmed_count(lab: &Lab, node: &str) -> usize {
    lab.console(node).unwrap_or_default().matches(PROGRAMMED).count()
}

/// The last line `node` printed when it programmed its policy table.
fn last_programmed(lab: &Lab, node: &str) -> String {
    let console = lab.console(node).unwrap_or_default();
    console
        .lines()
        .rev()
        .find(|l| l.contains(PROGRAMMED))
        .unwrap_or_default()
        .to_string()
}

/// The lines the nodes printed when they programmed their policy tables.
fn programmed_lines(lab: &Lab) -> String {
    ["keel-1", "keel-2"]
        .iter()
        .flat_map(|n| {
            lab.console(n)
                .unwrap_or_default()
                .lines()
                .filter(|l| l.contains(PROGRAMMED) || l.contains("keel: network policy:"))
                .map(|l| format!("{n}: {l}"))
                .collect::<Vec<_>>()
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Runs `change`, then waits until every watcher's readiness is as in `allowed` and stays so for
/// [`HOLD`]; prints how long the change took to show and to be programmed on `nodes`.
fn step(lab: &Lab, what: &str, nodes: &[&str], allowed: &[&str], change: impl FnOnce()) {
    let before: Vec<usize> = nodes.iter().map(|n| programmed_count(lab, n)).collect();
    let start = Instant::now();
    change();
    // Polled every 20 ms (finer than `wait_for`'s backoff): this is the figure.
    let programmed = loop {
        let now: Vec<usize> = nodes.iter().map(|n| programmed_count(lab, n)).collect();
        if now.iter().zip(&before).all(|(n, b)| n > b) {
            break start.elapsed();
        }
        assert!(
            start.elapsed() < CHANGE_TIMEOUT,
            "{what}: not programmed on {nodes:?} after {CHANGE_TIMEOUT:?} (policy lines {now:?}, before {before:?})\n{}",
            programmed_lines(lab)
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let want: BTreeMap<String, bool> = WATCHERS
        .iter()
        .map(|(n, ..)| (n.to_string(), allowed.contains(n)))
        .collect();
    let mut held_since: Option<Instant> = None;
    let mut shown = None;
    wait_for(
        &format!("{what}: reachable from exactly {allowed:?}"),
        CHANGE_TIMEOUT,
        || {
            let now = readiness(lab);
            if now != want {
                held_since = None;
                return Poll::Pending(format!("{now:?}"));
            }
            let since = *held_since.get_or_insert_with(Instant::now);
            shown.get_or_insert_with(|| start.elapsed());
            if since.elapsed() >= HOLD {
                Poll::Ready(())
            } else {
                Poll::Pending(format!("{now:?} (holding)"))
            }
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", programmed_lines(lab)));
    // The web pod's HTTP readiness probe comes from its node: never filtered.
    let web = kubectl_ok(
        lab,
        &[
            "get",
            "pod",
            "web",
            "-o",
            r#"jsonpath={.status.conditions[?(@.type=="Ready")].status}"#,
        ],
    );
    assert_eq!(web.trim(), "True", "{what}: the node's probe of web was blocked");
    eprintln!(
        "net_policy: {what}: programmed on {nodes:?} {} ms after kubectl returned; shown by the watchers after {} ms",
        programmed.as_millis(),
        shown.unwrap_or_default().as_millis()
    );
}

#[test]
fn network_policies_allow_and_deny_traffic_between_pods() {
    let lab = lab_with_ready_nodes(2);
    apply(
        &lab,
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: team\n  labels: {team: a}\n---\n\
         apiVersion: v1\nkind: Pod\nmetadata:\n  name: web\n  labels: {app: web}\nspec:\n  \
         nodeName: keel-2\n  containers:\n  - name: echo\n    image: keel/echo:latest\n    ports:\n    \
         - {name: http, containerPort: 8080}\n    readinessProbe:\n      httpGet: {path: /, port: http}\n      \
         periodSeconds: 1\n",
    );
    wait_pod_ready(&lab, "default", "web");
    let web_ip = kubectl_ok(&lab, &["get", "pod", "web", "-o", "jsonpath={.status.podIP}"]);
    let web_ip = web_ip.trim();
    assert!(web_ip.starts_with("10.244."), "{web_ip}");
    let manifests: Vec<String> = WATCHERS
        .iter()
        .map(|(name, node, ns, role)| watcher(name, node, ns, role, web_ip))
        .collect();
    apply(&lab, &manifests.join("---\n"));
    for (name, _, ns, _) in WATCHERS {
        wait_pod_ready(&lab, ns, name);
    }
    let everyone = ["client-1", "client-2", "other-1", "team-1"];
    step(&lab, "no policy", &[], &everyone, || {});

    step(&lab, "default deny ingress", &["keel-1", "keel-2"], &[], || {
        apply(
            &lab,
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: deny\nspec:\n  \
             podSelector: {}\n  policyTypes: [Ingress]\n",
        );
    });
    step(
        &lab,
        "allow role=client",
        &["keel-2"],
        &["client-1", "client-2"],
        || {
            apply(
            &lab,
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: from-clients\nspec:\n  \
             podSelector: {matchLabels: {app: web}}\n  ingress:\n  - from:\n    \
             - podSelector: {matchLabels: {role: client}}\n",
        );
        },
    );
    // A pod joining a peer set changes set elements only (keel-2's peer set of the rule).
    step(
        &lab,
        "other-1 relabelled role=client",
        &["keel-2"],
        &["client-1", "client-2", "other-1"],
        || {
            kubectl_ok(&lab, &["label", "pod", "other-1", "role=client", "--overwrite"]);
        },
    );
    let last = last_programmed(&lab, "keel-2");
    assert!(
        last.contains("sets updated"),
        "a peer change rebuilt the table: {last}"
    );
    step(
        &lab,
        "other-1 relabelled back",
        &["keel-2"],
        &["client-1", "client-2"],
        || {
            kubectl_ok(&lab, &["label", "pod", "other-1", "role=other", "--overwrite"]);
        },
    );
    step(
        &lab,
        "allow namespaces team=a",
        &["keel-2"],
        &["client-1", "client-2", "team-1"],
        || {
            apply(
                &lab,
                "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: from-team\nspec:\n  \
                 podSelector: {matchLabels: {app: web}}\n  ingress:\n  - from:\n    \
                 - namespaceSelector: {matchLabels: {team: a}}\n    ports:\n    - port: http\n",
            );
        },
    );
    step(
        &lab,
        "egress of role=client denied",
        &["keel-1", "keel-2"],
        &["team-1"],
        || {
            apply(
                &lab,
                "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: clients-out\nspec:\n  \
                 podSelector: {matchLabels: {role: client}}\n  policyTypes: [Egress]\n",
            );
        },
    );
    step(
        &lab,
        "egress to app=web on port http",
        &["keel-1", "keel-2"],
        &["client-1", "client-2", "team-1"],
        || {
            apply(
                &lab,
                "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: clients-to-web\nspec:\n  \
                 podSelector: {matchLabels: {role: client}}\n  egress:\n  - to:\n    \
                 - podSelector: {matchLabels: {app: web}}\n    ports:\n    - {protocol: TCP, port: http}\n",
            );
        },
    );
    step(
        &lab,
        "every policy deleted",
        &["keel-1", "keel-2"],
        &everyone,
        || {
            kubectl_ok(&lab, &["delete", "networkpolicy", "--all"]);
        },
    );
    eprintln!("{}", programmed_lines(&lab));
}
