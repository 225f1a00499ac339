//! Rows of the core/v1 kinds.

use jiff::Timestamp;
use serde_json::{json, Value};

use super::{arr, format_labels, int_of, list_with_more, or_none, str_of, str_opt, Printer};

/// Whether an init container is a sidecar (`restartPolicy: Always`).
fn is_restartable_init(spec_init: &[Value], name: &str) -> bool {
    spec_init
        .iter()
        .find(|c| str_of(c, "/name") == name)
        .is_some_and(|c| str_of(c, "/restartPolicy") == "Always")
}

fn condition_true(conditions: &[Value], kind: &str) -> bool {
    conditions
        .iter()
        .find(|c| str_of(c, "/type") == kind)
        .is_some_and(|c| str_of(c, "/status") == "True")
}

fn terminated_finished_at(status: &Value) -> Option<Timestamp> {
    str_opt(status, "/lastState/terminated/finishedAt").and_then(crate::time::parse)
}

fn later(a: Option<Timestamp>, b: Option<Timestamp>) -> Option<Timestamp> {
    match (a, b) {
        (Some(x), Some(y)) => Some(x.max(y)),
        (x, None) => x,
        (None, y) => y,
    }
}

/// `printPod`: READY, STATUS (with kubelet reasons, init progress, Terminating…), RESTARTS with
/// the time of the last restart, and the wide IP / NODE / NOMINATED NODE / READINESS GATES.
pub(super) fn pod(p: &Printer, pod: &Value) -> Vec<Value> {
    let spec_containers = arr(pod, "/spec/containers");
    let spec_init = arr(pod, "/spec/initContainers");
    let conditions = arr(pod, "/status/conditions");
    let mut total = spec_containers.len();
    let mut ready = 0usize;
    let mut restarts: i64 = 0;
    let mut sidecar_restarts: i64 = 0;
    let mut last_restart: Option<Timestamp> = None;
    let mut last_sidecar_restart: Option<Timestamp> = None;

    let phase = str_of(pod, "/status/phase");
    let mut reason = match str_of(pod, "/status/reason") {
        "" => phase.to_string(),
        r => r.to_string(),
    };
    if conditions
        .iter()
        .any(|c| str_of(c, "/type") == "PodScheduled" && str_of(c, "/reason") == "SchedulingGated")
    {
        reason = "SchedulingGated".into();
    }
    total += spec_init
        .iter()
        .filter(|c| str_of(c, "/restartPolicy") == "Always")
        .count();

    let mut initializing = false;
    for (i, c) in arr(pod, "/status/initContainerStatuses").iter().enumerate() {
        let count = int_of(c, "/restartCount");
        restarts += count;
        last_restart = later(last_restart, terminated_finished_at(c));
        let sidecar = is_restartable_init(spec_init, str_of(c, "/name"));
        if sidecar {
            sidecar_restarts += count;
            last_sidecar_restart = later(last_sidecar_restart, terminated_finished_at(c));
        }
        let terminated = c.pointer("/state/terminated");
        let waiting_reason = str_of(c, "/state/waiting/reason");
        if terminated.is_some_and(|t| int_of(t, "/exitCode") == 0) {
            continue;
        }
        if sidecar && c.get("started").and_then(Value::as_bool) == Some(true) {
            if c.get("ready").and_then(Value::as_bool) == Some(true) {
                ready += 1;
            }
            continue;
        }
        if let Some(t) = terminated {
            let r = str_of(t, "/reason");
            reason = if !r.is_empty() {
                format!("Init:{r}")
            } else if int_of(t, "/signal") != 0 {
                format!("Init:Signal:{}", int_of(t, "/signal"))
            } else {
                format!("Init:ExitCode:{}", int_of(t, "/exitCode"))
            };
        } else if !waiting_reason.is_empty() && waiting_reason != "PodInitializing" {
            reason = format!("Init:{waiting_reason}");
        } else {
            reason = format!("Init:{i}/{}", spec_init.len());
        }
        initializing = true;
        break;
    }

    if !initializing || condition_true(conditions, "Initialized") {
        restarts = sidecar_restarts;
        last_restart = last_sidecar_restart;
        let mut has_running = false;
        for c in arr(pod, "/status/containerStatuses").iter().rev() {
            restarts += int_of(c, "/restartCount");
            last_restart = later(last_restart, terminated_finished_at(c));
            let waiting = str_of(c, "/state/waiting/reason");
            let terminated = c.pointer("/state/terminated");
            if !waiting.is_empty() {
                reason = waiting.to_string();
            } else if let Some(t) = terminated {
                let r = str_of(t, "/reason");
                reason = if !r.is_empty() {
                    r.to_string()
                } else if int_of(t, "/signal") != 0 {
                    format!("Signal:{}", int_of(t, "/signal"))
                } else {
                    format!("ExitCode:{}", int_of(t, "/exitCode"))
                };
            } else if c.get("ready").and_then(Value::as_bool) == Some(true)
                && c.pointer("/state/running").is_some()
            {
                has_running = true;
                ready += 1;
            }
        }
        if reason == "Completed" && has_running {
            reason = if condition_true(conditions, "Ready") {
                "Running".into()
            } else {
                "NotReady".into()
            };
        }
    }

    let deleting = pod
        .pointer("/metadata/deletionTimestamp")
        .is_some_and(|d| !d.is_null());
    if deleting && str_of(pod, "/status/reason") == "NodeLost" {
        reason = "Unknown".into();
    } else if deleting && phase != "Succeeded" && phase != "Failed" {
        reason = "Terminating".into();
    }

    let restarts_str = match last_restart {
        Some(t) if restarts != 0 => format!("{restarts} ({} ago)", super::human(p.seconds_since(t))),
        _ => restarts.to_string(),
    };

    let pod_ip = pod
        .pointer("/status/podIPs/0/ip")
        .and_then(Value::as_str)
        .or_else(|| str_opt(pod, "/status/podIP"))
        .unwrap_or("");
    let gates = arr(pod, "/spec/readinessGates");
    let readiness_gates = if gates.is_empty() {
        "<none>".to_string()
    } else {
        let true_count = gates
            .iter()
            .filter(|g| {
                let t = str_of(g, "/conditionType");
                conditions
                    .iter()
                    .find(|c| str_of(c, "/type") == t)
                    .is_some_and(|c| str_of(c, "/status") == "True")
            })
            .count();
        format!("{true_count}/{}", gates.len())
    };
    vec![
        json!(str_of(pod, "/metadata/name")),
        json!(format!("{ready}/{total}")),
        json!(reason),
        json!(restarts_str),
        json!(p.age(pod)),
        json!(or_none(pod_ip)),
        json!(or_none(str_of(pod, "/spec/nodeName"))),
        json!(or_none(str_of(pod, "/status/nominatedNodeName"))),
        json!(readiness_gates),
    ]
}

