//! The QEMU lab end to end: three nodes come up Ready, a node cut off the lab segment loses
//! node-to-node traffic and gets it back when healed, and a node that loses power goes
//! NotReady after the grace period and comes back Ready when it boots again.
//!
//! These need the whole system: keel-server, keel-lab and the node image (`make test` builds
//! them). Labs with nodes run one at a time (a machine-wide lock), so this file takes a few
//! minutes under TCG.

use std::time::Duration;

use keel_e2e::*;

#[test]
fn three_nodes_come_up_ready() {
    let lab = lab_with_ready_nodes(3);
    let out = kubectl_ok(&lab, &["get", "nodes"]);
    for node in ["keel-1", "keel-2", "keel-3"] {
        let line = out
            .lines()
            .find(|l| l.split_whitespace().next() == Some(node))
            .unwrap_or_else(|| panic!("{node} missing from:\n{out}"));
        assert_eq!(line.split_whitespace().nth(1), Some("Ready"), "{line}");
    }
    // What `make qemu-cluster` promises besides Ready nodes.
    let nodeports: serde_json::Value =
        serde_json::from_slice(&std::fs::read(lab.dir().join("nodeports.json")).unwrap()).unwrap();
    assert_eq!(nodeports.as_object().unwrap().len(), 3);
    assert!(nodeports["keel-2"]["30009"]
        .as_str()
        .unwrap()
        .starts_with("127.0.0.1:"));
    for node in lab.node_names() {
        assert!(
            !lab.console(&node).unwrap().is_empty(),
            "{node} wrote no console output"
        );
    }
    // All three NICs on the lab segment are attached to the switch.
    let status = lab.switch_status().unwrap();
    assert_eq!(status["ports"].as_array().unwrap().len(), 3, "{status}");
}

fn pod(name: &str, node: &str, image: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  labels: {{app: {name}}}\nspec:\n  \
         nodeName: {node}\n  containers:\n  - name: main\n    image: {image}\n    \
         command: [\"sh\", \"-c\", \"sleep 3600\"]\n"
    )
}

fn echo_pod(name: &str, node: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\nspec:\n  nodeName: {node}\n  \
         containers:\n  - name: echo\n    image: keel/echo:latest\n    ports:\n    - containerPort: 8080\n"
    )
}

/// A one-shot probe pod on keel-1 fetches the echo pod and exits 0 only if the answer names
/// it: the pod's phase (Succeeded or Failed) is the answer, so no `kubectl exec` is needed.
fn fetch(lab: &Lab, ip: &str) -> Result<String, String> {
    static PROBES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let name = format!(
        "probe-{}",
        PROBES.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
    );
    // Not `wget -T`: Debian busybox 1.35's wget segfaults with it.
    let script = format!("timeout 5 wget -q -O- http://{ip}:8080/ | grep -q pod=echo");
    let manifest = format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\nspec:\n  nodeName: keel-1\n  restartPolicy: Never\n  \
         containers:\n  - name: main\n    image: busybox:1.35\n    command: [\"sh\", \"-c\", {script:?}]\n"
    );
    apply(lab, &manifest);
    let phase = wait_for(
        &format!("{name} to finish"),
        Duration::from_secs(60),
        || match lab.kubectl(&["get", "pod", &name, "-o", "jsonpath={.status.phase}"]) {
            Ok(out) if out.stdout == "Succeeded" || out.stdout == "Failed" => Poll::Ready(out.stdout),
            Ok(out) => Poll::Pending(out.stdout),
            Err(e) => Poll::Pending(e.to_string()),
        },
    )
    .map_err(|e| e.to_string())?;
    let _ = lab.kubectl(&["delete", "pod", &name, "--wait=false"]);
    if phase == "Succeeded" {
        Ok("pod=echo".to_string())
    } else {
        Err(format!("{name} could not fetch http://{ip}:8080/"))
    }
}

