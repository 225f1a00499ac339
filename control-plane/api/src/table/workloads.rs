//! Rows of the workload kinds: apps/v1, batch/v1, ReplicationControllers, HPAs and PDBs.

use serde_json::{json, Value};

use super::{arr, format_label_selector, format_labels, int_of, layout_containers, str_of, str_opt, Printer};
use crate::selector::LabelSelector;

fn template_containers<'a>(obj: &'a Value, template_ptr: &str) -> &'a [Value] {
    arr(obj, &format!("{template_ptr}/spec/containers"))
}

pub(super) fn replication_controller(p: &Printer, rc: &Value) -> Vec<Value> {
    let (names, images) = layout_containers(template_containers(rc, "/spec/template"));
    vec![
        json!(str_of(rc, "/metadata/name")),
        json!(int_of(rc, "/spec/replicas")),
        json!(int_of(rc, "/status/replicas")),
        json!(int_of(rc, "/status/readyReplicas")),
        json!(p.age(rc)),
        json!(names),
        json!(images),
        json!(format_labels(rc.pointer("/spec/selector"))),
    ]
}

pub(super) fn replica_set(p: &Printer, rs: &Value) -> Vec<Value> {
    let (names, images) = layout_containers(template_containers(rs, "/spec/template"));
    vec![
        json!(str_of(rs, "/metadata/name")),
        json!(int_of(rs, "/spec/replicas")),
        json!(int_of(rs, "/status/replicas")),
        json!(int_of(rs, "/status/readyReplicas")),
        json!(p.age(rs)),
        json!(names),
        json!(images),
        json!(format_label_selector(rs.pointer("/spec/selector"))),
    ]
}

/// `printDeployment`: READY as `ready/desired`; the wide SELECTOR is the plain selector string
/// (empty, not `<none>`, for an empty selector; `<invalid>` when it does not parse).
pub(super) fn deployment(p: &Printer, d: &Value) -> Vec<Value> {
    let (names, images) = layout_containers(template_containers(d, "/spec/template"));
    let selector = match LabelSelector::from_json(d.pointer("/spec/selector")) {
        Ok(s) => s.to_string(),
        Err(_) => "<invalid>".into(),
    };
    vec![
        json!(str_of(d, "/metadata/name")),
        json!(format!(
            "{}/{}",
            int_of(d, "/status/readyReplicas"),
            int_of(d, "/spec/replicas")
        )),
        json!(int_of(d, "/status/updatedReplicas")),
        json!(int_of(d, "/status/availableReplicas")),
        json!(p.age(d)),
        json!(names),
        json!(images),
        json!(selector),
    ]
}

pub(super) fn stateful_set(p: &Printer, s: &Value) -> Vec<Value> {
    let (names, images) = layout_containers(template_containers(s, "/spec/template"));
    vec![
        json!(str_of(s, "/metadata/name")),
        json!(format!(
            "{}/{}",
            int_of(s, "/status/readyReplicas"),
            int_of(s, "/spec/replicas")
        )),
        json!(p.age(s)),
        json!(names),
        json!(images),
    ]
}

pub(super) fn daemon_set(p: &Printer, ds: &Value) -> Vec<Value> {
    let (names, images) = layout_containers(template_containers(ds, "/spec/template"));
    vec![
        json!(str_of(ds, "/metadata/name")),
        json!(int_of(ds, "/status/desiredNumberScheduled")),
        json!(int_of(ds, "/status/currentNumberScheduled")),
        json!(int_of(ds, "/status/numberReady")),
        json!(int_of(ds, "/status/updatedNumberScheduled")),
        json!(int_of(ds, "/status/numberAvailable")),
        json!(format_labels(ds.pointer("/spec/template/spec/nodeSelector"))),
        json!(p.age(ds)),
        json!(names),
        json!(images),
        json!(format_label_selector(ds.pointer("/spec/selector"))),
    ]
}

/// `metav1.GetControllerOf` + `formatResourceName`: `daemonset.apps/name`, or `<none>`.
pub(super) fn controller_revision(p: &Printer, cr: &Value) -> Vec<Value> {
    let controller = arr(cr, "/metadata/ownerReferences")
        .iter()
        .find(|o| o.get("controller").and_then(Value::as_bool) == Some(true))
        .map(|o| {
            let (group, _) = crate::registry::split_api_version(str_of(o, "/apiVersion"));
            let kind = str_of(o, "/kind");
            let name = str_of(o, "/name");
            let gk = if group.is_empty() {
                kind.to_string()
            } else {
                format!("{kind}.{group}")
            };
            if gk.is_empty() {
                name.to_string()
            } else {
                format!("{}/{name}", gk.to_lowercase())
            }
        })
        .unwrap_or_else(|| "<none>".into());
    vec![
        json!(str_of(cr, "/metadata/name")),
        json!(controller),
        json!(int_of(cr, "/revision")),
        json!(p.age(cr)),
    ]
}