/// The row conditions of a finished pod (`Completed`, with Succeeded/Failed reason).
pub(super) fn pod_row_conditions(pod: &Value) -> Option<Value> {
    match str_of(pod, "/status/phase") {
        "Succeeded" => Some(json!([{
            "type": "Completed", "status": "True", "reason": "Succeeded",
            "message": "The pod has completed successfully."
        }])),
        "Failed" => Some(json!([{
            "type": "Completed", "status": "True", "reason": "Failed",
            "message": "The pod failed."
        }])),
        _ => None,
    }
}

/// `printNode`: `Ready`/`NotReady`/`Unknown` (+`SchedulingDisabled`), roles from labels.
pub(super) fn node(p: &Printer, node: &Value) -> Vec<Value> {
    let mut status: Vec<String> = Vec::new();
    if let Some(c) = arr(node, "/status/conditions")
        .iter()
        .rev()
        .find(|c| str_of(c, "/type") == "Ready")
    {
        if str_of(c, "/status") == "True" {
            status.push("Ready".into());
        } else {
            status.push("NotReady".into());
        }
    }
    if status.is_empty() {
        status.push("Unknown".into());
    }
    if node
        .pointer("/spec/unschedulable")
        .and_then(Value::as_bool)
        .unwrap_or(false)
    {
        status.push("SchedulingDisabled".into());
    }
    let mut roles: Vec<&str> = Vec::new();
    if let Some(labels) = node.pointer("/metadata/labels").and_then(Value::as_object) {
        for (k, v) in labels {
            if let Some(role) = k.strip_prefix("node-role.kubernetes.io/") {
                if !role.is_empty() {
                    roles.push(role);
                }
            } else if k == "kubernetes.io/role" {
                if let Some(v) = v.as_str().filter(|v| !v.is_empty()) {
                    roles.push(v);
                }
            }
        }
    }
    roles.sort();
    roles.dedup();
    let address = |kind: &str| {
        arr(node, "/status/addresses")
            .iter()
            .find(|a| str_of(a, "/type") == kind)
            .map(|a| str_of(a, "/address").to_string())
            .unwrap_or_else(|| "<none>".into())
    };
    let info = |field: &str| match str_of(node, &format!("/status/nodeInfo/{field}")) {
        "" => "<unknown>".to_string(),
        s => s.to_string(),
    };
    vec![
        json!(str_of(node, "/metadata/name")),
        json!(status.join(",")),
        json!(or_none(&roles.join(","))),
        json!(p.age(node)),
        json!(str_of(node, "/status/nodeInfo/kubeletVersion")),
        json!(address("InternalIP")),
        json!(address("ExternalIP")),
        json!(info("osImage")),
        json!(info("kernelVersion")),
        json!(info("containerRuntimeVersion")),
    ]
}

