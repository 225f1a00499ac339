//! The kubelet's lifecycle semantics on a real node, in one lab (one QEMU node booted with
//! `keel.selftest=kill-agent-on-request`, the lab registry as its docker.io mirror):
//!
//! 1. the agent is killed while pods run (a pod annotation asks PID 1 to do it): the new agent
//!    adopts the running containers — same containerIDs, same restartCounts, one set of
//!    processes per container (counted from the node's cgroups by a hostPath pod) — its probes
//!    resume, and an adopted pod is still stopped properly when deleted;
//!
//! 2. graceful deletion timing (preStop exec and httpGet hooks, SIGTERM, SIGKILL at the grace
//!    period), postStart, an OOM-killed memory hog restarted, and the seed examples pods_run
//!    does not cover (two containers over localhost, Secret env and files, downwardAPI volume,
//!    hostPath, cpu requests) and an emptyDir in memory with a size limit;
//! 3. image pull secrets against the lab registry's credential gate (Basic and bearer token);
//!    a ConfigMap update reaching a running container's volume;
//! 4. a reboot: the node starts its pods again and restart counts go on.
//!
//! Labs with QEMU nodes run one at a time (a machine-wide lock).

use std::time::{Duration, Instant};

use keel_e2e::*;
use serde_json::{json, Value};

const NODE: &str = "keel-1";
const REGISTRY_USER: &str = "keel";
const REGISTRY_PASSWORD: &str = "pull-s3cret";

fn lab() -> Lab {
    let mut options = LabOptions::with_nodes(1);
    options.extra_kernel_args = format!(
        "{} keel.selftest=kill-agent-on-request",
        options.extra_kernel_args
    );
    options.registry_auth = Some((REGISTRY_USER.into(), REGISTRY_PASSWORD.into()));
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
    graceful_termination_hooks_oom_and_seeds(&lab);
    registry_credentials(&lab);
    configmap_updates_reach_running_containers(&lab);

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

    // ---- Reboot: the node starts its pods again, restart counts go on. ----
    kubectl_ok(&lab, &["delete", "pod", "aging", "--wait=false"]);
    let before = get_pod(&lab, "steady");
    let mut lab = lab;
    let rebooted_at = Instant::now();
    lab.restart_node(NODE).expect("restart the node");
    let again = wait_pod(
        &lab,
        "steady",
        "running again after the reboot",
        NODE_READY_TIMEOUT + POD_READY_TIMEOUT,
        |p| running(p) && container(p)["restartCount"] == 1,
    );
    eprintln!(
        "node rebooted and steady running again in {} ms",
        rebooted_at.elapsed().as_millis()
    );
    let c = container(&again);
    assert_ne!(c["containerID"], container(&before)["containerID"], "{again}");
    assert_eq!(
        c["lastState"]["terminated"]["reason"], "ContainerStatusUnknown",
        "{again}"
    );
}

