//! Per-kind write rules that upstream keeps in each resource's "strategy": which fields a write
//! may change through which subresource, when `generation` moves, what a fresh object's status is,
//! how graceful deletion works, and conversions between served versions.
//!
//! The generic verbs in [`crate::objects`] call these hooks; everything kind-specific about
//! *storage* lives here, while defaulting and validation live in `keel_api`.

use keel_api::client::Patch;
use keel_api::registry::ResourceType;
use keel_api::status::{ApiError, ApiResult};
use serde_json::{json, Value};

use crate::objects::{meta_mut, WriteCtx};

/// Kinds whose `metadata.generation` tracks spec changes.
const GENERATION_KINDS: &[&str] = &[
    "Deployment",
    "ReplicaSet",
    "StatefulSet",
    "DaemonSet",
    "ReplicationController",
    "Job",
    "CronJob",
    "HorizontalPodAutoscaler",
    "PodDisruptionBudget",
    "Ingress",
    "NetworkPolicy",
    "PersistentVolumeClaim",
];

pub fn has_generation(rt: &ResourceType, obj: &Value) -> bool {
    GENERATION_KINDS.contains(&rt.kind) && obj.get("spec").is_some()
}

/// Upstream lets a PUT create these (controllers and the kubelet rely on it).
pub fn allows_create_on_update(rt: &ResourceType) -> bool {
    matches!(rt.kind, "Endpoints" | "Lease" | "Event" | "EndpointSlice")
}

/// Status of a fresh object: what the client sent is not trusted for kinds whose status is
/// written by a controller through the `status` subresource.
pub fn prepare_for_create(rt: &ResourceType, obj: &mut Value) {
    let fresh = match rt.kind {
        "Pod" => Some(json!({"phase": "Pending", "qosClass": qos_class(obj)})),
        "Namespace" => Some(json!({"phase": "Active"})),
        "Service" => Some(json!({"loadBalancer": {}})),
        "PersistentVolumeClaim" | "PersistentVolume" => Some(json!({"phase": "Pending"})),
        "Deployment"
        | "ReplicaSet"
        | "StatefulSet"
        | "DaemonSet"
        | "ReplicationController"
        | "Job"
        | "CronJob"
        | "HorizontalPodAutoscaler"
        | "PodDisruptionBudget"
        | "CertificateSigningRequest"
        | "Ingress" => Some(json!({})),
        _ => None,
    };
    if let Some(status) = fresh {
        if rt.kind == "StatefulSet" || rt.kind == "DaemonSet" || rt.kind == "ReplicaSet" {
            obj["status"] = json!({"replicas": 0});
            if rt.kind == "DaemonSet" {
                obj["status"] = json!({"currentNumberScheduled": 0, "desiredNumberScheduled": 0, "numberMisscheduled": 0, "numberReady": 0});
            }
            if rt.kind == "StatefulSet" {
                obj["status"] = json!({"replicas": 0, "availableReplicas": 0});
            }
        } else {
            obj["status"] = status;
        }
    }
}

/// The kubelet's QoS class of a pod from its containers' requests and limits.
fn qos_class(pod: &Value) -> &'static str {
    let containers: Vec<&Value> = ["containers", "initContainers"]
        .iter()
        .filter_map(|f| pod.pointer(&format!("/spec/{f}")).and_then(Value::as_array))
        .flatten()
        .collect();
    let mut any = false;
    let mut guaranteed = true;
    for c in &containers {
        let req = c.pointer("/resources/requests").and_then(Value::as_object);
        let lim = c.pointer("/resources/limits").and_then(Value::as_object);
        if req.is_some_and(|r| !r.is_empty()) || lim.is_some_and(|l| !l.is_empty()) {
            any = true;
        }
        for res in ["cpu", "memory"] {
            let l = lim.and_then(|l| l.get(res));
            let r = req.and_then(|r| r.get(res)).or(l);
            if l.is_none() || r != l {
                guaranteed = false;
            }
        }
    }
    if !any {
        "BestEffort"
    } else if guaranteed {
        "Guaranteed"
    } else {
        "Burstable"
    }
}