/// `loadBalancerStatusStringer`: sorted unique IPs/hostnames, clipped to 16 bytes unless wide.
fn load_balancer_ingress(ingress: &[Value], wide: bool) -> String {
    let mut set: Vec<&str> = ingress
        .iter()
        .filter_map(|i| {
            let ip = str_of(i, "/ip");
            if !ip.is_empty() {
                Some(ip)
            } else {
                str_opt(i, "/hostname").filter(|h| !h.is_empty())
            }
        })
        .collect();
    set.sort();
    set.dedup();
    let r = set.join(",");
    if !wide && r.len() > 16 {
        format!("{}...", &r[..13])
    } else {
        r
    }
}

/// `printService`: TYPE, CLUSTER-IP, EXTERNAL-IP (`<none>`, `<pending>`…), PORT(S) as
/// `80:30080/TCP`, wide SELECTOR.
pub(super) fn service(p: &Printer, svc: &Value) -> Vec<Value> {
    let kind = str_of(svc, "/spec/type");
    let cluster_ip = svc
        .pointer("/spec/clusterIPs/0")
        .and_then(Value::as_str)
        .or_else(|| str_opt(svc, "/spec/clusterIP").filter(|s| !s.is_empty()))
        .unwrap_or("<none>");
    let external_ips: Vec<&str> = arr(svc, "/spec/externalIPs")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    // The server renders the wide form (it always prints wide rows).
    let external = match kind {
        "ClusterIP" | "NodePort" => {
            if external_ips.is_empty() {
                "<none>".to_string()
            } else {
                external_ips.join(",")
            }
        }
        "LoadBalancer" => {
            let lb = load_balancer_ingress(arr(svc, "/status/loadBalancer/ingress"), true);
            if !external_ips.is_empty() {
                let mut all: Vec<&str> = if lb.is_empty() {
                    Vec::new()
                } else {
                    lb.split(',').collect()
                };
                all.extend(external_ips.iter().copied());
                all.join(",")
            } else if !lb.is_empty() {
                lb
            } else {
                "<pending>".to_string()
            }
        }
        "ExternalName" => str_of(svc, "/spec/externalName").to_string(),
        _ => "<unknown>".to_string(),
    };
    let ports = arr(svc, "/spec/ports")
        .iter()
        .map(|port| {
            let n = int_of(port, "/port");
            let proto = str_of(port, "/protocol");
            let node_port = int_of(port, "/nodePort");
            if node_port > 0 {
                format!("{n}:{node_port}/{proto}")
            } else {
                format!("{n}/{proto}")
            }
        })
        .collect::<Vec<_>>()
        .join(",");
    vec![
        json!(str_of(svc, "/metadata/name")),
        json!(kind),
        json!(cluster_ip),
        json!(external),
        json!(or_none(&ports)),
        json!(p.age(svc)),
        json!(format_labels(svc.pointer("/spec/selector"))),
    ]
}