/// Step 3: images from repositories that need credentials (the lab registry's gate: HTTP Basic
/// for `private/basic/…`, bearer tokens for `private/token/…`), through the docker.io mirror:
/// without an image pull secret ErrImagePull/ImagePullBackOff with containerd's words, with a
/// `kubernetes.io/dockerconfigjson` secret Running.
fn registry_credentials(lab: &Lab) {
    let image_pod = |name: &str, image: &str, secret: bool| {
        let mut p = pod(name, "exec sleep 3600", "Always");
        p["spec"]["containers"][0]["image"] = json!(image);
        if secret {
            p["spec"]["imagePullSecrets"] = json!([{"name": "regcred"}]);
        }
        p
    };
    create(
        lab,
        &image_pod("basic-nosecret", "private/basic/busybox:1.35", false),
    );
    create(
        lab,
        &image_pod("token-nosecret", "private/token/busybox:1.35", false),
    );
    for (name, words) in [
        (
            "basic-nosecret",
            "pull access denied, repository does not exist or may require authorization",
        ),
        (
            "token-nosecret",
            "failed to authorize: failed to fetch anonymous token",
        ),
    ] {
        let p = wait_pod(lab, name, "refused by the registry", POD_READY_TIMEOUT, |p| {
            let w = &container(p)["state"]["waiting"];
            matches!(w["reason"].as_str(), Some("ErrImagePull" | "ImagePullBackOff"))
                && w["message"].as_str().is_some_and(|m| m.contains(words))
        });
        eprintln!("{name}: {}", container(&p)["state"]["waiting"]);
    }
    kubectl_ok(
        lab,
        &[
            "create",
            "secret",
            "docker-registry",
            "regcred",
            "--docker-server=docker.io",
            &format!("--docker-username={REGISTRY_USER}"),
            &format!("--docker-password={REGISTRY_PASSWORD}"),
        ],
    );
    create(
        lab,
        &image_pod("basic-secret", "private/basic/busybox:1.35", true),
    );
    create(
        lab,
        &image_pod("token-secret", "private/token/busybox:1.35", true),
    );
    for name in ["basic-secret", "token-secret"] {
        let p = wait_pod(
            lab,
            name,
            "Running with the pull secret",
            POD_READY_TIMEOUT,
            running,
        );
        assert!(
            container(&p)["imageID"]
                .as_str()
                .is_some_and(|i| i.contains("private/") && i.contains("@sha256:")),
            "{p}"
        );
    }
    for name in ["basic-nosecret", "token-nosecret", "basic-secret", "token-secret"] {
        kubectl_ok(lab, &["delete", "pod", name, "--wait=false"]);
    }
}