fn job_condition(conditions: &[Value], kind: &str) -> bool {
    conditions
        .iter()
        .find(|c| str_of(c, "/type") == kind)
        .is_some_and(|c| str_of(c, "/status") == "True")
}

/// `printJob`: STATUS from conditions, COMPLETIONS `succeeded/completions` (or `n/1 of P`),
/// DURATION from start to completion (or to now while running).
pub(super) fn job(p: &Printer, job: &Value) -> Vec<Value> {
    let succeeded = int_of(job, "/status/succeeded");
    let completions = match job.pointer("/spec/completions").and_then(Value::as_i64) {
        Some(c) => format!("{succeeded}/{c}"),
        None => {
            let parallelism = int_of(job, "/spec/parallelism");
            if parallelism > 1 {
                format!("{succeeded}/1 of {parallelism}")
            } else {
                format!("{succeeded}/1")
            }
        }
    };
    let start = str_opt(job, "/status/startTime").and_then(crate::time::parse);
    let end = str_opt(job, "/status/completionTime").and_then(crate::time::parse);
    let duration = match (start, end) {
        (None, _) => String::new(),
        (Some(s), None) => super::human(p.seconds_since(s)),
        (Some(s), Some(e)) => super::human(e.as_second() - s.as_second()),
    };
    let conditions = arr(job, "/status/conditions");
    let deleting = job
        .pointer("/metadata/deletionTimestamp")
        .is_some_and(|d| !d.is_null());
    let status = if job_condition(conditions, "Complete") {
        "Complete"
    } else if job_condition(conditions, "Failed") {
        "Failed"
    } else if deleting {
        "Terminating"
    } else if job_condition(conditions, "Suspended") {
        "Suspended"
    } else if job_condition(conditions, "FailureTarget") {
        "FailureTarget"
    } else {
        "Running"
    };
    let (names, images) = layout_containers(template_containers(job, "/spec/template"));
    vec![
        json!(str_of(job, "/metadata/name")),
        json!(status),
        json!(completions),
        json!(duration),
        json!(p.age(job)),
        json!(names),
        json!(images),
        json!(format_label_selector(job.pointer("/spec/selector"))),
    ]
}

fn bool_ptr(v: Option<&Value>) -> &'static str {
    match v.and_then(Value::as_bool) {
        Some(true) => "True",
        Some(false) => "False",
        None => "<unset>",
    }
}

pub(super) fn cron_job(p: &Printer, cj: &Value) -> Vec<Value> {
    let last = match str_opt(cj, "/status/lastScheduleTime") {
        Some(t) => p.since(Some(t)),
        None => "<none>".into(),
    };
    let tz = str_opt(cj, "/spec/timeZone").unwrap_or("<none>");
    let (names, images) = layout_containers(template_containers(cj, "/spec/jobTemplate/spec/template"));
    vec![
        json!(str_of(cj, "/metadata/name")),
        json!(str_of(cj, "/spec/schedule")),
        json!(tz),
        json!(bool_ptr(cj.pointer("/spec/suspend"))),
        json!(arr(cj, "/status/active").len()),
        json!(last),
        json!(p.age(cj)),
        json!(names),
        json!(images),
        json!(format_label_selector(
            cj.pointer("/spec/jobTemplate/spec/selector")
        )),
    ]
}

/// A quantity as the object holds it.
fn qty(v: Option<&Value>) -> String {
    match v {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        _ => "0".into(),
    }
}

