//! How a node's report becomes the Node object and Lease, written the way the kubelet writes
//! them, so that `kubectl get/describe node` and every controller read Keel nodes like any other.
//!
//! Pure functions over JSON: the session decides when to write, this module decides what.

use std::collections::HashMap;

use keel_proto::{NodeReport, Resources};
use serde_json::{json, Map, Value};

/// The namespace of node Leases.
pub(crate) const LEASE_NAMESPACE: &str = "kube-node-lease";
/// `leaseDurationSeconds` of node Leases (the kubelet's default).
pub(crate) const LEASE_DURATION_SECONDS: u32 = 40;

const DEFAULT_KUBELET_VERSION: &str = "v1.32.0-keel";
const DEFAULT_RUNTIME_VERSION: &str = concat!("keel://", env!("CARGO_PKG_VERSION"));
const DEFAULT_OS_IMAGE: &str = concat!("Keel ", env!("CARGO_PKG_VERSION"));
const MAX_PODS: u32 = 110;

/// The conditions the kubelet owns, in the order the kubelet lists them.
pub(crate) const KUBELET_CONDITIONS: [&str; 4] = ["MemoryPressure", "DiskPressure", "PIDPressure", "Ready"];

/// The reason and message the kubelet writes for a condition type and status.
fn default_reason(kind: &str, status: &str) -> (&'static str, &'static str) {
    match (kind, status) {
        ("MemoryPressure", "False") => (
            "KubeletHasSufficientMemory",
            "kubelet has sufficient memory available",
        ),
        ("MemoryPressure", "True") => (
            "KubeletHasInsufficientMemory",
            "kubelet has insufficient memory available",
        ),
        ("DiskPressure", "False") => ("KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
        ("DiskPressure", "True") => ("KubeletHasDiskPressure", "kubelet has disk pressure"),
        ("PIDPressure", "False") => ("KubeletHasSufficientPID", "kubelet has sufficient PID available"),
        ("PIDPressure", "True") => (
            "KubeletHasInsufficientPID",
            "kubelet has insufficient PID available",
        ),
        ("Ready", "True") => ("KubeletReady", "kubelet is posting ready status"),
        ("Ready", _) => ("KubeletNotReady", "kubelet is not ready"),
        ("NetworkUnavailable", "False") => ("KeelNetworkReady", "Keel pod network is up"),
        ("NetworkUnavailable", _) => ("KeelNetworkNotReady", "Keel pod network is not up yet"),
        _ => ("", ""),
    }
}

/// Node annotations with the node's pod-overlay endpoint (from its report), which the other
/// nodes route their VXLAN traffic to.
pub(crate) const OVERLAY_ADDRESS_ANNOTATION: &str = "keel.dev/overlay-address";
pub(crate) const VTEP_MAC_ANNOTATION: &str = "keel.dev/vtep-mac";

/// The overlay endpoint (address, VTEP MAC) a Node's annotations hold, if both are set.
pub(crate) fn overlay_of(node: &Value) -> Option<(String, String)> {
    let a = node.pointer("/metadata/annotations")?;
    let address = a.get(OVERLAY_ADDRESS_ANNOTATION)?.as_str()?;
    let mac = a.get(VTEP_MAC_ANNOTATION)?.as_str()?;
    (!address.is_empty() && !mac.is_empty()).then(|| (address.to_string(), mac.to_string()))
}

/// The Node annotation with the node's boot phases, e.g. `kernel=0.00s, modules=0.41s, agent=1.20s`.
pub(crate) const BOOT_PHASES_ANNOTATION: &str = "keel.dev/boot-phases";

/// Boot phases as one line: `name=1.23s` (time since power-on), comma-separated.
pub(crate) fn boot_phases_text(phases: &[keel_proto::BootPhase]) -> String {
    phases
        .iter()
        .map(|p| {
            format!(
                "{}={}.{:02}s",
                p.name,
                p.millis_since_boot / 1000,
                (p.millis_since_boot % 1000) / 10
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// `2` for 2000 millicores, `1500m` otherwise.
pub(crate) fn cpu_quantity(millis: u64) -> String {
    if millis.is_multiple_of(1000) {
        (millis / 1000).to_string()
    } else {
        format!("{millis}m")
    }
}

/// Bytes as the kubelet prints memory: `NNNKi` when whole KiB, plain bytes otherwise.
pub(crate) fn bytes_quantity(bytes: u64) -> String {
    if bytes.is_multiple_of(1024) {
        format!("{}Ki", bytes / 1024)
    } else {
        bytes.to_string()
    }
}

fn resources_json(r: &Resources) -> Value {
    let pods = if r.pods == 0 { MAX_PODS } else { r.pods };
    json!({
        "cpu": cpu_quantity(r.cpu_millis),
        "ephemeral-storage": bytes_quantity(r.ephemeral_storage_bytes),
        "hugepages-1Gi": "0",
        "hugepages-2Mi": "0",
        "memory": bytes_quantity(r.memory_bytes),
        "pods": pods.to_string(),
    })
}

fn or_default<'a>(s: &'a str, default: &'a str) -> &'a str {
    if s.is_empty() {
        default
    } else {
        s
    }
}

/// The `metadata.labels` the kubelet sets on its Node.
pub(crate) fn node_labels(node: &str, arch: &str) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("beta.kubernetes.io/arch".into(), json!(arch));
    m.insert("beta.kubernetes.io/os".into(), json!("linux"));
    m.insert("kubernetes.io/arch".into(), json!(arch));
    m.insert("kubernetes.io/hostname".into(), json!(node));
    m.insert("kubernetes.io/os".into(), json!("linux"));
    m
}

/// `amd64` unless the node says otherwise.
pub(crate) fn arch_of(report: &NodeReport) -> String {
    report
        .system_info
        .as_ref()
        .map(|s| or_default(&s.architecture, "amd64").to_string())
        .unwrap_or_else(|| "amd64".into())
}

/// What the previous status said about each condition: its status and lastTransitionTime.
pub(crate) type Transitions = HashMap<String, (String, String)>;

/// Reads the transitions of a Node's conditions (empty if it has none).
pub(crate) fn transitions_of(node: &Value) -> Transitions {
    node.pointer("/status/conditions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|c| {
            Some((
                c.get("type")?.as_str()?.to_string(),
                (
                    c.get("status")?.as_str()?.to_string(),
                    c.get("lastTransitionTime")?.as_str()?.to_string(),
                ),
            ))
        })
        .collect()
}

fn condition_json(
    kind: &str,
    status: &str,
    reason: &str,
    message: &str,
    prev: &Transitions,
    now: &str,
) -> Value {
    let (def_reason, def_message) = default_reason(kind, status);
    let transition = match prev.get(kind) {
        Some((s, t)) if s == status => t.clone(),
        _ => now.to_string(),
    };
    json!({
        "type": kind,
        "status": status,
        "lastHeartbeatTime": now,
        "lastTransitionTime": transition,
        "reason": or_default(reason, def_reason),
        "message": or_default(message, def_message),
    })
}

fn normalise_status(s: &str) -> &'static str {
    match s {
        "True" => "True",
        "False" => "False",
        _ => "Unknown",
    }
}

/// The Node `status` from a report, at time `now` (RFC 3339), keeping the transition times of
/// conditions that did not change.
pub(crate) fn status_json(node: &str, report: &NodeReport, prev: &Transitions, now: &str) -> Value {
    let reported: HashMap<&str, &keel_proto::Condition> =
        report.conditions.iter().map(|c| (c.r#type.as_str(), c)).collect();
    let mut conditions = Vec::new();
    if let Some(c) = reported.get("NetworkUnavailable") {
        conditions.push(condition_json(
            "NetworkUnavailable",
            normalise_status(&c.status),
            &c.reason,
            &c.message,
            prev,
            now,
        ));
    }
    for kind in KUBELET_CONDITIONS {
        let default_status = if kind == "Ready" { "True" } else { "False" };
        let (status, reason, message) = match reported.get(kind) {
            Some(c) => (normalise_status(&c.status), c.reason.as_str(), c.message.as_str()),
            None => (default_status, "", ""),
        };
        conditions.push(condition_json(kind, status, reason, message, prev, now));
    }

    let mut addresses: Vec<Value> = report
        .addresses
        .iter()
        .filter(|a| {
            matches!(
                a.r#type.as_str(),
                "InternalIP" | "ExternalIP" | "Hostname" | "InternalDNS" | "ExternalDNS"
            ) && !a.address.is_empty()
        })
        .map(|a| json!({"type": a.r#type, "address": a.address}))
        .collect();
    if !report.addresses.iter().any(|a| a.r#type == "Hostname") {
        addresses.push(json!({"type": "Hostname", "address": node}));
    }

    let capacity = report.capacity.unwrap_or_default();
    let allocatable = match &report.allocatable {
        Some(a) if a.cpu_millis > 0 && a.memory_bytes > 0 => *a,
        _ => capacity,
    };
    let si = report.system_info.clone().unwrap_or_default();
    let kubelet_version = or_default(&si.kubelet_version, DEFAULT_KUBELET_VERSION);
    json!({
        "addresses": addresses,
        "allocatable": resources_json(&allocatable),
        "capacity": resources_json(&capacity),
        "conditions": conditions,
        "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
        "nodeInfo": {
            "architecture": or_default(&si.architecture, "amd64"),
            "bootID": si.boot_id,
            "containerRuntimeVersion": or_default(&si.container_runtime_version, DEFAULT_RUNTIME_VERSION),
            "kernelVersion": si.kernel_version,
            "kubeProxyVersion": kubelet_version,
            "kubeletVersion": kubelet_version,
            "machineID": si.machine_id,
            "operatingSystem": or_default(&si.operating_system, "linux"),
            "osImage": or_default(&si.os_image, DEFAULT_OS_IMAGE),
            "systemUUID": si.system_uuid,
        },
    })
}

/// A new Node object as the kubelet registers it.
pub(crate) fn node_json(node: &str, report: &NodeReport, now: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": node,
            "labels": node_labels(node, &arch_of(report)),
            "annotations": {
                "node.alpha.kubernetes.io/ttl": "0",
                "volumes.kubernetes.io/controller-managed-attach-detach": "true",
            },
        },
        "spec": {},
        "status": status_json(node, report, &Transitions::new(), now),
    })
}

/// A node's Lease, owned by its Node (so it goes when the Node is deleted).
pub(crate) fn lease_json(node: &str, node_uid: &str, renew_time: &str) -> Value {
    let mut lease = json!({
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": node, "namespace": LEASE_NAMESPACE},
        "spec": {
            "holderIdentity": node,
            "leaseDurationSeconds": LEASE_DURATION_SECONDS,
            "renewTime": renew_time,
        },
    });
    if !node_uid.is_empty() {
        lease["metadata"]["ownerReferences"] = json!([{
            "apiVersion": "v1",
            "kind": "Node",
            "name": node,
            "uid": node_uid,
        }]);
    }
    lease
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel_proto::{Condition, NodeAddress, SystemInfo};

    fn report() -> NodeReport {
        NodeReport {
            addresses: vec![NodeAddress {
                r#type: "InternalIP".into(),
                address: "10.0.2.15".into(),
            }],
            capacity: Some(Resources {
                cpu_millis: 2000,
                memory_bytes: 4 * 1024 * 1024 * 1024,
                ephemeral_storage_bytes: 10 * 1024 * 1024 * 1024,
                pods: 0,
            }),
            allocatable: None,
            system_info: Some(SystemInfo {
                machine_id: "m1".into(),
                boot_id: "b1".into(),
                kernel_version: "6.1.0-56-amd64".into(),
                os_image: "Keel 0.1.0".into(),
                ..Default::default()
            }),
            conditions: vec![
                Condition {
                    r#type: "Ready".into(),
                    status: "True".into(),
                    ..Default::default()
                },
                Condition {
                    r#type: "NetworkUnavailable".into(),
                    status: "False".into(),
                    ..Default::default()
                },
            ],
            boot_phases: vec![],
            overlay: None,
        }
    }

    #[test]
    fn boot_phases_read_as_one_line() {
        let p = |name: &str, ms| keel_proto::BootPhase {
            name: name.into(),
            millis_since_boot: ms,
        };
        assert_eq!(
            boot_phases_text(&[p("kernel", 0), p("agent", 1234)]),
            "kernel=0.00s, agent=1.23s"
        );
        assert_eq!(boot_phases_text(&[]), "");
    }

    #[test]
    fn quantities_read_like_the_kubelets() {
        assert_eq!(cpu_quantity(2000), "2");
        assert_eq!(cpu_quantity(1500), "1500m");
        assert_eq!(bytes_quantity(4096), "4Ki");
        assert_eq!(bytes_quantity(1000), "1000");
    }

    #[test]
    fn node_has_kubelet_shape() {
        let n = node_json("node-1", &report(), "2026-11-23T10:00:00Z");
        assert_eq!(n["metadata"]["labels"]["kubernetes.io/hostname"], "node-1");
        assert_eq!(n["metadata"]["labels"]["beta.kubernetes.io/arch"], "amd64");
        let s = &n["status"];
        assert_eq!(s["capacity"]["memory"], "4194304Ki");
        assert_eq!(s["capacity"]["cpu"], "2");
        assert_eq!(s["capacity"]["pods"], "110");
        assert_eq!(s["allocatable"], s["capacity"]);
        assert_eq!(
            s["addresses"][1],
            json!({"type": "Hostname", "address": "node-1"})
        );
        assert_eq!(s["nodeInfo"]["kubeletVersion"], "v1.32.0-keel");
        assert_eq!(s["nodeInfo"]["osImage"], "Keel 0.1.0");
        assert_eq!(s["nodeInfo"]["operatingSystem"], "linux");
        let types: Vec<&str> = s["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["type"].as_str().unwrap())
            .collect();
        assert_eq!(
            types,
            [
                "NetworkUnavailable",
                "MemoryPressure",
                "DiskPressure",
                "PIDPressure",
                "Ready"
            ]
        );
        let ready = &s["conditions"][4];
        assert_eq!(ready["reason"], "KubeletReady");
        assert_eq!(ready["message"], "kubelet is posting ready status");
        assert_eq!(s["conditions"][1]["reason"], "KubeletHasSufficientMemory");
        assert_eq!(s["conditions"][1]["status"], "False");
    }

    #[test]
    fn transition_times_survive_unchanged_conditions() {
        let first = node_json("n", &report(), "2026-11-23T10:00:00Z");
        let prev = transitions_of(&first);
        let mut r = report();
        r.conditions[0].status = "False".into();
        let s = status_json("n", &r, &prev, "2026-11-23T10:05:00Z");
        let by_type = |t: &str| {
            s["conditions"]
                .as_array()
                .unwrap()
                .iter()
                .find(|c| c["type"] == t)
                .unwrap()
                .clone()
        };
        assert_eq!(
            by_type("MemoryPressure")["lastTransitionTime"],
            "2026-11-23T10:00:00Z"
        );
        assert_eq!(
            by_type("MemoryPressure")["lastHeartbeatTime"],
            "2026-11-23T10:05:00Z"
        );
        assert_eq!(by_type("Ready")["lastTransitionTime"], "2026-11-23T10:05:00Z");
        assert_eq!(by_type("Ready")["reason"], "KubeletNotReady");
    }

    #[test]
    fn lease_is_owned_by_its_node() {
        let l = lease_json("n", "uid-1", "2026-11-23T10:00:00.000000Z");
        assert_eq!(l["metadata"]["namespace"], "kube-node-lease");
        assert_eq!(l["spec"]["holderIdentity"], "n");
        assert_eq!(l["spec"]["leaseDurationSeconds"], 40);
        assert_eq!(l["metadata"]["ownerReferences"][0]["uid"], "uid-1");
    }
}