/// Builds the object to store from a client's new version and the stored old one.
pub fn prepare_for_update(
    rt: &ResourceType,
    subresource: Option<&str>,
    new: Value,
    old: &Value,
) -> ApiResult<Value> {
    let mut obj = match subresource {
        None => {
            let mut obj = new;
            if rt.subresource("status").is_some() {
                match old.get("status") {
                    Some(s) => obj["status"] = s.clone(),
                    None => {
                        if let Some(o) = obj.as_object_mut() {
                            o.remove("status");
                        }
                    }
                }
            }
            obj
        }
        Some("status") => {
            let mut obj = old.clone();
            match new.get("status") {
                Some(s) => obj["status"] = s.clone(),
                None => {
                    if let Some(o) = obj.as_object_mut() {
                        o.remove("status");
                    }
                }
            }
            // Status writers may also maintain labels and annotations (the node gate does).
            for field in ["labels", "annotations"] {
                if let Some(v) = new.pointer(&format!("/metadata/{field}")) {
                    meta_mut(&mut obj).insert(field.into(), v.clone());
                }
            }
            obj
        }
        Some("finalize") => {
            let mut obj = old.clone();
            obj["spec"]["finalizers"] = new.pointer("/spec/finalizers").cloned().unwrap_or(json!([]));
            obj
        }
        Some("approval") => {
            let mut obj = old.clone();
            obj["status"]["conditions"] = new.pointer("/status/conditions").cloned().unwrap_or(json!([]));
            obj
        }
        Some("ephemeralcontainers") => {
            let mut obj = old.clone();
            obj["spec"]["ephemeralContainers"] = new
                .pointer("/spec/ephemeralContainers")
                .cloned()
                .unwrap_or(json!([]));
            obj
        }
        Some(other) => {
            return Err(ApiError::method_not_allowed(format!(
                "the server does not allow this method on the requested resource ({other})"
            )))
        }
    };
    // Fields nobody may change.
    let old_meta = old.get("metadata").cloned().unwrap_or(json!({}));
    let m = meta_mut(&mut obj);
    for k in [
        "uid",
        "creationTimestamp",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "namespace",
        "name",
    ] {
        match old_meta.get(k) {
            Some(v) => {
                m.insert(k.into(), v.clone());
            }
            None => {
                m.remove(k);
            }
        }
    }
    if GENERATION_KINDS.contains(&rt.kind) {
        let old_gen = old_meta.get("generation").and_then(Value::as_i64).unwrap_or(1);
        let changed = strip(old) != strip(&obj);
        meta_mut(&mut obj).insert(
            "generation".into(),
            json!(if changed { old_gen + 1 } else { old_gen }),
        );
    }
    Ok(obj)
}

/// The object without metadata and status: what `generation` counts changes of.
fn strip(obj: &Value) -> Value {
    let mut o = obj.clone();
    if let Some(m) = o.as_object_mut() {
        m.remove("metadata");
        m.remove("status");
    }
    o
}

/// Applies a patch to the current object (which carries its resourceVersion).
pub fn apply_patch(
    rt: &ResourceType,
    subresource: Option<&str>,
    current: &Value,
    patch: &Patch,
    ctx: &mut WriteCtx,
) -> ApiResult<Value> {
    let mut patched = match patch {
        Patch::Json(ops) => crate::machinery::json_patch(current, ops)?,
        Patch::Merge(p) => crate::machinery::merge_patch(current, p)?,
        Patch::Strategic(p) => crate::machinery::strategic_merge_patch(rt, subresource, current, p)?,
        Patch::Apply { body, force } => {
            let mut intent = body.clone();
            if intent.get("apiVersion").is_none() {
                intent["apiVersion"] = json!(rt.api_version());
            }
            if intent.get("kind").is_none() {
                intent["kind"] = json!(rt.kind);
            }
            keel_api::managed::apply(
                rt,
                Some(current),
                &intent,
                &ctx.manager(),
                *force,
                &keel_api::time::now_rfc3339(),
            )?
        }
    };
    if subresource != Some("scale") {
        check_unknown_fields(rt, &mut patched, ctx)?;
    }
    Ok(patched)
}

/// `fieldValidation`: reject (Strict), warn about (Warn) or drop silently (Ignore) fields the
/// schema does not know.
pub fn check_unknown_fields(rt: &ResourceType, obj: &mut Value, ctx: &mut WriteCtx) -> ApiResult<()> {
    let warnings = crate::machinery::check_unknown_fields(rt, obj, ctx.validation)?;
    ctx.warnings.extend(warnings);
    Ok(())
}