/// `formatHPAMetrics` over the autoscaling/v2 shape (the storage shape of every HPA), with
/// the autoscaling/v1 `targetCPUUtilizationPercentage` read as the CPU metric it converts to.
fn hpa_metrics(hpa: &Value) -> String {
    let specs = arr(hpa, "/spec/metrics");
    let statuses = arr(hpa, "/status/currentMetrics");
    if specs.is_empty() {
        if let Some(target) = hpa
            .pointer("/spec/targetCPUUtilizationPercentage")
            .and_then(Value::as_i64)
        {
            let current = hpa
                .pointer("/status/currentCPUUtilizationPercentage")
                .and_then(Value::as_i64)
                .map_or_else(|| "<unknown>".to_string(), |c| format!("{c}%"));
            return format!("cpu: {current}/{target}%");
        }
        return "<none>".into();
    }
    const MAX: usize = 2;
    let mut list: Vec<String> = Vec::new();
    for (i, spec) in specs.iter().enumerate() {
        let status = statuses.get(i);
        let cur = |source: &str, field: &str| -> Option<String> {
            status
                .and_then(|s| s.get(source))
                .filter(|s| !s.is_null())
                .and_then(|s| s.pointer(&format!("/current/{field}")))
                .map(|q| qty(Some(q)))
        };
        let entry = match str_of(spec, "/type") {
            t @ ("External" | "Object") => {
                let source = if t == "External" { "external" } else { "object" };
                let target = spec.pointer(&format!("/{source}/target"));
                if let Some(avg) = target.and_then(|t| t.get("averageValue")) {
                    let current = cur(source, "averageValue").unwrap_or_else(|| "<unknown>".into());
                    format!("{current}/{} (avg)", qty(Some(avg)))
                } else {
                    let current = if status.and_then(|s| s.get(source)).is_some_and(|s| !s.is_null()) {
                        cur(source, "value").unwrap_or_else(|| "0".into())
                    } else {
                        "<unknown>".into()
                    };
                    format!("{current}/{}", qty(target.and_then(|t| t.get("value"))))
                }
            }
            "Pods" => {
                let current = if status.and_then(|s| s.get("pods")).is_some_and(|s| !s.is_null()) {
                    cur("pods", "averageValue").unwrap_or_else(|| "0".into())
                } else {
                    "<unknown>".into()
                };
                format!("{current}/{}", qty(spec.pointer("/pods/target/averageValue")))
            }
            t @ ("Resource" | "ContainerResource") => {
                let source = if t == "Resource" {
                    "resource"
                } else {
                    "containerResource"
                };
                let name = str_of(spec, &format!("/{source}/name"));
                let target = spec.pointer(&format!("/{source}/target"));
                if let Some(avg) = target.and_then(|t| t.get("averageValue")) {
                    let current = if status.and_then(|s| s.get(source)).is_some_and(|s| !s.is_null()) {
                        cur(source, "averageValue").unwrap_or_else(|| "0".into())
                    } else {
                        "<unknown>".into()
                    };
                    format!("{name}: {current}/{}", qty(Some(avg)))
                } else {
                    let current = status
                        .and_then(|s| s.get(source))
                        .and_then(|s| s.pointer("/current/averageUtilization"))
                        .and_then(Value::as_i64)
                        .map_or_else(|| "<unknown>".to_string(), |u| format!("{u}%"));
                    let target = target
                        .and_then(|t| t.get("averageUtilization"))
                        .and_then(Value::as_i64)
                        .map_or_else(|| "<auto>".to_string(), |u| format!("{u}%"));
                    format!("{name}: {current}/{target}")
                }
            }
            _ => "<unknown type>".into(),
        };
        list.push(entry);
    }
    let count = list.len();
    if count > MAX {
        list.truncate(MAX);
        return format!("{} + {} more...", list.join(", "), count - MAX);
    }
    list.join(", ")
}

pub(super) fn horizontal_pod_autoscaler(p: &Printer, hpa: &Value) -> Vec<Value> {
    let reference = format!(
        "{}/{}",
        str_of(hpa, "/spec/scaleTargetRef/kind"),
        str_of(hpa, "/spec/scaleTargetRef/name")
    );
    let min = hpa
        .pointer("/spec/minReplicas")
        .and_then(Value::as_i64)
        .map_or_else(|| "<unset>".to_string(), |m| m.to_string());
    vec![
        json!(str_of(hpa, "/metadata/name")),
        json!(reference),
        json!(hpa_metrics(hpa)),
        json!(min),
        json!(int_of(hpa, "/spec/maxReplicas")),
        json!(int_of(hpa, "/status/currentReplicas")),
        json!(p.age(hpa)),
    ]
}

/// An IntOrString as Go's `IntOrString.String()` prints it.
fn int_or_string(v: Option<&Value>) -> String {
    match v {
        Some(Value::Number(n)) => n.to_string(),
        Some(Value::String(s)) => s.clone(),
        _ => "N/A".into(),
    }
}

pub(super) fn pod_disruption_budget(p: &Printer, pdb: &Value) -> Vec<Value> {
    vec![
        json!(str_of(pdb, "/metadata/name")),
        json!(int_or_string(pdb.pointer("/spec/minAvailable"))),
        json!(int_or_string(pdb.pointer("/spec/maxUnavailable"))),
        json!(int_of(pdb, "/status/disruptionsAllowed")),
        json!(p.age(pdb)),
    ]
}
