//! Upstream defaulting: what the apiserver fills in before it validates and stores an object.
//!
//! Two entry points, because upstream has two kinds of defaults:
//!
//! * [`apply_defaults`] — the versioned `SetDefaults_*` functions of `pkg/apis/*/v1/defaults.go`
//!   (e.g. `restartPolicy: Always`, `imagePullPolicy`, a Deployment's 25%/25% rolling update).
//!   They run on every decode, so the server calls this on creates, updates and patch results;
//!   it is idempotent.
//! * [`apply_create_defaults`] — the above plus what only happens on create: the admission
//!   plugins that fill in pods (ServiceAccount, Priority, DefaultTolerationSeconds) and the
//!   registry strategies' `PrepareForCreate` (a pod's `Pending` phase and QoS class, a
//!   namespace's `kubernetes` finalizer, a Job's generated selector).
//!
//! Only deterministic defaults live here: cluster IPs, node ports, names from `generateName`,
//! UIDs and timestamps are the apiserver's to allocate. Go distinguishes "unset" from "zero" by
//! pointers; on JSON, an absent or `null` field is unset, and for plain Go strings and numbers
//! (no pointer upstream) the empty string / zero counts as unset too, as it does there.

mod pod;

pub use pod::{default_toleration_seconds, DEFAULT_TOLERATION_SECONDS};

use base64::Engine as _;
use serde_json::{json, Map, Value};

use crate::registry::ResourceType;

/// The object map at `key`, if the field holds an object.
fn child<'a>(m: &'a mut Map<String, Value>, key: &str) -> Option<&'a mut Map<String, Value>> {
    m.get_mut(key).and_then(Value::as_object_mut)
}

/// The object map at `key`, created when absent or null (a Go struct value field).
fn child_or_new<'a>(m: &'a mut Map<String, Value>, key: &str) -> Option<&'a mut Map<String, Value>> {
    let v = m.entry(key).or_insert_with(|| json!({}));
    if v.is_null() {
        *v = json!({});
    }
    v.as_object_mut()
}

/// Canonicalises the quantities of the resource map at `path` (`SetDefaults_ResourceList`:
/// rounded up to milli-units, printed as upstream's `Quantity.String()`).
fn quantities_at(m: &mut Map<String, Value>, path: &[&str]) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut cur = m;
    for p in parents {
        match child(cur, p) {
            Some(next) => cur = next,
            None => return,
        }
    }
    if let Some(list) = cur.get_mut(*last) {
        crate::validation::quantity::canonicalize_list(list);
    }
}

/// Sets a pointer field that is absent or null.
fn set_if_unset(m: &mut Map<String, Value>, key: &str, value: Value) {
    if m.get(key).is_none_or(Value::is_null) {
        m.insert(key.into(), value);
    }
}

/// Sets a plain string field that is absent, null or empty.
fn set_if_empty(m: &mut Map<String, Value>, key: &str, value: Value) {
    let empty = match m.get(key) {
        None | Some(Value::Null) => true,
        Some(Value::String(s)) => s.is_empty(),
        _ => false,
    };
    if empty {
        m.insert(key.into(), value);
    }
}