/// `host:port` with IPv6 addresses in brackets, as Go's `net.JoinHostPort`.
fn join_host_port(host: &str, port: i64) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// `formatEndpoints`: up to three `ip:port`, then `+ N more...`; `<none>` without subsets.
pub(super) fn format_endpoints(ep: &Value) -> String {
    let subsets = arr(ep, "/subsets");
    if subsets.is_empty() {
        return "<none>".into();
    }
    const MAX: usize = 3;
    let mut list: Vec<String> = Vec::new();
    let mut more = false;
    let mut count = 0usize;
    for ss in subsets {
        let addresses = arr(ss, "/addresses");
        let ports = arr(ss, "/ports");
        if ports.is_empty() {
            count += addresses.len();
            for a in addresses {
                if list.len() == MAX {
                    more = true;
                    break;
                }
                list.push(str_of(a, "/ip").to_string());
            }
            continue;
        }
        for port in ports {
            count += addresses.len();
            for a in addresses {
                if list.len() == MAX {
                    more = true;
                    break;
                }
                list.push(join_host_port(str_of(a, "/ip"), int_of(port, "/port")));
            }
        }
    }
    let ret = list.join(",");
    if more {
        format!("{ret} + {} more...", count - MAX)
    } else {
        ret
    }
}

pub(super) fn endpoints(p: &Printer, ep: &Value) -> Vec<Value> {
    vec![
        json!(str_of(ep, "/metadata/name")),
        json!(format_endpoints(ep)),
        json!(p.age(ep)),
    ]
}

pub(super) fn namespace(p: &Printer, ns: &Value) -> Vec<Value> {
    vec![
        json!(str_of(ns, "/metadata/name")),
        json!(str_of(ns, "/status/phase")),
        json!(p.age(ns)),
    ]
}

fn map_len(v: &Value, ptr: &str) -> usize {
    v.pointer(ptr).and_then(Value::as_object).map_or(0, |m| m.len())
}

pub(super) fn config_map(p: &Printer, cm: &Value) -> Vec<Value> {
    vec![
        json!(str_of(cm, "/metadata/name")),
        json!(map_len(cm, "/data") + map_len(cm, "/binaryData")),
        json!(p.age(cm)),
    ]
}

pub(super) fn secret(p: &Printer, s: &Value) -> Vec<Value> {
    vec![
        json!(str_of(s, "/metadata/name")),
        json!(str_of(s, "/type")),
        json!(map_len(s, "/data")),
        json!(p.age(s)),
    ]
}

pub(super) fn service_account(p: &Printer, sa: &Value) -> Vec<Value> {
    vec![
        json!(str_of(sa, "/metadata/name")),
        json!(arr(sa, "/secrets").len()),
        json!(p.age(sa)),
    ]
}

