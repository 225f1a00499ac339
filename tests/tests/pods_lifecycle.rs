//! The kubelet's lifecycle semantics on a real node, in one lab (one QEMU node booted with
//! `keel.selftest=kill-agent-on-request`, the lab registry as its docker.io mirror):
//!
//! 1. the agent is killed while pods run (a pod annotation asks PID 1 to do it): the new agent
//!    adopts the running containers — same containerIDs, same restartCounts, one set of
//!    processes per container (counted from the node's cgroups by a hostPath pod) — its probes
//!    resume, and an adopted pod is still stopped properly when deleted;
//!
//! Labs with QEMU nodes run one at a time (a machine-wide lock).

use std::time::{Duration, Instant};

use keel_e2e::*;
use serde_json::{json, Value};

const NODE: &str = "keel-1";

fn lab() -> Lab {
    let mut options = LabOptions::with_nodes(1);
    options.extra_kernel_args = format!(
        "{} keel.selftest=kill-agent-on-request",
        options.extra_kernel_args
    );
    lab_with(options)
}

fn create(lab: &Lab, pod: &Value) {
    apply(lab, &pod.to_string());
}

/// A busybox pod on the node running `script`.
fn pod(name: &str, script: &str, restart: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": {"test": "pods-lifecycle"}},
        "spec": {
            "nodeName": NODE, "restartPolicy": restart, "terminationGracePeriodSeconds": 5,
            "containers": [{"name": "main", "image": "busybox:1.35", "command": ["sh", "-c", script]}]
        }
    })
}

fn get_pod(lab: &Lab, name: &str) -> Value {
    let out = kubectl_ok(lab, &["get", "pod", name, "-o", "json"]);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("pod JSON: {e}\n{out}"))
}

/// Waits until `pred` accepts the pod's JSON; panics with the pod, its events and the console.
fn wait_pod(lab: &Lab, name: &str, what: &str, timeout: Duration, pred: impl Fn(&Value) -> bool) -> Value {
    let r = wait_for(&format!("pod {name} {what}"), timeout, || {
        match lab.kubectl(&["get", "pod", name, "-o", "json"]) {
            Ok(o) if o.success() => match serde_json::from_str::<Value>(&o.stdout) {
                Ok(p) if pred(&p) => Poll::Ready(p),
                Ok(p) => Poll::Pending(p["status"].to_string()),
                Err(e) => Poll::Pending(e.to_string()),
            },
            Ok(o) => Poll::Pending(o.stderr),
            Err(e) => Poll::Pending(e.to_string()),
        }
    });
    r.unwrap_or_else(|e| {
        let describe = lab
            .kubectl(&["describe", "pod", name])
            .map(|o| o.stdout)
            .unwrap_or_default();
        panic!(
            "{e}\n{describe}\n--- console ---\n{}",
            lab.console(NODE).unwrap_or_default()
        )
    })
}

fn container(p: &Value) -> &Value {
    &p["status"]["containerStatuses"][0]
}

fn ready(p: &Value) -> bool {
    container(p)["ready"] == true
}

fn running(p: &Value) -> bool {
    container(p)["state"]["running"].is_object()
}

/// Processes in each pod's `main` container cgroup, from `pids.current` on the node, read by
/// a one-shot hostPath pod that answers with its exit code (16 × first + second).
fn process_counts(lab: &Lab, probe: &str, uids: [&str; 2]) -> (u64, u64) {
    let script = format!(
        "a=$(cat /pods/{}/main/pids.current) && b=$(cat /pods/{}/main/pids.current) && exit $((a * 16 + b))",
        uids[0], uids[1]
    );
    let mut p = pod(probe, &script, "Never");
    p["spec"]["volumes"] =
        json!([{"name": "pods", "hostPath": {"path": "/sys/fs/cgroup/kubepods", "type": "Directory"}}]);
    p["spec"]["containers"][0]["volumeMounts"] =
        json!([{"name": "pods", "mountPath": "/pods", "readOnly": true}]);
    create(lab, &p);
    let done = wait_pod(lab, probe, "finished", POD_READY_TIMEOUT, |p| {
        container(p)["state"]["terminated"].is_object()
    });
    let code = container(&done)["state"]["terminated"]["exitCode"]
        .as_u64()
        .unwrap_or(0);
    kubectl_ok(lab, &["delete", "pod", probe, "--wait=false"]);
    (code / 16, code % 16)
}