/// The switch side of a cut, without pods: the fault follows the node's MAC, the node keeps
/// its control-plane connection (NIC 0), and heal removes the fault.
#[test]
fn cutting_a_node_off_the_segment_and_healing_it() {
    let lab = lab_with_ready_nodes(3);
    lab.cut_node("keel-2").unwrap();
    let status = lab.switch_status().unwrap();
    let port = |status: &serde_json::Value, node: &str| {
        status["ports"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["names"][0] == node)
            .unwrap_or_else(|| panic!("{node} has no port: {status}"))
            .clone()
    };
    assert_eq!(port(&status, "keel-2")["cut"], true, "{status}");
    assert_eq!(port(&status, "keel-1")["cut"], false, "{status}");
    assert_eq!(
        status["faults"][0]["target"]["mac"], "52:54:00:aa:00:02",
        "{status}"
    );
    let ready = lab.node_readiness().unwrap();
    assert!(ready.iter().all(|(_, r)| *r), "{ready:?}");

    lab.heal_node("keel-2").unwrap();
    let status = lab.switch_status().unwrap();
    assert_eq!(port(&status, "keel-2")["cut"], false, "{status}");
    assert!(status["faults"].as_array().unwrap().is_empty(), "{status}");
}

#[test]
fn a_node_cut_off_the_segment_loses_pod_traffic_until_healed() {
    let lab = lab_with_ready_nodes(3);
    apply(&lab, &pod("client", "keel-1", "busybox:1.35"));
    apply(&lab, &echo_pod("echo", "keel-2"));
    wait_pod_ready(&lab, "default", "client");
    wait_pod_ready(&lab, "default", "echo");
    let ip = kubectl_ok(&lab, &["get", "pod", "echo", "-o", "jsonpath={.status.podIP}"]);
    let answer = wait_for(
        "cross-node pod traffic",
        Duration::from_secs(60),
        || match fetch(&lab, &ip) {
            Ok(a) => Poll::Ready(a),
            Err(e) => Poll::Pending(e),
        },
    )
    .unwrap();
    assert!(answer.contains("pod=echo"), "{answer}");

    lab.cut_node("keel-2").unwrap();
    let err = fetch(&lab, &ip).expect_err("traffic to a cut-off node must fail");
    assert!(!err.is_empty());
    let status = lab.switch_status().unwrap();
    let keel2 = status["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["names"][0] == "keel-2")
        .unwrap_or_else(|| panic!("keel-2 has no port: {status}"));
    assert_eq!(keel2["cut"], true);
    assert!(keel2["dropped_out"].as_u64().unwrap() > 0, "{keel2}");
    // The control plane reaches nodes over NIC 0, not the segment: keel-2 stays Ready.
    let ready = lab.node_readiness().unwrap();
    assert!(ready.contains(&("keel-2".to_string(), true)), "{ready:?}");

    lab.heal_node("keel-2").unwrap();
    let answer = wait_for("traffic after heal", Duration::from_secs(30), || {
        match fetch(&lab, &ip) {
            Ok(a) => Poll::Ready(a),
            Err(e) => Poll::Pending(e),
        }
    })
    .unwrap();
    assert!(answer.contains("pod=echo"), "{answer}");
}

#[test]
fn a_killed_node_goes_not_ready_and_returns_after_restart() {
    let mut options = LabOptions::with_nodes(3);
    options.node_grace_period = Some("10s".into());
    let mut lab = lab_with(options);

    lab.kill_node("keel-3").unwrap();
    lab.wait_node_ready("keel-3", false, Duration::from_secs(60))
        .unwrap();
    // The others are untouched.
    let ready = lab.node_readiness().unwrap();
    for node in ["keel-1", "keel-2"] {
        assert!(ready.contains(&(node.to_string(), true)), "{ready:?}");
    }

    lab.start_node("keel-3").unwrap();
    lab.wait_node_ready("keel-3", true, NODE_READY_TIMEOUT).unwrap();
    assert!(!lab.console("keel-3").unwrap().is_empty());
    assert!(
        lab.dir().join("logs/console-keel-3.1.log").exists(),
        "first boot's console kept"
    );
}

#[test]
fn control_plane_only_lab_serves_kubectl_across_a_restart() {
    let mut lab = control_plane();
    assert!(lab.node_names().is_empty());
    let uid = kubectl_ok(
        &lab,
        &["get", "namespace", "default", "-o", "jsonpath={.metadata.uid}"],
    );
    assert!(!uid.is_empty());
    lab.restart_control_plane().unwrap();
    // Same data directory: the same namespace object, not a new one.
    let again = kubectl_ok(
        &lab,
        &["get", "namespace", "default", "-o", "jsonpath={.metadata.uid}"],
    );
    assert_eq!(again, uid);
    assert!(lab.logs(10).contains("server.log"));
}