/// The grace period of a delete, for kinds that have one (pods).
pub fn grace_period(rt: &ResourceType, obj: &Value, options: &Value) -> Option<i64> {
    if rt.kind != "Pod" {
        return None;
    }
    let unscheduled = obj
        .pointer("/spec/nodeName")
        .and_then(Value::as_str)
        .unwrap_or("")
        .is_empty();
    let terminal = matches!(
        obj.pointer("/status/phase").and_then(Value::as_str),
        Some("Succeeded" | "Failed")
    );
    if unscheduled || terminal {
        return Some(0);
    }
    let requested = options.get("gracePeriodSeconds").and_then(Value::as_i64);
    let spec = obj
        .pointer("/spec/terminationGracePeriodSeconds")
        .and_then(Value::as_i64)
        .unwrap_or(30);
    Some(requested.unwrap_or(spec).max(0))
}

/// Converts an object between served versions of one resource, in place.
pub fn convert(rt: &ResourceType, obj: &mut Value, target_api_version: &str) -> ApiResult<()> {
    match (rt.kind, target_api_version) {
        ("HorizontalPodAutoscaler", "autoscaling/v2") => {
            hpa_v1_to_v2(obj);
            Ok(())
        }
        ("HorizontalPodAutoscaler", "autoscaling/v1") => {
            hpa_v2_to_v1(obj);
            Ok(())
        }
        _ => Err(ApiError::internal(format!(
            "no conversion of {} to {target_api_version}",
            rt.kind
        ))),
    }
}

fn hpa_v1_to_v2(obj: &mut Value) {
    obj["apiVersion"] = json!("autoscaling/v2");
    if let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut) {
        if let Some(cpu) = spec.remove("targetCPUUtilizationPercentage") {
            spec.insert(
                "metrics".into(),
                json!([{"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": cpu}}}]),
            );
        }
    }
    if let Some(status) = obj.get_mut("status").and_then(Value::as_object_mut) {
        if let Some(cpu) = status.remove("currentCPUUtilizationPercentage") {
            status.insert(
                "currentMetrics".into(),
                json!([{"type": "Resource", "resource": {"name": "cpu", "current": {"averageUtilization": cpu}}}]),
            );
        }
    }
}

fn hpa_v2_to_v1(obj: &mut Value) {
    obj["apiVersion"] = json!("autoscaling/v1");
    let cpu_of = |metrics: Option<&Value>, field: &str| {
        metrics.and_then(Value::as_array).and_then(|ms| {
            ms.iter().find_map(|m| {
                (m.pointer("/resource/name") == Some(&json!("cpu")))
                    .then(|| {
                        m.pointer(&format!("/resource/{field}/averageUtilization"))
                            .cloned()
                    })
                    .flatten()
            })
        })
    };
    if let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut) {
        let cpu = cpu_of(spec.get("metrics"), "target");
        spec.remove("metrics");
        spec.remove("behavior");
        if let Some(cpu) = cpu {
            spec.insert("targetCPUUtilizationPercentage".into(), cpu);
        }
    }
    if let Some(status) = obj.get_mut("status").and_then(Value::as_object_mut) {
        let cpu = cpu_of(status.get("currentMetrics"), "current");
        status.remove("currentMetrics");
        status.remove("conditions");
        if let Some(cpu) = cpu {
            status.insert("currentCPUUtilizationPercentage".into(), cpu);
        }
    }
}

// ------------------------------------------------------------------------------------- scale

/// The `autoscaling/v1` Scale of a workload.
pub fn scale_of(rt: &ResourceType, obj: &Value) -> Value {
    let meta = obj.get("metadata").cloned().unwrap_or(json!({}));
    let mut scale_meta = json!({});
    for k in ["name", "namespace", "uid", "resourceVersion", "creationTimestamp"] {
        if let Some(v) = meta.get(k) {
            scale_meta[k] = v.clone();
        }
    }
    let selector = match rt.kind {
        "ReplicationController" => obj
            .pointer("/spec/selector")
            .and_then(Value::as_object)
            .map(|m| {
                let mut pairs: Vec<String> = m
                    .iter()
                    .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                    .collect();
                pairs.sort();
                pairs.join(",")
            })
            .unwrap_or_default(),
        _ => {
            crate::machinery::label_selector_to_string(obj.pointer("/spec/selector").unwrap_or(&Value::Null))
        }
    };
    json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": scale_meta,
        "spec": {"replicas": obj.pointer("/spec/replicas").cloned().unwrap_or(json!(1))},
        "status": {"replicas": obj.pointer("/status/replicas").cloned().unwrap_or(json!(0)), "selector": selector},
    })
}