/// `formatEventSource`: component (or reporting controller), then `, host` when known.
fn event_source(ev: &Value) -> String {
    let first = |a: &str, b: &str| -> String {
        let x = str_of(ev, a);
        if x.is_empty() {
            str_of(ev, b).to_string()
        } else {
            x.to_string()
        }
    };
    let component = first("/source/component", "/reportingComponent");
    let instance = first("/source/host", "/reportingInstance");
    if instance.is_empty() {
        component
    } else {
        format!("{component}, {instance}")
    }
}

/// `printEvent`: LAST SEEN (from lastTimestamp, firstTimestamp, eventTime or the series), TYPE,
/// REASON, OBJECT as `kind/name`, MESSAGE, and the wide columns.
pub(super) fn event(p: &Printer, ev: &Value) -> Vec<Value> {
    let set = |ptr: &str| str_opt(ev, ptr).filter(|s| !s.is_empty());
    let first = match set("/firstTimestamp") {
        Some(t) => p.since(Some(t)),
        None => p.since(set("/eventTime")),
    };
    let mut last = match set("/lastTimestamp") {
        Some(t) => p.since(Some(t)),
        None => first.clone(),
    };
    let mut count = int_of(ev, "/count");
    if ev.get("series").is_some_and(|s| !s.is_null()) {
        last = p.since(set("/series/lastObservedTime"));
        count = int_of(ev, "/series/count");
    } else if count == 0 {
        count = 1;
    }
    let kind = str_of(ev, "/involvedObject/kind").to_lowercase();
    let name = str_of(ev, "/involvedObject/name");
    let target = if name.is_empty() {
        kind
    } else {
        format!("{kind}/{name}")
    };
    vec![
        json!(last),
        json!(str_of(ev, "/type")),
        json!(str_of(ev, "/reason")),
        json!(target),
        json!(str_of(ev, "/involvedObject/fieldPath")),
        json!(event_source(ev)),
        json!(str_of(ev, "/message").trim()),
        json!(first),
        json!(count),
        json!(str_of(ev, "/metadata/name")),
    ]
}

/// `helper.GetAccessModesAsString`: `RWO,ROX,RWX,RWOP` in that order, duplicates dropped.
fn access_modes(modes: &[Value]) -> String {
    let has = |m: &str| modes.iter().any(|v| v.as_str() == Some(m));
    [
        ("ReadWriteOnce", "RWO"),
        ("ReadOnlyMany", "ROX"),
        ("ReadWriteMany", "RWX"),
        ("ReadWriteOncePod", "RWOP"),
    ]
    .iter()
    .filter(|(long, _)| has(long))
    .map(|(_, short)| *short)
    .collect::<Vec<_>>()
    .join(",")
}

/// The storage class of a PV or PVC: the beta annotation wins over `spec.storageClassName`.
fn storage_class(obj: &Value) -> String {
    if let Some(a) = obj
        .pointer("/metadata/annotations")
        .and_then(|a| a.get("volume.beta.kubernetes.io/storage-class"))
        .and_then(Value::as_str)
    {
        return a.to_string();
    }
    str_of(obj, "/spec/storageClassName").to_string()
}

fn deleting(obj: &Value) -> bool {
    obj.pointer("/metadata/deletionTimestamp")
        .is_some_and(|d| !d.is_null())
}

fn unset_or(v: &Value, ptr: &str) -> String {
    match str_opt(v, ptr) {
        Some(s) => s.to_string(),
        None => "<unset>".into(),
    }
}

pub(super) fn persistent_volume(p: &Printer, pv: &Value) -> Vec<Value> {
    let claim = match pv.pointer("/spec/claimRef") {
        Some(c) if !c.is_null() => format!("{}/{}", str_of(c, "/namespace"), str_of(c, "/name")),
        _ => String::new(),
    };
    let phase = if deleting(pv) {
        "Terminating"
    } else {
        str_of(pv, "/status/phase")
    };
    vec![
        json!(str_of(pv, "/metadata/name")),
        json!(quantity_str(pv.pointer("/spec/capacity/storage"))),
        json!(access_modes(arr(pv, "/spec/accessModes"))),
        json!(str_of(pv, "/spec/persistentVolumeReclaimPolicy")),
        json!(phase),
        json!(claim),
        json!(storage_class(pv)),
        json!(unset_or(pv, "/spec/volumeAttributesClassName")),
        json!(str_of(pv, "/status/reason")),
        json!(p.age(pv)),
        json!(unset_or(pv, "/spec/volumeMode")),
    ]
}