/// Applies the versioned defaults of the object's kind (idempotent; create, update, patch).
pub fn apply_defaults(rt: &ResourceType, object: &mut Value) {
    let Some(obj) = object.as_object_mut() else {
        return;
    };
    match (rt.group, rt.kind) {
        ("", "Pod") => {
            if let Some(spec) = child(obj, "spec") {
                pod::pod_spec(spec);
                pod::pod_only(spec);
            }
        }
        ("", "PodTemplate") => template_at(obj, &["template"]),
        ("", "ReplicationController") => replication_controller(obj),
        ("", "Service") => service(obj),
        ("", "Namespace") => namespace(obj),
        ("", "Secret") => secret(obj),
        ("", "PersistentVolumeClaim") => {
            if let Some(spec) = child(obj, "spec") {
                set_if_unset(spec, "volumeMode", json!("Filesystem"));
            }
            quantities_at(obj, &["spec", "resources", "requests"]);
            quantities_at(obj, &["spec", "resources", "limits"]);
            quantities_at(obj, &["status", "capacity"]);
            if let Some(status) = child_or_new(obj, "status") {
                set_if_empty(status, "phase", json!("Pending"));
            }
        }
        ("", "PersistentVolume") => {
            quantities_at(obj, &["spec", "capacity"]);
            if let Some(spec) = child(obj, "spec") {
                set_if_empty(spec, "persistentVolumeReclaimPolicy", json!("Retain"));
                set_if_unset(spec, "volumeMode", json!("Filesystem"));
            }
            if let Some(status) = child_or_new(obj, "status") {
                set_if_empty(status, "phase", json!("Pending"));
            }
        }
        ("", "Endpoints") => {
            if let Some(Value::Array(subsets)) = obj.get_mut("subsets") {
                for s in subsets.iter_mut().filter_map(Value::as_object_mut) {
                    if let Some(Value::Array(ports)) = s.get_mut("ports") {
                        for p in ports.iter_mut().filter_map(Value::as_object_mut) {
                            set_if_empty(p, "protocol", json!("TCP"));
                        }
                    }
                }
            }
        }
        ("", "Node") => {
            quantities_at(obj, &["status", "capacity"]);
            quantities_at(obj, &["status", "allocatable"]);
            if let Some(status) = child(obj, "status") {
                if status.get("allocatable").is_none_or(Value::is_null) {
                    if let Some(cap) = status.get("capacity").filter(|c| c.is_object()).cloned() {
                        status.insert("allocatable".into(), cap);
                    }
                }
            }
        }
        ("", "LimitRange") => limit_range(obj),
        ("", "ResourceQuota") => {
            quantities_at(obj, &["spec", "hard"]);
            quantities_at(obj, &["status", "hard"]);
            quantities_at(obj, &["status", "used"]);
        }
        ("apps", "Deployment") => deployment(obj),
        ("apps", "ReplicaSet") => {
            if let Some(spec) = child(obj, "spec") {
                set_if_unset(spec, "replicas", json!(1));
            }
            template_at(obj, &["spec", "template"]);
        }
        ("apps", "StatefulSet") => stateful_set(obj),
        ("apps", "DaemonSet") => daemon_set(obj),
        ("batch", "Job") => job(obj),
        ("batch", "CronJob") => cron_job(obj),
        ("autoscaling", "HorizontalPodAutoscaler") => hpa(rt.version, obj),
        ("networking.k8s.io", "NetworkPolicy") => network_policy(obj),
        ("networking.k8s.io", "IngressClass") => {
            if let Some(p) = child(obj, "spec").and_then(|s| child(s, "parameters")) {
                set_if_unset(p, "scope", json!("Cluster"));
            }
        }
        ("storage.k8s.io", "StorageClass") => {
            set_if_unset(obj, "reclaimPolicy", json!("Delete"));
            set_if_unset(obj, "volumeBindingMode", json!("Immediate"));
        }
        ("rbac.authorization.k8s.io", "RoleBinding" | "ClusterRoleBinding") => role_binding(obj),
        ("discovery.k8s.io", "EndpointSlice") => {
            if let Some(Value::Array(ports)) = obj.get_mut("ports") {
                for p in ports.iter_mut().filter_map(Value::as_object_mut) {
                    set_if_unset(p, "name", json!(""));
                    set_if_unset(p, "protocol", json!("TCP"));
                }
            }
        }
        _ => {}
    }
}

/// Applies [`apply_defaults`] and the create-only defaults (admission plugins and
/// `PrepareForCreate`). Call it after the server has set `metadata.uid` (Jobs derive their
/// selector from it).
pub fn apply_create_defaults(rt: &ResourceType, object: &mut Value) {
    apply_defaults(rt, object);
    let Some(obj) = object.as_object_mut() else {
        return;
    };
    match (rt.group, rt.kind) {
        ("", "Pod") => pod::pod_create(obj),
        ("", "Namespace") => {
            if let Some(spec) = child_or_new(obj, "spec") {
                set_if_unset(spec, "finalizers", json!(["kubernetes"]));
            }
        }
        ("batch", "Job") => {
            job_selector(obj);
            // Upstream defaults again whenever the stored Job is decoded, which copies the
            // generated template labels onto the Job; do it once here instead.
            job(obj);
        }
        _ => {}
    }
}