/// A ConfigMap changed while a container that mounts it runs: the container sees the new value
/// (it exits 0 once it does).
fn configmap_updates_reach_running_containers(lab: &Lab) {
    kubectl_ok(lab, &["create", "configmap", "live", "--from-literal=v=1"]);
    let mut p = pod(
        "cm-watch",
        "test \"$(cat /cfg/v)\" = 1 || exit 2; while [ \"$(cat /cfg/v)\" != 2 ]; do sleep 1; done",
        "Never",
    );
    p["spec"]["volumes"] = json!([{"name": "cfg", "configMap": {"name": "live"}}]);
    p["spec"]["containers"][0]["volumeMounts"] = json!([{"name": "cfg", "mountPath": "/cfg"}]);
    create(lab, &p);
    wait_pod(lab, "cm-watch", "Running", POD_READY_TIMEOUT, running);
    kubectl_ok(
        lab,
        &["patch", "configmap", "live", "-p", r#"{"data":{"v":"2"}}"#],
    );
    let done = wait_pod(
        lab,
        "cm-watch",
        "done (saw the update)",
        Duration::from_secs(60),
        |p| container(p)["state"]["terminated"].is_object(),
    );
    assert_eq!(container(&done)["state"]["terminated"]["exitCode"], 0, "{done}");
    kubectl_ok(lab, &["delete", "pod", "cm-watch", "--wait=false"]);
}

/// A hostPath directory the hook and check pods share on the node.
fn hooks_volume(p: &mut Value, container: usize) {
    p["spec"]["volumes"] = json!([{"name": "hooks", "hostPath": {"path": "/var/lib/keel-test-hooks", "type": "DirectoryOrCreate"}}]);
    p["spec"]["containers"][container]["volumeMounts"] = json!([{"name": "hooks", "mountPath": "/hooks"}]);
}

/// Deletes `name` with kubectl and returns how long kubectl took.
fn timed_delete(lab: &Lab, name: &str) -> Duration {
    let t = Instant::now();
    let out = lab
        .kubectl(&["delete", "pod", name, "--timeout=90s"])
        .expect("kubectl delete");
    assert!(out.success(), "delete {name}: {}", out.stderr);
    t.elapsed()
}

/// Step 2: graceful termination (preStop exec and httpGet, SIGTERM, SIGKILL at the grace period),
/// postStart, an OOM kill, and the seed examples pods_run does not cover: two containers over
/// localhost, a Secret as env and file, a downwardAPI volume, a hostPath, cpu requests.
fn graceful_termination_hooks_oom_and_seeds(lab: &Lab) {
    // A container that exits on SIGTERM (after its preStop exec hook) goes quickly.
    let mut trap = pod(
        "term-trap",
        "trap 'exit 0' TERM; while true; do sleep 1; done",
        "Always",
    );
    trap["spec"]["terminationGracePeriodSeconds"] = json!(30);
    hooks_volume(&mut trap, 0);
    trap["spec"]["containers"][0]["lifecycle"] = json!({
        "postStart": {"exec": {"command": ["sh", "-c", "echo started > /hooks/poststart"]}},
        "preStop": {"exec": {"command": ["sh", "-c", "echo stopping > /hooks/prestop-exec"]}}
    });
    create(lab, &trap);
    // One whose PID 1 ignores SIGTERM is killed at the grace period.
    let mut ignore = pod("term-ignore", "exec sleep 3600", "Always");
    ignore["spec"]["terminationGracePeriodSeconds"] = json!(8);
    create(lab, &ignore);
    // An HTTP server whose preStop hook is an httpGet to its own CGI.
    let mut web = pod(
        "hooked-web",
        "mkdir -p /www/cgi-bin && printf '#!/bin/sh\\necho Content-Type: text/plain\\necho\\necho stopping > /hooks/prestop-http\\n' > /www/cgi-bin/stop && chmod +x /www/cgi-bin/stop && exec httpd -f -p 8080 -h /www",
        "Always",
    );
    hooks_volume(&mut web, 0);
    web["spec"]["containers"][0]["ports"] = json!([{"name": "http", "containerPort": 8080}]);
    web["spec"]["containers"][0]["lifecycle"] =
        json!({"preStop": {"httpGet": {"path": "/cgi-bin/stop", "port": "http"}}});
    create(lab, &web);
    // A memory hog over its limit: OOMKilled, restarted.
    let mut hog = pod(
        "hog",
        "exec awk 'BEGIN { s = \"x\"; while (1) s = s s }'",
        "Always",
    );
    hog["spec"]["containers"][0]["resources"] = json!({"limits": {"memory": "32Mi"}});
    create(lab, &hog);
    // Seeds: two containers over localhost, Secret env and file, downwardAPI, hostPath, requests.
    kubectl_ok(
        lab,
        &[
            "create",
            "secret",
            "generic",
            "creds",
            "--from-literal=user=alice",
        ],
    );
    let client = "for i in $(seq 1 60); do wget -qO- http://localhost:8081/ping 2>/dev/null | grep -q pong && break; sleep 1; done; \
                  wget -qO- http://localhost:8081/ping | grep -q pong || exit 10; \
                  test \"$USER_NAME\" = alice || exit 11; test \"$(cat /creds/user)\" = alice || exit 12; \
                  test \"$(cat /info/name)\" = seeds || exit 13; grep -q 'app=\"seeds\"' /info/labels || exit 14; \
                  test \"$(cat /info/mem)\" = 48 || exit 15; test \"$(cat /sys/fs/cgroup/cpu.weight)\" = 10 || exit 16; \
                  grep -q ' /mem tmpfs ' /proc/mounts || exit 18; \
                  test \"$(df -k /mem | awk 'NR == 2 { print $2 }')\" = 8192 || exit 19; \
                  echo seed > /hooks/seed-hostpath || exit 17";
    let mut seeds = pod("seeds", client, "Never");
    seeds["metadata"]["labels"]["app"] = json!("seeds");
    hooks_volume(&mut seeds, 0);
    let c = &mut seeds["spec"]["containers"][0];
    c["name"] = json!("client");
    c["env"] =
        json!([{"name": "USER_NAME", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "user"}}}]);
    c["resources"] = json!({"requests": {"cpu": "250m"}, "limits": {"memory": "48Mi"}});
    c["volumeMounts"] = json!([
        {"name": "hooks", "mountPath": "/hooks"},
        {"name": "creds", "mountPath": "/creds"},
        {"name": "info", "mountPath": "/info"},
        {"name": "mem", "mountPath": "/mem"}
    ]);
    seeds["spec"]["volumes"] = json!([
        {"name": "hooks", "hostPath": {"path": "/var/lib/keel-test-hooks", "type": "DirectoryOrCreate"}},
        {"name": "creds", "secret": {"secretName": "creds"}},
        {"name": "mem", "emptyDir": {"medium": "Memory", "sizeLimit": "8Mi"}},
        {"name": "info", "downwardAPI": {"items": [
            {"path": "name", "fieldRef": {"fieldPath": "metadata.name"}},
            {"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}},
            {"path": "mem", "resourceFieldRef": {"containerName": "client", "resource": "limits.memory", "divisor": "1Mi"}}
        ]}}
    ]);
    seeds["spec"]["containers"]
        .as_array_mut()
        .expect("containers")
        .push(
            json!({"name": "server", "image": "busybox:1.35", "command": ["sh", "-c",
            "mkdir -p /www && echo pong > /www/ping && exec httpd -f -p 8081 -h /www"]}),
        );
    create(lab, &seeds);

    wait_pod(lab, "term-trap", "Ready", POD_READY_TIMEOUT, ready);
    wait_pod(lab, "term-ignore", "Ready", POD_READY_TIMEOUT, ready);
    wait_pod(lab, "hooked-web", "Ready", POD_READY_TIMEOUT, ready);
    let trap_took = timed_delete(lab, "term-trap");
    let ignore_took = timed_delete(lab, "term-ignore");
    let web_took = timed_delete(lab, "hooked-web");
    eprintln!(
        "delete: TERM trapped {} ms (grace 30 s), TERM ignored {} ms (grace 8 s), preStop httpGet {} ms",
        trap_took.as_millis(),
        ignore_took.as_millis(),
        web_took.as_millis()
    );
    assert!(
        trap_took < Duration::from_secs(10),
        "TERM-trapping pod took {trap_took:?}"
    );
    assert!(
        ignore_took >= Duration::from_secs(8) && ignore_took < Duration::from_secs(20),
        "TERM-ignoring pod took {ignore_took:?} with an 8 s grace period"
    );

    let oom = wait_pod(lab, "hog", "OOMKilled and restarted", POD_READY_TIMEOUT, |p| {
        container(p)["lastState"]["terminated"]["reason"] == "OOMKilled"
            && container(p)["restartCount"].as_u64().unwrap_or(0) >= 1
    });
    assert_eq!(
        container(&oom)["lastState"]["terminated"]["exitCode"],
        137,
        "{oom}"
    );
    kubectl_ok(lab, &["delete", "pod", "hog", "--wait=false"]);

    let seeds = wait_pod(lab, "seeds", "client finished", POD_READY_TIMEOUT, |p| {
        p["status"]["containerStatuses"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["name"] == "client" && c["state"]["terminated"].is_object())
    });
    let client = seeds["status"]["containerStatuses"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["name"] == "client")
        .cloned()
        .unwrap_or_default();
    assert_eq!(client["state"]["terminated"]["exitCode"], 0, "{seeds}");
    kubectl_ok(lab, &["delete", "pod", "seeds", "--wait=false"]);

    // What the hooks and the seed pod left in the hostPath.
    let mut check = pod(
        "hooks-check",
        "test -f /hooks/poststart || exit 1; test -f /hooks/prestop-exec || exit 2; \
         test -f /hooks/prestop-http || exit 3; test -f /hooks/seed-hostpath || exit 4",
        "Never",
    );
    hooks_volume(&mut check, 0);
    create(lab, &check);
    let done = wait_pod(lab, "hooks-check", "finished", POD_READY_TIMEOUT, |p| {
        container(p)["state"]["terminated"].is_object()
    });
    assert_eq!(
        container(&done)["state"]["terminated"]["exitCode"],
        0,
        "1: no postStart, 2: no preStop exec, 3: no preStop httpGet, 4: no hostPath write\n{done}"
    );
    kubectl_ok(lab, &["delete", "pod", "hooks-check", "--wait=false"]);
}