pub(super) fn persistent_volume_claim(p: &Printer, pvc: &Value) -> Vec<Value> {
    let phase = if deleting(pvc) {
        "Terminating"
    } else {
        str_of(pvc, "/status/phase")
    };
    let bound = !str_of(pvc, "/spec/volumeName").is_empty();
    let (capacity, modes) = if bound {
        (
            quantity_str(pvc.pointer("/status/capacity/storage")),
            access_modes(arr(pvc, "/status/accessModes")),
        )
    } else {
        (String::new(), String::new())
    };
    vec![
        json!(str_of(pvc, "/metadata/name")),
        json!(phase),
        json!(str_of(pvc, "/spec/volumeName")),
        json!(capacity),
        json!(modes),
        json!(storage_class(pvc)),
        json!(unset_or(pvc, "/spec/volumeAttributesClassName")),
        json!(p.age(pvc)),
        json!(unset_or(pvc, "/spec/volumeMode")),
    ]
}

/// A quantity as written (`10Gi`); an absent one prints as Go's zero quantity, `0`.
fn quantity_str(v: Option<&Value>) -> String {
    match v {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        _ => "0".into(),
    }
}

/// `printResourceQuota`: `resource: used/hard` pairs, `limits.*` in the LIMIT column.
pub(super) fn resource_quota(p: &Printer, q: &Value) -> Vec<Value> {
    let mut names: Vec<&String> = q
        .pointer("/status/hard")
        .and_then(Value::as_object)
        .map(|m| m.keys().collect())
        .unwrap_or_default();
    names.sort();
    let mut request: Vec<String> = Vec::new();
    let mut limit: Vec<String> = Vec::new();
    for name in names {
        let used = quantity_str(q.pointer("/status/used").and_then(|u| u.get(name.as_str())));
        let hard = quantity_str(q.pointer("/status/hard").and_then(|h| h.get(name.as_str())));
        let entry = format!("{name}: {used}/{hard}");
        let pieces: Vec<&str> = name.split('.').collect();
        if pieces.len() > 1 && pieces[0] == "limits" {
            limit.push(entry);
        } else {
            request.push(entry);
        }
    }
    vec![
        json!(str_of(q, "/metadata/name")),
        json!(request.join(", ")),
        json!(limit.join(", ")),
        json!(p.age(q)),
    ]
}

/// The `ENDPOINTS` column of an EndpointSlice and its PORTS column share this shape.
pub(super) fn slice_list(items: Vec<String>, max: usize) -> String {
    let count = items.len();
    let more = count > max;
    let list: Vec<String> = items.into_iter().take(max).collect();
    list_with_more(&list, more, count, max)
}

/// `NAME STATUS MESSAGE ERROR` of a ComponentStatus, from its `Healthy` condition.
pub(super) fn component_status(_: &Printer, cs: &Value) -> Vec<Value> {
    let healthy = cs.get("conditions").and_then(Value::as_array).and_then(|c| {
        c.iter()
            .find(|c| c.get("type").and_then(Value::as_str) == Some("Healthy"))
    });
    let field = |k: &str| {
        healthy
            .and_then(|c| c.get(k))
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    };
    let status = match field("status").as_str() {
        "True" => "Healthy",
        "False" => "Unhealthy",
        _ => "Unknown",
    };
    vec![
        json!(str_of(cs, "/metadata/name")),
        json!(status),
        json!(field("message")),
        json!(field("error")),
    ]
}