/// Applies [`apply_defaults`] to an update, after carrying over what the server allocated
/// and the client may leave out (`patchAllocatedValues` of the Service REST: cluster IPs,
/// node ports matched by port name, the health-check node port).
pub fn apply_update_defaults(rt: &ResourceType, new: &mut Value, old: &Value) {
    if rt.group.is_empty() && rt.kind == "Service" {
        carry_service_allocations(new, old);
    }
    apply_defaults(rt, new);
    // DefaultTolerationSeconds admits updates too (upstream registers it for Create and Update),
    // so re-applying a manifest that leaves the defaulted tolerations out changes nothing.
    if rt.group.is_empty() && rt.kind == "Pod" {
        if let Some(spec) = new.get_mut("spec").and_then(Value::as_object_mut) {
            pod::default_toleration_seconds(
                spec,
                pod::DEFAULT_TOLERATION_SECONDS,
                pod::DEFAULT_TOLERATION_SECONDS,
            );
        }
    }
}

fn carry_service_allocations(new: &mut Value, old: &Value) {
    let kind = |v: &Value| {
        let t = v.pointer("/spec/type").and_then(Value::as_str).unwrap_or("");
        if t.is_empty() {
            "ClusterIP".to_string()
        } else {
            t.to_string()
        }
    };
    let (old_kind, new_kind) = (kind(old), kind(new));
    let needs_node_port = |k: &str, v: &Value| {
        k == "NodePort"
            || (k == "LoadBalancer"
                && v.pointer("/spec/allocateLoadBalancerNodePorts")
                    .and_then(Value::as_bool)
                    != Some(false))
    };
    let old_np = needs_node_port(&old_kind, old);
    let new_np = needs_node_port(&new_kind, new);
    let needs_hc = |k: &str, v: &Value| {
        k == "LoadBalancer"
            && v.pointer("/spec/externalTrafficPolicy").and_then(Value::as_str) == Some("Local")
    };
    let hc = needs_hc(&old_kind, old) && needs_hc(&new_kind, new);
    let Some(old_spec) = old.get("spec") else {
        return;
    };
    let Some(spec) = new.as_object_mut().and_then(|o| child(o, "spec")) else {
        return;
    };
    if old_kind != "ExternalName" && new_kind != "ExternalName" {
        set_if_empty(
            spec,
            "clusterIP",
            old_spec.get("clusterIP").cloned().unwrap_or(Value::Null),
        );
        let empty_ips = spec
            .get("clusterIPs")
            .and_then(Value::as_array)
            .is_none_or(|a| a.is_empty());
        if empty_ips {
            if let Some(ips) = old_spec
                .get("clusterIPs")
                .filter(|v| v.as_array().is_some_and(|a| !a.is_empty()))
            {
                spec.insert("clusterIPs".into(), ips.clone());
            }
        }
        if spec.get("clusterIP").is_some_and(Value::is_null) {
            spec.remove("clusterIP");
        }
    }
    if old_np && new_np {
        let ports_of = |v: Option<&Value>| -> Vec<(String, i64)> {
            v.and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .map(|p| {
                            (
                                p.get("name").and_then(Value::as_str).unwrap_or("").to_string(),
                                p.get("nodePort").and_then(Value::as_i64).unwrap_or(0),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default()
        };
        let old_ports = ports_of(old_spec.get("ports"));
        let new_ports = ports_of(spec.get("ports"));
        let used: Vec<i64> = new_ports
            .iter()
            .map(|(_, n)| *n)
            .filter(|n| *n != 0 && old_ports.iter().any(|(_, o)| o == n))
            .collect();
        if let Some(Value::Array(ports)) = spec.get_mut("ports") {
            for p in ports.iter_mut().filter_map(Value::as_object_mut) {
                if p.get("nodePort").and_then(Value::as_i64).unwrap_or(0) != 0 {
                    continue;
                }
                let name = p.get("name").and_then(Value::as_str).unwrap_or("");
                if let Some((_, n)) = old_ports.iter().find(|(o, _)| o == name) {
                    if *n != 0 && !used.contains(n) {
                        p.insert("nodePort".into(), json!(n));
                    }
                }
            }
        }
    }
    if hc
        && spec
            .get("healthCheckNodePort")
            .and_then(Value::as_i64)
            .unwrap_or(0)
            == 0
    {
        if let Some(h) = old_spec.get("healthCheckNodePort") {
            spec.insert("healthCheckNodePort".into(), h.clone());
        }
    }
}

/// The pod spec of a template at `path` (e.g. `spec.template`).
fn template_at(obj: &mut Map<String, Value>, path: &[&str]) {
    let mut cur = obj;
    for p in path {
        match child(cur, p) {
            Some(next) => cur = next,
            None => return,
        }
    }
    if let Some(spec) = child(cur, "spec") {
        pod::pod_spec(spec);
    }
}

fn template_labels(obj: &Map<String, Value>) -> Option<Value> {
    obj.get("spec")?
        .get("template")?
        .get("metadata")?
        .get("labels")
        .filter(|l| l.as_object().is_some_and(|m| !m.is_empty()))
        .cloned()
}

fn labels_empty(obj: &Map<String, Value>) -> bool {
    obj.get("metadata")
        .and_then(|m| m.get("labels"))
        .and_then(Value::as_object)
        .is_none_or(|l| l.is_empty())
}

fn set_labels(obj: &mut Map<String, Value>, labels: Value) {
    if let Some(meta) = child_or_new(obj, "metadata") {
        meta.insert("labels".into(), labels);
    }
}

fn replication_controller(obj: &mut Map<String, Value>) {
    if let Some(labels) = template_labels(obj) {
        if let Some(spec) = child(obj, "spec") {
            let empty = spec
                .get("selector")
                .and_then(Value::as_object)
                .is_none_or(|s| s.is_empty());
            if empty {
                spec.insert("selector".into(), labels.clone());
            }
        }
        if labels_empty(obj) {
            set_labels(obj, labels);
        }
    }
    if let Some(spec) = child(obj, "spec") {
        set_if_unset(spec, "replicas", json!(1));
    }
    template_at(obj, &["spec", "template"]);
}

/// A Service reachable from outside the cluster (NodePort, LoadBalancer, or external IPs).
fn externally_accessible(spec: &Map<String, Value>) -> bool {
    let kind = spec.get("type").and_then(Value::as_str).unwrap_or("");
    kind == "LoadBalancer"
        || kind == "NodePort"
        || (kind == "ClusterIP"
            && spec
                .get("externalIPs")
                .and_then(Value::as_array)
                .is_some_and(|a| !a.is_empty()))
}

fn service(obj: &mut Map<String, Value>) {
    let Some(spec) = child(obj, "spec") else {
        return;
    };
    set_if_empty(spec, "sessionAffinity", json!("None"));
    if spec.get("sessionAffinity").and_then(Value::as_str) == Some("None") {
        spec.remove("sessionAffinityConfig");
    }
    set_if_empty(spec, "type", json!("ClusterIP"));
    if let Some(Value::Array(ports)) = spec.get_mut("ports") {
        for p in ports.iter_mut().filter_map(Value::as_object_mut) {
            set_if_empty(p, "protocol", json!("TCP"));
            let unset = match p.get("targetPort") {
                None | Some(Value::Null) => true,
                Some(Value::String(s)) => s.is_empty(),
                Some(Value::Number(n)) => n.as_i64() == Some(0),
                _ => false,
            };
            if unset {
                if let Some(port) = p.get("port").cloned() {
                    p.insert("targetPort".into(), port);
                }
            }
        }
    }
    if externally_accessible(spec) {
        set_if_empty(spec, "externalTrafficPolicy", json!("Cluster"));
    }
    let kind = spec.get("type").and_then(Value::as_str).unwrap_or("").to_string();
    if matches!(kind.as_str(), "ClusterIP" | "NodePort" | "LoadBalancer") {
        set_if_unset(spec, "internalTrafficPolicy", json!("Cluster"));
        // The REST layer's IP family defaults for a single-stack cluster.
        let headless = spec.get("clusterIP").and_then(Value::as_str) == Some("None");
        let has_selector = spec
            .get("selector")
            .and_then(Value::as_object)
            .is_some_and(|s| !s.is_empty());
        if !headless || has_selector {
            set_if_unset(spec, "ipFamilyPolicy", json!("SingleStack"));
            let v6 = spec
                .get("clusterIP")
                .and_then(Value::as_str)
                .is_some_and(|ip| ip.contains(':'));
            let empty_families = spec
                .get("ipFamilies")
                .and_then(Value::as_array)
                .is_none_or(|a| a.is_empty());
            if empty_families {
                spec.insert("ipFamilies".into(), json!([if v6 { "IPv6" } else { "IPv4" }]));
            }
        }
    }
    if kind == "LoadBalancer" {
        set_if_unset(spec, "allocateLoadBalancerNodePorts", json!(true));
    }
}

/// `type: Opaque`, and the write-only `stringData` folded into `data` (base64), as the v1
/// conversion does before anything is stored.
fn secret(obj: &mut Map<String, Value>) {
    set_if_empty(obj, "type", json!("Opaque"));
    let Some(Value::Object(string_data)) = obj.remove("stringData") else {
        return;
    };
    if let Some(data) = child_or_new(obj, "data") {
        for (k, v) in string_data {
            let text = v.as_str().unwrap_or_default();
            data.insert(k, json!(base64::engine::general_purpose::STANDARD.encode(text)));
        }
    }
}

fn namespace(obj: &mut Map<String, Value>) {
    let name = obj
        .get("metadata")
        .and_then(|m| m.get("name"))
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    if !name.is_empty() {
        if let Some(meta) = child_or_new(obj, "metadata") {
            if let Some(labels) = child_or_new(meta, "labels") {
                labels.insert("kubernetes.io/metadata.name".into(), json!(name));
            }
        }
    }
    if let Some(status) = child_or_new(obj, "status") {
        set_if_empty(status, "phase", json!("Active"));
    }
}

fn limit_range(obj: &mut Map<String, Value>) {
    let Some(Value::Array(limits)) = child(obj, "spec").and_then(|s| s.get_mut("limits")) else {
        return;
    };
    for item in limits.iter_mut().filter_map(Value::as_object_mut) {
        for key in ["max", "min", "default", "defaultRequest", "maxLimitRequestRatio"] {
            quantities_at(item, &[key]);
        }
        if item.get("type").and_then(Value::as_str) != Some("Container") {
            continue;
        }
        let get = |item: &Map<String, Value>, k: &str| -> Map<String, Value> {
            item.get(k)
                .and_then(Value::as_object)
                .cloned()
                .unwrap_or_default()
        };
        let mut default = get(item, "default");
        let mut default_request = get(item, "defaultRequest");
        for (k, v) in get(item, "max") {
            default.entry(k).or_insert(v);
        }
        for (k, v) in &default {
            default_request.entry(k.clone()).or_insert(v.clone());
        }
        for (k, v) in get(item, "min") {
            default_request.entry(k).or_insert(v);
        }
        if !default.is_empty() {
            item.insert("default".into(), Value::Object(default));
        }
        if !default_request.is_empty() {
            item.insert("defaultRequest".into(), Value::Object(default_request));
        }
    }
}

fn deployment(obj: &mut Map<String, Value>) {
    if let Some(spec) = child(obj, "spec") {
        set_if_unset(spec, "replicas", json!(1));
        if let Some(strategy) = child_or_new(spec, "strategy") {
            set_if_empty(strategy, "type", json!("RollingUpdate"));
            if strategy.get("type").and_then(Value::as_str) == Some("RollingUpdate") {
                if let Some(ru) = child_or_new(strategy, "rollingUpdate") {
                    set_if_unset(ru, "maxUnavailable", json!("25%"));
                    set_if_unset(ru, "maxSurge", json!("25%"));
                }
            }
        }
        set_if_unset(spec, "revisionHistoryLimit", json!(10));
        set_if_unset(spec, "progressDeadlineSeconds", json!(600));
    }
    template_at(obj, &["spec", "template"]);
}

fn stateful_set(obj: &mut Map<String, Value>) {
    if let Some(spec) = child(obj, "spec") {
        set_if_empty(spec, "podManagementPolicy", json!("OrderedReady"));
        if let Some(us) = child_or_new(spec, "updateStrategy") {
            if us.get("type").and_then(Value::as_str).unwrap_or("").is_empty() {
                us.insert("type".into(), json!("RollingUpdate"));
                set_if_unset(us, "rollingUpdate", json!({}));
            }
            if us.get("type").and_then(Value::as_str) == Some("RollingUpdate") {
                if let Some(ru) = child(us, "rollingUpdate") {
                    set_if_unset(ru, "partition", json!(0));
                }
            }
        }
        if let Some(p) = child_or_new(spec, "persistentVolumeClaimRetentionPolicy") {
            set_if_empty(p, "whenDeleted", json!("Retain"));
            set_if_empty(p, "whenScaled", json!("Retain"));
        }
        set_if_unset(spec, "replicas", json!(1));
        set_if_unset(spec, "revisionHistoryLimit", json!(10));
        if let Some(Value::Array(claims)) = spec.get_mut("volumeClaimTemplates") {
            for c in claims.iter_mut().filter_map(Value::as_object_mut) {
                set_if_empty(c, "apiVersion", json!("v1"));
                set_if_empty(c, "kind", json!("PersistentVolumeClaim"));
                if let Some(s) = child(c, "spec") {
                    set_if_unset(s, "volumeMode", json!("Filesystem"));
                }
                quantities_at(c, &["spec", "resources", "requests"]);
                quantities_at(c, &["spec", "resources", "limits"]);
                if let Some(status) = child_or_new(c, "status") {
                    set_if_empty(status, "phase", json!("Pending"));
                }
            }
        }
    }
    template_at(obj, &["spec", "template"]);
}

fn daemon_set(obj: &mut Map<String, Value>) {
    if let Some(spec) = child(obj, "spec") {
        if let Some(us) = child_or_new(spec, "updateStrategy") {
            set_if_empty(us, "type", json!("RollingUpdate"));
            if us.get("type").and_then(Value::as_str) == Some("RollingUpdate") {
                if let Some(ru) = child_or_new(us, "rollingUpdate") {
                    set_if_unset(ru, "maxUnavailable", json!(1));
                    set_if_unset(ru, "maxSurge", json!(0));
                }
            }
        }
        set_if_unset(spec, "revisionHistoryLimit", json!(10));
    }
    template_at(obj, &["spec", "template"]);
}

fn job(obj: &mut Map<String, Value>) {
    let labels = template_labels(obj);
    if let Some(spec) = child(obj, "spec") {
        job_spec(spec);
    }
    if let Some(labels) = labels {
        if labels_empty(obj) {
            set_labels(obj, labels);
        }
    }
    template_at(obj, &["spec", "template"]);
}

fn job_spec(spec: &mut Map<String, Value>) {
    let unset = |spec: &Map<String, Value>, k: &str| spec.get(k).is_none_or(Value::is_null);
    if unset(spec, "completions") && unset(spec, "parallelism") {
        spec.insert("completions".into(), json!(1));
        spec.insert("parallelism".into(), json!(1));
    }
    set_if_unset(spec, "parallelism", json!(1));
    if unset(spec, "backoffLimit") {
        let limit = if unset(spec, "backoffLimitPerIndex") {
            6
        } else {
            i64::from(i32::MAX)
        };
        spec.insert("backoffLimit".into(), json!(limit));
    }
    set_if_unset(spec, "completionMode", json!("NonIndexed"));
    set_if_unset(spec, "suspend", json!(false));
    let has_failure_policy = !unset(spec, "podFailurePolicy");
    if let Some(Value::Array(rules)) = child(spec, "podFailurePolicy").and_then(|p| p.get_mut("rules")) {
        for r in rules.iter_mut().filter_map(Value::as_object_mut) {
            if let Some(Value::Array(conds)) = r.get_mut("onPodConditions") {
                for c in conds.iter_mut().filter_map(Value::as_object_mut) {
                    set_if_empty(c, "status", json!("True"));
                }
            }
        }
    }
    let policy = if has_failure_policy {
        "Failed"
    } else {
        "TerminatingOrFailed"
    };
    set_if_unset(spec, "podReplacementPolicy", json!(policy));
}

/// The Job strategy's generated selector: `batch.kubernetes.io/controller-uid=<uid>` on the
/// selector and the template, plus the job-name labels, unless `manualSelector` is set.
fn job_selector(obj: &mut Map<String, Value>) {
    let meta = obj.get("metadata");
    let uid = meta
        .and_then(|m| m.get("uid"))
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let name = meta
        .and_then(|m| m.get("name"))
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let Some(spec) = child(obj, "spec") else {
        return;
    };
    if spec.get("manualSelector").and_then(Value::as_bool) == Some(true) || uid.is_empty() {
        return;
    }
    if spec.get("selector").is_none_or(Value::is_null) {
        spec.insert(
            "selector".into(),
            json!({"matchLabels": {"batch.kubernetes.io/controller-uid": uid}}),
        );
    }
    let Some(tmeta) = child_or_new(spec, "template").and_then(|t| child_or_new(t, "metadata")) else {
        return;
    };
    if let Some(labels) = child_or_new(tmeta, "labels") {
        for (k, v) in [
            ("batch.kubernetes.io/controller-uid", &uid),
            ("batch.kubernetes.io/job-name", &name),
            ("controller-uid", &uid),
            ("job-name", &name),
        ] {
            labels.entry(k).or_insert_with(|| json!(v));
        }
    }
}

fn cron_job(obj: &mut Map<String, Value>) {
    if let Some(spec) = child(obj, "spec") {
        set_if_empty(spec, "concurrencyPolicy", json!("Allow"));
        set_if_unset(spec, "suspend", json!(false));
        set_if_unset(spec, "successfulJobsHistoryLimit", json!(3));
        set_if_unset(spec, "failedJobsHistoryLimit", json!(1));
    }
    template_at(obj, &["spec", "jobTemplate", "spec", "template"]);
}

fn hpa(version: &str, obj: &mut Map<String, Value>) {
    let Some(spec) = child(obj, "spec") else {
        return;
    };
    set_if_unset(spec, "minReplicas", json!(1));
    if version != "v2" {
        return;
    }
    let no_metrics = spec
        .get("metrics")
        .and_then(Value::as_array)
        .is_none_or(|m| m.is_empty());
    if no_metrics {
        spec.insert(
            "metrics".into(),
            json!([{"type": "Resource", "resource": {"name": "cpu",
                "target": {"type": "Utilization", "averageUtilization": 80}}}]),
        );
    }
    if let Some(behavior) = child(spec, "behavior") {
        let scale_up = child_or_new(behavior, "scaleUp");
        if let Some(up) = scale_up {
            set_if_unset(up, "stabilizationWindowSeconds", json!(0));
            set_if_unset(up, "selectPolicy", json!("Max"));
            set_if_unset(
                up,
                "policies",
                json!([
                    {"type": "Pods", "value": 4, "periodSeconds": 15},
                    {"type": "Percent", "value": 100, "periodSeconds": 15}
                ]),
            );
        }
        if let Some(down) = child_or_new(behavior, "scaleDown") {
            // No scale-down window: upstream leaves it unset so that the controller's
            // `--horizontal-pod-autoscaler-downscale-stabilization` applies.
            set_if_unset(down, "selectPolicy", json!("Max"));
            set_if_unset(
                down,
                "policies",
                json!([{"type": "Percent", "value": 100, "periodSeconds": 15}]),
            );
        }
    }
}

fn network_policy(obj: &mut Map<String, Value>) {
    let Some(spec) = child(obj, "spec") else {
        return;
    };
    for dir in ["ingress", "egress"] {
        if let Some(Value::Array(rules)) = spec.get_mut(dir) {
            for r in rules.iter_mut().filter_map(Value::as_object_mut) {
                if let Some(Value::Array(ports)) = r.get_mut("ports") {
                    for p in ports.iter_mut().filter_map(Value::as_object_mut) {
                        set_if_unset(p, "protocol", json!("TCP"));
                    }
                }
            }
        }
    }
    let no_types = spec
        .get("policyTypes")
        .and_then(Value::as_array)
        .is_none_or(|t| t.is_empty());
    if no_types {
        let has_egress = spec
            .get("egress")
            .and_then(Value::as_array)
            .is_some_and(|e| !e.is_empty());
        let types = if has_egress {
            json!(["Ingress", "Egress"])
        } else {
            json!(["Ingress"])
        };
        spec.insert("policyTypes".into(), types);
    }
}

fn role_binding(obj: &mut Map<String, Value>) {
    if let Some(r) = child(obj, "roleRef") {
        set_if_empty(r, "apiGroup", json!("rbac.authorization.k8s.io"));
    }
    if let Some(Value::Array(subjects)) = obj.get_mut("subjects") {
        for s in subjects.iter_mut().filter_map(Value::as_object_mut) {
            let kind = s.get("kind").and_then(Value::as_str).unwrap_or("");
            if matches!(kind, "User" | "Group") {
                set_if_empty(s, "apiGroup", json!("rbac.authorization.k8s.io"));
            }
        }
    }
}

#[cfg(test)]
mod tests;