#[test]
fn kubelet_lifecycle_on_a_node() {
    let lab = lab();

    // ---- 1. Agent restart: running containers are adopted, not duplicated. ----
    // `aging` is ready while its container is younger than 75 s (an exec readiness probe): it
    // can only turn unready if the agent that runs after the kill probes it.
    let mut aging = pod("aging", "date +%s > /tmp/start; exec sleep 3600", "Always");
    aging["spec"]["containers"][0]["readinessProbe"] = json!({
        "exec": {"command": ["sh", "-c", "test $(( $(date +%s) - $(cat /tmp/start) )) -lt 75"]},
        "periodSeconds": 2
    });
    create(&lab, &aging);
    // `steady` just runs (no exec probes: they would join its cgroup and skew the counts).
    create(&lab, &pod("steady", "exec sleep 3600", "Always"));
    // `twice` fails once, then runs: restartCount 1.
    let mut twice = pod(
        "twice",
        "if [ -f /data/ran ]; then exec sleep 3600; fi; touch /data/ran; exit 1",
        "Always",
    );
    twice["spec"]["volumes"] = json!([{"name": "data", "emptyDir": {}}]);
    twice["spec"]["containers"][0]["volumeMounts"] = json!([{"name": "data", "mountPath": "/data"}]);
    create(&lab, &twice);
    let steady_before = wait_pod(&lab, "steady", "Ready", POD_READY_TIMEOUT, ready);
    let aging_before = wait_pod(&lab, "aging", "Ready", POD_READY_TIMEOUT, ready);
    let twice_before = wait_pod(
        &lab,
        "twice",
        "running again after one failure",
        POD_READY_TIMEOUT,
        |p| running(p) && container(p)["restartCount"] == 1,
    );
    let uid = |p: &Value| p["metadata"]["uid"].as_str().unwrap_or_default().to_string();
    let uids = [uid(&steady_before), uid(&twice_before)];
    let counts_before = process_counts(&lab, "count-1", [&uids[0], &uids[1]]);
    assert!(
        counts_before.0 >= 2 && counts_before.1 >= 2,
        "helper and container process in each cgroup: {counts_before:?}"
    );

    let killed_at = Instant::now();
    kubectl_ok(
        &lab,
        &["annotate", "pod", "steady", "keel.dev/selftest-kill-agent=k1"],
    );
    wait_for(
        "PID 1 to kill and restart the agent",
        Duration::from_secs(120),
        || {
            let console = lab.console(NODE).unwrap_or_default();
            match console.find("selftest: killing the agent") {
                Some(at) if console[at..].contains("agent started") => Poll::Ready(()),
                Some(_) => Poll::Pending("killed, not restarted yet".into()),
                None => Poll::Pending("not killed yet".into()),
            }
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n--- console ---\n{}", lab.console(NODE).unwrap_or_default()));
    wait_for(
        "the new agent to adopt the three containers",
        Duration::from_secs(120),
        || {
            let console = lab.console(NODE).unwrap_or_default();
            let after = console
                .rfind("selftest: killing the agent")
                .map_or("", |at| &console[at..]);
            let adopted = ["default/steady", "default/twice", "default/aging"]
                .iter()
                .filter(|p| {
                    let head = format!("pod {p}: container main (run");
                    after
                        .lines()
                        .any(|l| l.contains(&head) && l.trim_end().ends_with(") adopted"))
                })
                .count();
            if adopted == 3 {
                Poll::Ready(())
            } else {
                Poll::Pending(format!("{adopted} adopted"))
            }
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n--- console ---\n{}", lab.console(NODE).unwrap_or_default()));
    eprintln!(
        "agent killed and pods adopted in {} ms",
        killed_at.elapsed().as_millis()
    );

    // The same containers, the same restart counts, still running, one set of processes each.
    let counts_after = process_counts(&lab, "count-2", [&uids[0], &uids[1]]);
    assert_eq!(
        counts_after, counts_before,
        "processes per container before/after the kill"
    );
    let steady_after = get_pod(&lab, "steady");
    let twice_after = get_pod(&lab, "twice");
    for (before, after) in [(&steady_before, &steady_after), (&twice_before, &twice_after)] {
        let (b, a) = (container(before), container(after));
        assert_eq!(a["containerID"], b["containerID"], "{after}");
        assert_eq!(a["restartCount"], b["restartCount"], "{after}");
        assert_eq!(
            a["state"]["running"]["startedAt"], b["state"]["running"]["startedAt"],
            "{after}"
        );
        assert_eq!(after["status"]["podIP"], before["status"]["podIP"], "{after}");
    }
    // Probes resumed: the readiness probe turns `aging` unready once it is 75 s old.
    let unready = wait_pod(
        &lab,
        "aging",
        "unready (probed by the new agent)",
        Duration::from_secs(150),
        |p| !ready(p) && running(p),
    );
    assert_eq!(
        container(&unready)["containerID"],
        container(&aging_before)["containerID"]
    );
    assert_eq!(container(&unready)["restartCount"], 0);
    // An adopted pod is stopped and removed like any other.
    let out = lab
        .kubectl(&["delete", "pod", "twice", "--timeout=60s"])
        .expect("kubectl delete");
    assert!(out.success(), "delete twice: {}", out.stderr);
}
